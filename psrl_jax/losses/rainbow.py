"""Distributional (C51) double-Q loss of Rainbow, via rlax."""

import jax
import jax.numpy as jnp
import rlax


def c51_support(num_atoms: int, v_min: float, v_max: float) -> jax.Array:
    """Evenly spaced atoms [N] from v_min to v_max inclusive."""
    return jnp.linspace(v_min, v_max, num_atoms, dtype=jnp.float32)


def q_values(logits: jax.Array, atoms: jax.Array) -> jax.Array:
    """Expected return per action: sum_i softmax(logits)_i * atoms_i; [..., A, N] -> [..., A]."""
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * atoms, axis=-1)


def categorical_double_q_loss(
    online_logits_tm1: jax.Array,
    action_tm1: jax.Array,
    n_step_return: jax.Array,
    bootstrap_discount: jax.Array,
    target_logits_t: jax.Array,
    selector_logits_t: jax.Array,
    atoms: jax.Array,
    double_q: bool,
) -> jax.Array:
    """Per-sample cross-entropy [B] between the projected n-step target and the online
    distribution of the taken action.

    The bootstrap action is argmax_a q(selector_logits_t) when double_q (the selector is
    normally the online network on s_t), else argmax of the target network's own q-values.
    `bootstrap_discount` is gamma^n times the not-terminal mask. Gradients flow only into
    `online_logits_tm1` (rlax stops them on the target).
    """
    selector = q_values(selector_logits_t if double_q else target_logits_t, atoms)
    selector = jax.lax.stop_gradient(selector)
    loss_fn = jax.vmap(rlax.categorical_double_q_learning, in_axes=(None, 0, 0, 0, 0, None, 0, 0))
    return loss_fn(
        atoms,
        online_logits_tm1,
        action_tm1.astype(jnp.int32),
        n_step_return.astype(jnp.float32),
        bootstrap_discount.astype(jnp.float32),
        atoms,
        target_logits_t,
        selector,
    )
