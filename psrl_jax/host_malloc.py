"""glibc malloc settings that keep XLA:CPU from page-faulting its temporaries on every update.

XLA:CPU allocates an update's large temporaries (90-300 MB each for `sac_psrl`) with malloc from its
worker threads. glibc serves such requests with a fresh mmap and returns them with munmap when they
are freed, so the kernel zero-fills every page again on every update: the `sac_psrl` trainer took
320,000 minor page faults per second, and a quarter of its CPU time was system time (2-core CPU
machine, JAX 0.10.2, docs/BENCHMARKS.md "glibc malloc"). Three of glibc's own settings keep the
memory with the process instead:

  MALLOC_ARENA_MAX=1        every thread allocates from the main heap (a worker thread's arena
                            would still mmap requests larger than its 64 MB heaps);
  MALLOC_MMAP_MAX_=0        no request is served by mmap;
  MALLOC_TRIM_THRESHOLD_    freed memory at the top of the heap is kept (64 GiB: never trimmed).

(Users may set these environment variables themselves; glibc reads them at process start.)

`apply_if_wanted()` sets them with glibc's mallopt(3) (M_ARENA_MAX 1, M_MMAP_MAX 0, M_TRIM_THRESHOLD
-1, which the man page documents as "disables trimming completely"), which has the environment
variables' effect when it runs before any other thread has allocated: the launchers call it through
`psrl_jax.cpu_settings.apply()` at the top of `main`. They are wanted only on Linux with glibc,
with a CPU-only JAX install (or JAX_PLATFORMS=cpu), when the environment sets none of the three
itself (the user's values were read at process start and win) and PSRL_JAX_HOST_MALLOC is not 0
(set it to 0 to measure without them). The memory a run holds stays at its peak instead of
shrinking between updates.
"""

import ctypes
import importlib.metadata
import os
import platform

SETTINGS = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
}
OPT_OUT = "PSRL_JAX_HOST_MALLOC"
ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def _accelerator_plugin_installed() -> bool:
    names = (dist.metadata["Name"] or "" for dist in importlib.metadata.distributions())
    return any(name.lower().startswith(ACCELERATOR_PLUGINS) for name in names)


def cpu_only(environ=os.environ, accelerator_installed=None) -> bool:
    """Whether JAX will run on the CPU: JAX_PLATFORMS says so, or no GPU/TPU plugin is installed."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    installed = _accelerator_plugin_installed() if accelerator_installed is None else accelerator_installed
    return not installed


def wanted(environ=os.environ, system=None, libc=None, accelerator_installed=None) -> bool:
    """Whether the settings should be added to this environment (see the module docstring)."""
    system = platform.system() if system is None else system
    libc = platform.libc_ver()[0] if libc is None else libc
    return (
        system == "Linux"
        and libc == "glibc"
        and environ.get(OPT_OUT, "") != "0"
        and not any(name in environ for name in SETTINGS)
        and cpu_only(environ, accelerator_installed)
    )


# mallopt(3) parameter: (its number in glibc's malloc.h, value). -1 for the trim threshold: never trim.
MALLOPT = {"M_ARENA_MAX": (-8, 1), "M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, -1)}


def apply_if_wanted() -> dict | None:
    """SETTINGS' effect through mallopt(3) when `wanted()`; returns the values set (None: nothing).
    Call it before anything starts threads (JAX's thread pools): an arena made before it keeps its
    own rules."""
    if not wanted():
        return None
    libc = ctypes.CDLL(None)
    for name, (param, value) in MALLOPT.items():
        if libc.mallopt(param, value) != 1:
            raise OSError(f"glibc's mallopt refused {name} = {value}")
    return {name: value for name, (_, value) in MALLOPT.items()}
