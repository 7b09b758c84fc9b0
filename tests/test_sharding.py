"""How the seed axis is placed on devices (config.shard_seeds), and the refusal of a seed count the
devices do not divide. The sharded run itself (same metrics and state as the unsharded one, no
collectives in its compiled programs) is tests/test_multihost.py's Atari test: its 1-process run is
the reference of the 2-process one.
"""

import os
import subprocess
import sys

import pytest
from run_helpers import ROOT, host_devices_env

from configs import rainbow
from psrl_jax.config import ConfigError, validate_atari_config
from psrl_jax.train.sharding import use_seed_sharding

FOUR_DEVICES = host_devices_env(4)


def test_shard_seeds_modes():
    assert use_seed_sharding("auto", 8, 4) and use_seed_sharding("on", 4, 4) and use_seed_sharding("on", 3, 1)
    assert not use_seed_sharding("auto", 4, 1)  # one device: the default-device code path
    assert not use_seed_sharding("auto", 6, 4)  # not a multiple: auto falls back, "on" refuses
    assert not use_seed_sharding("off", 8, 4)
    with pytest.raises(ConfigError, match="num_seeds=6 to be a multiple of the 4 devices"):
        use_seed_sharding("on", 6, 4)
    config = rainbow.get_config("smoke")
    config.shard_seeds = "yes"
    with pytest.raises(ConfigError, match="config.shard_seeds must be 'auto', 'on' or 'off'"):
        validate_atari_config(config)


def test_launcher_refuses_indivisible_seeds_before_compiling(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "launch/atari.py",
            "--config",
            "configs/rainbow.py:smoke",
            "--config.num_seeds=6",
            "--config.shard_seeds=on",
            f"--config.run_dir={tmp_path}/run",
        ],
        cwd=ROOT,
        env=FOUR_DEVICES,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "multiple of the 4 devices" in run.stderr, run.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
