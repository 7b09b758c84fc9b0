"""Imported by pytest before any test module: psrl_jax first, so that its XLA:CPU flags are set
before anything starts JAX's backend (psrl_jax/xla_cpu.py)."""

import psrl_jax  # noqa: F401
