"""psrl-jax: PSRL (CVPR 2023) and its baselines in JAX/Flax.

Importing the package changes no environment variable and no process state; the launchers apply the
CPU settings they want through `psrl_jax.cpu_settings.apply()`.
"""
