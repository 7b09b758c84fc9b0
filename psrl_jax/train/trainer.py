"""The seed-parallel training loop of every domain: a host loop over batched envs, all agent work in
jitted calls over a leading seed axis S.

Per iteration (one agent step of every env) the host makes two dispatches: `collect` (push the new
frames into the agents' frame stacks, act, add the rows to replay) and, every `update_every`
iterations once replay holds `min_size` agent steps, `update` (a `lax.scan` of update_every x
updates_per_step x envs_per_seed gradient updates per seed). Then the envs step with the chosen
actions. Agent i of a run with seed s uses key PRNGKey(s + i) and training envs seeded from s + i,
as a single-seed run with seed s + i does.

The domain (train/domains.py) supplies the envs, the agent, the replay and the step unit: config
step counts (total, evaluation, logging, checkpoint intervals) and every record's `env_step` are
environment steps, action repeats included (Atari's repeat is 1: its budget counts agent steps);
replay.min_size and replay.capacity count agent steps. The agent supplies `init`, `act(state, obs,
key, explore)`, `random_actions(key, n)` and `update_many(state, replay, replay_state, beta, n, unroll)`.

With config.shard_seeds on (train/sharding.py) the seed axis of every state and per-step array is
split over the devices (each device holds whole seeds: no collectives); with several processes
(train/multihost.py) each process steps the envs of its own seeds only and the same jitted calls
run on the global seed axis.

The fused mode (config.loop="fused", Atari): `log.every_steps` env steps of the same collect, env
step (envpool's XLA interface, envs/atari_xla.py) and update dispatches run as one compiled
`lax.scan` per chunk, with no Python per step. The same seed replays the same env stream and keys as
the host mode; XLA may fuse float arithmetic differently, so after the warm-up the two agree to
float rounding, not bit for bit (tests/test_fused_loop.py). The host comes back once per chunk to
log, evaluate and checkpoint (config.py: validate_fused_loop_config); the env-side carry is not
checkpointed: a resumed run resets its envs, as the host mode does.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from psrl_jax import xla_cpu
from psrl_jax.config import ConfigError, config_to_dict
from psrl_jax.envs.episodes import EpisodeStats, run_evaluation
from psrl_jax.ops import conv, frame_stack
from psrl_jax.replay.sequence_replay import Step, bytes_per_transition, sequence_length
from psrl_jax.schedules import LinearSchedule
from psrl_jax.train import domains, sharding
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
    agent: object  # the agent's state (RainbowState, SACState)
    replay: object
    frame_stack: jax.Array  # [E, F, *frame] the actor's current observation per training env
    key: jax.Array  # acting key


def replay_rows_needed(total_agent_steps: int, envs_per_seed: int, seq_len: int) -> int:
    """Rows per env that hold the whole run: one per timestep (resets included) plus a margin."""
    return total_agent_steps // envs_per_seed + seq_len + 1


class Trainer:
    """Builds everything from a config (cheap checks first); `run()` trains, evaluates and checkpoints."""

    def __init__(self, config, domain=None):
        self.domain = domains.for_config(config) if domain is None else domain  # validates the config
        self.seeds = SeedAxis.for_config(config)
        self.run_dir, self.checkpointer = open_run_dir(
            config, f"{config.name}-{self.domain.name}-s{config.seed}x{config.num_seeds}"
        )
        self.config = config
        self.num_seeds, self.envs_per_seed = config.num_seeds, config.env.envs_per_seed
        self.env_steps_per_iteration = self.envs_per_seed * self.domain.action_repeat  # per seed
        self.total_iterations = config.total_env_steps // self.env_steps_per_iteration
        # This process's seeds' envs only; agent i's envs are seeded from seed + i as in a 1-seed run.
        self.num_envs = self.seeds.num_local * self.envs_per_seed
        self.envs = self.domain.make_envs(self.num_envs, self.seeds.local.first_seed * self.envs_per_seed, train=True)
        self.frame_shape, self.frame_dtype = tuple(self.envs.frame_shape), self.envs.frame_dtype
        self.agent = self.domain.make_agent(self.envs)
        # The buffer never needs more rows than the run writes: cap it (a 100k x 100x100x3 DMC buffer
        # is 3 GB per seed; cartpole_swingup's 100k env steps are 12.5k transitions).
        seq = sequence_length(config.env.frame_stack, config.replay.n_step, config.replay.prediction_steps)
        rows = min(
            config.replay.capacity // self.envs_per_seed,
            replay_rows_needed(self.total_iterations * self.envs_per_seed, self.envs_per_seed, seq),
        )
        self.replay_capacity = rows * self.envs_per_seed
        self.replay = self.domain.make_replay(self.envs, self.replay_capacity)
        self.beta = LinearSchedule(
            config.replay.importance_beta_start, config.replay.importance_beta_end, config.total_env_steps
        )
        self.updates_per_dispatch = config.update_every * config.updates_per_step * self.envs_per_seed
        self.scan_unroll = resolve_scan_unroll(config.update_scan_unroll, self.updates_per_dispatch)
        self.unroll_seeds = unroll_seeds(config)
        self._compile()
        self.xla_envs = self._fused_envs() if self.domain.loop == "fused" else None

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
        if random_actions:  # warm-up before min_size: uniform random actions
            actions = self.agent.random_actions(k_act, frame.shape[0])
        else:
            actions = self.agent.act(state.agent, stack, k_act, explore=True)
        step = Step(frame=frame, action=actions, reward=reward, discount=discount, first=first)
        return state.replace(replay=self.replay.add(state.replay, step), frame_stack=stack, key=key), actions

    def _update_single(self, state: TrainState, beta):
        agent_state, replay_state, metrics = self.agent.update_many(
            state.agent, self.replay, state.replay, beta, self.updates_per_dispatch, self.scan_unroll
        )
        return state.replace(agent=agent_state, replay=replay_state), metrics

    def in_warmup(self, env_step: int) -> bool:
        """Before replay holds min_size agent steps (of every env): random actions, no updates."""
        return env_step // self.domain.action_repeat < self.config.replay.min_size

    def _eval_act_single(self, agent_state, obs, key):
        return self.agent.act(agent_state, obs, key, explore=False)

    def vmapped_collect(self, random_actions: bool):
        """collect over the seed axis: (state, frame, reward, discount, first) -> (state, actions [S, E, ...])."""
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
    def evaluate(self, agent_state, episodes: int, eval_index: int) -> np.ndarray:
        """[local seeds, episodes] full-episode returns of the evaluation policy (Atari: no reward
        clipping, no life-loss terminals). Each process evaluates its own seeds on its own devices:
        episodes end at different steps, so no call here may wait for another process."""
        cfg, seeds = self.config, self.seeds.local
        envs_per_seed = min(episodes, cfg.eval.max_parallel_envs)
        num_envs = seeds.num_seeds * envs_per_seed
        envs = self.domain.make_envs(num_envs, EVAL_SEED_OFFSET + seeds.first_seed * envs_per_seed, train=False)
        agent_state = self.seeds.to_local(agent_state)
        next_keys = eval_keys(cfg, self.seeds, eval_index)

        def policy(stacked_obs, first):
            del first
            actions = self.eval_act(agent_state, seeds.put_env_rows(stacked_obs), next_keys())
            actions = np.asarray(seeds.to_host(actions))
            return actions.reshape(num_envs, *actions.shape[2:])

        returns = run_evaluation(
            envs, policy, episodes // envs_per_seed, cfg.env.frame_stack, stack_padding=self.replay.stack_padding
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
        step_size = self.env_steps_per_iteration
        total = self.total_iterations * step_size
        start_step, header = 0, None
        if cfg.resume:
            state, header = self.restore_latest()
            start_step = int(header["env_step"])
        else:
            state = self.init_fn(self.seeds.keys())
        placement = sharding.describe(self.seeds.sharding)
        info = {
            "replay_bytes_per_transition": float(bytes_per_transition(jax.tree.map(lambda x: x[0], state.replay))),
            "replay_capacity": self.replay_capacity,
            **self.domain.info,
            "seed_devices": placement["seed_devices"],
        }
        records = RunRecords(self.run_dir, cfg, self.seeds, E, header, info, FiniteGuard(self.seeds))
        episodes = EpisodeStats(self.num_envs)

        arrays = self.envs.reset()
        env_carry = None if self.xla_envs is None else self.xla_envs.carry(arrays, self.seeds.put_env_rows)
        desc = f"{cfg.name} {self.domain.name} x{S}"
        if self.seeds.sharding is not None:
            desc += f" on {placement['seed_devices']} devices"
        progress = progress_bar(cfg, total, start_step, desc + (" fused" if self.xla_envs is not None else ""))
        window = LogWindow(S, action_repeat=self.domain.action_repeat)
        slow_update_notice = SlowUpdateNotice()
        log_beta = bool(cfg.replay.importance_beta_start or cfg.replay.importance_beta_end)
        env_step = start_step

        def evaluate(episodes, eval_index):  # reads `state` when called: the loop's latest
            return self.evaluate(state.agent, episodes, eval_index)

        while env_step < total:
            if self.xla_envs is not None:  # log.every_steps env steps in one compiled chunk
                state, env_carry, metrics, finished = self.fused_chunk(state, env_carry, env_step)
                steps = cfg.log.every_steps
                dispatches = steps // step_size // cfg.update_every if metrics is not None else 0
            else:  # one iteration: one agent step of every env
                state, arrays, metrics = self.host_iteration(state, arrays, env_step)
                steps = step_size
                dispatches = int(metrics is not None)
                finished = [(env_step + steps, episodes.update(arrays))]
            updates = dispatches * self.updates_per_dispatch
            window.add(steps, updates, metrics)
            if dispatches:
                left = (total - env_step - steps) // (step_size * cfg.update_every) * self.updates_per_dispatch
                slow_update_notice.after_dispatch(metrics, updates, left)
            records.updates_done += updates
            env_step += steps
            progress.update(steps)
            for step_at, finished_episodes in finished:
                records.episodes(finished_episodes, step_at)

            if crossed(env_step, steps, cfg.log.every_steps) or env_step >= total:
                extra = {"beta": float(self.beta(env_step))} if log_beta else None
                records.log_window(env_step, window, progress, state.agent, extra)
            records.evaluate_and_save_when_due(env_step, steps, total, evaluate, self.checkpointer, state, window)
        progress.close()

        records.finish(self.checkpointer, state, total, start_step, evaluate)
        self.checkpointer.close()
        self.envs.close()
        return self.run_dir

    def host_iteration(self, state, arrays, env_step):
        """collect, maybe an update dispatch, and the envs' step: (state, arrays, metrics or None)."""
        cfg = self.config
        iteration = env_step // self.env_steps_per_iteration
        to_seed_axis = self.seeds.put_env_rows
        warmup = self.in_warmup(env_step)
        collect = self.collect_random if warmup else self.collect_policy
        state, actions = collect(
            state,
            to_seed_axis(arrays.frame),
            to_seed_axis(arrays.reward),
            to_seed_axis(arrays.discount),
            to_seed_axis(arrays.first),
        )
        metrics = None
        if not warmup and (iteration + 1) % cfg.update_every == 0:
            state, metrics = self.update_fn(state, jnp.float32(self.beta(env_step)))
        actions = np.asarray(self.seeds.to_host(actions))
        arrays = self.envs.step(actions.reshape(self.num_envs, *actions.shape[2:]))
        return state, arrays, metrics

    # ----- fused mode: one compiled chunk per log window ----------------------------------------
    def _fused_envs(self):  # several processes: refused by SeedAxis.for_config (validate_process_count)
        if self.seeds.sharding is not None:
            raise ConfigError(
                "config.loop='fused' runs on one device: envpool's XLA step takes every env's action "
                "on one device. Pass --config.shard_seeds=off, or use config.loop='host' to shard seeds."
            )
        # Two programs: warm-up chunks (random actions, no updates) and training chunks. The env
        # carry is donated too: the handle is aliased in place by envpool's custom call.
        self._chunks = {
            warmup: jax.jit(functools.partial(self._chunk, warmup=warmup), donate_argnums=(0, 1))
            for warmup in (True, False)
        }
        self._chunk_programs = {}  # warmup flag -> compiled chunk
        return self.domain.xla_envs(self.envs, self.num_seeds)

    def fused_chunk(self, state, env_carry, env_step: int):
        """log.every_steps env steps from `env_step`: (state, env carry, metrics or None, the finished
        episodes as [(env step after the step, [FinishedEpisode, ...]), ...])."""
        warmup = self.in_warmup(env_step)
        step = jnp.int32(env_step)
        state, env_carry, metrics, ends = self._chunk_program(warmup, state, env_carry, step)(state, env_carry, step)
        return state, env_carry, metrics, self.xla_envs.finished(ends, env_step)

    def _chunk_program(self, warmup: bool, state, env_carry, env_step):
        """The compiled chunk, compiled on first use. A platform where envpool's custom call cannot
        be compiled (e.g. an envpool build without GPU kernels on a GPU) gets a clear error here,
        before any training chunk runs."""
        if warmup not in self._chunk_programs:
            try:
                with conv.tracing_rolled_loop():  # convs with a fast kernel gradient in loops (ops/conv.py)
                    lowered = self._chunks[warmup].lower(state, env_carry, env_step)
                self._chunk_programs[warmup] = lowered.compile()
            except Exception as error:  # noqa: BLE001 - any compile failure: say what to do instead
                raise ConfigError(
                    f"config.loop='fused' could not compile envpool's XLA step into the training loop on "
                    f"{jax.default_backend()} (jax {jax.__version__}): {type(error).__name__}: {error}. "
                    "Use config.loop='host'."
                ) from error
        return self._chunk_programs[warmup]

    def _chunk(self, state, env_carry, env_step, warmup: bool):
        collect = self.vmapped_collect(random_actions=warmup)
        update_every, step_size = self.config.update_every, self.env_steps_per_iteration
        iterations = self.config.log.every_steps // step_size

        def iteration(carry, _):
            state, env_carry = carry
            state, actions = collect(state, env_carry.frame, env_carry.reward, env_carry.discount, env_carry.first)
            env_carry, ends = self.xla_envs.step(env_carry, actions)
            return (state, env_carry), ends

        def block(carry, block_index):
            # update_every iterations, then (after the warm-up) one update dispatch. The host loop
            # updates between the last collect and its env step; the env step does not touch the
            # agent, so updating after it is the same computation.
            (state, env_carry), ends = jax.lax.scan(iteration, carry, None, length=update_every)
            metrics = {}
            if not warmup:  # beta at the env step of the block's last collect, as the host loop's
                last_collect_step = env_step + (block_index * update_every + update_every - 1) * step_size
                state, metrics = self.vmapped_update(state, self.beta(last_collect_step))
            return (state, env_carry), (ends, metrics)

        blocks = iterations // update_every
        (state, env_carry), (ends, metrics) = jax.lax.scan(block, (state, env_carry), jnp.arange(blocks))
        ends = jax.tree.map(lambda x: x.reshape(iterations, *x.shape[2:]), ends)
        # One window mean per chunk: the mean over the chunk's dispatches, as the host loop logs it.
        metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), metrics) if metrics else None
        return state, env_carry, metrics, ends


def train(config, domain=None) -> str:
    """Train as the config says (in `domain`, or the config's own); returns the run directory."""
    return Trainer(config, domain).run()
