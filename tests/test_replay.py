"""Sequence replay against brute-force NumPy on scripted trajectories (CPU)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flashbax.buffers import sum_tree

from psrl_jax.replay.sequence_replay import (
    Step,
    bytes_per_transition,
    decode_sequences,
    make_sequence_replay,
    make_stack,
    sequence_length,
)

FRAME_SHAPE = (3, 2)  # [0,0] episode id, [0,1] step in episode + 1, [1,0] env tag
FRAME_STACK = 4
GAMMA = 0.9


def load_config(**replay):
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "rainbow.py"
    spec = importlib.util.spec_from_file_location("rainbow_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.env.frame_stack = FRAME_STACK
    config.agent.gamma = GAMMA
    config.env.envs_per_seed = replay.pop("envs", 1)
    config.agent.batch_size = replay.pop("batch_size", 32)
    for name, value in replay.items():
        config.replay[name] = value
    return config


def scripted_trajectory(seed: int, num_rows: int, tag: int) -> dict:
    """Episodes with game overs, truncations, resume cuts (1-row episodes), life losses."""
    rng = np.random.RandomState(seed)
    # (length, game_over, life-loss positions); the fixed head guarantees every case.
    episodes = [(6, True, [2]), (1, False, []), (4, False, [3]), (3, True, [1]), (2, True, [])]
    while sum(e[0] for e in episodes) < num_rows:
        length = rng.randint(1, 13)
        losses = [i for i in range(1, length) if rng.rand() < 0.15]
        episodes.append((length, bool(rng.rand() < 0.5), losses))
    rows = []
    for episode_id, (length, game_over, losses) in enumerate(episodes, start=1):
        for i in range(length):
            terminal = (i == length - 1 and game_over) or i in losses
            rows.append((episode_id, i, 0.0 if i == 0 else rng.randn(), not terminal, i == 0))
    rows = rows[:num_rows]
    frames = rng.randint(1, 255, size=(num_rows, *FRAME_SHAPE)).astype(np.uint8)
    frames[:, 0, 0] = [r[0] for r in rows]
    frames[:, 0, 1] = [r[1] + 1 for r in rows]
    frames[:, 1, 0] = tag
    assert frames[:, 0, 0].max() < 255
    return dict(
        frame=frames,
        action=rng.randint(0, 6, size=num_rows).astype(np.int32),
        reward=np.array([r[2] for r in rows], np.float32),
        discount=np.array([r[3] for r in rows], np.float32),
        first=np.array([r[4] for r in rows], bool),
    )


def reference_stack(traj, p):
    starts = np.flatnonzero(traj["first"][: p + 1])
    episode_start = starts[-1] if len(starts) else 0
    out = np.zeros((FRAME_STACK, *FRAME_SHAPE), np.uint8)
    for j in range(FRAME_STACK):
        q = p - FRAME_STACK + 1 + j
        if q >= max(episode_start, 0):
            out[j] = traj["frame"][q]
    return out


def reference_transition(traj, t, n_step, prediction_steps):
    first, discount, reward = traj["first"], traj["discount"], traj["reward"]
    m = 0
    for i in range(1, n_step + 1):
        if first[t + i]:
            break
        m = i
    n_step_return, discount_product = 0.0, 1.0
    for i in range(1, m + 1):
        n_step_return += GAMMA ** (i - 1) * discount_product * reward[t + i]
        discount_product *= discount[t + i]
    future_mask = [
        float(not first[t + 1 : t + k + 1].any() and (discount[t + 1 : t + k] == 1).all())
        for k in range(1, prediction_steps + 1)
    ]
    return dict(
        obs=reference_stack(traj, t),
        action=traj["action"][t],
        n_step_return=n_step_return,
        bootstrap_discount=GAMMA**m * discount_product,
        next_obs=reference_stack(traj, t + m),
        valid=float(m >= 1),
        future_obs=np.array([reference_stack(traj, t + k) for k in range(1, prediction_steps + 1)], np.uint8).reshape(
            prediction_steps, FRAME_STACK, *FRAME_SHAPE
        ),
        future_actions=traj["action"][t : t + prediction_steps],
        future_mask=np.array(future_mask, np.float32),
        # The scripted frames are never all zero, so a stack's zero frames are its padding.
        obs_frame_mask=frames_present(reference_stack(traj, t)),
        future_frame_mask=np.array(
            [frames_present(reference_stack(traj, t + k)) for k in range(1, prediction_steps + 1)], np.float32
        ).reshape(prediction_steps, FRAME_STACK),
    )


def frames_present(stack):
    return stack.reshape(FRAME_STACK, -1).any(axis=1).astype(np.float32)


def assert_matches_reference(batch, b, ref):
    for name, expected in ref.items():
        got = np.asarray(getattr(batch, name)[b])
        if name in ("n_step_return", "bootstrap_discount"):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)


def assert_single_episode(stack):
    """Non-zero frames of a stack all belong to the episode of its newest frame."""
    newest = stack[-1]
    for frame in stack:
        if frame.any():
            assert frame[0, 0] == newest[0, 0] and frame[1, 0] == newest[1, 0]
            assert frame[0, 1] <= newest[0, 1]


def anchor_lookup(traj):
    return {(int(f[1, 0]), int(f[0, 0]), int(f[0, 1])): t for t, f in enumerate(traj["frame"])}


def to_steps(trajs):
    """Per-env trajectories -> Step with leading [T, E] for scanning adds."""
    return Step(**{k: jnp.asarray(np.stack([tr[k] for tr in trajs], axis=1)) for k in trajs[0]})


def add_all(replay, state, steps):
    return jax.lax.scan(lambda s, x: (replay.add(s, x), None), state, steps)[0]


def test_make_stack_zero_pads_before_episode_start_and_before_row_zero():
    frames = jnp.arange(1, 7, dtype=jnp.uint8)[:, None]
    first = jnp.array([True, False, False, True, False, False])
    np.testing.assert_array_equal(make_stack(frames, first, 1, 4)[:, 0], [0, 0, 1, 2])
    np.testing.assert_array_equal(make_stack(frames, first, 4, 4)[:, 0], [0, 0, 4, 5])
    np.testing.assert_array_equal(make_stack(frames, first, 5, 3)[:, 0], [4, 5, 6])
    np.testing.assert_array_equal(make_stack(frames, first, 3, 4)[:, 0], [0, 0, 0, 4])


def test_make_stack_first_frame_padding_repeats_the_episodes_first_frame():
    frames = jnp.arange(1, 7, dtype=jnp.uint8)[:, None]
    first = jnp.array([True, False, False, True, False, False])
    stack = lambda position, size: make_stack(frames, first, position, size, "first_frame")[:, 0]
    np.testing.assert_array_equal(stack(1, 4), [1, 1, 1, 2])
    np.testing.assert_array_equal(stack(4, 4), [4, 4, 4, 5])
    np.testing.assert_array_equal(stack(5, 3), [4, 5, 6])  # no episode start inside: no padding
    np.testing.assert_array_equal(stack(3, 4), [4, 4, 4, 4])
    with pytest.raises(ValueError, match="first_frame"):
        make_stack(frames, first, 1, 4, "repeat")


def test_decoded_stacks_pad_with_the_configured_padding():
    """Decoded obs / next_obs / future_obs: with "first_frame" every slot that "zeros" leaves blank
    holds the stack's oldest real frame (the episode's first); everything else is identical."""
    traj = scripted_trajectory(seed=3, num_rows=160, tag=1)  # frames are never all-zero
    length = sequence_length(FRAME_STACK, 3, 2)
    starts = np.arange(len(traj["first"]) - length + 1)
    sequences = Step(**{k: jnp.asarray(v[starts[:, None] + np.arange(length)]) for k, v in traj.items()})
    zeros, repeated = (decode_sequences(sequences, FRAME_STACK, 3, GAMMA, 2, p) for p in ("zeros", "first_frame"))
    padded_slots = 0
    for name in ("obs", "next_obs", "future_obs"):
        z = np.asarray(getattr(zeros, name)).reshape(-1, FRAME_STACK, *FRAME_SHAPE)  # every stack
        r = np.asarray(getattr(repeated, name)).reshape(z.shape)
        for zs, rs in zip(z, r, strict=True):
            blank = ~zs.reshape(FRAME_STACK, -1).any(-1)
            oldest_real = np.argmax(~blank)
            np.testing.assert_array_equal(rs[~blank], zs[~blank])
            np.testing.assert_array_equal(rs[blank], np.broadcast_to(zs[oldest_real], rs[blank].shape))
            padded_slots += blank.sum()
    # Either padding, the frame masks mark the same slots: the ones "zeros" leaves blank.
    for stacks, masks in (("obs", "obs_frame_mask"), ("future_obs", "future_frame_mask")):
        blank = ~np.asarray(getattr(zeros, stacks)).reshape(-1, FRAME_STACK, int(np.prod(FRAME_SHAPE))).any(-1)
        for decoded in (zeros, repeated):
            np.testing.assert_array_equal(np.asarray(getattr(decoded, masks)).reshape(blank.shape), ~blank)
    assert padded_slots > 0  # the script crosses episode starts
    for field in ("n_step_return", "bootstrap_discount", "valid", "future_mask", "action"):
        np.testing.assert_array_equal(getattr(zeros, field), getattr(repeated, field))


@pytest.mark.parametrize("n_step, prediction_steps", [(3, 0), (3, 5), (5, 2)])
def test_every_anchor_matches_bruteforce(n_step, prediction_steps):
    traj = scripted_trajectory(seed=n_step + prediction_steps, num_rows=160, tag=1)
    length = sequence_length(FRAME_STACK, n_step, prediction_steps)
    starts = np.arange(len(traj["first"]) - length + 1)
    windows = starts[:, None] + np.arange(length)
    sequences = Step(**{k: jnp.asarray(v[windows]) for k, v in traj.items()})
    decode = jax.jit(decode_sequences, static_argnums=(1, 2, 3, 4))
    batch = decode(sequences, FRAME_STACK, n_step, GAMMA, prediction_steps)
    assert batch.future_obs.shape == (len(starts), prediction_steps, FRAME_STACK, *FRAME_SHAPE)
    assert batch.obs.dtype == jnp.uint8
    for b, start in enumerate(starts):
        ref = reference_transition(traj, start + FRAME_STACK - 1, n_step, prediction_steps)
        assert_matches_reference(batch, b, ref)
        assert_single_episode(np.asarray(batch.obs[b]))
        assert_single_episode(np.asarray(batch.next_obs[b]))
    # The script must exercise every case the decoder distinguishes.
    assert 0 < batch.valid.sum() < len(starts)
    assert (batch.bootstrap_discount == 0).any() and (batch.next_obs[:, 0] == 0).any()
    assert ((batch.valid == 1) & np.isclose(batch.bootstrap_discount, GAMMA**n_step)).any()


def test_sampled_batches_match_bruteforce_after_wraparound():
    n_step, prediction_steps, rows_per_env, total = 3, 2, 48, 130
    config = load_config(
        n_step=n_step,
        prediction_steps=prediction_steps,
        envs=2,
        capacity=2 * rows_per_env,
        batch_size=128,
    )
    replay = make_sequence_replay(config, FRAME_SHAPE)
    trajs = [scripted_trajectory(seed=10 + e, num_rows=total, tag=e + 1) for e in range(2)]
    state = jax.jit(add_all, static_argnums=0)(replay, replay.init(), to_steps(trajs))
    assert bool(replay.can_sample(state))
    length = replay.sequence_length
    num_items = 2 * (rows_per_env - length + 1)
    leaves = np.asarray(sum_tree.get_batch(state.sum_tree_state, jnp.arange(replay.capacity)))
    assert (leaves > 0).sum() == num_items == int(replay.num_sampleable_items(state))

    sample = jax.jit(replay.sample)
    lookups = [anchor_lookup(tr) for tr in trajs]
    for i in range(4):
        batch = sample(state, jax.random.key(i), 0.7)
        # Fresh items all carry the initial max priority: uniform, so P = 1/N and weights 1.
        np.testing.assert_allclose(batch.probabilities, 1 / num_items, rtol=1e-5)
        np.testing.assert_allclose(batch.importance_weights, 1.0, rtol=1e-5)
        for b in range(replay.batch_size):
            newest = np.asarray(batch.obs[b, -1])
            env = int(newest[1, 0]) - 1
            t = lookups[env][(env + 1, int(newest[0, 0]), int(newest[0, 1]))]
            start = t - (FRAME_STACK - 1)
            # Never overwritten rows, never past the write head.
            assert total - rows_per_env <= start and t + max(n_step, prediction_steps) < total
            assert int(batch.indices[b]) == env * rows_per_env + start % rows_per_env
            ref = reference_transition(trajs[env], t, n_step, prediction_steps)
            assert_matches_reference(batch, b, ref)


def filled_replay(num_rows=64):
    config = load_config(n_step=3, prediction_steps=0, capacity=num_rows, priority_exponent=0.5)
    replay = make_sequence_replay(config, FRAME_SHAPE)
    traj = scripted_trajectory(seed=3, num_rows=num_rows, tag=1)
    state = jax.jit(add_all, static_argnums=0)(replay, replay.init(), to_steps([traj]))
    items = np.arange(num_rows - replay.sequence_length + 1)  # no wrap yet: item = start row
    return replay, state, items


def sample_many(replay, state, num_batches, beta=0.5):
    keys = jax.random.split(jax.random.key(123), num_batches)
    return jax.jit(jax.vmap(replay.sample, in_axes=(None, 0, None)))(state, keys, beta)


def test_sampling_frequencies_follow_priorities_to_the_alpha():
    replay, state, items = filled_replay()
    alpha, eps = 0.5, replay.priority_eps
    priorities = np.random.RandomState(0).uniform(0.05, 3.0, size=len(items)).astype(np.float32)
    state = jax.jit(replay.update_priorities)(state, items, priorities, jnp.ones(len(items)))
    batches = sample_many(replay, state, num_batches=1500, beta=0.6)
    indices = np.asarray(batches.indices).ravel()
    counts = np.bincount(indices, minlength=replay.capacity)
    assert counts[len(items) :].sum() == 0
    expected = (priorities + eps) ** alpha
    expected /= expected.sum()
    chi2 = ((counts[: len(items)] - expected * indices.size) ** 2 / (expected * indices.size)).sum()
    assert chi2 < scipy.stats.chi2.ppf(1 - 1e-4, df=len(items) - 1)
    # The same counts are far off if alpha were ignored, so the check has power.
    wrong = priorities / priorities.sum()
    chi2_wrong = ((counts[: len(items)] - wrong * indices.size) ** 2 / (wrong * indices.size)).sum()
    assert chi2_wrong > 10 * scipy.stats.chi2.ppf(1 - 1e-4, df=len(items) - 1)

    probabilities = np.asarray(batches.probabilities)
    np.testing.assert_allclose(probabilities, expected[np.asarray(batches.indices)], rtol=1e-4)
    raw = (len(items) * probabilities) ** -0.6
    np.testing.assert_allclose(batches.importance_weights, raw / raw.max(axis=1, keepdims=True), rtol=1e-4)


def test_zero_priority_retires_items_and_new_items_get_max_priority():
    replay, state, items = filled_replay()
    update = jax.jit(replay.update_priorities)
    priorities = np.where(items % 2 == 0, 0.0, 1.0 + items).astype(np.float32)
    state = update(state, items, priorities)  # default valid: priority > 0
    batches = sample_many(replay, state, num_batches=300)
    assert (np.asarray(batches.indices) % 2 == 1).all()
    assert (np.asarray(batches.probabilities) > 0).all()

    max_leaf = (priorities.max() + replay.priority_eps) ** 0.5
    one_row = Step(**{k: jnp.asarray(v) for k, v in scripted_trajectory(4, 1, 1).items()})
    state = jax.jit(replay.add)(state, one_row)
    leaves = np.asarray(sum_tree.get_batch(state.sum_tree_state, jnp.arange(replay.capacity)))
    newest_item = len(items)  # its sequence just completed
    np.testing.assert_allclose(leaves[newest_item], max_leaf, rtol=1e-6)
    assert leaves[0] == 0  # the oldest item now crosses the write head
    # A stale index (sampled before that add) must not revive it.
    state = update(state, jnp.array([0]), jnp.array([5.0]))
    assert float(sum_tree.get_batch(state.sum_tree_state, jnp.array([0]))[0]) == 0
    # Invalid samples are retired even with a positive loss when the mask says so.
    state = update(state, jnp.array([1]), jnp.array([5.0]), jnp.array([0.0]))
    assert float(sum_tree.get_batch(state.sum_tree_state, jnp.array([1]))[0]) == 0


def test_vmap_over_seeds_matches_single_seed_runs():
    config = load_config(n_step=3, prediction_steps=2, envs=2, capacity=60, batch_size=16)
    replay = make_sequence_replay(config, FRAME_SHAPE)
    per_seed = [
        to_steps([scripted_trajectory(20 + 2 * s + e, 50, tag=10 * (s + 1) + e) for e in range(2)]) for s in range(2)
    ]
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b], axis=1), *per_seed)  # [T, seeds, E]

    def run(steps, key):
        state = add_all(replay, replay.init(), steps)
        batch = replay.sample(state, key, 0.4)
        state = replay.update_priorities(state, batch.indices, batch.n_step_return**2)
        return state, batch

    keys = jax.random.split(jax.random.key(7), 2)
    states, batches = jax.jit(jax.vmap(run, in_axes=(1, 0)))(stacked, keys)
    assert bool(jax.vmap(replay.can_sample)(states).all())
    for s in range(2):
        state, batch = jax.jit(run)(per_seed[s], keys[s])
        for got, want in zip(jax.tree.leaves((states, batches)), jax.tree.leaves((state, batch)), strict=True):
            np.testing.assert_array_equal(got[s], want)
        tags = np.asarray(batches.obs[s, :, -1, 1, 0])
        assert set(tags) <= {10 * (s + 1), 10 * (s + 1) + 1}
    assert not np.array_equal(batches.indices[0], batches.indices[1])


def test_bytes_per_transition_is_one_frame_plus_small_overhead():
    config = load_config(capacity=100_000)
    replay = make_sequence_replay(config, (84, 84))
    per_row = bytes_per_transition(jax.eval_shape(replay.init))
    frame_bytes = 84 * 84
    assert frame_bytes < per_row < frame_bytes + 32
    assert per_row < 4 * frame_bytes / 3
    small = make_sequence_replay(load_config(capacity=512, envs=2), (84, 84))
    concrete = bytes_per_transition(small.init())
    assert concrete == bytes_per_transition(jax.eval_shape(small.init))
    assert frame_bytes < concrete < frame_bytes + 32


def test_float32_frames_are_stored_and_stacked_exactly():
    """DMC states are float32 rows: stored without the uint8 cast of pixel frames, and stacked
    (zeros before an episode start) like frames."""
    config = load_config(n_step=1, prediction_steps=0, capacity=16)
    config.env.frame_stack = 2
    replay = make_sequence_replay(config, (3,), jnp.float32, (1,), frame_dtype=jnp.float32)
    rows = np.arange(10 * 3, dtype=np.float32).reshape(10, 3) * 0.37 - 4.1  # not representable as uint8
    first = np.zeros(10, bool)
    first[[0, 5]] = True
    state = replay.init()
    add = jax.jit(replay.add)  # one compile, not flashbax's scans re-traced on every eager add
    for t in range(10):
        step = Step(
            frame=rows[t][None],
            action=np.full((1, 1), 0.1 * t, np.float32),
            reward=np.zeros(1, np.float32),
            discount=np.ones(1, np.float32),
            first=first[t][None],
        )
        state = add(state, step)
    assert state.experience.frame.dtype == jnp.float32
    np.testing.assert_array_equal(state.experience.frame[0, :10], rows)
    batch = replay.sample(state, jax.random.key(0), 0.0)
    for b in range(replay.batch_size):
        if not batch.valid[b]:
            continue
        t = int(np.argmin(np.abs(rows[:, 0] - batch.obs[b, -1, 0])))  # the anchor row
        np.testing.assert_array_equal(batch.obs[b, -1], rows[t])
        np.testing.assert_array_equal(batch.obs[b, 0], 0.0 if first[t] else rows[t - 1])
        np.testing.assert_array_equal(batch.next_obs[b, -1], rows[t + 1])
        np.testing.assert_allclose(batch.action[b], [0.1 * t], rtol=1e-6)
