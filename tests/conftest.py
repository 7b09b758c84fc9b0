"""Imported by pytest before any test module: psrl_jax first, so that its XLA:CPU flags are set
before anything starts JAX's backend (psrl_jax/xla_cpu.py).

One persistent XLA compilation cache per test run (JAX_COMPILATION_CACHE_DIR): the end-to-end tests
start the same training programs several times (train, kill, resume, evaluate; two runs compared for
reproducibility), and on a 2-core CPU each start used to recompile them from scratch. The controller
makes the directory, the xdist workers and every launcher they start inherit it through the
environment, and it is removed when the run ends. A cache the caller set is used as it is and kept;
PSRL_JAX_TEST_XLA_CACHE=0 turns the cache off (every start compiles, as before).
"""

import os
import shutil
import tempfile

import jax

import psrl_jax  # noqa: F401

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    if hasattr(config, "workerinput") or os.environ.get(_CACHE_ENV):
        return  # an xdist worker (its controller set the variable) or the caller's own cache
    if os.environ.get("PSRL_JAX_TEST_XLA_CACHE", "1") == "0":
        return
    path = tempfile.mkdtemp(prefix="psrl_jax_test_xla_cache_")
    os.environ[_CACHE_ENV] = path  # for xdist workers and launched subprocesses
    jax.config.update("jax_compilation_cache_dir", path)  # for tests run in this process
    config._psrl_jax_xla_cache = path


def pytest_unconfigure(config):
    path = getattr(config, "_psrl_jax_xla_cache", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
