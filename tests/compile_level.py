"""`jit_at_launch_level`: jax.jit at the optimisation level of the scripts tests launch.

tests/conftest.py compiles the tests' own programs at LLVM -O0, which compiles fast and runs slowly,
and the launched scripts at -O1. A test that runs its program for many steps, times what it runs, or
asks two programs for bit-identical results compiles at the launchers' level with this instead. With
no level in XLA_FLAGS (PSRL_JAX_TEST_XLA_O1=0), this is jax.jit.
"""

import os
import re

import jax

from psrl_jax import xla_cpu


def launch_level() -> int | None:
    """The LLVM optimisation level XLA_FLAGS gives the scripts tests launch, or None for XLA's default."""
    found = re.findall(rf"--{xla_cpu.LEVEL_FLAG}=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(found[-1]) if found else None


def jit_at_launch_level(fun=None, **jit_kwargs):
    """jax.jit(fun, **jit_kwargs) compiled at `launch_level()`; also a decorator."""
    if fun is None:
        return lambda f: jit_at_launch_level(f, **jit_kwargs)
    level = launch_level()
    options = None if level is None else {xla_cpu.LEVEL_FLAG: level}
    return jax.jit(fun, compiler_options=options, **jit_kwargs)
