"""Tests for psrl_jax/envs/atari.py: game names, env construction, life loss, stacks, evaluation."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

# Repo root on the path, so `pytest tests/...` works without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import rainbow  # noqa: E402
from psrl_jax.envs import atari, episodes  # noqa: E402
from psrl_jax.ops.frame_stack import FrameStacker  # noqa: E402


def env_config(game="Breakout", **overrides):
    cfg = rainbow.get_config().env
    cfg.game = game
    cfg.num_threads = 1
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture
def no_env_construction(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an envpool env was constructed")

    monkeypatch.setattr(atari.envpool, "make", fail)


# --------------------------------------------------------------------------------------------
# resolve_game


@pytest.mark.parametrize(
    "name, task_id",
    [
        ("Breakout", "Breakout-v5"),
        ("breakout", "Breakout-v5"),
        ("Breakout-v5", "Breakout-v5"),
        ("BREAKOUT-V5", "Breakout-v5"),
        ("kung_fu_master", "KungFuMaster-v5"),
        ("KungFuMaster", "KungFuMaster-v5"),
        ("road_runner", "RoadRunner-v5"),
        ("RoadRunner", "RoadRunner-v5"),
    ],
)
def test_resolve_game_accepts_common_spellings(name, task_id, no_env_construction):
    assert atari.resolve_game(name) == task_id


def test_resolve_game_unknown_suggests_close_matches(no_env_construction):
    with pytest.raises(ValueError, match="Brekout") as info:
        atari.resolve_game("Brekout")
    assert "Breakout" in str(info.value)


def test_resolve_game_rejects_non_atari_v5_tasks(no_env_construction):
    # MuJoCo's Ant-v5 shares the suffix but is not a game.
    with pytest.raises(ValueError):
        atari.resolve_game("Ant-v5")
    with pytest.raises(ValueError):
        atari.resolve_game("")


# --------------------------------------------------------------------------------------------
# make_atari_envs


@pytest.mark.parametrize("game, actions", [("Breakout", 4), ("RoadRunner", 18)])
def test_make_atari_envs_shapes_and_actions(game, actions):
    env = atari.make_atari_envs(env_config(game), num_envs=2, seed=0, train=True)
    assert atari.num_actions(env) == actions
    ts = env.reset()
    step, _ = atari.convert_timestep(ts, None, terminal_on_life_loss=True)
    assert step.frame.shape == (2, 84, 84) and step.frame.dtype == np.uint8
    assert step.first.all() and not step.last.any()
    assert (step.reward == 0).all() and (step.discount == 1).all()
    assert step.lives.dtype == np.int32
    ts = env.step(np.zeros(2, np.int32), atari.all_env_ids(2))
    step, _ = atari.convert_timestep(ts, step.lives, terminal_on_life_loss=True)
    assert step.frame.shape == (2, 84, 84) and not step.first.any()


def test_make_atari_envs_image_size():
    env = atari.make_atari_envs(env_config(image_size=64), num_envs=1, seed=0, train=False)
    assert env.reset().observation.obs.shape == (1, 1, 64, 64)


@pytest.mark.parametrize(
    "overrides, kwargs",
    [
        ({}, {"num_envs": 0}),
        ({"frame_skip": 0}, {}),
        ({"image_size": 4}, {}),
        ({"noop_max": 0}, {}),
        ({"sticky_action_prob": 1.5}, {}),
        ({"num_threads": -1}, {}),
        ({}, {"max_episode_frames": 3}),
        ({}, {"seed": -1}),
        ({"game": "NotAGame"}, {}),
    ],
)
def test_make_atari_envs_rejects_bad_settings(overrides, kwargs, no_env_construction):
    args = {"num_envs": 1, "seed": 0, "train": True, **kwargs}
    with pytest.raises(ValueError):
        atari.make_atari_envs(env_config(**overrides), **args)


def test_reward_clipping_only_in_training():
    # Same seed and actions: the clipped env's reward is sign(raw), the eval env's is raw.
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 4, size=(300, 1)).astype(np.int32)
    for train in (True, False):
        env = atari.make_atari_envs(env_config(), num_envs=1, seed=3, train=train)
        env.reset()
        for a in actions:
            step, _ = atari.convert_timestep(env.step(a, atari.all_env_ids(1)), None, True)
            expected = np.sign(step.raw_reward) if train else step.raw_reward
            np.testing.assert_array_equal(step.reward, expected)


def test_env_i_of_a_pool_seeded_s_is_env_0_of_a_pool_seeded_s_plus_i():
    """What seed-parallel and multi-process runs rely on (psrl_jax/train/trainer.py): a process that
    owns agents k.. builds its envs from seed s + k and steps the same games as rows k.. of the pool
    of every agent seeded s (sticky actions, no-op starts and resets included)."""
    steps, rng = 400, np.random.default_rng(0)
    actions = rng.integers(0, 4, size=(steps, 3)).astype(np.int32)
    config = env_config(sticky_action_prob=0.25)  # the sticky actions of Atari v5, drawn per env
    whole = atari.make_atari_envs(config, num_envs=3, seed=5, train=True)
    tail = atari.make_atari_envs(config, num_envs=2, seed=6, train=True)
    streams = [[whole.reset()], [tail.reset()]]
    for a in actions:
        streams[0].append(whole.step(a, atari.all_env_ids(3)))
        streams[1].append(tail.step(a[1:], atari.all_env_ids(2)))
    frames = [np.stack([ts.observation.obs for ts in s]) for s in streams]
    np.testing.assert_array_equal(frames[0][:, 1:], frames[1])
    for field in ("reward", "step_type"):
        rows = [np.stack([getattr(ts, field) for ts in s]) for s in streams]
        np.testing.assert_array_equal(rows[0][:, 1:], rows[1], err_msg=field)
    assert not np.array_equal(frames[0][:, 0], frames[0][:, 1])  # the envs differ from one another
    assert any((ts.step_type[1:] == 2).any() for ts in streams[0])  # a game ended and reset


# --------------------------------------------------------------------------------------------
# convert_timestep: life loss, game over, truncation


def play_random(env, num_envs, steps=None, seed=0, until_last=True):
    """Random actions from a reset; yields raw TimeSteps (the reset one first)."""
    rng = np.random.default_rng(seed)
    n_actions = atari.num_actions(env)
    ts = env.reset()
    yield ts
    for t in range(10**6):
        if steps is not None and t >= steps:
            return
        if until_last and steps is None and (ts.step_type == 2).all():
            return
        ts = env.step(
            rng.integers(0, n_actions, num_envs).astype(np.int32),
            atari.all_env_ids(num_envs),
        )
        yield ts


def test_life_loss_and_game_over_discounts():
    env = atari.make_atari_envs(env_config(), num_envs=1, seed=0, train=True)
    timesteps = list(play_random(env, 1))
    with_life, without_life = [], []
    lives_a = lives_b = None
    for ts in timesteps:
        a, lives_a = atari.convert_timestep(ts, lives_a, terminal_on_life_loss=True)
        b, lives_b = atari.convert_timestep(ts, lives_b, terminal_on_life_loss=False)
        with_life.append(a)
        without_life.append(b)

    lives = np.array([s.lives[0] for s in with_life])
    life_lost = np.r_[False, lives[1:] < lives[:-1]]
    assert life_lost.sum() >= 2, "random Breakout should lose several lives"
    game_over = np.array([s.last[0] and not s.truncated[0] for s in with_life])
    assert game_over[-1] and game_over.sum() == 1  # ended by game over, not the 27k-step cap

    disc_a = np.array([s.discount[0] for s in with_life])
    disc_b = np.array([s.discount[0] for s in without_life])
    np.testing.assert_array_equal(disc_a, np.where(life_lost | game_over, 0.0, 1.0))
    np.testing.assert_array_equal(disc_b, np.where(game_over, 0.0, 1.0))
    assert not any(s.last[0] for s in with_life[:-1])  # life loss never ends the episode

    # The step after the game-over LAST is a fresh FIRST with zero reward and full lives.
    ts = env.step(np.zeros(1, np.int32), atari.all_env_ids(1))
    nxt, _ = atari.convert_timestep(ts, lives_a, terminal_on_life_loss=True)
    assert nxt.first[0] and nxt.reward[0] == 0 and nxt.discount[0] == 1
    assert nxt.lives[0] == with_life[0].lives[0]


def test_truncation_is_last_with_discount_one():
    cfg = env_config()
    env = atari.make_atari_envs(cfg, num_envs=2, seed=1, train=True, max_episode_frames=20 * 4)
    tracker = atari.LifeTracker(terminal_on_life_loss=True)
    steps = [tracker.convert(ts) for ts in play_random(env, 2, steps=20)]
    last = steps[-1]
    assert last.last.all() and last.truncated.all()
    assert not any(s.last.any() for s in steps[:-1])
    # Discount 1 unless a life was lost on that very frame.
    life_lost = last.lives < steps[-2].lives
    np.testing.assert_array_equal(last.discount, np.where(life_lost, 0.0, 1.0))


# --------------------------------------------------------------------------------------------
# FrameStacker


def reference_stacks(frames, first, frame_stack, padding="zeros"):
    """Brute force: stack t of env n holds frames t-F+1..t of the current episode; before its start,
    zeros or ("first_frame") the episode's first frame."""
    steps, num_envs = first.shape
    out = np.zeros((steps, num_envs, frame_stack, *frames.shape[2:]), np.uint8)
    for n in range(num_envs):
        start = 0
        for t in range(steps):
            if first[t, n]:
                start = t
            for j in range(frame_stack):
                src = t - (frame_stack - 1 - j)
                if src >= start:
                    out[t, n, j] = frames[src, n]
                elif padding == "first_frame":
                    out[t, n, j] = frames[start, n]
    return out


