"""SAC from pixels: losses and the tanh-Gaussian policy against NumPy closed forms, the agent's
acting, update schedule (target EMA, delayed actor) and PSRL switch, and the DMC trainer's config errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sac, sac_psrl
from psrl_jax.agents.sac import SACAgent
from psrl_jax.config import ConfigError
from psrl_jax.losses import sac as sac_losses
from psrl_jax.networks.sac_networks import tanh_gaussian
from psrl_jax.replay.sequence_replay import SequenceBatch

ACTION_DIM = 2
PSRL_MODULES = ("correspondence", "transform", "projection", "predictor")


# ----- losses vs closed forms ---------------------------------------------------------------------


def _random_arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "reward": rng.normal(size=n).astype(np.float32),
        "discount": rng.choice([0.0, 0.99], size=n).astype(np.float32),
        "q1": rng.normal(size=n).astype(np.float32),
        "q2": rng.normal(size=n).astype(np.float32),
        "log_prob": rng.normal(size=n).astype(np.float32),
        "target": rng.normal(size=n).astype(np.float32),
        "weights": rng.uniform(size=n).astype(np.float32),
    }


def test_soft_target_and_critic_loss_closed_forms():
    x = _random_arrays(64)
    alpha = 0.3
    y = sac_losses.soft_target(x["reward"], x["discount"], x["q1"], x["q2"], x["log_prob"], alpha)
    chex.assert_shape(y, (64,))
    q1, q2, lp = (x[k].astype(np.float64) for k in ("q1", "q2", "log_prob"))
    expected = x["reward"] + x["discount"] * (np.minimum(q1, q2) - alpha * lp)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # A terminal (discount 0) target is the reward alone.
    terminal = x["discount"] == 0
    assert terminal.any()
    np.testing.assert_allclose(np.asarray(y)[terminal], x["reward"][terminal], rtol=1e-6)
    # y is a constant for the critic's gradient.
    grad = jax.grad(lambda r: jnp.sum(sac_losses.soft_target(r, x["discount"], q1, q2, lp, alpha)))(x["reward"])
    np.testing.assert_array_equal(grad, 0.0)

    t = x["target"].astype(np.float64)
    per_sample = sac_losses.critic_loss(x["q1"], x["q2"], x["target"])
    np.testing.assert_allclose(per_sample, (q1 - t) ** 2 + (q2 - t) ** 2, rtol=1e-5)
    weighted = sac_losses.critic_loss(x["q1"], x["q2"], x["target"], x["weights"])
    np.testing.assert_allclose(weighted, ((q1 - t) ** 2 + (q2 - t) ** 2) * x["weights"], rtol=1e-5)
    mask = (x["weights"] > 0.5).astype(np.float32)
    np.testing.assert_allclose(
        sac_losses.masked_mean(per_sample, mask), np.sum(np.asarray(per_sample) * mask) / mask.sum(), rtol=1e-5
    )
    assert float(sac_losses.masked_mean(per_sample, np.zeros(64, np.float32))) == 0.0


def test_actor_loss_closed_form_and_constant_alpha():
    x = _random_arrays(32, seed=1)
    alpha = 0.2
    loss = sac_losses.actor_loss(x["log_prob"], x["q1"], x["q2"], alpha)
    expected = alpha * x["log_prob"].astype(np.float64) - np.minimum(x["q1"], x["q2"])
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    d_alpha = jax.grad(lambda a: jnp.mean(sac_losses.actor_loss(x["log_prob"], x["q1"], x["q2"], a)))(alpha)
    assert float(d_alpha) == 0.0
    # ... but the loss does move log pi (with weight alpha / B) and the smaller Q.
    d_logp = jax.grad(lambda lp: jnp.mean(sac_losses.actor_loss(lp, x["q1"], x["q2"], alpha)))(x["log_prob"])
    np.testing.assert_allclose(d_logp, np.full(32, alpha / 32), rtol=1e-6)


def test_temperature_loss_value_and_gradients():
    x = _random_arrays(32, seed=2)
    log_alpha, target_entropy = np.float32(-1.3), -2.0
    lp = x["log_prob"].astype(np.float64)
    loss = sac_losses.temperature_loss(log_alpha, x["log_prob"], target_entropy)
    np.testing.assert_allclose(loss, np.exp(-1.3) * (-lp - target_entropy), rtol=1e-5)

    def mean_loss(la, log_prob):
        return jnp.mean(sac_losses.temperature_loss(la, log_prob, target_entropy))

    d_log_alpha = jax.grad(mean_loss)(log_alpha, x["log_prob"])
    np.testing.assert_allclose(d_log_alpha, np.exp(-1.3) * np.mean(-lp - target_entropy), rtol=1e-5)
    np.testing.assert_array_equal(jax.grad(mean_loss, argnums=1)(log_alpha, x["log_prob"]), 0.0)
    # Sign: entropy below the target (log pi high) -> the gradient step raises alpha.
    low_entropy = np.full(8, 5.0, np.float32)
    assert float(jax.grad(mean_loss)(log_alpha, low_entropy)) < 0


# ----- tanh-squashed Gaussian ---------------------------------------------------------------------


def _gaussian_log_density(u, mean, std):
    return -0.5 * ((u - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    rng = np.random.default_rng(0)
    mean = rng.uniform(-0.5, 0.5, (16, 3)).astype(np.float32)
    log_std = np.log(rng.uniform(0.2, 0.5, (16, 3))).astype(np.float32)
    policy = tanh_gaussian(jnp.asarray(mean), jnp.asarray(log_std))
    action, log_prob = policy.sample_and_log_prob(seed=jax.random.key(0))
    chex.assert_shape(action, (16, 3))
    chex.assert_shape(log_prob, (16,))
    chex.assert_type(action, jnp.float32)
    assert np.all(np.abs(action) < 1)
    u = np.arctanh(np.asarray(action, np.float64))
    std = np.exp(log_std.astype(np.float64))
    expected = np.sum(_gaussian_log_density(u, mean, std) - np.log(1 - np.tanh(u) ** 2), axis=-1)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(policy.log_prob(action), log_prob, rtol=1e-4, atol=1e-3)


def test_tanh_gaussian_entropy_estimate_small_sigma():
    # 1-D, sigma -> 0: tanh is locally linear, so H ~ 0.5 log(2 pi e sigma^2) + log(1 - tanh(mu)^2).
    mu, sigma, n = 0.7, 0.01, 20_000
    policy = tanh_gaussian(jnp.full((n, 1), mu), jnp.full((n, 1), np.log(sigma)))
    _, log_prob = policy.sample_and_log_prob(seed=jax.random.key(1))
    closed_form = 0.5 * np.log(2 * np.pi * np.e * sigma**2) + np.log(1 - np.tanh(mu) ** 2)
    assert abs(-float(jnp.mean(log_prob)) - closed_form) < 0.03


# ----- the agent ----------------------------------------------------------------------------------


def _agent(config):
    s, f = config.env.image_size, config.env.frame_stack
    return SACAgent.from_config(config, ACTION_DIM, (f, s, s, 3))


def _batch(config, seed=0):
    """A random SequenceBatch as the DMC replay samples it (uint8 RGB stacks, actions in [-1, 1])."""
    b, f, s = config.agent.batch_size, config.env.frame_stack, config.env.image_size
    k = max(config.replay.prediction_steps, 1)
    rng = np.random.default_rng(seed)

    def frames(*shape):
        return jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8))

    return SequenceBatch(
        obs=frames(b, f, s, s, 3),
        action=jnp.asarray(rng.uniform(-1, 1, (b, ACTION_DIM)), jnp.float32),
        n_step_return=jnp.asarray(rng.normal(size=(b,)), jnp.float32),
        bootstrap_discount=jnp.full((b,), 0.99, jnp.float32),
        next_obs=frames(b, f, s, s, 3),
        valid=jnp.ones((b,), jnp.float32),
        future_obs=frames(b, k, f, s, s, 3),
        future_actions=jnp.asarray(rng.uniform(-1, 1, (b, k, ACTION_DIM)), jnp.float32),
        future_mask=jnp.ones((b, k), jnp.float32),
        obs_frame_mask=jnp.ones((b, f), jnp.float32),
        future_frame_mask=jnp.ones((b, k, f), jnp.float32),
        indices=jnp.arange(b, dtype=jnp.int32),
        probabilities=jnp.full((b,), 1.0 / b, jnp.float32),
        importance_weights=jnp.ones((b,), jnp.float32),
    )


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _any_leaf_changed(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def sac_setup():
    config = sac.get_config("smoke")
    assert config.agent.critic_target_update_every == 2 and config.agent.actor_update_every == 2
    assert config.agent.encoder_tau != config.agent.critic_tau  # so the test tells them apart
    agent = _agent(config)
    state = agent.init(jax.random.key(0))
    return config, agent, state, jax.jit(agent.update)


def test_act_shapes_range_and_determinism(sac_setup):
    config, agent, state, _ = sac_setup
    s, f = config.env.image_size, config.env.frame_stack
    obs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, f, s, s, 3), dtype=np.uint8))
    act = jax.jit(agent.act, static_argnums=3)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    for explore in (True, False):
        actions = act(state, obs, k1, explore)
        chex.assert_shape(actions, (5, ACTION_DIM))
        chex.assert_type(actions, jnp.float32)
        assert np.all(np.abs(np.asarray(actions)) <= 1.0)
    np.testing.assert_array_equal(act(state, obs, k1, False), act(state, obs, k2, False))
    assert not np.array_equal(act(state, obs, k1, True), act(state, obs, k2, True))
    np.testing.assert_array_equal(act(state, obs, k1, True), act(state, obs, k1, True))


def test_sac_state_has_no_psrl_parts(sac_setup):
    _, _, state, _ = sac_setup
    assert state.aux_params == {} and state.ema_params == {} and state.batch_stats == {}
    assert set(state.critic_params["params"]) == {"torso", "trunk", "q1", "q2"}
    assert _leaves_equal(state.critic_target, state.critic_params)
    assert int(state.update_step) == 0


def test_target_ema_and_delayed_actor_schedule(sac_setup):
    """Actor, temperature and critic target are due on updates 1, 3, 5, ... (CURL and DrQ run them when
    the agent step is even, and their first update is at the even step 1000); the critic every update."""
    config, _, state, update = sac_setup
    old_target = jax.tree.map(lambda p: p + 1.0, state.critic_params)
    state0 = state.replace(critic_target=old_target)

    state1, metrics1 = update(state0, _batch(config, seed=1))
    assert all(np.isfinite(v) for v in jax.tree.leaves(metrics1))
    assert int(state1.update_step) == 1
    assert _any_leaf_changed(state1.critic_params, state0.critic_params)  # the critic learns every update
    _, metrics_own_target = update(state, _batch(config, seed=1))  # same params, batch and key
    assert float(metrics_own_target["loss/critic"]) != float(metrics1["loss/critic"])  # the bootstrap reads the target
    assert _any_leaf_changed(state1.actor_params, state0.actor_params)
    assert not np.array_equal(state1.log_alpha, state0.log_alpha)
    a = config.agent
    for name, online in state1.critic_params["params"].items():
        tau = a.encoder_tau if name in ("torso", "trunk") else a.critic_tau  # CURL: the encoder is conv + trunk
        expected = jax.tree.map(
            lambda o, t, tau=tau: tau * np.asarray(o, np.float64) + (1 - tau) * np.asarray(t, np.float64),
            online,
            old_target["params"][name],
        )
        for got, want in zip(
            jax.tree.leaves(state1.critic_target["params"][name]), jax.tree.leaves(expected), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)

    state2, _ = update(state1, _batch(config, seed=2))
    assert int(state2.update_step) == 2
    assert _any_leaf_changed(state2.critic_params, state1.critic_params)
    assert _leaves_equal(state2.critic_target, state1.critic_target)  # not due: bit-for-bit unchanged
    assert _leaves_equal(state2.actor_params, state1.actor_params)
    assert np.array_equal(state2.log_alpha, state1.log_alpha)


def _psrl_config(**psrl):
    config = sac_psrl.get_config("smoke")
    for name, value in psrl.items():
        config.psrl[name] = value
    return config


def test_psrl_update_trains_every_module_and_the_encoder():
    config = _psrl_config()
    agent = _agent(config)
    state = agent.init(jax.random.key(0))
    assert set(state.aux_params) == set(PSRL_MODULES)
    new_state, metrics = jax.jit(agent.update)(state, _batch(config))
    for name in ("loss/psrl", "loss/cat_local", "loss/aat_global", "loss/critic", "psrl/flow_magnitude"):
        assert name in metrics and np.isfinite(metrics[name]), name
    for module in PSRL_MODULES:  # Adam moves a parameter only where its gradient is non-zero
        assert _any_leaf_changed(new_state.aux_params[module], state.aux_params[module]), module
    torso = "torso"
    assert _any_leaf_changed(new_state.critic_params["params"][torso], state.critic_params["params"][torso])
    assert _any_leaf_changed(new_state.ema_params, state.ema_params)  # PSRL's EMA target moves every update


def test_psrl_with_zero_weights_is_plain_framewise_sac():
    off = _psrl_config(local_weight=0.0, global_weight=0.0)
    plain = sac.get_config("smoke")
    plain.agent.encoder = "framewise"
    plain.replay.prediction_steps = off.replay.prediction_steps
    psrl_agent, plain_agent = _agent(off), _agent(plain)
    key = jax.random.key(3)
    psrl_state, plain_state = psrl_agent.init(key), plain_agent.init(key)
    assert psrl_state.aux_params == {}
    assert _leaves_equal(psrl_state.critic_params, plain_state.critic_params)
    batch = _batch(off, seed=4)
    psrl_new, psrl_metrics = jax.jit(psrl_agent.update)(psrl_state, batch)
    plain_new, _ = jax.jit(plain_agent.update)(plain_state, batch)
    assert not any(name.startswith(("loss/psrl", "loss/cat", "loss/aat")) for name in psrl_metrics)
    assert _any_leaf_changed(psrl_new.critic_params, psrl_state.critic_params)
    for got, want in zip(
        jax.tree.leaves(psrl_new.critic_params), jax.tree.leaves(plain_new.critic_params), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ----- initialisation ---------------------------------------------------------------------------


def test_orthogonal_init_is_sac_ae_and_lecun_is_flax_default():
    """weight_init="orthogonal": conv kernels zero but for an orthogonal centre tap with gain sqrt 2 (also
    when C_in > C_out, as in the smoke config's 9 -> 8 first conv), orthogonal Dense kernels, zero
    biases; weight_init="lecun" is not orthogonal."""
    config = sac.get_config("smoke")
    assert config.agent.weight_init == "orthogonal"
    params = _agent(config).init(jax.random.key(0)).critic_params["params"]
    convs = [params["torso"][name]["kernel"] for name in sorted(params["torso"])]
    assert convs[0].shape == (3, 3, 9, 8)
    for kernel in convs:
        kernel = np.asarray(kernel, np.float64)
        centre = kernel[1, 1]
        off_centre = kernel.copy()
        off_centre[1, 1] = 0.0
        assert not off_centre.any()
        gram = centre.T @ centre if centre.shape[0] >= centre.shape[1] else centre @ centre.T
        np.testing.assert_allclose(gram, 2.0 * np.eye(gram.shape[0]), atol=1e-5)
    for module in ("trunk", "q1"):
        for layer in params[module].values():
            if "kernel" in layer:
                k = np.asarray(layer["kernel"], np.float64)
                gram = k.T @ k if k.shape[0] >= k.shape[1] else k @ k.T
                np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=1e-5)
                assert not np.asarray(layer["bias"]).any()

    config.agent.weight_init = "lecun"
    lecun = _agent(config).init(jax.random.key(0)).critic_params["params"]
    assert np.asarray(lecun["torso"]["Conv_0"]["kernel"])[0, 0].any()
    k = np.asarray(lecun["q1"]["Dense_0"]["kernel"], np.float64)
    assert np.abs(k.T @ k - np.eye(k.shape[1])).max() > 0.1


def test_trunk_is_layer_norm_and_tanh_only_when_asked():
    """CURL's trunk (trunk_tanh=False, the default) feeds the Q MLPs the LayerNorm of the Dense
    output; trunk_tanh=True (SAC-AE, the runs before the field existed) squashes it with tanh. Both
    checked against a NumPy LayerNorm of the same Dense output; the actor's trunk follows the flag."""
    from psrl_jax.networks.sac_networks import Trunk

    config = sac.get_config("smoke")
    assert config.agent.trunk_tanh is False
    maps = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 5, 8)), jnp.float32)
    params = Trunk(16).init(jax.random.key(0), maps)
    dense = params["params"]["Dense_0"]
    x = np.asarray(maps, np.float64).reshape(4, -1) @ np.asarray(dense["kernel"], np.float64)
    x = x + np.asarray(dense["bias"])
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(Trunk(16, tanh=False).apply(params, maps), normed, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(Trunk(16, tanh=True).apply(params, maps), np.tanh(normed), rtol=1e-4, atol=1e-4)
    assert np.abs(normed).max() > 1.0  # so the two differ

    agents = {}
    for tanh in (False, True):
        config = sac.get_config("smoke")  # one config each: the agent reads its config lazily
        config.agent.trunk_tanh = tanh
        agents[tanh] = _agent(config)
        assert agents[tanh].critic.trunk_tanh is tanh and agents[tanh].actor.trunk_tanh is tanh
    state = agents[False].init(jax.random.key(0))
    obs = jnp.asarray(np.random.default_rng(2).integers(0, 256, (3, 3, 64, 64, 3)), jnp.uint8)
    act = lambda agent: agent.act(state, obs, jax.random.key(1), False)  # noqa: E731
    assert not np.allclose(act(agents[False]), act(agents[True]))


# ----- state SAC (configs/sac.py:state) ----------------------------------------------------------


def _state_batch(batch_size, frames, dim, seed=0):
    rng = np.random.default_rng(seed)
    states = lambda: jnp.asarray(rng.normal(size=(batch_size, frames, dim)), jnp.float32)  # noqa: E731
    return SequenceBatch(
        obs=states(),
        action=jnp.asarray(rng.uniform(-1, 1, (batch_size, ACTION_DIM)), jnp.float32),
        n_step_return=jnp.asarray(rng.normal(size=(batch_size,)), jnp.float32),
        bootstrap_discount=jnp.full((batch_size,), 0.99, jnp.float32),
        next_obs=states(),
        valid=jnp.ones((batch_size,), jnp.float32),
        future_obs=jnp.zeros((batch_size, 0, frames, dim), jnp.float32),
        future_actions=jnp.zeros((batch_size, 0, ACTION_DIM), jnp.float32),
        future_mask=jnp.zeros((batch_size, 0), jnp.float32),
        obs_frame_mask=jnp.ones((batch_size, frames), jnp.float32),
        future_frame_mask=jnp.zeros((batch_size, 0, frames), jnp.float32),
        indices=jnp.arange(batch_size, dtype=jnp.int32),
        probabilities=jnp.full((batch_size,), 1.0 / batch_size, jnp.float32),
        importance_weights=jnp.ones((batch_size,), jnp.float32),
    )


def test_state_sac_reads_states_with_no_encoder():
    """From states the MLPs read the flattened [F, D] stack: no conv, no trunk; the update is the
    pixel agent's and trains actor and critic; actions and the Q input depend on the states."""
    config = sac.get_config("state")
    config.agent.hidden = (32, 32)
    config.env.frame_stack, dim = 2, 5
    agent = SACAgent.from_config(config, ACTION_DIM, (2, dim))
    state = agent.init(jax.random.key(0))
    assert set(state.critic_params["params"]) == {"q1", "q2"}
    assert set(state.actor_params["params"]) == {"mlp"}
    first_layer = state.critic_params["params"]["q1"]["Dense_0"]["kernel"]
    chex.assert_shape(first_layer, (2 * dim + ACTION_DIM, 32))  # the stack, flattened, plus the action

    act = jax.jit(agent.act, static_argnums=3)
    obs = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2, dim)), jnp.float32)
    actions = act(state, obs, jax.random.key(1), False)
    chex.assert_shape(actions, (4, ACTION_DIM))
    assert np.all(np.abs(np.asarray(actions)) <= 1.0)
    assert not np.array_equal(actions, act(state, obs + 1.0, jax.random.key(1), False))

    update = jax.jit(agent.update)
    new, metrics = update(state, _state_batch(config.agent.batch_size, 2, dim))
    new, metrics = update(new, _state_batch(config.agent.batch_size, 2, dim, seed=1))  # the actor is due
    assert all(np.isfinite(v) for v in jax.tree.leaves(metrics))
    assert _any_leaf_changed(new.critic_params, state.critic_params)
    assert _any_leaf_changed(new.actor_params, state.actor_params)


