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
import os
import time
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from psrl_jax.agents.sac import SACAgent, SACState, learning_rate
from psrl_jax.config import ConfigError, config_to_dict, save_json_atomic
from psrl_jax.config import validate_dmc_config as validate_config
from psrl_jax.envs.dmc import DMCEpisodeStats, action_repeat_for, make_dmc_envs, resolve_task, run_dmc_evaluation
from psrl_jax.replay.sequence_replay import Step, bytes_per_transition, make_sequence_replay, sequence_length
from psrl_jax.train import sharding
from psrl_jax.train.checkpoint import checkpoint_header
from psrl_jax.train.common import EVAL_SEED_OFFSET, SeedAxis, open_run_dir, push_frames, resolve_scan_unroll
from psrl_jax.train.run_dir import (
    MetricsLogger,
    set_aside_previous_attempt,
    truncate_metrics_after,
    write_episode_records,
    write_eval_records,
    write_run_info,
    write_update_records,
)


@flax.struct.dataclass
class TrainState:
    agent: SACState
    replay: object
    frame_stack: jax.Array  # uint8 [E, F, H, W, 3]: the actor's current observation per env
    key: jax.Array


def crossed(step: int, size: int, every: int) -> bool:
    """Whether the last `size` steps, ending at `step`, crossed a multiple of `every` (0: never)."""
    return every > 0 and step // every > (step - size) // every