@pytest.mark.parametrize("padding", ["zeros", "first_frame"])
def test_frame_stacker_matches_reference(padding):
    rng = np.random.default_rng(0)
    steps, num_envs, frame_stack = 40, 3, 4
    frames = rng.integers(1, 256, size=(steps, num_envs, 5, 6), dtype=np.uint8)  # never 0
    first = rng.random((steps, num_envs)) < 0.2
    first[0] = True
    first[5:8, 1] = True  # back-to-back one-frame episodes
    expected = reference_stacks(frames, first, frame_stack, padding)

    stacker = FrameStacker(num_envs, frame_stack, (5, 6), padding=padding)
    got = [stacker.push(frames[t], first[t]) for t in range(steps)]
    np.testing.assert_array_equal(np.stack(got), expected)
    # Returned stacks are copies: later pushes do not change them.
    np.testing.assert_array_equal(got[0], expected[0])
    # On FIRST every slot holds padding but the newest; nothing from the previous episode survives.
    fill = {"zeros": lambda f: 0, "first_frame": lambda f: f}[padding]
    for t, n in np.argwhere(first):
        assert (got[t][n, :-1] == fill(frames[t, n])).all() and (got[t][n, -1] == frames[t, n]).all()


def test_frame_stacker_rejects_unknown_padding():
    with pytest.raises(ValueError, match="first_frame"):
        FrameStacker(2, 4, (5, 6), padding="repeat")


