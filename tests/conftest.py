"""Imported by pytest before any test module: the launchers' CPU settings (psrl_jax/cpu_settings.py)
are applied here first, before anything starts JAX's backend, so tests run as the launchers do.

One persistent XLA compilation cache per test run (JAX_COMPILATION_CACHE_DIR): the end-to-end tests
start the same training programs several times (train, kill, resume, evaluate; two runs compared for
reproducibility), and on a 2-core CPU each start used to recompile them from scratch. The controller
makes the directory, the xdist workers and every launcher they start inherit it through the
environment, and it is removed when the run ends. A cache the caller set is used as it is and kept;
PSRL_JAX_TEST_XLA_CACHE=0 turns the cache off (every start compiles, as before).

XLA:CPU compiles with LLVM at -O1 in tests (--xla_backend_optimization_level=1, through XLA_FLAGS,
which workers, launchers and the multi-device subprocesses inherit). Compiling is about two thirds
of the suite's CPU time, and the smoke programs compile 30-50% faster at -O1 (rainbow_psrl:smoke's
update 29 -> 17 s) while running about as fast. On the jaxlibs xla_cpu.py checks, tests also turn
off XLA:CPU's fusion emitters (--xla_cpu_use_fusion_emitters=false: fusions go through the older
elemental IR emitter): the rainbow_psrl:smoke loss gradient compiles in 11 instead of 15 s and runs
as fast (85 vs 88 ms), and tests/test_psrl.py with tests/test_correspondence.py take 16% less CPU
time. Results agree with XLA's default level to float rounding, not to the bit. Users' runs keep
XLA's defaults; PSRL_JAX_TEST_XLA_O1=0 keeps them in tests too, and a flag the caller sets in
XLA_FLAGS is kept as it is.
"""

import os
import shutil
import tempfile

import jax

from psrl_jax import cpu_settings, xla_cpu

cpu_settings.apply()

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_O1 = f"--{xla_cpu.LEVEL_FLAG}=1"


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return  # an xdist worker: its environment is the controller's, set below
    _compile_at_o1()
    _make_cache(config)


def _compile_at_o1():
    if os.environ.get("PSRL_JAX_TEST_XLA_O1", "1") == "0":
        return  # XLA's defaults asked for
    flags = os.environ.get("XLA_FLAGS", "")
    added = [] if xla_cpu.LEVEL_FLAG in flags else [_O1]  # else the caller's own level
    if xla_cpu.FUSION_EMITTERS_FLAG not in flags and xla_cpu.checked_jaxlib():
        added.append(f"--{xla_cpu.FUSION_EMITTERS_FLAG}=false")
    os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()  # read when JAX creates its CPU backend


def _make_cache(config):
    if os.environ.get(_CACHE_ENV) or os.environ.get("PSRL_JAX_TEST_XLA_CACHE", "1") == "0":
        return  # the caller's own cache, or none asked for
    path = tempfile.mkdtemp(prefix="psrl_jax_test_xla_cache_")
    os.environ[_CACHE_ENV] = path  # for xdist workers and launched subprocesses
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