def resolve_dmc_env(config):
    """(DMCTask, action repeat) of config.env, or a ConfigError naming the field. Cheap: reads
    envpool's registry only."""
    try:
        task = resolve_task(config.env.task)
    except ValueError as error:
        raise ConfigError(f"config.env.task: {error}") from error
    requested = config.env.action_repeat
    if requested is not None and (not isinstance(requested, int) or requested < 1):
        raise ConfigError(
            f"config.env.action_repeat must be an integer >= 1 (or unset for the task's default), got {requested!r}"
        )
    return task, action_repeat_for(task, 0 if requested is None else requested)


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
        self.run_dir, self.checkpointer = open_run_dir(
            config, f"{config.name}-{self.task.name}-s{config.seed}x{config.num_seeds}"
        )
        self.config = config
        self.num_seeds, self.envs_per_seed = config.num_seeds, config.env.envs_per_seed
        self.action_repeat = repeat
        self.env_steps_per_iteration = self.envs_per_seed * repeat  # per seed
        self.total_iterations = config.total_env_steps // self.env_steps_per_iteration
        self.envs = self._make_envs(self.num_seeds * self.envs_per_seed, config.seed * self.envs_per_seed)
        self.action_dim = int(self.envs.action_dim)
        size = config.env.image_size
        self.frame_shape = (size, size, 3)
        self.agent = SACAgent(config, self.action_dim, (config.env.frame_stack, *self.frame_shape))
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
        self.replay = make_sequence_replay(replay_config, self.frame_shape, jnp.float32, (self.action_dim,))
        self.updates_per_dispatch = config.update_every * config.updates_per_step * self.envs_per_seed
        self.scan_unroll = resolve_scan_unroll(config.update_scan_unroll, self.updates_per_dispatch)
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
        )

    # ----- jitted, vmapped pieces ---------------------------------------------------------------
    def _init_single(self, key):
        k_agent, k_act = jax.random.split(key)
        return TrainState(
            agent=self.agent.init(k_agent),
            replay=self.replay.init(),
            frame_stack=jnp.zeros((self.envs_per_seed, self.config.env.frame_stack, *self.frame_shape), jnp.uint8),
            key=k_act,
        )

    def _collect_single(self, state: TrainState, frame, reward, discount, first, random_actions: bool):
        stack = push_frames(state.frame_stack, frame, first)
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

    def _compile(self):
        self.init_fn = self.seeds.jit(jax.vmap(self._init_single))
        self.collect_random = self.seeds.jit(
            jax.vmap(functools.partial(self._collect_single, random_actions=True)), donate_argnums=0
        )
        self.collect_policy = self.seeds.jit(
            jax.vmap(functools.partial(self._collect_single, random_actions=False)), donate_argnums=0
        )
        self.update_fn = self.seeds.jit(jax.vmap(self._update_single), donate_argnums=0)
        self.eval_act = self.seeds.jit(jax.vmap(self._eval_act_single))

    # ----- evaluation ---------------------------------------------------------------------------
    def evaluate(self, agent_state, episodes: int, eval_index: int) -> np.ndarray:
        """[S, episodes] returns of the deterministic policy (tanh of the mean action)."""
        cfg = self.config
        envs_per_seed = min(episodes, cfg.eval.max_parallel_envs)
        num_envs = self.num_seeds * envs_per_seed
        envs = self._make_envs(num_envs, EVAL_SEED_OFFSET + cfg.seed * envs_per_seed)
        base_key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + EVAL_SEED_OFFSET), eval_index)
        counter = [0]

        def policy(stacked_obs, first):
            del first
            counter[0] += 1
            keys = self.seeds.put(jax.random.split(jax.random.fold_in(base_key, counter[0]), self.num_seeds))
            obs = self.seeds.put_env_rows(stacked_obs)
            actions = sharding.to_host(self.eval_act(agent_state, obs, keys))
            return np.asarray(actions).reshape(num_envs, self.action_dim)

        returns = run_dmc_evaluation(envs, policy, episodes // envs_per_seed, cfg.env.frame_stack)
        envs.close()
        return np.asarray(returns).reshape(self.num_seeds, episodes)

    def restore_latest(self):
        return self.checkpointer.restore(self.seeds.state_template(self.init_fn), config_to_dict(self.config))

    # ----- main loop ----------------------------------------------------------------------------
    def run(self) -> str:
        cfg, S, E = self.config, self.num_seeds, self.envs_per_seed
        config_dict = config_to_dict(cfg)
        start_iteration, header = 0, {}
        if cfg.resume:
            state, header = self.restore_latest()
            start_iteration = int(header["env_step"]) // self.env_steps_per_iteration
            truncate_metrics_after(self.run_dir, S, int(header["env_step"]))
        else:
            for path in set_aside_previous_attempt(self.run_dir):
                tqdm.write(f"a previous attempt's logs (no checkpoint) were moved to {path}")
            state = self.init_fn(self.seeds.keys())
        placement = sharding.describe(self.seeds.sharding)
        write_run_info(self.run_dir, cfg, seed_placement=placement)
        logger = MetricsLogger(self.run_dir, S, cfg.log.tensorboard)
        if not cfg.resume:
            replay_bytes = float(bytes_per_transition(jax.tree.map(lambda x: x[0], state.replay)))
            info = {
                "replay_bytes_per_transition": replay_bytes,
                "replay_capacity": self.replay_capacity,
                "task": self.task.name,
                "action_repeat": self.action_repeat,
                "learning_rate": learning_rate(cfg),
                "backend": cfg.env.backend,
                "seed_devices": placement["seed_devices"],
            }
            for i in range(S):
                logger.write(i, "run_info", 0, info)

        episodes = DMCEpisodeStats(S * E)
        episode_counts = np.asarray(header.get("episode_counts", [0] * S), np.int64)
        updates_done = int(header.get("updates_per_seed", 0))
        last_eval = header.get("last_eval")
        eval_index = int(header.get("eval_index", 0))

        arrays = self.envs.reset()
        total_env_steps = self.total_iterations * self.env_steps_per_iteration
        step_size = self.env_steps_per_iteration
        progress = tqdm(
            total=total_env_steps,
            initial=start_iteration * step_size,
            unit="step",
            desc=f"{cfg.name} {self.task.name} x{S}",
            disable=not cfg.log.progress_bar,
            mininterval=1.0 if os.isatty(2) else 30.0,
            miniters=1,
            dynamic_ncols=True,
        )
        window_metrics, window_start, window_steps, window_updates = [], time.time(), 0, 0

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
            if not warmup and (iteration + 1) % cfg.update_every == 0:
                state, metrics = self.update_fn(state)
                window_metrics.append(metrics)
                window_updates += self.updates_per_dispatch
                updates_done += self.updates_per_dispatch
            arrays = self.envs.step(np.asarray(sharding.to_host(actions)).reshape(S * E, self.action_dim))
            env_step = (iteration + 1) * step_size
            window_steps += step_size
            progress.update(step_size)
            write_episode_records(logger, episodes.update(arrays), episode_counts, E, env_step)
            done = iteration + 1 == self.total_iterations

            if crossed(env_step, step_size, cfg.log.every_steps) or done:
                elapsed = max(time.time() - window_start, 1e-9)
                rates = {
                    "env_steps_per_s_all_seeds": window_steps * S / elapsed,
                    "agent_steps_per_s_all_seeds": window_steps * S / self.action_repeat / elapsed,
                    "updates_per_s_all_seeds": window_updates * S / elapsed,
                    "updates_per_seed": updates_done,
                }
                write_update_records(logger, env_step, rates, window_metrics)
                progress.set_postfix(
                    sps=f"{rates['env_steps_per_s_all_seeds']:.0f}",
                    ups=f"{rates['updates_per_s_all_seeds']:.1f}",
                    eval="-" if last_eval is None else f"{last_eval:.1f}",
                    refresh=False,
                )
                window_metrics, window_start, window_steps, window_updates = [], time.time(), 0, 0

            if not done and crossed(env_step, step_size, cfg.eval.every_steps):
                eval_index += 1
                returns = self._log_eval(logger, state, env_step, cfg.eval.episodes, eval_index, "eval")
                last_eval = float(np.mean(returns))
                window_start = time.time()
            if not done and crossed(env_step, step_size, cfg.checkpoint.every_steps):
                self._save(state, env_step, config_dict, episode_counts, updates_done, last_eval, eval_index)
                window_start = time.time()
        progress.close()

        done_path = os.path.join(self.run_dir, "final_eval.json")
        if start_iteration < self.total_iterations or not os.path.exists(done_path):
            if start_iteration < self.total_iterations:
                self._save(state, total_env_steps, config_dict, episode_counts, updates_done, last_eval, eval_index)
            eval_index += 1
            returns = self._log_eval(logger, state, total_env_steps, cfg.eval.final_episodes, eval_index, "final_eval")
            save_json_atomic(done_path, {"env_step": total_env_steps, "return_mean_per_seed": returns.mean(1).tolist()})
        logger.close()
        self.checkpointer.close()
        self.envs.close()
        return self.run_dir

    def _log_eval(self, logger, state, env_step, episodes, eval_index, kind):
        start = time.time()
        returns = self.evaluate(state.agent, episodes, eval_index)
        write_eval_records(logger, kind, env_step, returns, time.time() - start)
        tqdm.write(f"[{kind}] env_step={env_step} return per seed: {np.round(returns.mean(1), 1).tolist()}")
        return returns

    def _save(self, state, env_step, config_dict, episode_counts, updates_done, last_eval, eval_index):
        header = checkpoint_header(env_step, config_dict, episode_counts, updates_done, last_eval, eval_index)
        self.checkpointer.save(env_step, state, header)


def train(config) -> str:
    """Train as the config says; returns the run directory."""
    return DMCTrainer(config).run()
