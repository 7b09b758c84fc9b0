"""Seed-parallel DMC training loop: SAC (+ PSRL) from pixels, the Atari trainer's shape for DMC.

The same host loop as psrl_jax/train/atari_trainer.py: per agent step one `collect` dispatch (push
the rendered frames into the agents' stacks, act, add the rows to replay) and, once replay holds
`min_size` agent steps, every `update_every` steps one `update` dispatch (update_every x
updates_per_step x envs_per_seed SAC updates per seed). Seeds are a leading array axis, vmapped
and optionally sharded over devices exactly as on Atari; agent i of a run with seed s uses
PRNGKey(s + i) and envs seeded from s + i.

Units: config step counts (total, evaluation, logging, checkpoint intervals) are *environment*
steps with action repeats counted, as DMC results are reported; every record's `env_step` is in
that unit. replay.min_size and replay.capacity count transitions (agent steps).
"""

import functools
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np

from psrl_jax import xla_cpu
from psrl_jax.agents.sac import SACAgent, SACState, learning_rate
from psrl_jax.config import config_to_dict
from psrl_jax.config import validate_dmc_config as validate_config
from psrl_jax.envs.dmc import (
    DMCEpisodeStats,
    make_dmc_envs,
    prepare_rendering,
    resolve_dmc_env,  # re-exported: where the trainer's callers have found it
    run_dmc_evaluation,
)
from psrl_jax.ops import frame_stack
from psrl_jax.replay.sequence_replay import Step, bytes_per_transition, make_sequence_replay, sequence_length
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


@flax.struct.dataclass
class TrainState:
    agent: SACState
    replay: object
    frame_stack: jax.Array  # uint8 [E, F, H, W, 3] (states: float32 [E, F, D]): the actor's observation per env
    key: jax.Array


def replay_rows_needed(total_agent_steps: int, envs_per_seed: int, seq_len: int) -> int:
    """Rows per env that hold the whole run: one per timestep (resets included) plus a margin."""
    return total_agent_steps // envs_per_seed + seq_len + 1


