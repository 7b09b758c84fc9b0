"""Seed-parallel Atari training loop (host loop over envpool; all agent work in jitted, vmapped calls).

Every per-seed array carries a leading seed axis S. Per env step the host makes two dispatches:
`collect` (push the new frames into the agents' frame stacks, act, add the rows to replay) and,
every `update_every` steps once replay holds `min_size` steps, `update` (a `lax.scan` of
update_every * updates_per_step * envs_per_seed gradient updates per seed). Agent i of a run with
seed s uses key PRNGKey(s + i) and training envs seeded from (s + i), as a single-seed run with
seed s + i does.

With config.shard_seeds on (psrl_jax/train/sharding.py) the seed axis of every state and per-step
array is split over all devices (each device holds whole seeds: no collectives); off, everything
stays on the default device. The jitted functions are the same in both cases. With several
processes (psrl_jax/train/multihost.py) each process steps the envs of its own seeds only
(`self.seeds.local_rows`) and the same jitted calls run on the global seed axis.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from psrl_jax import xla_cpu
from psrl_jax.agents.rainbow import RainbowAgent, RainbowState
from psrl_jax.config import ConfigError, config_to_dict, validate_atari_config
from psrl_jax.envs.atari import (
    EpisodeStats,
    convert_timestep,
    make_atari_envs,
    num_actions,
    resolve_game,
    run_evaluation_episodes,
)
from psrl_jax.ops import frame_stack
from psrl_jax.replay.sequence_replay import Step, bytes_per_transition, make_sequence_replay
from psrl_jax.schedules import LinearSchedule
from psrl_jax.train import sharding
from psrl_jax.train.common import (
    EVAL_SEED_OFFSET,
    LogWindow,
    RunRecords,
    SeedAxis,
    SlowUpdateNotice,
    crossed,
    eval_keys,
    open_run_dir,
    progress_bar,
    resolve_scan_unroll,
    unroll_seeds,
    vmap_seeds,
)
from psrl_jax.train.finite_guard import FiniteGuard
from psrl_jax.train.fused_loop import FusedLoop


@flax.struct.dataclass
class TrainState:
    agent: RainbowState
    replay: object
    frame_stack: jax.Array  # uint8 [E, F, H, W] the actor's current observation per training env
    key: jax.Array  # acting key


class AtariTrainer:
    """Builds everything from a validated config; `run()` trains, evaluates and checkpoints."""

    def __init__(self, config):
        validate_atari_config(config)  # cheap checks first: no env, no compile
        self.seeds = SeedAxis.for_config(config)
        try:
            self.task_id = resolve_game(config.env.game)
        except ValueError as error:
            raise ConfigError(f"config.env.game: {error}") from error
        self.game = self.task_id.split("-")[0]
        self.run_dir, self.checkpointer = open_run_dir(
            config, f"{config.name}-{self.game}-s{config.seed}x{config.num_seeds}"
        )
        self.config = config
        self.num_seeds = config.num_seeds
        self.envs_per_seed = config.env.envs_per_seed
        # This process's seeds' envs only; agent i's envs are seeded from seed + i as in a 1-seed run.
        self.num_envs = self.seeds.num_local * self.envs_per_seed
        first_env_seed = self.seeds.local.first_seed * self.envs_per_seed
        self.envs = make_atari_envs(config.env, self.num_envs, seed=first_env_seed, train=True)
        self.num_actions = num_actions(self.envs)
        size = config.env.image_size
        self.frame_shape, self.frame_dtype = (size, size), np.uint8  # grey frames, as DMCTrainer's pixels
        self.agent = RainbowAgent.from_config(config, self.num_actions, (config.env.frame_stack, size, size))
        self.replay = make_sequence_replay(config, self.frame_shape)
        self.beta = LinearSchedule(
            config.replay.importance_beta_start, config.replay.importance_beta_end, config.total_env_steps
        )
        self.updates_per_dispatch = config.update_every * config.updates_per_step * self.envs_per_seed
        self.scan_unroll = resolve_scan_unroll(config.update_scan_unroll, self.updates_per_dispatch)
        self.unroll_seeds = unroll_seeds(config)
        self.env_ids = np.arange(self.num_envs, dtype=np.int32)
        self._compile()
        self.fused = FusedLoop(self) if config.loop == "fused" else None

    # ----- jitted, vmapped pieces ---------------------------------------------------------------
    def _init_single(self, key):
        k_agent, k_act = jax.random.split(key)
        e, f = self.envs_per_seed, self.config.env.frame_stack
        return TrainState(
            agent=self.agent.init(k_agent),
            replay=self.replay.init(),
            frame_stack=jnp.zeros((e, f, *self.frame_shape), jnp.uint8),
            key=k_act,
        )

    def _collect_single(self, state: TrainState, frame, reward, discount, first, random_actions: bool):
        stack = frame_stack.push(state.frame_stack, frame, first, self.replay.stack_padding, xp=jnp)
        key, k_act = jax.random.split(state.key)
        if random_actions:  # warm-up before min_size: uniform random actions
            actions = jax.random.randint(k_act, (frame.shape[0],), 0, self.num_actions).astype(jnp.int32)
        else:
            actions = self.agent.act(state.agent.params, stack, k_act, epsilon=0.0, noisy_sample=True)
        step = Step(frame=frame, action=actions, reward=reward, discount=discount, first=first)
        replay_state = self.replay.add(state.replay, step)
        return state.replace(replay=replay_state, frame_stack=stack, key=key), actions

    def _update_single(self, state: TrainState, beta):
        agent_state, replay_state, metrics = self.agent.update_many(
            state.agent, self.replay, state.replay, beta, self.updates_per_dispatch, self.scan_unroll
        )
        return state.replace(agent=agent_state, replay=replay_state), metrics

    def _eval_act_single(self, params, obs, key):
        return self.agent.act(params, obs, key, self.config.eval.epsilon, noisy_sample=False)

    def vmapped_collect(self, random_actions: bool):
        """collect over the seed axis: (state, frame, reward, discount, first) -> (state, actions [S, E])."""
        return vmap_seeds(functools.partial(self._collect_single, random_actions=random_actions))

    @property
    def vmapped_update(self):
        """One update dispatch over the seed axis: (state, beta) -> (state, metrics [S])."""
        return vmap_seeds(self._update_single, in_axes=(0, None), unroll=self.unroll_seeds)

    def _compile(self):
        # Runs once per run: on the CPU, LLVM -O1 compiles it ~3x faster, same parameters bit for bit.
        self.init_fn = self.seeds.jit(
            vmap_seeds(self._init_single), compiler_options=xla_cpu.one_shot_compiler_options()
        )
        self.collect_random = self.seeds.jit(self.vmapped_collect(random_actions=True), donate_argnums=0)
        self.collect_policy = self.seeds.jit(self.vmapped_collect(random_actions=False), donate_argnums=0)
        self.update_fn = self.seeds.jit(self.vmapped_update, replicated_argnums=(1,), donate_argnums=0)
        self.eval_act = self.seeds.local.jit(vmap_seeds(self._eval_act_single))  # process-local

    # ----- evaluation ---------------------------------------------------------------------------
    def evaluate(self, params, episodes: int, eval_index: int) -> np.ndarray:
        """Returns [local seeds, episodes] full-episode returns (no reward clipping, no life-loss
        terminals). Each process evaluates its own seeds on its own devices: episodes end at
        different steps, so no call here may wait for another process."""
        cfg, seeds = self.config, self.seeds.local
        envs_per_seed = min(episodes, cfg.eval.max_parallel_envs)
        num_envs = seeds.num_seeds * envs_per_seed
        envs = make_atari_envs(
            cfg.env,
            num_envs,
            seed=EVAL_SEED_OFFSET + seeds.first_seed * envs_per_seed,
            train=False,
            max_episode_frames=cfg.eval.max_episode_frames,
        )
        params = self.seeds.to_local(params)
        next_keys = eval_keys(cfg, self.seeds, eval_index)

        def policy(stacked_obs, first):
            del first
            keys = next_keys()
            obs = seeds.put_env_rows(stacked_obs)
            return np.asarray(seeds.to_host(self.eval_act(params, obs, keys))).reshape(-1)

        returns = run_evaluation_episodes(
            envs, policy, episodes // envs_per_seed, num_envs, cfg.env.frame_stack, self.replay.stack_padding
        )
        envs.close()
        return np.asarray(returns).reshape(seeds.num_seeds, episodes)

    def restore_latest(self):
        """(state, header) of the run's latest checkpoint, restored into shapes only (no second
        full-size replay in memory); sharded runs restore every array straight onto its devices."""
        return self.checkpointer.restore(self.seeds.state_template(self.init_fn), config_to_dict(self.config))

    # ----- main loop ----------------------------------------------------------------------------
    def run(self) -> str:
        cfg, S, E = self.config, self.num_seeds, self.envs_per_seed
        start_step, header = 0, None
        if cfg.resume:
            state, header = self.restore_latest()
            start_step = int(header["env_step"])
        else:
            state = self.init_fn(self.seeds.keys())
        placement = sharding.describe(self.seeds.sharding)
        info = {
            "replay_bytes_per_transition": float(bytes_per_transition(jax.tree.map(lambda x: x[0], state.replay))),
            "task_id": self.task_id,
            "seed_devices": placement["seed_devices"],
        }
        records = RunRecords(self.run_dir, cfg, self.seeds, E, header, info, FiniteGuard(self.seeds))
        episodes = EpisodeStats(self.num_envs)

        timestep = self.envs.reset()
        arrays, lives = convert_timestep(timestep, None, cfg.env.terminal_on_life_loss)
        env_carry = self.fused.reset(arrays, lives) if self.fused is not None else None
        total = cfg.total_env_steps
        desc = f"{cfg.name} {self.game} x{S}"
        if self.seeds.sharding is not None:
            desc += f" on {placement['seed_devices']} devices"
        progress = progress_bar(cfg, total, start_step, desc + (" fused" if self.fused is not None else ""))
        window = LogWindow(S)
        slow_update_notice = SlowUpdateNotice()
        env_step = start_step

        def evaluate(episodes, eval_index):  # reads `state` when called: the loop's latest
            return self.evaluate(state.agent.params, episodes, eval_index)

        while env_step < total:
            if self.fused is not None:  # log.every_steps env steps in one compiled chunk
                state, env_carry, metrics, finished = self.fused.advance(state, env_carry, env_step)
                steps = self.fused.chunk_steps
                dispatches = steps // E // cfg.update_every if metrics is not None else 0
            else:  # one iteration: E env steps per seed
                state, arrays, lives, metrics = self.host_iteration(state, arrays, lives, env_step)
                steps = E
                dispatches = int(metrics is not None)
                finished = [(env_step + E, episodes.update(arrays))]
            window.add(steps, dispatches * self.updates_per_dispatch, metrics)
            if dispatches:
                left = (total - env_step - steps) // (E * cfg.update_every) * self.updates_per_dispatch
                slow_update_notice.after_dispatch(metrics, dispatches * self.updates_per_dispatch, left)
            records.updates_done += dispatches * self.updates_per_dispatch
            env_step += steps
            progress.update(steps)
            for step_at, finished_episodes in finished:
                records.episodes(finished_episodes, step_at)

            if crossed(env_step, steps, cfg.log.every_steps) or env_step >= total:
                records.log_window(env_step, window, progress, state.agent, {"beta": float(self.beta(env_step))})
            records.evaluate_and_save_when_due(env_step, steps, total, evaluate, self.checkpointer, state, window)
        progress.close()

        records.finish(self.checkpointer, state, total, start_step, evaluate)
        self.checkpointer.close()
        self.envs.close()
        return self.run_dir

    def host_iteration(self, state, arrays, lives, env_step):
        """collect, maybe an update dispatch, and envpool's step: (state, arrays, lives, metrics or None)."""
        cfg, E = self.config, self.envs_per_seed
        to_seed_axis = self.seeds.put_env_rows
        warmup = env_step < cfg.replay.min_size
        collect = self.collect_random if warmup else self.collect_policy
        state, actions = collect(
            state,
            to_seed_axis(arrays.frame),
            to_seed_axis(arrays.reward),
            to_seed_axis(arrays.discount),
            to_seed_axis(arrays.first),
        )
        metrics = None
        if not warmup and (env_step // E + 1) % cfg.update_every == 0:
            state, metrics = self.update_fn(state, jnp.float32(self.beta(env_step)))
        timestep = self.envs.step(np.asarray(self.seeds.to_host(actions)).reshape(-1), self.env_ids)
        arrays, lives = convert_timestep(timestep, lives, cfg.env.terminal_on_life_loss)
        return state, arrays, lives, metrics


def train(config) -> str:
    """Train as the config says; returns the run directory."""
    return AtariTrainer(config).run()
