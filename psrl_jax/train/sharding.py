"""The seed axis over devices: one 1-D mesh named "seeds" over every device, seed-axis arrays split on it.

Every per-seed array of the trainer has a leading seed axis S. With sharding on, the mesh spans
`jax.devices()` (all local devices; every host's devices once `jax.distributed` is initialised) and
each device holds S / num_devices whole seeds, so the vmapped computation of one seed never leaves
its device and no collective is needed. Sharding off (None below) keeps the default-device code.

Host data enters with `put_seed_axis` and leaves with `to_host`. With one process these are
`jax.device_put` / `jax.device_get`. With several processes each passes only its own rows of the
seed axis (`jax.make_array_from_process_local_data`) and `to_host` gathers every process's rows
(`multihost_utils.process_allgather`); the trainer itself refuses multi-process runs for now
(AtariTrainer.__init__ says what is missing).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from psrl_jax.config import ConfigError

SEED_AXIS = "seeds"
SHARD_SEEDS_MODES = ("auto", "on", "off")


def use_seed_sharding(mode: str, num_seeds: int, num_devices: int) -> bool:
    """Whether config.shard_seeds=`mode` shards `num_seeds` seeds over `num_devices` devices.

    "auto": when there is more than one device and num_seeds is a multiple of their count;
    "on": always, a ConfigError when num_seeds is not a multiple; "off": never."""
    if mode not in SHARD_SEEDS_MODES:
        raise ConfigError(f"config.shard_seeds must be one of {SHARD_SEEDS_MODES}, got {mode!r}")
    divisible = num_seeds % num_devices == 0
    if mode == "on" and not divisible:
        raise ConfigError(
            f"config.shard_seeds='on' needs config.num_seeds={num_seeds} to be a multiple of the "
            f"{num_devices} devices (jax.devices()); use e.g. num_seeds={-(-num_seeds // num_devices) * num_devices}, "
            "or config.shard_seeds='auto'/'off' to keep every seed on one device"
        )
    return mode == "on" or (mode == "auto" and num_devices > 1 and divisible)


def seed_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all of jax.devices(), global across hosts) named "seeds"."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (SEED_AXIS,))


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (seed) axis over the mesh; the other axes stay whole on each device."""
    return NamedSharding(mesh, P(SEED_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def put_seed_axis(tree, sharding: NamedSharding | None):
    """Place host arrays with a leading seed axis; None: the default device (unsharded code path).

    With several processes each process passes only its own rows (seeds) of the leading axis, in
    process order; the result is the global array of all processes' rows."""
    if sharding is None:
        return jax.tree.map(jnp.asarray, tree)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def to_host(tree):
    """numpy copies of (possibly sharded) arrays, every seed's rows on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def with_sharding(abstract_tree, sharding: NamedSharding | None):
    """jax.ShapeDtypeStruct leaves (e.g. from jax.eval_shape) that carry `sharding`: checkpoint
    restore then places every array straight onto its devices."""
    if sharding is None:
        return abstract_tree
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree)


def describe(sharding: NamedSharding | None) -> dict:
    """For versions.json and the run_info record: how many devices the seeds span, and which."""
    devices = list(sharding.mesh.devices.flat) if sharding is not None else [jax.devices()[0]]
    return {
        "shard_seeds": sharding is not None,
        "seed_devices": len(devices),
        "processes": jax.process_count(),
        "devices": [str(d) for d in devices],
    }
