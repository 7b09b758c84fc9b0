"""The fused actor-learner loop (config.loop="fused"): acting, envpool's env step, replay insert and
the update dispatches of `log.every_steps` env steps run in one jitted `lax.scan`, with no Python
per step.

envpool's XLA interface (`env.xla()`) exposes its send/recv as XLA custom calls with side effects,
threaded through a `handle` array, so the env step can sit inside the scan between the agent's
collect and update. Everything else is the host loop's own code, in the host loop's order:
per iteration the vmapped `collect` (frame stack, act, replay insert), then after every
`update_every` iterations one update dispatch (U updates per seed), then the env step with the
chosen actions. The same seed therefore replays the same environment stream and keys as
`loop="host"`; XLA may fuse the float arithmetic differently, so after the warm-up the two modes
agree to float rounding, not bit for bit (tests/test_fused_loop.py).

The host comes back once per chunk (`log.every_steps` env steps) to log, evaluate and checkpoint,
so those intervals, replay.min_size and total_env_steps are multiples of the chunk
(config.py: validate_fused_loop_config). Warm-up chunks (random actions, no updates) and training chunks are
two compiled programs. The env-side carry (current frames, lives, running episode returns) is not
checkpointed: a resumed run resets its envs, as the host loop does.
"""

import functools
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from psrl_jax.config import ConfigError
from psrl_jax.envs.atari import FinishedEpisode
from psrl_jax.ops import conv

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
    running episode statistics (EpisodeStats of envs/atari.py)."""

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


def xla_interface(envs):
    """envpool's (handle, step) for use under jit, or a ConfigError saying why it is unavailable."""
    try:
        handle, _recv, _send, step = envs.xla()
    except Exception as error:  # noqa: BLE001 - any failure here means: no fused loop on this install
        raise ConfigError(
            f"config.loop='fused' needs envpool's XLA interface, which failed here "
            f"(jax {jax.__version__}): {type(error).__name__}: {error}. Use config.loop='host'."
        ) from error
    return handle, step


class FusedLoop:
    """Runs the trainer's collect/update/env step for one chunk per call, in one compiled program.

    `trainer` is the AtariTrainer (its vmapped collect and update, its envs and beta schedule).
    """

    def __init__(self, trainer):
        if jax.process_count() > 1:
            raise ConfigError(
                "config.loop='fused' runs in one process: envpool's XLA step takes every env's action on "
                "one device. Use config.loop='host' for a run over several processes (jax.distributed)."
            )
        if trainer.seeds.sharding is not None:
            raise ConfigError(
                "config.loop='fused' runs on one device: envpool's XLA step takes every env's action "
                "on one device. Pass --config.shard_seeds=off, or use config.loop='host' to shard seeds."
            )
        self.trainer = trainer
        config = trainer.config
        self.S, self.E = config.num_seeds, config.env.envs_per_seed
        self.chunk_steps = config.log.every_steps
        self.iterations = self.chunk_steps // self.E
        self.handle, self._xla_step = xla_interface(trainer.envs)
        # Two programs: warm-up chunks (random actions, no updates) and training chunks. The env
        # carry is donated too: the handle is aliased in place by envpool's custom call.
        self._warmup_chunk = jax.jit(functools.partial(self._chunk, warmup=True), donate_argnums=(0, 1))
        self._train_chunk = jax.jit(functools.partial(self._chunk, warmup=False), donate_argnums=(0, 1))
        self._programs = {}  # warmup flag -> compiled chunk

    # ----- host side ----------------------------------------------------------------------------
    def reset(self, arrays, lives) -> EnvCarry:
        """The env carry after the host's `envs.reset()` (converted with convert_timestep)."""
        seeds = self.trainer.seeds.put_env_rows
        n = self.S * self.E
        return EnvCarry(
            handle=jnp.asarray(self.handle),
            frame=seeds(arrays.frame),
            reward=seeds(arrays.reward),
            discount=seeds(arrays.discount),
            first=seeds(arrays.first),
            lives=jnp.asarray(lives, jnp.int32),
            episode_return=jnp.zeros(n, jnp.float32),
            episode_length=jnp.zeros(n, jnp.int32),
        )

    def advance(self, state, env: EnvCarry, env_step: int):
        """One chunk from `env_step`: returns (state, env, metrics or None, per-step finished episodes
        as [(env_step after the step, [FinishedEpisode, ...]), ...])."""
        warmup = env_step < self.trainer.config.replay.min_size
        step = jnp.int32(env_step)
        state, env, metrics, ends = self._program(warmup, state, env, step)(state, env, step)
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
        return state, env, metrics, finished

    def _program(self, warmup: bool, state, env: EnvCarry, env_step):
        """The compiled chunk, compiled on first use. A platform where envpool's custom call cannot
        be compiled (e.g. an envpool build without GPU kernels on a GPU) gets a clear error here,
        before any training chunk runs."""
        if warmup not in self._programs:
            chunk = self._warmup_chunk if warmup else self._train_chunk
            try:
                with conv.tracing_rolled_loop():  # padded convs' fast kernel gradient (ops/conv.py)
                    lowered = chunk.lower(state, env, env_step)
                self._programs[warmup] = lowered.compile()
            except Exception as error:  # noqa: BLE001 - any compile failure: say what to do instead
                raise ConfigError(
                    f"config.loop='fused' could not compile envpool's XLA step into the training loop on "
                    f"{jax.default_backend()} (jax {jax.__version__}): {type(error).__name__}: {error}. "
                    "Use config.loop='host'."
                ) from error
        return self._programs[warmup]

    # ----- traced -------------------------------------------------------------------------------
    def _env_step(self, env: EnvCarry, actions):
        trainer = self.trainer
        S, E = self.S, self.E
        env_ids = jnp.arange(S * E, dtype=jnp.int32)
        handle, ts = self._xla_step(env.handle, actions.reshape(-1).astype(jnp.int32), env_ids)
        arrays, lives = convert_timestep_jax(ts, env.lives, trainer.config.env.terminal_on_life_loss)
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

    def _chunk(self, state, env: EnvCarry, env_step, warmup: bool):
        trainer = self.trainer
        collect = trainer.vmapped_collect(random_actions=warmup)
        update_every = trainer.config.update_every

        def iteration(carry, _):
            state, env = carry
            state, actions = collect(state, env.frame, env.reward, env.discount, env.first)
            env, ends = self._env_step(env, actions)
            return (state, env), ends

        def block(carry, block_index):
            # update_every iterations, then (after the warm-up) one update dispatch. The host loop
            # updates between the last collect and its env step; the env step does not touch the
            # agent, so updating after it is the same computation.
            state, env = carry
            (state, env), ends = jax.lax.scan(iteration, (state, env), None, length=update_every)
            metrics = {}
            if not warmup:
                # beta at the env step of the block's last collect, as the host loop computes it
                last_collect_step = env_step + (block_index * update_every + update_every - 1) * self.E
                state, metrics = trainer.vmapped_update(state, trainer.beta(last_collect_step))
            return (state, env), (ends, metrics)

        blocks = self.iterations // update_every
        (state, env), (ends, metrics) = jax.lax.scan(block, (state, env), jnp.arange(blocks))
        ends = jax.tree.map(lambda x: x.reshape(self.iterations, *x.shape[2:]), ends)
        # One window mean per chunk: the mean over the chunk's dispatches, as the host loop logs it.
        metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), metrics) if metrics else None
        return state, env, metrics, ends
