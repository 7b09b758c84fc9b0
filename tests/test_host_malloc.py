"""psrl_jax/host_malloc.py: when the glibc malloc settings apply, and that they do what they are for:
large buffers that a worker thread frees and allocates again stop page-faulting, whether they come
from mallopt(3) at run time (what the launchers do) or from the environment at process start."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from psrl_jax import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC_LINUX = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_wanted_only_on_glibc_linux_cpu_without_the_users_own_settings():
    base = dict(system="Linux", libc="glibc", accelerator_installed=False)
    assert host_malloc.wanted({}, **base)
    assert not host_malloc.wanted({}, **{**base, "system": "Darwin"})
    assert not host_malloc.wanted({}, **{**base, "libc": "musl"})
    assert not host_malloc.wanted({}, **{**base, "accelerator_installed": True})  # a GPU/TPU install
    assert host_malloc.wanted({"JAX_PLATFORMS": "cpu"}, **{**base, "accelerator_installed": True})
    assert not host_malloc.wanted({"JAX_PLATFORMS": "cuda"}, **base)
    assert not host_malloc.wanted({"PSRL_JAX_HOST_MALLOC": "0"}, **base)  # the opt-out
    assert host_malloc.wanted({"PSRL_JAX_HOST_MALLOC": "1"}, **base)
    for name in host_malloc.SETTINGS:  # any one of them set by the user: theirs win, nothing added
        assert not host_malloc.wanted({name: "8"}, **base)


FAULTS = textwrap.dedent(
    """
    import ctypes, json, os, resource, threading
    from psrl_jax import host_malloc

    applied = host_malloc.apply_if_wanted()  # what cpu_settings.apply() does first in a launcher
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    SIZE = 200 << 20

    def cycle():  # what XLA:CPU's worker threads do every update: malloc a large buffer, write it, free it
        buffer = libc.malloc(SIZE)
        libc.memset(buffer, 1, SIZE)
        libc.free(ctypes.c_void_p(buffer))

    def cycles():
        cycle()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            cycle()
        result.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    result = []
    worker = threading.Thread(target=cycles)
    worker.start()
    worker.join()
    print(json.dumps({"faults": result[0], "applied": applied}))
    """
)


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc's malloc settings exist on Linux with glibc only")
def test_settings_stop_a_worker_threads_large_buffers_from_page_faulting_again():
    def faults(extra_env):
        drop = (*host_malloc.SETTINGS, host_malloc.OPT_OUT)
        environ = {k: v for k, v in os.environ.items() if k not in drop}
        run = subprocess.run(
            [sys.executable, "-c", FAULTS],
            cwd=ROOT,
            env={**environ, "JAX_PLATFORMS": "cpu", **extra_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    pages = (200 << 20) // 4096  # 51,200 pages per buffer
    default = faults({host_malloc.OPT_OUT: "0"})
    by_mallopt = faults({})
    by_environment = faults(host_malloc.SETTINGS)
    assert default["applied"] is None and default["faults"] >= 3 * pages // 2, default  # fresh pages every cycle
    assert by_mallopt["applied"] == {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}
    assert by_mallopt["faults"] < pages // 10, (by_mallopt, default)  # the memory is reused
    assert by_environment["applied"] is None and by_environment["faults"] < pages // 10, by_environment
