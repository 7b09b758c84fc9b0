"""The seed axis over devices: one 1-D mesh named "seeds" over every device, seed-axis arrays split on it.

Every per-seed array of the trainer has a leading seed axis S. With sharding on, the mesh spans
`jax.devices()` (all local devices; every host's devices once `jax.distributed` is initialised) and
each device holds S / num_devices whole seeds, so the vmapped computation of one seed never leaves
its device and no collective is needed. Sharding off (None below) keeps the default-device code.

Host data enters with `put_seed_axis` and leaves with `local_rows_to_host`. With one process these
are `jax.device_put` / `jax.device_get`. With several processes (jax.distributed) each process owns
the contiguous seeds its devices hold (`local_rows`): it passes in only those rows
(`jax.make_array_from_process_local_data`), reads back only those rows (its addressable shards),
and `gather_rows` exchanges host rows between processes (`multihost_utils.process_allgather`).
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


def put_seed_axis(tree, sharding: NamedSharding | None):
    """Place host arrays with a leading seed axis; None: the default device (unsharded code path).

    With several processes each process passes only its own rows (seeds) of the leading axis, in
    process order; the result is the global array of all processes' rows."""
    if sharding is None:
        return jax.tree.map(jnp.asarray, tree)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def local_rows(sharding: NamedSharding | None, num_seeds: int) -> slice:
    """The seed rows whose shards live on this process's devices: every row with one process. A
    ConfigError if they are not one contiguous block (a mesh whose device order interleaves processes)."""
    if sharding is None or jax.process_count() == 1:
        return slice(0, num_seeds)
    starts = sorted(index[0].start or 0 for index in sharding.addressable_devices_indices_map((num_seeds,)).values())
    per_device = num_seeds // len(sharding.mesh.devices.flat)
    if starts != list(range(starts[0], starts[0] + per_device * len(starts), per_device)):
        raise ConfigError(
            f"process {jax.process_index()} holds non-contiguous seed rows {starts}: "
            "the device mesh interleaves processes"
        )
    return slice(starts[0], starts[0] + per_device * len(starts))


def local_rows_to_host(tree):
    """numpy copies of this process's seed rows: everything with one process, else the addressable
    shards of each array in seed order (no communication)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)

    def local(x):
        shards = sorted(x.addressable_shards, key=lambda shard: shard.index[0].start or 0)
        return np.concatenate([np.asarray(shard.data) for shard in shards])

    return jax.tree.map(local, tree)


def gather_rows(tree):
    """Host arrays of this process's seed rows -> every process's rows in process order, on every
    process. A collective: every process must call it at the same point."""
    if jax.process_count() == 1:
        return tree

    def gather(x):
        # As bytes: JAX would carry float64/int64 as 32-bit values (x64 is off); rows stay on axis 0.
        x = np.ascontiguousarray(x)
        raw = multihost_utils.process_allgather(x.reshape(x.shape[0], -1).view(np.uint8), tiled=True)
        return np.asarray(raw).view(x.dtype).reshape(-1, *x.shape[1:])

    return jax.tree.map(gather, tree)


def default_device_sharding() -> jax.sharding.SingleDeviceSharding:
    """The one device an unsharded run's seeds live on."""
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def with_sharding(abstract_tree, sharding: NamedSharding | None):
    """jax.ShapeDtypeStruct leaves (e.g. from jax.eval_shape) that carry `sharding`: checkpoint
    restore then places every array straight onto its devices. None (unsharded): the default device,
    where SeedAxis.jit commits an unsharded run's state."""
    if sharding is None:
        sharding = default_device_sharding()
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree)


def describe(sharding: NamedSharding | None) -> dict:
    """For versions.json and the run_info record: how many devices the seeds span, and which."""
    devices = list(sharding.mesh.devices.flat if sharding is not None else default_device_sharding().device_set)
    return {
        "shard_seeds": sharding is not None,
        "seed_devices": len(devices),
        "processes": jax.process_count(),
        "devices": [str(d) for d in devices],
    }
