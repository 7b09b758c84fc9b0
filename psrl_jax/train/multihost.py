"""One run over several processes (hosts): jax.distributed set-up and the host-side agreements.

Every process runs the same trainer on the same config. The seed axis spans all processes' devices
(SeedAxis in common.py): process p owns a contiguous block of seeds and steps only their envpool envs,
so a run with N processes behaves as the one-process run of the same seeds (tests/test_multihost.py).
Per-seed files (metrics/seed_<i>.jsonl, tensorboard/seed_<i>) are written by the process owning
seed i; run-wide files (config.json, versions.json, final_eval.json) by process 0 after a gather;
checkpoints by orbax on every process into the same run_dir (a filesystem every host sees).

With one process every function here is a no-op or the obvious value.
"""

import time

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """jax.distributed.initialize. CPU devices of different processes exchange data over gloo (the
    CPU client has no cross-process collectives otherwise); GPUs use NCCL as usual."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def is_main() -> bool:
    """Process 0 writes the run-wide files and shows the progress bar."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (e.g. process 0 has moved old logs aside)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def shared_time() -> float:
    """time.time() of process 0, on every process: default run-directory names agree."""
    now = time.time()
    if jax.process_count() == 1:
        return now
    high, low = divmod(int(now), 1 << 16)  # int32 halves: JAX arrays are 32-bit by default
    high, low = multihost_utils.broadcast_one_to_all(np.asarray([high, low], np.int32))
    return float((int(high) << 16) + int(low))
