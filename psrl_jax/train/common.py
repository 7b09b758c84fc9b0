"""What the trainer (train/trainer.py) keeps apart from its loop: where the
seeds live (`SeedAxis`), the run directory and its checkpointer, what a run records (`RunRecords`:
metrics, throughput windows, evaluations, checkpoints, the final evaluation), the seed axis's
vmap or unroll and the update scan's unroll. The trainer's loop reads top to bottom and calls these."""

import contextlib
import dataclasses
import functools
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from tqdm import tqdm

from psrl_jax.config import (
    SEED_BATCHING_MODES,
    ConfigError,
    check_writable_directory,
    config_to_dict,
    save_json_atomic,
    validate_process_count,
)
from psrl_jax.train import multihost, sharding
from psrl_jax.train.checkpoint import Checkpointer, checkpoint_header
from psrl_jax.train.run_dir import (
    MetricsLogger,
    latest_checkpoint_step,
    set_aside_previous_attempt,
    truncate_metrics_after,
    write_episode_records,
    write_eval_records,
    write_run_info,
    write_update_records,
)

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs never share seeds with training envs


@dataclasses.dataclass(frozen=True)
class SeedAxis:
    """The leading seed axis of every per-seed array: S seeds starting at `first_seed`, split over
    all devices by `sharding` (psrl_jax/train/sharding.py) or, when it is None, on the default device.

    With several processes (jax.distributed, psrl_jax/train/multihost.py) the sharding spans every
    process's devices and this process owns the contiguous seeds `local_rows`: it steps only their
    envs, passes only their rows in (`put`, `put_env_rows`) and gets only their rows back
    (`to_host`). With one process `local_rows` is every seed and these are plain transfers."""

    num_seeds: int
    first_seed: int
    sharding: NamedSharding | None
    local_rows: slice

    @classmethod
    def for_config(cls, config) -> "SeedAxis":
        """config.num_seeds from config.seed, sharded as config.shard_seeds says (always, across
        processes, with several processes)."""
        validate_process_count(config, jax.process_count())
        mode = config.shard_seeds
        if jax.process_count() > 1:
            mode = "on"  # every process must own whole seeds: refuse a num_seeds that does not divide
        placed = None
        if sharding.use_seed_sharding(mode, config.num_seeds, jax.device_count()):
            placed = sharding.seed_sharding(sharding.seed_mesh())
        return cls(config.num_seeds, config.seed, placed, sharding.local_rows(placed, config.num_seeds))

    @property
    def num_local(self) -> int:
        """How many seeds this process owns (all of them with one process)."""
        return self.local_rows.stop - self.local_rows.start

    @property
    def seed_indices(self) -> range:
        """The indices (0..S-1) of this process's seeds: its metrics files are seed_<i>.jsonl."""
        return range(self.local_rows.start, self.local_rows.stop)

    @functools.cached_property
    def local(self) -> "SeedAxis":
        """This process's seeds on its own devices: for work whose length differs between processes
        (evaluation episodes end when they end). With one process, the axis itself."""
        if jax.process_count() == 1:
            return self
        placed = sharding.seed_sharding(sharding.seed_mesh(jax.local_devices()))
        return SeedAxis(self.num_local, self.first_seed + self.local_rows.start, placed, slice(0, self.num_local))

    def to_local(self, tree):
        """Arrays on this axis as arrays on `local` (a host round trip; the same arrays with one process)."""
        if jax.process_count() == 1:
            return tree
        return self.local.put(self.to_host(tree))

    def jit(self, fn, *, replicated_argnums=(), **kwargs):
        """jax.jit of a function vmapped over the seed axis (every output has it; so has every
        argument but `replicated_argnums`). Sharded, it runs under `jax.shard_map`: each device runs
        `fn` on its own seeds and nothing else. Left to XLA's SPMD partitioner, the vmapped
        convolutions (per-seed kernels become one grouped convolution) were all-gathered: every
        device computed every seed's encoder (tests/test_multihost.py checks the compiled programs).
        Unsharded, the outputs are committed to the default device, as a restored checkpoint's
        arrays are (state_template): a resumed run then lowers the fresh run's programs, and a
        persistent compilation cache serves them (uncommitted inputs lower without the sharding
        annotations committed ones get, so the two runs' programs differed)."""
        if self.sharding is None:
            return jax.jit(fn, out_shardings=sharding.default_device_sharding(), **kwargs)
        mesh, seeds, whole = self.sharding.mesh, self.sharding.spec, jax.sharding.PartitionSpec()

        def per_device(*args):
            in_specs = tuple(whole if i in replicated_argnums else seeds for i in range(len(args)))
            # check_vma=False: flashbax's sum-tree loop mixes per-seed and constant values, which the
            # replication check rejects; fn has no collectives, so there is nothing for it to check.
            return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=seeds, check_vma=False)(*args)

        return jax.jit(per_device, out_shardings=self.sharding, **kwargs)

    def put(self, tree):
        """Host arrays holding this process's seed rows onto the seeds' devices (the global arrays)."""
        return sharding.put_seed_axis(tree, self.sharding)

    def put_env_rows(self, x):
        """A host array over this process's envs (seed-major) as [S, E, ...] on the seeds' devices."""
        x = np.asarray(x)
        return self.put(x.reshape(self.num_local, x.shape[0] // self.num_local, *x.shape[1:]))

    def to_host(self, tree):
        """numpy copies of this process's seed rows of (possibly sharded) arrays."""
        return sharding.local_rows_to_host(tree)

    def gather(self, tree):
        """Host arrays of this process's seed rows -> every seed's rows, on every process (a
        collective: every process calls it at the same point)."""
        return sharding.gather_rows(tree)

    def keys(self):
        """PRNGKey(first_seed + i) for agent i: the key a single-seed run with that seed uses."""
        return self.put(np.stack([jax.random.PRNGKey(self.first_seed + i) for i in self.seed_indices]))

    def state_template(self, init_fn):
        """The shapes (and placement) of init_fn's state, without computing it: for checkpoint restore."""
        keys = jax.ShapeDtypeStruct((self.num_seeds, *jax.random.PRNGKey(0).shape), jnp.uint32)
        return sharding.with_sharding(jax.eval_shape(init_fn, keys), self.sharding)


def resolve_seed_batching(mode: str, backend: str | None = None) -> str:
    """config.seed_batching -> "vmap" or "unroll"; "auto" unrolls on the CPU and vmaps elsewhere.

    vmap batches the seeds' networks, which turns every convolution into a grouped convolution
    (feature_group_count = S): accelerators run one wide program, but XLA:CPU runs grouped
    convolutions slowly (2 vmapped pixel-SAC seeds 0.57x the speed of one seed after the other,
    docs/BENCHMARKS.md "Seeds on the CPU"). unroll traces the one-seed function once per seed into
    the same program: the seeds run one after another, each at one-seed speed."""
    if mode not in SEED_BATCHING_MODES:
        raise ConfigError(f"config.seed_batching must be one of {SEED_BATCHING_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "unroll" if (backend or jax.default_backend()) == "cpu" else "vmap"


def unroll_seeds(config) -> bool:
    """Whether a trainer unrolls its seeds' updates (config.seed_batching)."""
    return resolve_seed_batching(config.seed_batching) == "unroll"


def vmap_seeds(fn, in_axes=0, unroll: bool = False):
    """`jax.vmap(fn, in_axes)` over the seed axis (every output gets it), except that:
    - an axis of size 1 (one seed, or one seed per device under shard_map) is indexed away and added
      back instead of vmapped: the same computation, but XLA:CPU compiles some ops of rank 5 with a
      size-1 leading axis several times slower (the local correlation 6x; the whole sac_psrl update
      4.6 s vs 1.7 s, docs/BENCHMARKS.md), which S >= 2 does not suffer;
    - with `unroll`, S >= 2 seeds are not batched either: fn runs on each seed's slice in turn and the
      outputs are stacked (resolve_seed_batching says when that is faster)."""
    vmapped = jax.vmap(fn, in_axes=in_axes)

    def call(*args):
        axes = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
        sizes = {
            x.shape[0] for arg, axis in zip(args, axes, strict=True) if axis is not None for x in jax.tree.leaves(arg)
        }
        if len(sizes) != 1 or (sizes != {1} and not unroll):
            return vmapped(*args)

        def seed(i):
            return fn(
                *[
                    arg if axis is None else jax.tree.map(lambda x: x[i], arg)
                    for arg, axis in zip(args, axes, strict=True)
                ]
            )

        outs = [seed(i) for i in range(sizes.pop())]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return call


def eval_keys(config, seeds: SeedAxis, eval_index: int):
    """A function that returns the acting keys of one evaluation step ([local seeds] keys on this
    process's devices) each time it is called: the keys the single-process run uses for these
    seeds, different for every evaluation (`eval_index`) and step, never the training keys."""
    base_key = jax.random.fold_in(jax.random.PRNGKey(config.seed + EVAL_SEED_OFFSET), eval_index)
    step = itertools.count(1)

    def next_keys():
        all_keys = jax.random.split(jax.random.fold_in(base_key, next(step)), seeds.num_seeds)
        return seeds.local.put(np.asarray(all_keys)[seeds.local_rows])

    return next_keys


def open_run_dir(config, default_name: str) -> tuple[str, Checkpointer]:
    """(run directory, its Checkpointer): config.run_dir or runs/<default_name>-<timestamp>. Refuses
    to resume without a run_dir, and to start afresh over checkpoints (nothing is overwritten)."""
    if config.resume and not config.run_dir:
        raise ConfigError("config.resume=True needs config.run_dir pointing at the run to continue")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(multihost.shared_time()))  # process 0's clock
    run_dir = config.run_dir or os.path.join("runs", f"{default_name}-{stamp}")
    if config.resume and latest_checkpoint_step(run_dir) is None:  # before anything is created there
        raise ConfigError(f"config.resume=True, but {run_dir} holds no complete checkpoint to continue")
    check_writable_directory(run_dir)
    checkpointer = Checkpointer(run_dir, config.checkpoint.keep)
    if not config.resume and checkpointer.latest_step() is not None:
        raise ConfigError(
            f"{run_dir} already holds checkpoints; pass --config.resume=True to continue it, "
            "or choose another --config.run_dir (nothing was overwritten)"
        )
    return run_dir, checkpointer


class RunRecords:
    """What a run writes besides its state, and the counters its checkpoint header carries.

    Per-seed records (metrics/seed_<i>.jsonl, TensorBoard) go to this process's seeds only; run-wide
    files (config.json, versions.json, final_eval.json) are written by process 0 from values gathered
    over every process. With one process that is simply everything. Start-up: a resumed run drops its
    records after the checkpoint (kept aside, run_dir.py); a fresh start moves a killed attempt's logs
    aside. The trainer (train/trainer.py) keeps one of these through `run()`."""

    def __init__(
        self, run_dir: str, config, seeds: SeedAxis, envs_per_seed: int, header: dict | None, info: dict, guard
    ):
        self.run_dir, self.config, self.seeds, self.envs_per_seed = run_dir, config, seeds, envs_per_seed
        self.guard = guard  # finite_guard.FiniteGuard: a non-finite loss or parameter stops the run
        self.checked_step = None  # the env step whose agent state the guard last passed
        if header is not None:
            truncate_metrics_after(run_dir, seeds.seed_indices, int(header["env_step"]))
        elif multihost.is_main():
            for path in set_aside_previous_attempt(run_dir):
                log(f"a previous attempt's logs (no checkpoint) were moved to {path}")
        multihost.barrier("run_dir_ready")  # no process opens its logs before the old ones are moved
        if multihost.is_main():
            resumed_at = None if header is None else int(header["env_step"])
            write_run_info(run_dir, config, resumed_at, seed_placement=sharding.describe(seeds.sharding))
        self.logger = MetricsLogger(run_dir, seeds.seed_indices, config.log.tensorboard)
        if header is None:
            for i in seeds.seed_indices:
                self.logger.write(i, "run_info", 0, info)
        header = header or {}
        self.episode_counts = np.asarray(header.get("episode_counts", [0] * seeds.num_seeds), np.int64)[
            seeds.local_rows
        ]
        self.updates_done = int(header.get("updates_per_seed", 0))
        self.last_eval = header.get("last_eval")
        self.eval_index = int(header.get("eval_index", 0))

    def episodes(self, finished, env_step: int) -> None:
        """Finished episodes of this process's envs (FinishedEpisode, env_index local)."""
        write_episode_records(self.logger, finished, self.episode_counts, self.envs_per_seed, env_step)

    def update(self, env_step: int, rates: dict, window_metrics: list) -> dict:
        """The rates plus each metric averaged over the window's dispatches ([S] device arrays each);
        returns those means (host arrays over this process's seeds)."""
        means = {}
        if window_metrics:
            means = self.seeds.to_host(jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0), *window_metrics))
        write_update_records(self.logger, env_step, rates, means)
        return means

    def log_window(
        self, env_step: int, window: "LogWindow", progress: tqdm, agent_state, extra: dict | None = None
    ) -> None:
        """One "update" record per seed for the window (its rates, `extra` and its metrics' means), the
        progress bar's figures, and a fresh window. Then the non-finite guard: the records above are
        written (and flushed) first, so the window that diverged is on disk when the run stops."""
        rates = {**window.rates(), "updates_per_seed": self.updates_done, **(extra or {})}
        means = self.update(env_step, rates, window.metrics)
        self.check_finite(env_step, agent_state, means)
        ups = rates["updates_per_s_all_seeds"]
        eta = window.eta_s(max(self.config.total_env_steps - env_step, 0))
        progress.set_postfix(
            sps=f"{rates['env_steps_per_s_all_seeds']:.0f}",
            ups=f"{ups:.1f}" if ups < 10 else f"{ups:.0f}",
            eval="-" if self.last_eval is None else f"{self.last_eval:.1f}",
            eta="after warm-up" if eta is None else format_duration(eta),
            refresh=False,
        )
        window.reset()

    def evaluate_and_save_when_due(self, env_step, steps, total, evaluate_fn, checkpointer, state, window) -> None:
        """After `steps` env steps ending at `env_step`: an evaluation and a checkpoint where those
        steps crossed their intervals (never at `total`: `finish` does both there). Their time is kept
        out of the window's throughput."""
        if env_step >= total:
            return
        if crossed(env_step, steps, self.config.eval.every_steps):
            with window.paused():
                self.evaluate(evaluate_fn, "eval", env_step, self.config.eval.episodes)
        if crossed(env_step, steps, self.config.checkpoint.every_steps):
            with window.paused():
                self.save(checkpointer, state, env_step)

    def finish(self, checkpointer, state, total, start_step: int, evaluate_fn) -> None:
        """The end of `run()`: a checkpoint at `total` before the (long) final evaluation, the final
        evaluation (also when a finished run is resumed without one), and the logs closed. A run
        resumed after its end writes nothing new."""
        if start_step < total or not os.path.exists(self.final_eval_path):
            if start_step < total:
                self.save(checkpointer, state, total)
            self.evaluate(evaluate_fn, "final_eval", total, self.config.eval.final_episodes)
        self.close()

    def evaluate(self, evaluate_fn, kind: str, env_step: int, episodes: int) -> np.ndarray:
        """evaluate_fn(episodes, eval_index) -> this process's returns [local seeds, episodes]; records
        them and returns every seed's (gathered). For "final_eval" process 0 writes final_eval.json."""
        self.eval_index += 1
        start = time.time()
        returns = evaluate_fn(episodes, self.eval_index)
        write_eval_records(self.logger, kind, env_step, returns, time.time() - start)
        returns = self.seeds.gather(np.asarray(returns))
        self.last_eval = float(np.mean(returns))
        log(f"[{kind}] env_step={env_step} return per seed: {np.round(returns.mean(1), 1).tolist()}")
        if kind == "final_eval" and multihost.is_main():
            save_json_atomic(
                self.final_eval_path, {"env_step": env_step, "return_mean_per_seed": returns.mean(1).tolist()}
            )
        return returns

    @property
    def final_eval_path(self) -> str:
        return os.path.join(self.run_dir, "final_eval.json")

    def check_finite(self, env_step: int, agent_state, metric_means: dict | None = None) -> None:
        """finite_guard.FiniteGuard.check; on failure the logs are closed (flushed) before it raises.
        A checkpoint at a log point's step saves the state that point just checked: not checked twice."""
        try:
            self.guard.check(env_step, agent_state, metric_means, kept_steps=self.kept_checkpoints)
        except Exception:
            self.close()
            raise
        self.checked_step = env_step

    def kept_checkpoints(self) -> list:
        path = os.path.join(self.run_dir, "checkpoints")
        return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []

    def save(self, checkpointer: Checkpointer, state, env_step: int) -> None:
        """A checkpoint of `state` with the header of where the run stands (every process calls it),
        after the non-finite guard has checked its agent state."""
        if self.checked_step != env_step:
            self.check_finite(env_step, state.agent)
        episode_counts = self.seeds.gather(self.episode_counts)
        header = checkpoint_header(
            env_step, config_to_dict(self.config), episode_counts, self.updates_done, self.last_eval, self.eval_index
        )
        checkpointer.save(env_step, state, header)

    def close(self) -> None:
        self.logger.close()


