"""Soft actor-critic losses (Haarnoja et al. 2018, as CURL / SAC-AE use them on pixels).

Pure functions of arrays, so the tests can check them against closed forms with NumPy:

  soft target   y = r + gamma_n * (min(Q1', Q2')(s', a') - alpha * log pi(a' | s')),  a' ~ pi(. | s')
  critic        mean_b [(Q1(s, a) - y)^2 + (Q2(s, a) - y)^2]                y is stop-gradient
  actor         mean_b [alpha * log pi(a~ | s) - min(Q1, Q2)(s, a~)]        alpha is stop-gradient
  temperature   mean_b [alpha * (-log pi(a~ | s) - target_entropy)]         log pi is stop-gradient,
                differentiated with respect to log alpha (alpha = exp(log_alpha))
"""

import jax
import jax.numpy as jnp


def soft_target(reward, bootstrap_discount, next_q1, next_q2, next_log_prob, alpha):
    """[B] Bellman target; `bootstrap_discount` is gamma^n times the episode's discount (0 at a terminal)."""
    soft_value = jnp.minimum(next_q1, next_q2) - alpha * next_log_prob
    return jax.lax.stop_gradient(reward + bootstrap_discount * soft_value)


def critic_loss(q1, q2, target, weights=None):
    """Twin-Q squared error, per sample [B] (weights mask invalid samples in the caller's mean)."""
    per_sample = jnp.square(q1 - target) + jnp.square(q2 - target)
    return per_sample if weights is None else per_sample * weights


def actor_loss(log_prob, q1, q2, alpha):
    """Per-sample [B] policy loss; the temperature is a constant here."""
    return jax.lax.stop_gradient(alpha) * log_prob - jnp.minimum(q1, q2)


def temperature_loss(log_alpha, log_prob, target_entropy):
    """Per-sample [B] loss of the learned temperature; its gradient moves the policy's entropy
    towards `target_entropy` (raise alpha when the entropy -log pi is below the target)."""
    return jnp.exp(log_alpha) * jax.lax.stop_gradient(-log_prob - target_entropy)


def masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)
