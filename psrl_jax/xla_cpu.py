"""XLA:CPU convolutions on Eigen instead of YNNPACK (set before JAX creates its CPU backend).

jaxlib 0.9.2-0.10.x send every convolution to a YNNPACK fusion by default (the
`xla_cpu_experimental_ynn_fusion_type` list holds `individual_convolution`). On the 2-core x86 CI
machine (AVX-512, JAX 0.10.2) those run 4-10x slower than XLA's Eigen convolutions: a 3x3, 32->32
conv over [64, 41, 41, 32] takes 55 ms forward and 120 ms forward + backward on YNNPACK, 6 and 26 ms
on Eigen; the full-width SAC update goes from 1,047 to 270 ms (launch/compare_updates.py, same
machine, docs/BENCHMARKS.md; openxla/xla#34273 reports the same kind of gap). Removing convolutions from that list
gives them back to Eigen; dots and everything else keep XLA's defaults.

`configure()` (called by `psrl_jax.cpu_settings.apply()`, which the launchers call first) appends the
flag to XLA_FLAGS unless:
- the jaxlib is not one it was checked on (the flag exists from 0.9.2; 0.11 is our GPU version,
  where CPU convolutions do not matter and the flag is unverified; XLA aborts on unknown flags);
- XLA_FLAGS already sets the YNN fusion types (the user's choice wins);
- PSRL_JAX_XLA_CPU_DEFAULTS=1 is in the environment (keep XLA's defaults, e.g. to measure them).
XLA reads XLA_FLAGS once, when the first backend is created: if JAX is already running, this warns
and changes nothing. GPU and TPU programs are unaffected (the flag is a CPU-backend option).

`one_shot_compiler_options()` is the other XLA:CPU choice made here: programs that run once (the
trainer's init) compile with LLVM at -O1 instead of XLA's default -O3.
"""

import importlib.metadata
import logging
import os
import sys

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
LEVEL_FLAG = "xla_backend_optimization_level"
FUSION_EMITTERS_FLAG = "xla_cpu_use_fusion_emitters"  # on by default; tests/conftest.py turns it off
ONE_SHOT_LEVEL = 1
CHECKED_JAXLIB = ((0, 9, 2), (0, 11, 0))  # [first, last) jaxlib versions with the flag, checked


def _jaxlib_version() -> tuple[int, ...] | None:
    try:
        text = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def checked_jaxlib(jaxlib_version=None) -> bool:
    """Whether the installed (or the given) jaxlib is one the XLA:CPU flags here were checked on;
    XLA aborts on a flag its jaxlib does not know."""
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    first, last = CHECKED_JAXLIB
    return version is not None and first <= version < last


def wanted(environ=os.environ, jaxlib_version=None) -> bool:
    """Whether `configure` would add FLAG, for this environment and jaxlib version."""
    return (
        checked_jaxlib(jaxlib_version)
        and "xla_cpu_experimental_ynn_fusion_type" not in environ.get("XLA_FLAGS", "")
        and environ.get("PSRL_JAX_XLA_CPU_DEFAULTS", "") in ("", "0")
    )


def configure() -> bool:
    """Append FLAG to XLA_FLAGS when `wanted()` and JAX has not started its backend; returns whether
    the flag is in force for this process's JAX."""
    if not wanted():
        return FLAG in os.environ.get("XLA_FLAGS", "")
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            logging.getLogger(__name__).warning(
                "JAX started before psrl_jax.cpu_settings.apply(): XLA:CPU keeps its YNNPACK "
                "convolutions (4-10x slower here). Call it first, or set XLA_FLAGS=%s",
                FLAG,
            )
            return False
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAG}".strip()
    return True


def one_shot_compiler_options(environ=os.environ, backend: str | None = None) -> dict | None:
    """`jax.jit(..., compiler_options=...)` for a program that runs once: LLVM at -O1 on the CPU.

    The agents' init is hundreds of small fusions of random initialisers, and compiling it is mostly
    LLVM optimising them at XLA's default level (3), for a program that runs once. At -O1 the
    `sac_psrl` init compiles in 11 s instead of 33-39 s, `rainbow_psrl:smoke` in 9 instead of 35 s,
    `rainbow` 4 instead of 13 s (2 cores of an AMD EPYC, docs/BENCHMARKS.md), and the parameters are
    bit-identical (tests/test_xla_cpu.py checks this). None (XLA's default) on GPU/TPU, or when
    XLA_FLAGS sets a level (the user's choice wins)."""
    import jax  # not at import time: configure() must run before JAX starts its backend

    if (backend or jax.default_backend()) != "cpu" or LEVEL_FLAG in environ.get("XLA_FLAGS", ""):
        return None
    return {LEVEL_FLAG: ONE_SHOT_LEVEL}