# --------------------------------------------------------------------------------------------
# AtariEnvs, EpisodeStats and run_evaluation (envs/episodes.py)


class ScriptedEnv:
    """Fake synchronous env: env n's episodes last `lengths[n]` steps, each step pays reward
    100 * n + episode index, so every return says which env and which episode produced it."""

    def __init__(self, lengths):
        self.lengths = np.asarray(lengths)
        self.n = len(lengths)
        self.all_env_ids = np.arange(self.n, dtype=np.int32)

    def action_spec(self):
        return types.SimpleNamespace(num_values=4)

    def close(self):
        pass

    def _timestep(self, step_type):
        frame = (self.t % 255 + 1).astype(np.uint8)[:, None, None, None] * np.ones((1, 1, 2, 2), np.uint8)
        reward = np.where(step_type == 0, 0.0, 100.0 * np.arange(self.n) + self.episode).astype(np.float32)
        obs = types.SimpleNamespace(
            obs=frame,
            lives=np.full(self.n, 3, np.int32),
            reward=reward,
            terminated=(step_type == 2).astype(np.int32),
            env_id=np.arange(self.n, dtype=np.int32),
        )
        return types.SimpleNamespace(
            step_type=step_type,
            reward=reward,
            discount=np.ones(self.n, np.float32),
            observation=obs,
        )

    def reset(self):
        self.t = np.zeros(self.n, np.int64)
        self.episode = np.zeros(self.n, np.int64)
        return self._timestep(np.zeros(self.n, np.int32))

    def step(self, actions, env_ids):
        assert actions.shape == (self.n,) and actions.dtype == np.int32
        done = self.t >= self.lengths  # previous step was LAST: reset
        self.episode = np.where(done, self.episode + 1, self.episode)
        self.t = np.where(done, 0, self.t + 1)
        step_type = np.where(self.t == 0, 0, np.where(self.t >= self.lengths, 2, 1)).astype(np.int32)
        return self._timestep(step_type)


