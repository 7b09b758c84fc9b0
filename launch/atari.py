"""Train an Atari agent (Rainbow, later Rainbow + PSRL) on the Atari 100k protocol.

python launch/atari.py --config configs/rainbow.py --config.env.game=Breakout --config.num_seeds=4
python launch/atari.py --config configs/rainbow.py:smoke            # a couple of minutes on CPU
python launch/atari.py --config configs/rainbow.py --config.run_dir=runs/X --config.resume=True

Seeds over devices: with several local devices (GPUs, or CPU with
XLA_FLAGS=--xla_force_host_platform_device_count=N) the seed axis is sharded over all of them when
num_seeds is a multiple of their count (--config.shard_seeds=auto|on|off, configs/rainbow.py).

Multi-host: --coordinator=host:port --num_processes=N --process_id=i call jax.distributed.initialize
before anything else touches JAX, so that jax.devices() spans every host. The Atari trainer does not
yet split envpool, evaluation, logging and checkpoints by process: it stops with a ConfigError that
lists what is missing (psrl_jax/train/common.py MULTI_PROCESS_MISSING).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from psrl_jax.config import ConfigError  # noqa: E402
from psrl_jax.train.checkpoint import CheckpointError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/rainbow.py[:smoke]")
flags.mark_flags_as_required(["config"])
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "Multi-host: host:port of process 0, for jax.distributed.initialize (all hosts pass the same)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (one per host)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index in [0, num_processes)")


def initialize_distributed():
    """jax.distributed.initialize when --coordinator is given; must run before any other JAX call."""
    given = [f is not None for f in (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)]
    if not any(given):
        return
    if not all(given):
        sys.exit("error: multi-host needs all of --coordinator=host:port --num_processes=N --process_id=i")
    if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
        sys.exit(f"error: --process_id={_PROCESS_ID.value} must be in [0, --num_processes={_NUM_PROCESSES.value})")
    import jax

    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    initialize_distributed()
    from psrl_jax.train.atari_trainer import train

    try:
        run_dir = train(_CONFIG.value)
    except (ConfigError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    app.run(main)
