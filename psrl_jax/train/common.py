"""What the Atari and DMC trainers (atari_trainer.py, dmc_trainer.py) do the same way: where the
seeds live (`SeedAxis`), the run directory and its checkpointer, the actor's frame stacks and the
update scan's unroll. Plain functions and one small dataclass; each trainer reads top to bottom."""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from psrl_jax.config import ConfigError, check_writable_directory
from psrl_jax.train import sharding
from psrl_jax.train.checkpoint import Checkpointer

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs never share seeds with training envs

MULTI_PROCESS_MISSING = (
    "this process is one of {processes} (jax.distributed is initialised), but the trainers run "
    "in one process only. Missing for multi-host training: (1) each process builds envpool for its own "
    "num_seeds / process_count seeds (env seeds and PRNG keys offset by its first seed) and feeds them "
    "with jax.make_array_from_process_local_data; (2) actions go back to the local envs from the "
    "addressable shards only; (3) evaluation envs per process, returns gathered with process_allgather; "
    "(4) per-seed metrics, TensorBoard and final_eval.json written by the process that owns the seed "
    "(or by process 0 after a gather); (5) checkpoints: every process calls orbax save/restore on a "
    "run_dir on a shared filesystem, the JSON header from process 0. Run one process per host with "
    "--config.shard_seeds over its local devices and its own --config.seed range instead (independent "
    "runs, no jax.distributed)."
)


@dataclasses.dataclass(frozen=True)
class SeedAxis:
    """The leading seed axis of every per-seed array: S seeds starting at `first_seed`, split over
    all devices by `sharding` (psrl_jax/train/sharding.py) or, when it is None, on the default device."""

    num_seeds: int
    first_seed: int
    sharding: NamedSharding | None

    @classmethod
    def for_config(cls, config) -> "SeedAxis":
        """config.num_seeds from config.seed, sharded as config.shard_seeds says. One process only."""
        if jax.process_count() > 1:
            raise ConfigError(MULTI_PROCESS_MISSING.format(processes=jax.process_count()))
        mode = config.get("shard_seeds", "auto")  # run dirs written before the field existed: "auto"
        placed = None
        if sharding.use_seed_sharding(mode, config.num_seeds, jax.device_count()):
            placed = sharding.seed_sharding(sharding.seed_mesh())
        return cls(config.num_seeds, config.seed, placed)

    def jit(self, fn, **kwargs):
        """jax.jit; sharded, every output (all have the leading seed axis) is pinned to the seed
        sharding, so the state stays split across steps, checkpoints and restores."""
        if self.sharding is not None:
            kwargs["out_shardings"] = self.sharding
        return jax.jit(fn, **kwargs)

    def put(self, tree):
        """Host arrays with a leading seed axis onto the seeds' devices."""
        return sharding.put_seed_axis(tree, self.sharding)

    def put_env_rows(self, x):
        """A host array over all S * E envs (seed-major) as [S, E, ...] on the seeds' devices."""
        x = np.asarray(x)
        return self.put(x.reshape(self.num_seeds, x.shape[0] // self.num_seeds, *x.shape[1:]))

    def keys(self):
        """PRNGKey(first_seed + i) for agent i: the key a single-seed run with that seed uses."""
        return self.put(np.stack([jax.random.PRNGKey(self.first_seed + i) for i in range(self.num_seeds)]))

    def state_template(self, init_fn):
        """The shapes (and placement) of init_fn's state, without computing it: for checkpoint restore."""
        return sharding.with_sharding(jax.eval_shape(init_fn, self.keys()), self.sharding)


def open_run_dir(config, default_name: str) -> tuple[str, Checkpointer]:
    """(run directory, its Checkpointer): config.run_dir or runs/<default_name>-<timestamp>. Refuses
    to resume without a run_dir, and to start afresh over checkpoints (nothing is overwritten)."""
    if config.resume and not config.run_dir:
        raise ConfigError("config.resume=True needs config.run_dir pointing at the run to continue")
    run_dir = config.run_dir or os.path.join("runs", f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_writable_directory(run_dir)
    checkpointer = Checkpointer(run_dir, config.checkpoint.keep)
    if not config.resume and checkpointer.latest_step() is not None:
        raise ConfigError(
            f"{run_dir} already holds checkpoints; pass --config.resume=True to continue it, "
            "or choose another --config.run_dir (nothing was overwritten)"
        )
    return run_dir, checkpointer


def push_frames(frame_stack, frames, first):
    """Append the newest frame; an episode's first frame clears the older ones (zeros, as replay does)."""
    shifted = jnp.concatenate([frame_stack[:, 1:], frames[:, None]], axis=1)
    keep_history = jnp.arange(frame_stack.shape[1]) == frame_stack.shape[1] - 1
    mask = jnp.logical_or(~first[:, None], keep_history[None, :])
    mask = mask.reshape(mask.shape + (1,) * (frame_stack.ndim - 2))  # any frame shape: [H, W] or [H, W, 3]
    return jnp.where(mask, shifted, jnp.zeros_like(shifted))


def resolve_scan_unroll(requested: int, updates_per_dispatch: int) -> int:
    """0 = auto: unroll the update scan fully on CPU (XLA:CPU loops are slow), not at all elsewhere."""
    if requested > 0:
        return requested
    return updates_per_dispatch if jax.default_backend() == "cpu" else 1
