"""The CPU settings a launcher applies, in one call at the top of its `main`, before JAX starts.

Importing psrl_jax changes nothing outside it. `apply()` makes the two XLA:CPU choices that side-by-side
measurements on the project's 2-core CPU machine show to pay (docs/BENCHMARKS.md), each only where it
applies and where the user has not chosen otherwise:

- convolutions on XLA's Eigen path instead of YNNPACK (psrl_jax/xla_cpu.py; PSRL_JAX_XLA_CPU_DEFAULTS=1
  turns it off);
- glibc malloc keeping XLA's large temporaries in the process instead of mapping them afresh every update
  (psrl_jax/host_malloc.py; PSRL_JAX_HOST_MALLOC=0 turns it off).

What it did is returned and kept for `applied()`, which the run directory's versions.json records as
"cpu_settings". A program that uses the package as a library calls `apply()` itself (or sets XLA_FLAGS
and the MALLOC_* variables in its environment), before its first JAX computation.
"""

from psrl_jax import host_malloc, xla_cpu

_applied: dict = {}


def apply() -> dict:
    """Apply the wanted settings; returns {"xla_convolutions_on_eigen": bool, "glibc_malloc": dict | None}."""
    _applied.update(
        xla_convolutions_on_eigen=xla_cpu.configure(),
        glibc_malloc=host_malloc.apply_if_wanted(),
    )
    return applied()


def applied() -> dict:
    """What `apply()` set in this process ({} when it was not called)."""
    return dict(_applied)
