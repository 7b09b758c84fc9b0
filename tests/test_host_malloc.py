"""psrl_jax/host_malloc.py: when the glibc malloc settings apply, that a launcher restarts itself with
them exactly once (same pid, same arguments), and that they do what they are for: large buffers that a
worker thread frees and allocates again stop page-faulting."""

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


PROBE = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {root!r})
    from psrl_jax import host_malloc
    print("pid before the restart:", os.getpid(), file=sys.stderr, flush=True)
    host_malloc.reexec_if_wanted()
    print(json.dumps({{"pid": os.getpid(), "argv": sys.argv[1:], "interpreter_flags": sys.orig_argv[1:2],
                      "env": {{k: os.environ.get(k) for k in host_malloc.SETTINGS}}}}))
    """
)


def _probe(tmp_path, **env):
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=ROOT))
    drop = (*host_malloc.SETTINGS, host_malloc.OPT_OUT)
    environ = {**{k: v for k, v in os.environ.items() if k not in drop}, "JAX_PLATFORMS": "cpu", **env}
    result = subprocess.run(
        [sys.executable, "-u", str(script), "--flag=a b", "x"], env=environ, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # the code before the restart printed nothing; after it, once
    out = json.loads(lines[0])
    pids = [int(line.split()[-1]) for line in result.stderr.splitlines() if line.startswith("pid before")]
    assert set(pids) == {out["pid"]}  # a restart keeps the process (execve), it does not spawn one
    out["starts"] = len(pids)
    return out, result.stderr


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc's malloc settings exist on Linux with glibc only")
def test_launcher_restarts_once_with_the_settings_and_its_arguments(tmp_path):
    out, stderr = _probe(tmp_path)
    assert out["env"] == host_malloc.SETTINGS
    assert out["argv"] == ["--flag=a b", "x"] and out["interpreter_flags"] == ["-u"]  # all kept
    assert stderr.count("restarting with glibc malloc settings") == 1 and out["starts"] == 2

    off, stderr = _probe(tmp_path, PSRL_JAX_HOST_MALLOC="0")
    assert off["env"] == {k: None for k in host_malloc.SETTINGS} and off["starts"] == 1
    mine, _ = _probe(tmp_path, MALLOC_ARENA_MAX="4")
    assert mine["env"]["MALLOC_ARENA_MAX"] == "4" and mine["env"]["MALLOC_MMAP_MAX_"] is None


FAULTS = textwrap.dedent(
    """
    import ctypes, resource, threading

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
    print(result[0])
    """
)


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc's malloc settings exist on Linux with glibc only")
def test_settings_stop_a_worker_threads_large_buffers_from_page_faulting_again():
    def faults(extra_env):
        environ = {k: v for k, v in os.environ.items() if k not in host_malloc.SETTINGS}
        run = subprocess.run(
            [sys.executable, "-c", FAULTS], env={**environ, **extra_env}, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    pages = (200 << 20) // 4096  # 51,200 pages per buffer
    default, tuned = faults({}), faults(host_malloc.SETTINGS)
    assert default >= 3 * pages // 2, default  # glibc's default: each cycle maps fresh pages again
    assert tuned < pages // 10, (tuned, default)  # with the settings the memory is reused
