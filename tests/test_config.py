"""Bad input fails fast with a message that names the field, before any environment or compile."""

import os
import subprocess
import sys

import pytest

from configs import rainbow
from psrl_jax.config import ConfigError, check_writable_directory, validate_atari_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_and_smoke_configs_are_valid():
    validate_atari_config(rainbow.get_config())
    validate_atari_config(rainbow.get_config("smoke"))


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("agent.batch_size", 5000, "larger than config.replay.min_size"),
        ("replay.min_size", -1, "replay.min_size must be a positive integer"),
        ("num_seeds", 0, "num_seeds must be a positive integer"),
        ("replay.capacity", 300, "replay.min_size=400 is larger than replay.capacity"),
        ("agent.encoder", "resnet", "agent.encoder must be"),
        ("eval.final_episodes", 7, "eval.final_episodes=7 must be a multiple"),
        ("replay.priority_exponent", 1.5, "priority_exponent"),
        ("total_env_steps", 100, "must exceed replay.min_size"),
        ("env.stack_padding", "repeat", "env.stack_padding must be 'zeros' or 'first_frame'"),
        ("seed_batching", "pmap", "seed_batching must be 'auto', 'vmap' or 'unroll'"),
    ],
)
def test_inconsistent_values_are_rejected(field, value, fragment):
    config = rainbow.get_config("smoke")
    if field == "eval.final_episodes":
        config.eval.max_parallel_envs = 2
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        validate_atari_config(config)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown variant"):
        rainbow.get_config("tiny")


def test_unwritable_run_dir_is_rejected(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="not writable"):
        check_writable_directory(str(blocker / "run"))


def _launch(*args):
    return subprocess.run(
        [sys.executable, "launch/atari.py", "--config", "configs/rainbow.py:smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_launcher_rejects_unknown_field_and_game_before_compiling(tmp_path):
    typo = _launch("--config.agent.bach_size=3", f"--config.run_dir={tmp_path}/a")
    assert typo.returncode != 0
    assert "bach_size" in typo.stderr
    game = _launch("--config.env.game=Brekout", f"--config.run_dir={tmp_path}/b")
    assert game.returncode != 0
    assert "Breakout" in game.stderr  # the close match is suggested
    size = _launch("--config.agent.batch_size=100000", f"--config.run_dir={tmp_path}/c")
    assert size.returncode != 0 and "batch_size" in size.stderr
    # Nothing was trained: no checkpoints, no metrics.
    assert not os.path.exists(tmp_path / "c" / "checkpoints")