def crossed(step: int, size: int, every: int) -> bool:
    """Whether the last `size` steps, ending at `step`, crossed a multiple of `every` (0: never)."""
    return every > 0 and step // every > (step - size) // every


class LogWindow:
    """What happened since the last "update" record: env steps and updates per seed, the update
    dispatches' metrics ([S] arrays each) and the training time (pauses left out), for all seeds.
    With `action_repeat` (DMC, whose env steps count action repeats) the rates add agent steps/s."""

    def __init__(self, num_seeds: int, action_repeat: int | None = None):
        self.num_seeds, self.action_repeat = num_seeds, action_repeat
        self.reset()

    def reset(self) -> None:
        self.metrics, self.env_steps, self.updates = [], 0, 0
        self.start, self.paused_s = time.time(), 0.0

    def add(self, env_steps: int, updates: int, metrics=None) -> None:
        self.env_steps += env_steps
        self.updates += updates
        if metrics is not None:
            self.metrics.append(metrics)

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (evaluations, checkpoints) does not count as training time."""
        start = time.time()
        try:
            yield
        finally:
            self.paused_s += time.time() - start

    def elapsed(self) -> float:
        return max(time.time() - self.start - self.paused_s, 1e-9)

    def eta_s(self, remaining_env_steps: int) -> float | None:
        """Seconds left at this window's rate, or None for a window without updates: the warm-up's
        random steps run far faster than training, so their rate says nothing of the rest. (tqdm's own
        estimate averaged over phases: a months-long CPU run showed 40 minutes after its warm-up.)"""
        if self.updates == 0 or self.env_steps == 0:
            return None
        return remaining_env_steps * self.elapsed() / self.env_steps

    def rates(self) -> dict:
        elapsed = self.elapsed()
        rates = {
            "env_steps_per_s_all_seeds": self.env_steps * self.num_seeds / elapsed,
            "updates_per_s_all_seeds": self.updates * self.num_seeds / elapsed,
        }
        if self.action_repeat is not None:
            rates["agent_steps_per_s_all_seeds"] = rates["env_steps_per_s_all_seeds"] / self.action_repeat
        return rates


def format_duration(seconds: float) -> str:
    """3 s, 12 min, 5.2 h, 3.4 days: a wall-clock estimate at the precision it deserves."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


