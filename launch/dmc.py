"""Train SAC (+ PSRL) on DeepMind Control from pixels.

python launch/dmc.py --config configs/sac_psrl.py --config.env.task=walker_walk
python launch/dmc.py --config configs/sac.py --config.env.task=cartpole_swingup --config.num_seeds=2
python launch/dmc.py --config configs/sac_psrl.py:smoke             # a few minutes on CPU
python launch/dmc.py --config configs/sac.py --config.run_dir=runs/X --config.resume=True

Rendering needs an OpenGL platform (EGL or OSMesa; --config.env.gl=auto|egl|osmesa). On Debian or
Ubuntu: apt-get install -y libegl1 libgl1-mesa-dri libosmesa6 (scripts/setup.sh does it).
--config.env.backend=dm_control runs the pure-Python dm_control suite where envpool cannot.
Multi-host: --coordinator=host:port --num_processes=N --process_id=i, as launch/atari.py.
"""

import sys

from absl import flags, logging
from ml_collections import config_flags

from psrl_jax import cli, cpu_settings
from psrl_jax.config import ConfigError, check_dmc_config
from psrl_jax.envs.gl import GLError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sac_psrl.py[:smoke]")
flags.mark_flags_as_required(["config"])
_MULTIHOST = cli.MultihostFlags.define()


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    config = cli.loaded(_CONFIG.value)  # a config file that does not load: say so before the imports below
    cli.refuse_or_start_jax(config, check_dmc_config, _MULTIHOST)
    from psrl_jax.train.checkpoint import CheckpointError
    from psrl_jax.train.domains import DMCDomain
    from psrl_jax.train.finite_guard import NonFiniteError
    from psrl_jax.train.trainer import train

    try:
        run_dir = train(config, DMCDomain(config))
    except (ConfigError, CheckpointError, GLError, NonFiniteError) as error:
        sys.exit(f"error: {error}")
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    cpu_settings.apply()  # XLA:CPU flags and glibc malloc, before JAX starts (psrl_jax/cpu_settings.py)
    cli.run(main)
