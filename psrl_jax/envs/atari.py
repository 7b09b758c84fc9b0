"""Atari environments for the Atari 100k protocol, on top of envpool (DESIGN.md section 2).

envpool does the emulation (frame skip, max-pooling, gray 84x84, no-op starts, episode cap).
Everything the agent must control itself lives here, host side, in NumPy:

- life loss as a training terminal (envpool always runs full games: `episodic_life=False`), so
  evaluation and training share one environment definition;
- discounts: envpool also sets `discount = 0` on truncation, so we derive ours from
  `observation.terminated` instead;
- frame stacking is the agent's (`ops/frame_stack.py`; envpool is run with `stack_num=1`); episode
  bookkeeping and evaluation episodes are envs/episodes.py's, shared with DMC.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from typing import Any

import envpool
import numpy as np

_TASK_SUFFIX = "-v5"
_ATARI_ENTRY_MODULE = "envpool.atari"
_MAX_SUGGESTIONS = 5


# --------------------------------------------------------------------------------------------
# Game names


def _normalise_name(name: str) -> str:
    """'Kung_Fu-Master-v5' -> 'kungfumaster': what users type varies only in case and separators."""
    name = name.strip().lower()
    if name.endswith(_TASK_SUFFIX):
        name = name[: -len(_TASK_SUFFIX)]
    return "".join(ch for ch in name if ch.isalnum())


@functools.cache
def _atari_task_ids() -> dict[str, str]:
    """Normalised game name -> envpool task id, for every Atari '-v5' task (no env is built)."""
    specs = envpool.registration.registry.specs
    return {
        _normalise_name(task_id): task_id
        for task_id, (module, _, _) in specs.items()
        # Other suites also use '-v5' (MuJoCo's Ant-v5, ...); only ALE tasks are games.
        if task_id.endswith(_TASK_SUFFIX) and module == _ATARI_ENTRY_MODULE
    }


def resolve_game(game: str) -> str:
    """Maps 'Breakout', 'breakout', 'Breakout-v5', 'kung_fu_master' to the envpool task id.

    Cheap (reads envpool's registry only), so callers can validate a config before compiling.
    Raises ValueError with up to 5 close matches when the game is unknown.
    """
    tasks = _atari_task_ids()
    key = _normalise_name(game)
    if key in tasks:
        return tasks[key]
    close = difflib.get_close_matches(key, list(tasks), n=_MAX_SUGGESTIONS, cutoff=0.6)
    suggestions = [tasks[k].removesuffix(_TASK_SUFFIX) for k in close]
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise ValueError(
        f"unknown Atari game {game!r}{hint} ({len(tasks)} envpool Atari games exist, "
        "e.g. Breakout, RoadRunner, KungFuMaster)"
    )


# --------------------------------------------------------------------------------------------
# Construction


def _num_threads(requested: int, num_envs: int) -> int:
    """0 means one per usable core; more threads than envs only adds contention."""
    if requested == 0:
        try:
            requested = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            requested = os.cpu_count() or 1
    return max(1, min(requested, num_envs))


def _check_env_arguments(env_config: Any, num_envs: int, seed: int, max_episode_frames: int) -> None:
    """Fails early with a readable message instead of an envpool assertion deep in C++."""
    problems = []
    if num_envs < 1:
        problems.append(f"num_envs must be >= 1, got {num_envs}")
    if env_config.frame_skip < 1:
        problems.append(f"env.frame_skip must be >= 1, got {env_config.frame_skip}")
    if env_config.image_size < 8:
        problems.append(f"env.image_size must be >= 8, got {env_config.image_size}")
    # envpool draws the no-op count from noop_max values and segfaults at reset on 0 (checked on
    # envpool 1.2.5); noop_max = 1 already gives a fixed, deterministic start.
    if env_config.noop_max < 1:
        problems.append(f"env.noop_max must be >= 1 (1 = no random no-ops), got {env_config.noop_max}")
    if not 0.0 <= env_config.sticky_action_prob <= 1.0:
        problems.append(f"env.sticky_action_prob must be in [0, 1], got {env_config.sticky_action_prob}")
    if env_config.num_threads < 0:
        problems.append(f"env.num_threads must be >= 0, got {env_config.num_threads}")
    if env_config.frame_skip >= 1 and max_episode_frames < env_config.frame_skip:
        problems.append(
            f"max_episode_frames ({max_episode_frames}) must be at least one agent step "
            f"(frame_skip = {env_config.frame_skip})"
        )
    # envpool seeds env i with seed + i as an int32.
    if not 0 <= seed <= np.iinfo(np.int32).max - max(num_envs, 1):
        problems.append(f"seed must be in [0, 2**31 - 1 - num_envs], got {seed}")
    if problems:
        raise ValueError("invalid Atari environment settings: " + "; ".join(problems))


def make_atari_envs(
    env_config: Any,
    num_envs: int,
    seed: int,
    train: bool,
    max_episode_frames: int | None = None,
):
    """Builds `num_envs` synchronous envpool Atari envs (dm_env API) for `env_config.game`.

    One gray `image_size`^2 frame per step (stack_num=1: the agent stacks frames itself). Life
    loss never ends an envpool episode (see `convert_timestep`); rewards are clipped only when
    `train` and `env_config.reward_clip`. `max_episode_frames` (emulator frames) defaults to
    `env_config.max_episode_frames`; pass the `eval.max_episode_frames` for evaluation envs.
    """
    task_id = resolve_game(env_config.game)
    if max_episode_frames is None:
        max_episode_frames = env_config.max_episode_frames
    _check_env_arguments(env_config, num_envs, seed, max_episode_frames)
    return envpool.make(
        task_id,
        env_type="dm",
        num_envs=num_envs,
        batch_size=num_envs,  # synchronous: every step() advances all envs
        seed=seed,
        num_threads=_num_threads(env_config.num_threads, num_envs),
        stack_num=1,
        img_height=env_config.image_size,
        img_width=env_config.image_size,
        gray_scale=True,
        frame_skip=env_config.frame_skip,
        noop_max=env_config.noop_max,
        repeat_action_probability=float(env_config.sticky_action_prob),
        use_fire_reset=bool(env_config.fire_reset),
        episodic_life=False,
        reward_clip=bool(train and env_config.reward_clip),
        max_episode_steps=max_episode_frames // env_config.frame_skip,
    )


def num_actions(env) -> int:
    """Size of the game's discrete action set (minimal ALE action set: Breakout 4, RoadRunner 18)."""
    return int(env.action_spec().num_values)


def all_env_ids(num_envs: int) -> np.ndarray:
    """The `env_id` argument of `env.step` that advances every env, in order."""
    return np.arange(num_envs, dtype=np.int32)


# --------------------------------------------------------------------------------------------
# TimeStep -> arrays for replay / trainer

_FIRST, _LAST = 0, 2


@dataclasses.dataclass
class AtariStepArrays:
    """One synchronous step of N envs as host arrays, leading axis = env index."""

    frame: np.ndarray  # uint8 [N, H, W]: the single newest frame
    reward: np.ndarray  # float32 [N]: reward on arriving here (clipped if the env clips); 0 on FIRST
    raw_reward: np.ndarray  # float32 [N]: unclipped game score, for logging returns
    discount: np.ndarray  # float32 [N]: 0 on game over or (if asked) a life loss; truncation keeps 1
    first: np.ndarray  # bool [N]: first frame of an episode (reward meaningless, 0)
    last: np.ndarray  # bool [N]: episode over (game over or truncated); next step() resets
    truncated: np.ndarray  # bool [N]: last and not a game over (the episode cap was hit)
    lives: np.ndarray  # int32 [N]


def _in_env_order(env_id: np.ndarray) -> np.ndarray | slice:
    """Indexer putting a batch in env order (synchronous envpool already is; this is cheap insurance)."""
    env_id = np.asarray(env_id)
    if np.all(env_id[:-1] < env_id[1:]):
        return slice(None)
    return np.argsort(env_id, kind="stable")


def convert_timestep(
    ts, prev_lives: np.ndarray | None, terminal_on_life_loss: bool
) -> tuple[AtariStepArrays, np.ndarray]:
    """dm_env TimeStep from `make_atari_envs` -> (AtariStepArrays, lives to pass next time).

    A life is lost when lives drop on a non-FIRST step. With `terminal_on_life_loss` (training only)
    that step gets discount 0 but the episode goes on: bootstrapping stops, the game does not.
    `prev_lives` may be None on the first call (which should be a reset, i.e. all FIRST).
    """
    obs = ts.observation
    order = _in_env_order(obs.env_id)
    step_type = np.asarray(ts.step_type)[order]
    lives = np.asarray(obs.lives, dtype=np.int32)[order]
    terminated = np.asarray(obs.terminated)[order].astype(bool)
    first = step_type == _FIRST
    last = step_type == _LAST

    game_over = last & terminated
    if prev_lives is None:
        prev_lives = lives
    life_lost = ~first & (lives < prev_lives)
    ends_bootstrap = game_over | (life_lost if terminal_on_life_loss else False)

    arrays = AtariStepArrays(
        frame=np.asarray(obs.obs)[order][:, -1],  # [N, 1, H, W] with stack_num=1
        reward=np.asarray(ts.reward, dtype=np.float32)[order],
        raw_reward=np.asarray(obs.reward, dtype=np.float32)[order],
        discount=np.where(ends_bootstrap, 0.0, 1.0).astype(np.float32),
        first=first,
        last=last,
        truncated=last & ~terminated,
        lives=lives,
    )
    return arrays, lives


class LifeTracker:
    """`convert_timestep` with the previous lives kept for you."""

    def __init__(self, terminal_on_life_loss: bool):
        self.terminal_on_life_loss = terminal_on_life_loss
        self.prev_lives: np.ndarray | None = None

    def convert(self, ts) -> AtariStepArrays:
        arrays, self.prev_lives = convert_timestep(ts, self.prev_lives, self.terminal_on_life_loss)
        return arrays


class AtariEnvs:
    """The trainer's view of `num_envs` envpool envs: `reset()` and `step(actions)` return
    AtariStepArrays in env order (life loss tracked here), as envs/dmc.py's envs return theirs.
    `pool` is the envpool object itself (its XLA interface drives the fused loop)."""

    def __init__(self, pool, terminal_on_life_loss: bool, image_size: int):
        self.pool = pool
        self.num_envs = len(pool.all_env_ids)
        self.num_actions = num_actions(pool)
        self.frame_shape, self.frame_dtype = (image_size, image_size), np.uint8
        self.terminal_on_life_loss = terminal_on_life_loss
        self._tracker = LifeTracker(terminal_on_life_loss)
        self._env_ids = all_env_ids(self.num_envs)

    def reset(self) -> AtariStepArrays:
        self._tracker = LifeTracker(self.terminal_on_life_loss)  # a reset starts every env's lives afresh
        return self._tracker.convert(self.pool.reset())

    def step(self, actions: np.ndarray) -> AtariStepArrays:
        return self._tracker.convert(self.pool.step(np.asarray(actions, np.int32).reshape(-1), self._env_ids))

    def close(self) -> None:
        self.pool.close()
