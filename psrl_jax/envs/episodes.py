"""Episode bookkeeping and evaluation episodes, the same for every domain.

Both env streams (envs/atari.py `AtariEnvs`, envs/dmc.py's backends) hand back one synchronous step
of N envs as arrays with `frame`, `raw_reward` (the score: Atari's unclipped reward, DMC's summed
reward), `first`, `last` and `truncated`; everything here reads only those.
"""

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np

from psrl_jax.ops.frame_stack import FrameStacker


class FinishedEpisode(NamedTuple):
    env_index: int
    episode_return: float  # sum of raw (unclipped) rewards
    length: int  # agent steps (transitions), excluding the FIRST frame
    truncated: bool  # ended by the episode cap or time limit rather than a termination


class EnvStream(Protocol):
    """N synchronous envs: `reset()` and `step(actions)` return the step arrays described above."""

    num_envs: int
    frame_shape: tuple[int, ...]
    frame_dtype: Any

    def reset(self): ...

    def step(self, actions: np.ndarray): ...

    def close(self) -> None: ...


class EpisodeStats:
    """Running raw return and length per env; `update` hands back the episodes that just ended."""

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def update(self, step) -> list[FinishedEpisode]:
        # FIRST frames start a new episode; their reward is always 0 and is no transition.
        self.returns = np.where(step.first, 0.0, self.returns + step.raw_reward)
        self.lengths = np.where(step.first, 0, self.lengths + 1)
        return [
            FinishedEpisode(int(i), float(self.returns[i]), int(self.lengths[i]), bool(step.truncated[i]))
            for i in np.flatnonzero(step.last)
        ]


PolicyFn = Callable[[np.ndarray, np.ndarray], Any]


def run_evaluation(
    envs: EnvStream,
    policy_fn: PolicyFn,
    episodes_per_env: int,
    frame_stack: int,
    stack_padding: str = "zeros",
    on_episode: Callable[[FinishedEpisode], None] | None = None,
) -> np.ndarray:
    """Plays exactly `episodes_per_env` full episodes in each env; returns their returns, env-major.

    `policy_fn(stacked [N, F, *frame], first bool [N]) -> actions` is called on every step for all
    envs. Envs that are done keep stepping (the pool is synchronous) but their extra episodes are
    dropped: keeping the first k episodes of every env, rather than the first N * k to finish, does
    not favour short episodes. Resets `envs` first. `on_episode` sees every kept episode.
    Returns float64 [num_envs * episodes_per_env]: env 0's episodes in order, then env 1's, ...
    """
    if episodes_per_env < 1:
        raise ValueError(f"episodes_per_env must be >= 1, got {episodes_per_env}")
    n = envs.num_envs
    returns = np.zeros((n, episodes_per_env), dtype=np.float64)
    completed = np.zeros(n, dtype=np.int64)
    stats = EpisodeStats(n)
    stacker = FrameStacker(n, frame_stack, envs.frame_shape, envs.frame_dtype, stack_padding)

    step = envs.reset()
    while True:
        for episode in stats.update(step):
            i = episode.env_index
            if completed[i] < episodes_per_env:
                returns[i, completed[i]] = episode.episode_return
                completed[i] += 1
                if on_episode is not None:
                    on_episode(episode)
        if np.all(completed >= episodes_per_env):
            return returns.reshape(-1)
        stacked = stacker.push(step.frame, step.first)
        step = envs.step(np.asarray(policy_fn(stacked, step.first)))
