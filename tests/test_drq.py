"""DrQ's augmentation averaging and recipe (configs/drq.py, agents/sac.py): the K-view soft target is
the mean of per-view targets, the M-view critic loss the sum of per-view twin-Q losses (DrQ's
`update_critic`), DrQ's whole-kernel orthogonal conv init, and the config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import drq
from psrl_jax.config import ConfigError, validate_any_config
from psrl_jax.ops.augment import augment_pixels
from tests.test_sac import _agent, _batch


def _views(config, obs, count, seed):
    """`count` independent DrQ augmentations (replicate pad + crop) of uint8 stacks."""
    keys = jax.random.split(jax.random.key(seed), count)
    pad = config.agent.augmentation.translate_pad
    return jnp.stack([augment_pixels(k, obs, config.env.crop_size, pad) for k in keys])


def test_drq_config_validates_and_refuses_views_without_augmentation():
    config = drq.get_config("smoke")
    validate_any_config(config.copy_and_resolve_references())
    full = drq.get_config()
    validate_any_config(full.copy_and_resolve_references())
    assert full.env.image_size == full.env.crop_size == 84  # DrQ renders at 84: the shift is the only augmentation
    config.agent.augmentation.enabled = False
    with pytest.raises(ConfigError, match="augmentation"):
        validate_any_config(config)


def test_soft_target_averages_the_k_views():
    """With a near-deterministic policy and temperature (std e^-30, alpha 1e-9), the K = 2 target
    equals the mean of r + gamma * min(Q1', Q2')(view_k, tanh(mu(view_k))) over the views, computed
    view by view from the networks' outputs; the two views' targets differ, so the mean is tested."""
    config = drq.get_config("smoke")
    config.agent.log_std_min, config.agent.log_std_max = -31.0, -30.0
    config.agent.init_temperature = 1e-9
    agent = _agent(config)
    state = agent.init(jax.random.key(1))
    # A critic target unlike the online critic, so a mix-up of the two would show.
    state = state.replace(critic_target=agent.init(jax.random.key(2)).critic_params)
    batch = _batch(config)
    views = _views(config, batch.next_obs, 2, seed=3)

    target = np.asarray(jax.jit(agent.soft_target)(state, batch, views, jax.random.key(4)))

    @jax.jit  # one program, not every operation of the networks one by one
    def target_q(view):
        maps = agent.critic.apply(state.critic_params, view, method="encode")
        mean, _ = agent.actor.apply(state.actor_params, maps)
        return agent.critic.apply(state.critic_target, view, jnp.tanh(mean))

    per_view = []
    for view in views:
        q1, q2 = target_q(view)
        r, d = np.asarray(batch.n_step_return), np.asarray(batch.bootstrap_discount)
        per_view.append(r + d * np.minimum(np.asarray(q1), np.asarray(q2)))
    np.testing.assert_allclose(target, np.mean(per_view, axis=0), rtol=1e-5, atol=1e-5)
    assert np.abs(per_view[0] - per_view[1]).max() > 1e-3  # the views give different targets


def test_critic_loss_sums_the_m_views():
    """The M = 2 loss and its gradient equal the sum of the single-view losses and gradients, with
    distinct views and per-sample actions (a view/action mismatch in the batching would show); on two
    identical views the loss is exactly twice the single view's (DrQ adds the two MSE terms)."""
    config = drq.get_config("smoke")
    agent = _agent(config)
    state = agent.init(jax.random.key(0))
    batch = _batch(config)
    views = _views(config, batch.obs, 2, seed=5)
    target = jnp.asarray(np.random.default_rng(6).normal(size=batch.obs.shape[0]), jnp.float32)
    trainable = {"critic": state.critic_params, "aux": state.aux_params}

    @jax.jit  # two programs (1 and 2 views) instead of every operation of the backward pass one by one
    def loss(views):
        return jax.value_and_grad(lambda t: agent.critic_loss(t, state, batch, views, None, target)[0])(trainable)

    both, grad_both = loss(views)
    first, grad_first = loss(views[:1])
    second, grad_second = loss(views[1:])
    np.testing.assert_allclose(both, first + second, rtol=1e-5)
    leaves = [jax.tree.leaves(g) for g in (grad_both, grad_first, grad_second)]
    for g, g1, g2 in zip(*leaves, strict=True):
        np.testing.assert_allclose(g, g1 + g2, rtol=1e-4, atol=1e-6)
    assert abs(float(first - second)) > 1e-3 * abs(float(first))  # the views differ

    # The per-view loss itself, from the Q values: mean over the batch of (Q1 - y)^2 + (Q2 - y)^2.
    maps = agent.critic.apply(state.critic_params, views[0], method="encode")
    q1, q2 = agent.critic.apply(state.critic_params, maps, batch.action, method="q_from_maps")
    y = np.asarray(target)
    expected = np.mean((np.asarray(q1) - y) ** 2 + (np.asarray(q2) - y) ** 2)
    np.testing.assert_allclose(first, expected, rtol=1e-5)

    twice, _ = loss(jnp.stack([views[0], views[0]]))
    np.testing.assert_allclose(twice, 2 * first, rtol=1e-6)


def test_drq_update_trains_with_two_views():
    config = drq.get_config("smoke")
    agent = _agent(config)
    state = agent.init(jax.random.key(0))
    new_state, metrics = jax.jit(agent.update)(state, _batch(config))
    assert np.isfinite(metrics["loss/critic"])
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), new_state.critic_params, state.critic_params)
    assert all(jax.tree.leaves(changed))  # every critic leaf, the encoder included, moved


def test_orthogonal_flat_init_is_drq_whole_kernel_orthogonal():
    """weight_init="orthogonal_flat" (DrQ's utils.weight_init): each conv kernel, flattened to a
    (3 * 3 * C_in, C_out) matrix, has orthogonal columns of norm sqrt 2 (PyTorch's orthogonal_ with
    ReLU gain) and uses every tap, unlike the delta-orthogonal "orthogonal"; Dense kernels as before."""
    config = drq.get_config("smoke")
    assert config.agent.weight_init == "orthogonal_flat"
    params = _agent(config).init(jax.random.key(0)).critic_params["params"]
    for name in sorted(params["torso"]):
        kernel = np.asarray(params["torso"][name]["kernel"], np.float64)
        flat = kernel.reshape(-1, kernel.shape[-1])
        np.testing.assert_allclose(flat.T @ flat, 2.0 * np.eye(flat.shape[1]), atol=1e-5)
        assert np.abs(kernel[0, 0]).max() > 0  # a corner tap is used
        assert not np.asarray(params["torso"][name]["bias"]).any()
    k = np.asarray(params["q1"]["Dense_0"]["kernel"], np.float64)
    gram = k.T @ k if k.shape[0] >= k.shape[1] else k @ k.T
    np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=1e-5)
