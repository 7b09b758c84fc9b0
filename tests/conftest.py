"""Imported by pytest before any test module: the launchers' CPU settings (psrl_jax/cpu_settings.py)
are applied here first, before anything starts JAX's backend, so tests run as the launchers do.

One persistent XLA compilation cache per test run (JAX_COMPILATION_CACHE_DIR): the end-to-end tests
start the same training programs several times (train, kill, resume, evaluate; two runs compared for
reproducibility), and on a 2-core CPU each start used to recompile them from scratch. The controller
makes the directory, the xdist workers and every launcher they start inherit it through the
environment, and it is removed when the run ends. A cache the caller set is used as it is and kept;
PSRL_JAX_TEST_XLA_CACHE=0 turns the cache off (every start compiles, as before).

XLA:CPU compiles with LLVM at -O1 in the scripts tests launch (--xla_backend_optimization_level=1,
through XLA_FLAGS, which workers pass on to launchers and multi-device subprocesses), and at -O0 in
the test processes themselves. Compiling is most of the suite's CPU time. The smoke programs compile
30-50% faster at -O1 than at XLA's default -O3 (rainbow_psrl:smoke's update 29 -> 17 s) and run about
as fast, which the launched runs of hundreds of steps need. The tests' own programs mostly run a few
times, and at -O0 compile in about half the time of -O1 again (the rainbow_psrl:smoke loss gradient:
11 -> 5 s) and run about 4x slower (85 -> 360 ms). A test that runs its program for many steps,
times it, or compares two programs to the bit compiles it at the launchers' level
(tests/compile_level.py). XLA reads XLA_FLAGS once per process, when it first compiles: each test
process compiles one program under its own flags, then puts the launchers' flags back for what it
starts. JAX keys its persistent cache by XLA_FLAGS as it reads them at compile time, so the test
processes' programs have a subdirectory of the cache to themselves.

On the jaxlibs xla_cpu.py checks, tests also turn off XLA:CPU's fusion emitters
(--xla_cpu_use_fusion_emitters=false: fusions go through the older elemental IR emitter): the
rainbow_psrl:smoke loss gradient compiles in 11 instead of 15 s at -O1 and runs as fast (85 vs 88
ms). Results agree with XLA's default level to float rounding, not to the bit. Users' runs keep XLA's
defaults; PSRL_JAX_TEST_XLA_O1=0 keeps them in tests too, and a level or fusion-emitter flag the
caller sets in XLA_FLAGS is kept as it is, for every program.
"""

import os
import shutil
import tempfile

import jax

from psrl_jax import cpu_settings, xla_cpu

cpu_settings.apply()

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
# The scripts tests launch cache every program, not only those that took a second to compile (JAX's
# default): each compiles some 40 small programs, which every resumed, evaluated or repeated run
# compiled again (rainbow:smoke, 2 seeds, a second 440-step run: 17.3 -> 15.5 s, means of two). The
# test processes keep the default: their many small programs are rarely compiled twice, and writing
# them all cost more than it saved (docs/BENCHMARKS.md).
_MIN_COMPILE_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
_IN_PROCESS_MIN_COMPILE_TIME = "PSRL_JAX_TEST_IN_PROCESS_MIN_COMPILE_TIME"  # set only when the 0 above is ours
_IN_PROCESS_FLAGS = "PSRL_JAX_TEST_IN_PROCESS_XLA_FLAGS"  # XLA_FLAGS of the test processes' own JAX


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller: xdist workers inherit its environment
        _choose_xla_flags()
        _make_cache(config)
    in_process = os.environ.get(_IN_PROCESS_MIN_COMPILE_TIME)
    if in_process:  # the 0 is for launched scripts; workers' JAX read it at import
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(in_process))
    _start_jax_with_in_process_flags()


def _choose_xla_flags():
    os.environ.pop(_IN_PROCESS_FLAGS, None)
    if os.environ.get("PSRL_JAX_TEST_XLA_O1", "1") == "0":
        return  # XLA's defaults asked for
    flags = os.environ.get("XLA_FLAGS", "")
    emitters = []
    if xla_cpu.FUSION_EMITTERS_FLAG not in flags and xla_cpu.checked_jaxlib():
        emitters.append(f"--{xla_cpu.FUSION_EMITTERS_FLAG}=false")
    if xla_cpu.LEVEL_FLAG in flags:  # the caller's own level, for every program
        os.environ["XLA_FLAGS"] = " ".join([flags, *emitters]).strip()
        return

    def with_level(level):
        return " ".join([flags, f"--{xla_cpu.LEVEL_FLAG}={level}", *emitters]).strip()

    os.environ["XLA_FLAGS"] = with_level(1)  # read by the scripts tests launch, when they start JAX
    os.environ[_IN_PROCESS_FLAGS] = with_level(0)


def _start_jax_with_in_process_flags():
    in_process = os.environ.get(_IN_PROCESS_FLAGS)
    if not in_process:
        return
    cache = os.environ.get(_CACHE_ENV)
    if cache:  # JAX keys its cache by the XLA_FLAGS it sees at compile time: the launchers' flags, below
        jax.config.update("jax_compilation_cache_dir", os.path.join(cache, "in_process_flags"))
    launched = os.environ["XLA_FLAGS"]
    os.environ["XLA_FLAGS"] = in_process
    try:
        jax.block_until_ready(jax.jit(lambda x: x + 1)(0))  # XLA reads XLA_FLAGS here, once per process
    finally:
        os.environ["XLA_FLAGS"] = launched


def _make_cache(config):
    if os.environ.get(_CACHE_ENV) or os.environ.get("PSRL_JAX_TEST_XLA_CACHE", "1") == "0":
        return  # the caller's own cache, or none asked for
    path = tempfile.mkdtemp(prefix="psrl_jax_test_xla_cache_")
    os.environ[_CACHE_ENV] = path  # for xdist workers and launched subprocesses
    if _MIN_COMPILE_TIME_ENV not in os.environ:  # a value the caller set is kept, for every process
        # JAX's default, as the controller read it at import, for the test processes themselves
        os.environ[_IN_PROCESS_MIN_COMPILE_TIME] = str(jax.config.jax_persistent_cache_min_compile_time_secs)
        os.environ[_MIN_COMPILE_TIME_ENV] = "0"  # for launched subprocesses
    jax.config.update("jax_compilation_cache_dir", path)  # for tests run in this process
    config._psrl_jax_xla_cache = path


def pytest_collection_modifyitems(config, items):
    """The end-to-end runs (marked slow) first: xdist hands tests out in collection order, and a
    run of minutes that starts when the other worker has little left keeps the suite waiting on it."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise


def pytest_unconfigure(config):
    path = getattr(config, "_psrl_jax_xla_cache", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