# ----- config errors from the DMC trainer, before any env or compile ------------------------------


def _no_envs(*args, **kwargs):
    raise AssertionError("make_dmc_envs must not be reached on an invalid config")


@pytest.mark.parametrize(
    "make_config,match",
    [
        (lambda: _with(sac.get_config("smoke"), task="walker_wlak"), "walker_walk"),
        (lambda: _with(sac.get_config("smoke"), action_repeat=0), "action_repeat"),
        (lambda: _with(sac.get_config("smoke"), action_repeat=-1), "action_repeat"),
        (lambda: _with(sac.get_config(""), image_size=80), "crop"),
        (lambda: _with(sac_psrl.get_config("smoke"), encoder="stacked"), "framewise"),
        (lambda: _with(sac.get_config("smoke"), observation="rgb"), "observation"),
        (lambda: _with(sac_psrl.get_config("smoke"), observation="state"), "no pixels for PSRL"),
        (lambda: _with(sac.get_config("state"), encoder="framewise"), "pixel encoder"),
        (lambda: _with(sac.get_config("smoke"), stack_padding="repeat"), "stack_padding"),
        (lambda: _set_top_level(sac.get_config("smoke"), seed_batching="pmap"), "seed_batching"),
    ],
    ids=[
        "task_typo",
        "repeat_0",
        "repeat_negative",
        "image_smaller_than_crop",
        "psrl_stacked",
        "observation_unknown",
        "psrl_from_states",
        "state_framewise",
        "stack_padding_unknown",
        "seed_batching_unknown",
    ],
)
def test_trainer_config_errors(make_config, match, tmp_path, monkeypatch):
    from psrl_jax.train import domains, trainer

    monkeypatch.setattr(domains, "make_dmc_envs", _no_envs)
    config = make_config()
    config.run_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=match):
        trainer.Trainer(config, domains.DMCDomain(config))


