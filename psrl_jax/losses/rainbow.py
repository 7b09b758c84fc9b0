"""Distributional (C51) double-Q loss of Rainbow (rlax's projection) and SPR's KL priority."""

import jax
import jax.numpy as jnp
import rlax


def c51_support(num_atoms: int, v_min: float, v_max: float) -> jax.Array:
    """Evenly spaced atoms [N] from v_min to v_max inclusive."""
    return jnp.linspace(v_min, v_max, num_atoms, dtype=jnp.float32)


def q_values(logits: jax.Array, atoms: jax.Array) -> jax.Array:
    """Expected return per action: sum_i softmax(logits)_i * atoms_i; [..., A, N] -> [..., A]."""
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * atoms, axis=-1)


# SPR's NaN guard on the target distribution and the KL priority (src/algos.py dist_rl_loss).
KL_EPS = 1e-6


def categorical_double_q_loss(
    online_logits_tm1: jax.Array,
    action_tm1: jax.Array,
    n_step_return: jax.Array,
    bootstrap_discount: jax.Array,
    target_logits_t: jax.Array,
    selector_logits_t: jax.Array,
    atoms: jax.Array,
    double_q: bool,
) -> tuple[jax.Array, jax.Array]:
    """Per-sample cross-entropy [B] between the projected n-step target and the online
    distribution of the taken action, and the KL divergence [B] of that target from it.

    The bootstrap action is argmax_a q(selector_logits_t) when double_q (the selector is
    normally the online network on s_t), else argmax of the target network's own q-values.
    `bootstrap_discount` is gamma^n times the not-terminal mask. Gradients flow only into
    `online_logits_tm1`. The KL is SPR's priority: the target clamped to [1e-6, 1], the KL to
    [1e-6, 1e6]; it has no gradient. The cross-entropy is rlax's categorical double-Q loss.
    """
    selector = q_values(selector_logits_t if double_q else target_logits_t, atoms)
    selector = jax.lax.stop_gradient(selector)
    n = online_logits_tm1.shape[0]
    bootstrap_action = jnp.argmax(selector, axis=-1)
    p_target = jax.nn.softmax(target_logits_t[jnp.arange(n), bootstrap_action], axis=-1)
    target_atoms = n_step_return.astype(jnp.float32)[:, None] + bootstrap_discount.astype(jnp.float32)[:, None] * atoms
    target = jax.vmap(rlax.categorical_l2_project, in_axes=(0, 0, None))(target_atoms, p_target, atoms)
    target = jax.lax.stop_gradient(target)
    log_p = jax.nn.log_softmax(online_logits_tm1[jnp.arange(n), action_tm1.astype(jnp.int32)], axis=-1)
    cross_entropy = -jnp.sum(target * log_p, axis=-1)
    clamped = jnp.clip(target, KL_EPS, 1.0)
    kl = jnp.sum(clamped * (jnp.log(clamped) - jax.lax.stop_gradient(log_p)), axis=-1)
    return cross_entropy, jnp.clip(kl, KL_EPS, 1.0 / KL_EPS)
