"""Train an Atari agent (Rainbow, later Rainbow + PSRL) on the Atari 100k protocol.

python launch/atari.py --config configs/rainbow.py --config.env.game=Breakout --config.num_seeds=4
python launch/atari.py --config configs/rainbow.py:smoke            # a couple of minutes on CPU
python launch/atari.py --config configs/rainbow.py --config.run_dir=runs/X --config.resume=True

Seeds over devices: with several local devices (GPUs, or CPU with
XLA_FLAGS=--xla_force_host_platform_device_count=N) the seed axis is sharded over all of them when
num_seeds is a multiple of their count (--config.shard_seeds=auto|on|off, configs/rainbow.py).

Multi-host: --coordinator=host:port --num_processes=N --process_id=i (the same coordinator on every
host) call jax.distributed.initialize before anything else touches JAX; each process then trains
num_seeds / N of the seeds into the shared --config.run_dir (docs/USAGE.md "Seeds across hosts").
"""

import sys

from absl import flags, logging
from ml_collections import config_flags

from psrl_jax import cli, cpu_settings
from psrl_jax.config import ConfigError, check_atari_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/rainbow.py[:smoke]")
flags.mark_flags_as_required(["config"])
_MULTIHOST = cli.MultihostFlags.define()


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    config = cli.loaded(_CONFIG.value)  # a config file that does not load: say so before the imports below
    cli.refuse_or_start_jax(config, check_atari_config, _MULTIHOST)
    from psrl_jax.train.checkpoint import CheckpointError
    from psrl_jax.train.domains import AtariDomain
    from psrl_jax.train.finite_guard import NonFiniteError
    from psrl_jax.train.trainer import train

    try:
        run_dir = train(config, AtariDomain(config))
    except (ConfigError, CheckpointError, NonFiniteError) as error:
        sys.exit(f"error: {error}")
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    cpu_settings.apply()  # XLA:CPU flags and glibc malloc, before JAX starts (psrl_jax/cpu_settings.py)
    cli.run(main)