def _set_top_level(config, **fields):
    config.update(fields)
    return config


def _with(config, task=None, action_repeat=None, image_size=None, encoder=None, observation=None, stack_padding=None):
    if stack_padding is not None:
        config.env.stack_padding = stack_padding
    if observation is not None:
        config.env.observation = observation
    if task is not None:
        config.env.task = task
    if action_repeat is not None:
        config.env.action_repeat = action_repeat
    if image_size is not None:
        config.env.image_size = image_size
        assert config.env.crop_size == 84
    if encoder is not None:
        config.agent.encoder = encoder
    return config


def test_vmapped_init_equals_each_seed_alone():
    """Seed i of a vmapped run starts from the parameters a 1-seed run with that key gets (the
    orthogonal init runs per seed under vmap: networks/sac_networks.py `orthogonal`)."""
    config = sac.get_config("state")
    config.agent.hidden = (64, 64)
    agent = SACAgent.from_config(config, ACTION_DIM, (1, 5))
    keys = jax.random.split(jax.random.key(7), 3)
    stacked = jax.jit(jax.vmap(agent.init))(keys)
    for i, key in enumerate(keys):
        alone = agent.init(key)
        mine = jax.tree.map(lambda x, i=i: x[i], stacked)
        assert _leaves_equal(mine.critic_params, alone.critic_params)
        assert _leaves_equal(mine.actor_params, alone.actor_params)
