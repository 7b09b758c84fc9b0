"""Atari envs inside jit: envpool's XLA interface, for the trainer's fused loop (config.loop="fused").

envpool's `env.xla()` exposes its send/recv as XLA custom calls with side effects, threaded through
a `handle` array, so the env step can sit inside a `lax.scan` between the agent's collect and its
update. `XlaAtariEnvs.step` is envs/atari.py's host step (`AtariEnvs.step` + `convert_timestep` +
`EpisodeStats`) in jnp; tests/test_fused_loop.py checks that the two give the same arrays.
"""

from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from psrl_jax.envs.episodes import FinishedEpisode
from psrl_jax.errors import ConfigError

_FIRST, _LAST = 0, 2  # dm_env StepType values, as in envs/atari.py


class StepArraysJax(NamedTuple):
    """envs/atari.py's AtariStepArrays as traced arrays, leading axis = env index."""

    frame: jax.Array  # uint8 [N, H, W]
    reward: jax.Array  # float32 [N]
    raw_reward: jax.Array  # float32 [N]
    discount: jax.Array  # float32 [N]
    first: jax.Array  # bool [N]
    last: jax.Array  # bool [N]
    truncated: jax.Array  # bool [N]


def convert_timestep_jax(ts, prev_lives, terminal_on_life_loss: bool):
    """envs/atari.py's `convert_timestep` in jnp, for a TimeStep returned by envpool's XLA step.

    Same rules: discount 0 on game over (from `terminated`, not envpool's discount, which is also 0
    on truncation) and, when asked, on a life lost on a non-FIRST step. Rows are put in env order.
    """
    obs = ts.observation
    order = jnp.argsort(obs.env_id)
    step_type = ts.step_type[order]
    lives = obs.lives[order].astype(jnp.int32)
    terminated = obs.terminated[order].astype(bool)
    first, last = step_type == _FIRST, step_type == _LAST
    game_over = last & terminated
    ends_bootstrap = game_over
    if terminal_on_life_loss:
        ends_bootstrap = ends_bootstrap | (~first & (lives < prev_lives))
    arrays = StepArraysJax(
        frame=obs.obs[order][:, -1],  # [N, 1, H, W] with stack_num=1
        reward=ts.reward[order].astype(jnp.float32),
        raw_reward=obs.reward[order].astype(jnp.float32),
        discount=jnp.where(ends_bootstrap, 0.0, 1.0).astype(jnp.float32),
        first=first,
        last=last,
        truncated=last & ~terminated,
    )
    return arrays, lives


@flax.struct.dataclass
class EnvCarry:
    """The env side of the fused loop: envpool's handle, the step the agent acts on next, and the
    running episode statistics (envs/episodes.py's EpisodeStats)."""

    handle: jax.Array  # uint8 bytes naming the envpool instance
    frame: jax.Array  # uint8 [S, E, H, W]
    reward: jax.Array  # float32 [S, E]
    discount: jax.Array  # float32 [S, E]
    first: jax.Array  # bool [S, E]
    lives: jax.Array  # int32 [S * E]
    episode_return: jax.Array  # float32 [S * E], raw (unclipped) score so far
    episode_length: jax.Array  # int32 [S * E], transitions so far


class EpisodeEnds(NamedTuple):
    """Per env step of a chunk: which envs ended an episode, and its return, length and cause."""

    last: jax.Array  # bool [T, S * E]
    episode_return: jax.Array  # float32 [T, S * E]
    length: jax.Array  # int32 [T, S * E]
    truncated: jax.Array  # bool [T, S * E]


def xla_interface(pool):
    """envpool's (handle, step) for use under jit, or a ConfigError saying why it is unavailable."""
    try:
        handle, _recv, _send, step = pool.xla()
    except Exception as error:  # noqa: BLE001 - any failure here means: no fused loop on this install
        raise ConfigError(
            f"config.loop='fused' needs envpool's XLA interface, which failed here "
            f"(jax {jax.__version__}): {type(error).__name__}: {error}. Use config.loop='host'."
        ) from error
    return handle, step


class XlaAtariEnvs:
    """The S x E training envs of an `AtariEnvs` (envs/atari.py), stepped inside jit."""

    def __init__(self, envs, num_seeds: int, envs_per_seed: int, terminal_on_life_loss: bool):
        self.S, self.E = num_seeds, envs_per_seed
        self.terminal_on_life_loss = terminal_on_life_loss
        self.handle, self._xla_step = xla_interface(envs.pool)

    def carry(self, arrays, put_env_rows) -> EnvCarry:
        """The env carry after the host's `reset()` (AtariStepArrays); `put_env_rows` makes [S, E]."""
        n = self.S * self.E
        return EnvCarry(
            handle=jnp.asarray(self.handle),
            frame=put_env_rows(arrays.frame),
            reward=put_env_rows(arrays.reward),
            discount=put_env_rows(arrays.discount),
            first=put_env_rows(arrays.first),
            lives=jnp.asarray(arrays.lives, jnp.int32),
            episode_return=jnp.zeros(n, jnp.float32),
            episode_length=jnp.zeros(n, jnp.int32),
        )

    def step(self, env: EnvCarry, actions) -> tuple[EnvCarry, EpisodeEnds]:
        """Traced: every env steps with its action [S, E]; returns the new carry and who finished."""
        S, E = self.S, self.E
        env_ids = jnp.arange(S * E, dtype=jnp.int32)
        handle, ts = self._xla_step(env.handle, actions.reshape(-1).astype(jnp.int32), env_ids)
        arrays, lives = convert_timestep_jax(ts, env.lives, self.terminal_on_life_loss)
        episode_return = jnp.where(arrays.first, 0.0, env.episode_return + arrays.raw_reward)
        episode_length = jnp.where(arrays.first, 0, env.episode_length + 1)
        ends = EpisodeEnds(arrays.last, episode_return, episode_length, arrays.truncated)

        def seeds(x):
            return x.reshape(S, E, *x.shape[1:])

        env = EnvCarry(
            handle=handle,
            frame=seeds(arrays.frame),
            reward=seeds(arrays.reward),
            discount=seeds(arrays.discount),
            first=seeds(arrays.first),
            lives=lives,
            episode_return=episode_return,
            episode_length=episode_length,
        )
        return env, ends

    def finished(self, ends: EpisodeEnds, env_step: int) -> list:
        """Host side, after a chunk from `env_step`: [(env step after the step, [FinishedEpisode])]."""
        ends = jax.device_get(ends)
        finished = []
        for t in np.flatnonzero(ends.last.any(axis=1)):
            episodes = [
                FinishedEpisode(
                    int(i), float(ends.episode_return[t, i]), int(ends.length[t, i]), bool(ends.truncated[t, i])
                )
                for i in np.flatnonzero(ends.last[t])
            ]
            finished.append((env_step + (int(t) + 1) * self.E, episodes))
        return finished
