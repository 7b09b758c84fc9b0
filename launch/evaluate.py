"""Evaluate the latest checkpoint of a run directory without training (Atari or DMC).

    python launch/evaluate.py --run_dir runs/<run> --episodes 100 [--max_parallel_envs 50]

Plays full, unclipped episodes on fresh evaluation envs (as the final evaluation does) and writes
<run_dir>/evaluation_<env_step>_<episodes>ep.json with every episode's return per seed. The run's
own config.json is used, so the network and environment match the checkpoint.
"""

import os
import sys
import time

from absl import flags, logging

from configs import rainbow, sac
from psrl_jax import cli, cpu_settings

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory holding config.json and checkpoints/")
_EPISODES = flags.DEFINE_integer("episodes", 100, "Episodes per seed")
_PARALLEL = flags.DEFINE_integer("max_parallel_envs", 100, "Evaluation envs per seed")
flags.mark_flags_as_required(["run_dir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = cli.load_run_config(_RUN_DIR.value, rainbow.get_config(), sac.get_config())  # before the imports below
    config.run_dir = _RUN_DIR.value
    config.resume = True
    config.eval.episodes = config.eval.final_episodes = _EPISODES.value  # validated against max_parallel_envs
    config.eval.max_parallel_envs = _PARALLEL.value
    import numpy as np

    from psrl_jax.config import ConfigError, save_json_atomic
    from psrl_jax.envs.gl import GLError
    from psrl_jax.train.checkpoint import CheckpointError
    from psrl_jax.train.trainer import Trainer

    try:
        trainer = Trainer(config)
        state, header = trainer.restore_latest()
    except (ConfigError, CheckpointError, GLError) as error:
        sys.exit(f"error: {error}")
    start = time.time()
    returns = trainer.evaluate(state.agent, _EPISODES.value, eval_index=10_000)
    env_step = int(header["env_step"])
    result = {
        "env_step": env_step,
        "episodes_per_seed": _EPISODES.value,
        "return_mean_per_seed": returns.mean(1).tolist(),
        "return_std_per_seed": returns.std(1).tolist(),
        "returns": returns.tolist(),
        "seconds": time.time() - start,
    }
    path = os.path.join(_RUN_DIR.value, f"evaluation_{env_step}_{_EPISODES.value}ep.json")
    save_json_atomic(path, result)
    print(f"env_step {env_step}: mean return per seed {np.round(returns.mean(1), 1).tolist()} -> {path}")


if __name__ == "__main__":
    cpu_settings.apply()  # XLA:CPU flags and glibc malloc, before JAX starts (psrl_jax/cpu_settings.py)
    cli.run(main)