SLOW_UPDATE_S = 10.0  # per update (all seeds): above this on a CPU, a run says what it will cost


class SlowUpdateNotice:
    """On a CPU backend, one line projecting the run's wall-clock from its first measured update
    dispatch (the second: the first one compiles), when an update takes more than SLOW_UPDATE_S. A
    full-size config that an accelerator runs in hours takes weeks on a laptop; the user learns it
    after two dispatches instead of from a progress bar. Elsewhere, and after that measurement, it
    costs nothing (it blocks on the first two dispatches only)."""

    def __init__(self, backend: str | None = None):
        self.done = (backend or jax.default_backend()) != "cpu"
        self.last_done_at = None

    def after_dispatch(self, metrics, updates: int, remaining_updates: int) -> str | None:
        """Call after each dispatch of `updates` updates (per seed, every seed in one program) with the
        updates the run has left; returns the line it logged, if any."""
        if self.done:
            return None
        jax.block_until_ready(metrics)
        now = time.time()
        if self.last_done_at is None:
            self.last_done_at = now
            return None
        self.done = True
        per_update = (now - self.last_done_at) / updates
        if per_update <= SLOW_UPDATE_S:
            return None
        line = (
            f"this CPU takes {per_update:.0f} s per update (every seed): the {remaining_updates:,} updates left "
            f"would take about {format_duration(per_update * remaining_updates)}. The config is sized for an "
            "accelerator; its :smoke variant runs the same code small."
        )
        log(line)
        return line


def log(message: str) -> None:
    """A line above the progress bar, from process 0 only."""
    if multihost.is_main():
        tqdm.write(message)


def progress_bar(config, total: int, initial: int, desc: str) -> tqdm:
    """The run's progress bar (rate and ETA), on process 0 only; sparse when stderr is a file."""
    return tqdm(
        total=total,
        # No tqdm remaining-time field: it averages over the warm-up and training phases (the postfix's
        # eta, from LogWindow.eta_s, uses the current phase's rate).
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        initial=initial,
        unit="step",
        desc=desc,
        disable=not config.log.progress_bar or not multihost.is_main(),
        mininterval=1.0 if os.isatty(2) else 30.0,
        miniters=1,  # else tqdm adapts to the fast random warm-up and then barely prints
        dynamic_ncols=True,
    )


def resolve_scan_unroll(requested: int, updates_per_dispatch: int) -> int:
    """0 = auto: unroll the update scan fully on CPU (XLA:CPU loops are slow), not at all elsewhere."""
    if requested > 0:
        return requested
    return updates_per_dispatch if jax.default_backend() == "cpu" else 1
