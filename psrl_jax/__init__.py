"""psrl-jax: PSRL (CVPR 2023) and its baselines in JAX/Flax."""

from psrl_jax import xla_cpu

# Before anything starts JAX's CPU backend: convolutions on Eigen, not YNNPACK (xla_cpu.py).
xla_cpu.configure()