def test_episode_stats_counts_agent_steps_and_raw_return():
    env = ScriptedEnv([2, 3])
    tracker, stats = atari.LifeTracker(False), episodes.EpisodeStats(2)
    finished = [ep for ep in stats.update(tracker.convert(env.reset()))]
    for _ in range(7):
        finished += stats.update(tracker.convert(env.step(np.zeros(2, np.int32), None)))
    by_env = {n: [(ep.episode_return, ep.length) for ep in finished if ep.env_index == n] for n in range(2)}
    assert by_env[0] == [
        (0.0, 2),
        (2.0, 2),
    ]  # 2 steps x reward 0, then 2 steps x reward 1
    assert by_env[1] == [(300.0, 3), (303.0, 3)]


def test_run_evaluation_keeps_first_k_episodes_per_env():
    env = ScriptedEnv([1, 4, 2])  # very different episode lengths
    seen_shapes = []

    def policy(stacked, first):
        seen_shapes.append((stacked.shape, stacked.dtype, first.shape))
        return np.zeros(len(first), np.int64)

    envs = atari.AtariEnvs(env, terminal_on_life_loss=False, image_size=2)
    returns = episodes.run_evaluation(envs, policy, episodes_per_env=3, frame_stack=2)
    expected = [[0, 1, 2], [400, 404, 408], [400, 402, 404]]
    np.testing.assert_array_equal(returns, np.array(expected, np.float64).reshape(-1))
    assert seen_shapes[0] == ((3, 2, 2, 2), np.uint8, (3,))


def test_run_evaluation_on_breakout_is_deterministic():
    cfg = env_config()

    def evaluate():
        pool = atari.make_atari_envs(cfg, num_envs=2, seed=7, train=False, max_episode_frames=4 * 200)
        env = atari.AtariEnvs(pool, terminal_on_life_loss=False, image_size=cfg.image_size)
        rng = np.random.default_rng(0)
        firsts = []

        def random_policy(stacked, first):
            assert stacked.shape == (2, 4, 84, 84) and stacked.dtype == np.uint8
            firsts.append(first.copy())
            return rng.integers(0, env.num_actions, size=2)

        return episodes.run_evaluation(env, random_policy, episodes_per_env=2, frame_stack=4), firsts

    returns, firsts = evaluate()
    assert returns.shape == (4,) and np.all(returns >= 0)
    # Each env started at least 2 episodes (the reset plus >= 1 auto-reset) before the loop ended.
    assert (np.sum(firsts, axis=0) >= 2).all()
    again, _ = evaluate()
    np.testing.assert_array_equal(returns, again)
