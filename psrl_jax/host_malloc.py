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

glibc reads them when the process starts, so a launcher calls `reexec_if_wanted()` first: when
they are wanted and not yet set, it restarts the same command (os.execv, same pid, same arguments)
with them added. They are wanted only on Linux with glibc, with a CPU-only JAX install (or
JAX_PLATFORMS=cpu), when the environment sets none of the three itself (the user's choice wins) and
PSRL_JAX_HOST_MALLOC is not 0 (set it to 0 to measure without them). The memory a run holds stays
at its peak instead of shrinking between updates.
"""

import importlib.metadata
import os
import platform
import sys

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


def reexec_if_wanted() -> None:
    """Restart this Python command with SETTINGS in its environment, when `wanted()`. Call it at the
    top of a launcher, before anything starts threads or JAX; it does not return when it restarts."""
    if not wanted():
        return
    environ = {**os.environ, **SETTINGS}
    print(
        "psrl_jax: restarting with glibc malloc settings for XLA:CPU "
        f"({' '.join(f'{k}={v}' for k, v in SETTINGS.items())}; {OPT_OUT}=0 turns this off)",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
