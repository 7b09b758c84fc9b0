"""A random SequenceBatch in the replay's format, for update-level tests (test_psrl, test_mixed_precision)."""

import jax.numpy as jnp
import numpy as np

from psrl_jax.replay.sequence_replay import SequenceBatch


def sequence_batch(config, num_actions: int, seed: int = 0, importance_weight: float = 1.0) -> SequenceBatch:
    """Random frames, actions and returns shaped as the replay samples them for `config`
    (K = replay.prediction_steps future stacks, 0 for plain Rainbow)."""
    b, k, f, s = config.agent.batch_size, config.replay.prediction_steps, config.env.frame_stack, config.env.image_size
    rng = np.random.default_rng(seed)

    def frames(*shape):
        return jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8))

    return SequenceBatch(
        obs=frames(b, f, s, s),
        action=jnp.asarray(rng.integers(0, num_actions, (b,)), jnp.int32),
        n_step_return=jnp.asarray(rng.normal(size=(b,)), jnp.float32),
        bootstrap_discount=jnp.full((b,), 0.9, jnp.float32),
        next_obs=frames(b, f, s, s),
        valid=jnp.ones((b,), jnp.float32),
        future_obs=frames(b, k, f, s, s),
        future_actions=jnp.asarray(rng.integers(0, num_actions, (b, k)), jnp.int32),
        future_mask=jnp.ones((b, k), jnp.float32),
        obs_frame_mask=jnp.ones((b, f), jnp.float32),
        future_frame_mask=jnp.ones((b, k, f), jnp.float32),
        indices=jnp.arange(b, dtype=jnp.int32),
        probabilities=jnp.full((b,), 1.0 / b, jnp.float32),
        importance_weights=jnp.full((b,), importance_weight, jnp.float32),
    )