class DMCTrainer:
    """Builds everything from a validated config; `run()` trains, evaluates and checkpoints."""

    def __init__(self, config):
        self.task, repeat = resolve_dmc_env(config)  # cheap checks first: no env, no compile
        config.env.action_repeat = repeat  # resolved, so config.json records the repeat used
        validate_config(config)
        self.seeds = SeedAxis.for_config(config)
        prepare_rendering(config.env.backend, config.env.observation, config.env.gl)
        self.run_dir, self.checkpointer = open_run_dir(
            config, f"{config.name}-{self.task.name}-s{config.seed}x{config.num_seeds}"
        )
        self.config = config
        self.num_seeds, self.envs_per_seed = config.num_seeds, config.env.envs_per_seed
        self.action_repeat = repeat
        self.env_steps_per_iteration = self.envs_per_seed * repeat  # per seed
        self.total_iterations = config.total_env_steps // self.env_steps_per_iteration
        # This process's seeds' envs only; agent i's envs are seeded from seed + i as in a 1-seed run.
        self.num_envs = self.seeds.num_local * self.envs_per_seed
        self.envs = self._make_envs(self.num_envs, self.seeds.local.first_seed * self.envs_per_seed)
        self.action_dim = int(self.envs.action_dim)
        self.frame_shape, self.frame_dtype = tuple(self.envs.frame_shape), self.envs.frame_dtype
        self.agent = SACAgent.from_config(config, self.action_dim, (config.env.frame_stack, *self.frame_shape))
        # The buffer never needs more rows than the run writes: cap it (a 100k x 100x100x3 buffer is
        # 3 GB per seed; cartpole_swingup's 100k env steps are 12.5k transitions).
        seq = sequence_length(config.env.frame_stack, config.replay.n_step, config.replay.prediction_steps)
        rows = min(
            config.replay.capacity // self.envs_per_seed,
            replay_rows_needed(self.total_iterations * self.envs_per_seed, self.envs_per_seed, seq),
        )
        replay_config = types.SimpleNamespace(
            env=config.env, agent=config.agent, replay=types.SimpleNamespace(**config.replay.to_dict())
        )
        replay_config.replay.capacity = rows * self.envs_per_seed
        self.replay_capacity = replay_config.replay.capacity
        self.replay = make_sequence_replay(
            replay_config, self.frame_shape, jnp.float32, (self.action_dim,), frame_dtype=self.frame_dtype
        )
        self.updates_per_dispatch = config.update_every * config.updates_per_step * self.envs_per_seed
        self.scan_unroll = resolve_scan_unroll(config.update_scan_unroll, self.updates_per_dispatch)
        self.unroll_seeds = unroll_seeds(config)
        self._compile()

    def _make_envs(self, num_envs: int, seed: int):
        env = self.config.env
        return make_dmc_envs(
            env.task,
            num_envs,
            seed,
            action_repeat=self.action_repeat,
            image_size=env.image_size,
            backend=env.backend,
            camera_id=env.camera_id,
            num_threads=env.num_threads,
            gl=env.gl,
            observation=env.observation,
        )

    # ----- jitted, vmapped pieces ---------------------------------------------------------------
    def _init_single(self, key):
        k_agent, k_act = jax.random.split(key)
        return TrainState(
            agent=self.agent.init(k_agent),
            replay=self.replay.init(),
            frame_stack=jnp.zeros(
                (self.envs_per_seed, self.config.env.frame_stack, *self.frame_shape), self.frame_dtype
            ),
            key=k_act,
        )

    def _collect_single(self, state: TrainState, frame, reward, discount, first, random_actions: bool):
        stack = frame_stack.push(state.frame_stack, frame, first, self.replay.stack_padding, xp=jnp)
        key, k_act = jax.random.split(state.key)
        if random_actions:  # warm-up: uniform actions in the [-1, 1] box of every DMC task
            actions = jax.random.uniform(k_act, (frame.shape[0], self.action_dim), minval=-1.0, maxval=1.0)
        else:
            actions = self.agent.act(state.agent, stack, k_act, deterministic=False)
        step = Step(frame=frame, action=actions, reward=reward, discount=discount, first=first)
        return state.replace(replay=self.replay.add(state.replay, step), frame_stack=stack, key=key), actions

    def _update_single(self, state: TrainState):
        agent_state, replay_state, metrics = self.agent.update_many(
            state.agent, self.replay, state.replay, self.updates_per_dispatch, self.scan_unroll
        )
        return state.replace(agent=agent_state, replay=replay_state), metrics

    def _eval_act_single(self, agent_state, obs, key):
        return self.agent.act(agent_state, obs, key, deterministic=True)

    @property
    def vmapped_update(self):
        """One update dispatch over the seed axis: state -> (state, metrics [S])."""
        return vmap_seeds(self._update_single, unroll=self.unroll_seeds)

    def _compile(self):
        # Runs once per run: on the CPU, LLVM -O1 compiles it ~3x faster, same parameters bit for bit.
        self.init_fn = self.seeds.jit(
            vmap_seeds(self._init_single), compiler_options=xla_cpu.one_shot_compiler_options()
        )
        self.collect_random = self.seeds.jit(
            vmap_seeds(functools.partial(self._collect_single, random_actions=True)), donate_argnums=0
        )
        self.collect_policy = self.seeds.jit(
            vmap_seeds(functools.partial(self._collect_single, random_actions=False)), donate_argnums=0
        )
        self.update_fn = self.seeds.jit(self.vmapped_update, donate_argnums=0)
        self.eval_act = self.seeds.local.jit(vmap_seeds(self._eval_act_single))  # process-local

    # ----- evaluation ---------------------------------------------------------------------------
    def evaluate(self, agent_state, episodes: int, eval_index: int) -> np.ndarray:
        """[local seeds, episodes] returns of the deterministic policy (tanh of the mean action), on
        this process's devices only (as on Atari)."""
        cfg, seeds = self.config, self.seeds.local
        envs_per_seed = min(episodes, cfg.eval.max_parallel_envs)
        num_envs = seeds.num_seeds * envs_per_seed
        envs = self._make_envs(num_envs, EVAL_SEED_OFFSET + seeds.first_seed * envs_per_seed)
        agent_state = self.seeds.to_local(agent_state)
        next_keys = eval_keys(cfg, self.seeds, eval_index)

        def policy(stacked_obs, first):
            del first
            keys = next_keys()
            actions = seeds.to_host(self.eval_act(agent_state, seeds.put_env_rows(stacked_obs), keys))
            return np.asarray(actions).reshape(num_envs, self.action_dim)

        returns = run_dmc_evaluation(
            envs, policy, episodes // envs_per_seed, cfg.env.frame_stack, stack_padding=self.replay.stack_padding
        )
        envs.close()
        return np.asarray(returns).reshape(seeds.num_seeds, episodes)

    def restore_latest(self):
        return self.checkpointer.restore(self.seeds.state_template(self.init_fn), config_to_dict(self.config))

    # ----- main loop ----------------------------------------------------------------------------
    def run(self) -> str:
        cfg, S, E = self.config, self.num_seeds, self.envs_per_seed
        start_iteration, header = 0, None
        if cfg.resume:
            state, header = self.restore_latest()
            start_iteration = int(header["env_step"]) // self.env_steps_per_iteration
        else:
            state = self.init_fn(self.seeds.keys())
        info = {
            "replay_bytes_per_transition": float(bytes_per_transition(jax.tree.map(lambda x: x[0], state.replay))),
            "replay_capacity": self.replay_capacity,
            "task": self.task.name,
            "action_repeat": self.action_repeat,
            "learning_rate": learning_rate(cfg),
            "backend": cfg.env.backend,
            "seed_devices": sharding.describe(self.seeds.sharding)["seed_devices"],
        }
        records = RunRecords(self.run_dir, cfg, self.seeds, E, header, info, FiniteGuard(self.seeds))
        episodes = DMCEpisodeStats(self.num_envs)

        arrays = self.envs.reset()
        total_env_steps = self.total_iterations * self.env_steps_per_iteration
        step_size = self.env_steps_per_iteration
        progress = progress_bar(cfg, total_env_steps, start_iteration * step_size, f"{cfg.name} {self.task.name} x{S}")
        window = LogWindow(S, action_repeat=self.action_repeat)
        slow_update_notice = SlowUpdateNotice()

        def evaluate(episodes, eval_index):  # reads `state` when called: the loop's latest
            return self.evaluate(state.agent, episodes, eval_index)

        to_seed_axis = self.seeds.put_env_rows
        for iteration in range(start_iteration, self.total_iterations):
            warmup = iteration * E < cfg.replay.min_size
            collect = self.collect_random if warmup else self.collect_policy
            state, actions = collect(
                state,
                to_seed_axis(arrays.frame),
                to_seed_axis(arrays.reward),
                to_seed_axis(arrays.discount),
                to_seed_axis(arrays.first),
            )
            metrics, updates = None, 0
            if not warmup and (iteration + 1) % cfg.update_every == 0:
                state, metrics = self.update_fn(state)
                updates = self.updates_per_dispatch
                remaining = (self.total_iterations - iteration - 1) // cfg.update_every * updates
                slow_update_notice.after_dispatch(metrics, updates, remaining)
            window.add(step_size, updates, metrics)
            records.updates_done += updates
            arrays = self.envs.step(np.asarray(self.seeds.to_host(actions)).reshape(self.num_envs, self.action_dim))
            env_step = (iteration + 1) * step_size
            progress.update(step_size)
            records.episodes(episodes.update(arrays), env_step)

            if crossed(env_step, step_size, cfg.log.every_steps) or env_step >= total_env_steps:
                records.log_window(env_step, window, progress, state.agent)
            records.evaluate_and_save_when_due(
                env_step, step_size, total_env_steps, evaluate, self.checkpointer, state, window
            )
        progress.close()

        records.finish(self.checkpointer, state, total_env_steps, start_iteration * step_size, evaluate)
        self.checkpointer.close()
        self.envs.close()
        return self.run_dir


def train(config) -> str:
    """Train as the config says; returns the run directory."""
    return DMCTrainer(config).run()
