"""The Rainbow agent under vmap over seeds: init, act and a scanned update."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_level import jit_at_launch_level

from configs import rainbow, rainbow_psrl
from psrl_jax.agents.rainbow import RainbowAgent
from psrl_jax.replay.sequence_replay import Step, make_sequence_replay

NUM_ACTIONS = 4


def _agent(config):
    size = config.env.image_size
    return RainbowAgent.from_config(config, NUM_ACTIONS, (config.env.frame_stack, size, size))


def _filled_replay(config, key, steps=60):
    size = config.env.image_size
    replay = make_sequence_replay(config, (size, size))
    state = replay.init()
    add = jax.jit(replay.add)  # eagerly, each add re-traced and recompiled flashbax's scans
    e = config.env.envs_per_seed
    for t in range(steps):
        key, k1, k2 = jax.random.split(key, 3)
        step = Step(
            frame=jax.random.randint(k1, (e, size, size), 0, 255).astype(jnp.uint8),
            action=jax.random.randint(k2, (e,), 0, NUM_ACTIONS).astype(jnp.int32),
            reward=jnp.full((e,), float(t % 3 == 0), jnp.float32),
            discount=jnp.ones((e,), jnp.float32),
            first=jnp.full((e,), t % 25 == 0),
        )
        state = add(state, step)
    return replay, state


def test_vmapped_init_same_key_same_params_different_keys_differ():
    config = rainbow.get_config("smoke")
    agent = _agent(config)
    init = jax.vmap(agent.init)
    same = init(jnp.stack([jax.random.PRNGKey(3)] * 2))
    for leaf in jax.tree.leaves(same.params):
        np.testing.assert_array_equal(leaf[0], leaf[1])
    different = init(jnp.stack([jax.random.PRNGKey(3), jax.random.PRNGKey(4)]))
    assert any(not np.array_equal(leaf[0], leaf[1]) for leaf in jax.tree.leaves(different.params))


def test_act_shapes_and_greedy_determinism():
    config = rainbow.get_config("smoke")
    agent = _agent(config)
    state = agent.init(jax.random.PRNGKey(0))
    obs = jax.random.randint(jax.random.PRNGKey(1), (5, 4, 84, 84), 0, 255).astype(jnp.uint8)
    actions = agent.greedy_actions(state.params, obs, jax.random.PRNGKey(2), 0.0, noisy_sample=False)
    chex.assert_shape(actions, (5,))
    chex.assert_type(actions, jnp.int32)
    again = agent.greedy_actions(state.params, obs, jax.random.PRNGKey(9), 0.0, noisy_sample=False)
    np.testing.assert_array_equal(actions, again)  # mean weights: the key does not matter
    assert int(jnp.max(actions)) < NUM_ACTIONS

    # The trainer's call: evaluation acts with the mean weights (and eval epsilon, here 0), training
    # with a fresh sample of the noisy layers per key.
    config.eval.epsilon = 0.0
    agent = _agent(config)
    evaluations = [agent.act(state, obs, jax.random.PRNGKey(k), explore=False) for k in range(3)]
    for other in evaluations:
        np.testing.assert_array_equal(other, actions)
    q_samples = [agent.q_values(state.params, obs, jax.random.PRNGKey(k), noisy_sample=True) for k in range(3)]
    assert not np.allclose(q_samples[0], q_samples[1])
    training = agent.act(state, obs, jax.random.PRNGKey(4), explore=True)
    chex.assert_shape(training, (5,))
    random_actions = agent.random_actions(jax.random.PRNGKey(5), 1000)
    chex.assert_type(random_actions, jnp.int32)
    assert set(np.unique(random_actions)) == set(range(NUM_ACTIONS))


@pytest.mark.parametrize("config_module", [rainbow, rainbow_psrl], ids=["rainbow", "rainbow_psrl"])
def test_scanned_updates_under_vmap_match_per_seed_and_change_params(config_module):
    """Also for PSRL: its BatchNorm statistics, EMA target and modules are per seed under vmap."""
    config = config_module.get_config("smoke")
    agent = _agent(config)
    replay, buffer = _filled_replay(config, jax.random.PRNGKey(0))
    keys = jnp.stack([jax.random.PRNGKey(10), jax.random.PRNGKey(11)])
    states = jax.vmap(agent.init)(keys)
    buffers = jax.tree.map(lambda x: jnp.stack([x, x]), buffer)

    def run(state, buf):
        return agent.update_many(
            state, replay, buf, jnp.float32(0.4), 3, unroll=1
        )  # rolled (the GPU path; the CPU trainer unrolls, tested end to end): one body to compile

    run_seeds = jit_at_launch_level(jax.vmap(run))  # at -O0, rainbow_psrl's 12 updates run 50 s longer
    new_states, new_buffers, metrics = run_seeds(states, buffers)
    chex.assert_shape(metrics["loss/rl"], (2,))
    assert np.all(np.isfinite(np.asarray(metrics["loss/rl"])))
    np.testing.assert_array_equal(new_states.update_step, [3, 3])
    # Seed 1 next to seed 0 equals seed 1 next to a copy of itself: nothing of one seed (BatchNorm
    # statistics, EMA target, priorities) reaches another. The same compiled program both times (a
    # second one for a single seed doubled this test's compile time), so equal to the bit.
    twins, _, _ = run_seeds(jax.tree.map(lambda x: jnp.stack([x[1], x[1]]), states), buffers)
    per_seed = lambda state: (state.params, state.aux_params, state.batch_stats, state.ema_params)  # noqa: E731
    for a, b in zip(jax.tree.leaves(per_seed(twins)), jax.tree.leaves(per_seed(new_states)), strict=True):
        np.testing.assert_array_equal(a[0], a[1])
        np.testing.assert_array_equal(a[1], b[1])
    assert any(not np.array_equal(b[0], b[1]) for b in jax.tree.leaves(per_seed(new_states)))  # seeds differ
    changed = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(per_seed(states)), jax.tree.leaves(per_seed(new_states)), strict=True)
    ]
    assert all(changed)
    # Priorities moved away from the initial max priority for the sampled items.
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(buffers.sum_tree_state)[0]),
        np.asarray(jax.tree.leaves(new_buffers.sum_tree_state)[0]),
    )


def test_one_update_per_dispatch_updates_and_reprioritises():
    """update_many with num_updates=1 skips lax.scan (a length-1 scan ran 2-5x slower on XLA:CPU):
    the direct path must still update once, reprioritise and average metrics like the scan."""
    config = rainbow.get_config("smoke")
    agent = _agent(config)
    replay, buffer = _filled_replay(config, jax.random.PRNGKey(0))
    state = agent.init(jax.random.PRNGKey(1))
    run = jax.jit(lambda s, b, n: agent.update_many(s, replay, b, jnp.float32(0.4), n, unroll=n), static_argnums=2)
    new, new_buffer, metrics = run(state, buffer, 1)
    assert int(new.update_step) == 1 and np.isfinite(float(metrics["loss/rl"]))
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(buffer.sum_tree_state)[0]), np.asarray(jax.tree.leaves(new_buffer.sum_tree_state)[0])
    )
    # two single-update dispatches == one dispatch of two updates (same keys, same samples)
    twice, twice_buffer, _ = run(*run(state, buffer, 1)[:2], 1)
    both, both_buffer, _ = run(state, buffer, 2)
    for a, b in zip(
        jax.tree.leaves((twice.params, twice_buffer)), jax.tree.leaves((both.params, both_buffer)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_target_network_follows_its_period_and_drives_the_bootstrap():
    """target_params is copied from the online params every target_update_period updates and left
    bit for bit alone in between; the distributional bootstrap reads it (another target, another loss)."""
    from synthetic import sequence_batch

    config = rainbow.get_config("smoke")
    config.agent.target_update_period = 2
    agent = _agent(config)
    state = agent.init(jax.random.PRNGKey(0))
    batch = sequence_batch(config, NUM_ACTIONS)
    update = jax.jit(agent.update)
    once, _, metrics = update(state, batch)
    chex.assert_trees_all_equal(once.target_params, state.target_params)  # not due
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, once.params, state.params)))
    twice, _, _ = update(once, batch)
    chex.assert_trees_all_equal(twice.target_params, twice.params)  # due: a copy of the online network
    other = state.replace(target_params=jax.tree.map(lambda x: 1.5 * x, state.target_params))
    _, _, other_metrics = update(other, batch)
    assert float(other_metrics["loss/rl"]) != float(metrics["loss/rl"])


def _tree_with_norm(rng, norm, *shapes):
    leaves = [rng.normal(size=s) for s in shapes]
    total = np.sqrt(sum(np.sum(x**2) for x in leaves))
    return [jnp.asarray(x * norm / total, jnp.float32) for x in leaves]


def test_per_group_clipping_clips_each_group_alone():
    """SPR clips the Q network and its transition model separately: a group over the limit is
    rescaled to norm max_norm (direction kept), a group under it passes bit for bit, and neither
    depends on the other's norm."""
    from psrl_jax.agents.rainbow import clip_by_group_norm

    rng = np.random.default_rng(0)
    q = _tree_with_norm(rng, 25.0, (3, 4), (5,))
    aat = _tree_with_norm(rng, 3.0, (2, 2), (6,), (4,))  # transform, projection, predictor
    corr = _tree_with_norm(rng, 400.0, (7, 3))
    grads = {
        "q": {"params": {"a": q[0], "b": q[1]}},
        "aux": {"transform": aat[0], "projection": aat[1], "predictor": aat[2], "correspondence": corr[0]},
    }
    clip = clip_by_group_norm(10.0)
    clipped, _ = jax.jit(clip.update)(grads, clip.init(grads))

    def norm(*leaves):
        return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in leaves)))

    np.testing.assert_allclose(norm(*jax.tree.leaves(clipped["q"])), 10.0, rtol=1e-5)
    np.testing.assert_allclose(clipped["q"]["params"]["a"], np.asarray(q[0]) * 10.0 / 25.0, rtol=1e-5)
    np.testing.assert_allclose(norm(clipped["aux"]["correspondence"]), 10.0, rtol=1e-5)
    for name, leaf in zip(("transform", "projection", "predictor"), aat, strict=True):
        np.testing.assert_array_equal(clipped["aux"][name], leaf)  # 3 < 10: untouched
    # One global clip would have scaled every group by 10 / |all|, the AAT's included.
    assert norm(*q, *aat, *corr) > 10.0


def test_update_logs_each_groups_norm_per_seed():
    """optim/grad_norm/<group> for the three clipping groups, one value per seed; together they make
    up the whole gradient's norm (no parameter left out or counted twice)."""
    from synthetic import sequence_batch

    config = rainbow_psrl.get_config("smoke")
    agent, seeds = _agent(config), 2
    states = jax.vmap(agent.init)(jax.random.split(jax.random.PRNGKey(0), seeds))
    batches = jax.tree.map(lambda x: jnp.stack([x] * seeds), sequence_batch(config, NUM_ACTIONS))
    _, _, metrics = jax.jit(jax.vmap(agent.update))(states, batches)
    norms = {g: np.asarray(metrics[f"optim/grad_norm/{g}"]) for g in ("q_network", "aat", "correspondence")}
    for group, norm in norms.items():
        assert norm.shape == (seeds,) and np.all(norm > 0), group
    assert not np.allclose(norms["aat"][0], norms["aat"][1])  # each seed's own
    np.testing.assert_allclose(
        np.sqrt(sum(n**2 for n in norms.values())), np.asarray(metrics["optim/grad_norm"]), rtol=1e-5
    )
