"""Bad input fails fast with a message that names the field, before any environment or compile."""

import os
import subprocess
import sys

import pytest

from configs import rainbow
from psrl_jax.config import (
    ConfigError,
    check_writable_directory,
    validate_atari_config,
    validate_dmc_config,
    validate_process_count,
)

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


def _launch(*args, list_imports=False):
    """launch/atari.py on rainbow:smoke; with list_imports, Python lists every module it imports on stderr."""
    python = [sys.executable, "-X", "importtime"] if list_imports else [sys.executable]
    return subprocess.run(
        [*python, "launch/atari.py", "--config", "configs/rainbow.py:smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _imported(process) -> set:
    return {line.rsplit("|", 1)[-1].strip() for line in process.stderr.splitlines() if line.startswith("import time:")}


def test_launcher_rejects_unknown_field_and_game_before_compiling(tmp_path):
    typo = _launch("--config.agent.bach_size=3", f"--config.run_dir={tmp_path}/a")
    assert typo.returncode != 0
    # one line with the close match, not ml_collections' traceback (psrl_jax/cli.py)
    assert 'Did you mean "batch_size"' in typo.stderr and "Traceback" not in typo.stderr, typo.stderr[-2000:]
    word = _launch("--config.num_seeds=two", f"--config.run_dir={tmp_path}/a")
    assert word.returncode != 0 and "num_seeds=two" in word.stderr and "Traceback" not in word.stderr
    game = _launch("--config.env.game=Brekout", f"--config.run_dir={tmp_path}/b", list_imports=True)
    assert game.returncode != 0
    assert "Breakout" in game.stderr  # the close match is suggested
    size = _launch("--config.agent.batch_size=100000", f"--config.run_dir={tmp_path}/c", list_imports=True)
    assert size.returncode != 0 and "batch_size" in size.stderr
    # Refused before the trainer is imported; a bad field before JAX is (the game name needs envpool's
    # registry, and envpool imports JAX).
    assert "psrl_jax.train.trainer" not in _imported(game) | _imported(size)
    assert "psrl_jax.envs.atari" in _imported(game) and not {"jax", "envpool"} & _imported(size)
    # Nothing was trained: no checkpoints, no metrics.
    assert not os.path.exists(tmp_path / "c" / "checkpoints")


def test_a_config_for_the_other_launcher_is_named():
    from configs import sac
    from psrl_jax.envs.dmc import resolve_dmc_env

    with pytest.raises(ConfigError, match="launch/dmc.py"):
        validate_atari_config(sac.get_config("smoke"))
    with pytest.raises(ConfigError, match="launch/atari.py"):
        resolve_dmc_env(rainbow.get_config("smoke"))


@pytest.mark.parametrize(
    "script, config, message",
    [
        ("atari.py", "configs/nosuch.py", "No such file or directory: 'configs/nosuch.py'"),
        ("dmc.py", "configs/sac.py:nosuch", "unknown variant 'nosuch'"),
        ("benchmark.py", "configs/nosuch.py", "No such file or directory"),
    ],
)
def test_launchers_report_a_config_file_they_cannot_load_in_one_line(script, config, message):
    result = subprocess.run(
        [sys.executable, f"launch/{script}", "--config", config],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_evaluate_and_visualize_refuse_bad_run_directories_before_restoring(tmp_path):
    import json

    from configs import rainbow_psrl
    from psrl_jax.config import config_to_dict

    def script(name, *args):
        command = [sys.executable, f"launch/{name}", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    run = tmp_path / "run"
    (run / "checkpoints" / "100").mkdir(parents=True)
    (run / "config.json").write_text("{not json")
    for name in ("evaluate.py", "visualize.py"):
        bad = script(name, f"--run_dir={run}")
        assert bad.returncode != 0 and "is not valid JSON" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    (run / "config.json").write_text(json.dumps(config_to_dict(rainbow_psrl.get_config("smoke"))))
    (tmp_path / "file").write_text("")
    out = script("visualize.py", f"--run_dir={run}", f"--out={tmp_path / 'file' / 'fig.png'}")
    assert out.returncode != 0 and "--out" in out.stderr and "Traceback" not in out.stderr, out.stderr

    # A config.json of another config_version is refused before anything is restored.
    saved = config_to_dict(rainbow_psrl.get_config("smoke"))
    (run / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "config_version"}))
    old = script("evaluate.py", f"--run_dir={run}", "--episodes=2")
    assert old.returncode != 0 and "config_version None" in old.stderr and "Traceback" not in old.stderr, old.stderr

    # A plain Rainbow run has no correspondence to draw: a clear error, before any restore.
    (run / "config.json").write_text(json.dumps(config_to_dict(rainbow.get_config("smoke"))))
    figure = script("visualize.py", f"--run_dir={run}", f"--out={tmp_path / 'fig.png'}")
    assert figure.returncode != 0 and "correspondence module" in figure.stderr, figure.stderr[-3000:]


def _base_fields():
    from configs import sac
    from psrl_jax.config import config_fields, config_to_dict

    return {
        "atari": sorted(config_fields(config_to_dict(rainbow.get_config()))),
        "dmc": sorted(config_fields(config_to_dict(sac.get_config()))),
    }


def test_the_fields_change_only_with_a_new_config_version():
    """tests/data/config_fields.json holds the fields of the current CONFIG_VERSION. A field added,
    removed or renamed without a new version would let a saved config.json be read as something it
    is not: bump CONFIG_VERSION, add the MIGRATIONS step from the previous version (the value that
    reproduces older runs), and rewrite the snapshot."""
    import json

    from psrl_jax.config import CONFIG_VERSION

    with open(os.path.join(ROOT, "tests", "data", "config_fields.json")) as f:
        snapshot = json.load(f)
    fields = _base_fields()
    for domain in ("atari", "dmc"):
        added, removed = (
            sorted(set(fields[domain]) - set(snapshot[domain])),
            sorted(set(snapshot[domain]) - set(fields[domain])),
        )
        assert not added and not removed and snapshot["config_version"] == CONFIG_VERSION, (
            f"{domain} fields added {added}, removed {removed} at config version {CONFIG_VERSION} "
            f"(snapshot: version {snapshot['config_version']}): bump CONFIG_VERSION with a migration step"
        )


def test_every_config_file_is_of_the_current_version_and_has_its_domains_fields():
    import importlib
    import pkgutil

    import configs
    from psrl_jax.config import CONFIG_VERSION, config_fields, config_to_dict

    fields = _base_fields()
    for module in pkgutil.iter_modules(configs.__path__):
        for variant in ("", "smoke"):
            config = config_to_dict(importlib.import_module(f"configs.{module.name}").get_config(variant))
            assert config["config_version"] == CONFIG_VERSION, (module.name, variant)
            domain = "dmc" if "task" in config["env"] else "atari"
            assert sorted(config_fields(config)) == fields[domain], (module.name, variant)


def test_every_run_config_in_docs_reads_at_the_current_version():
    import glob
    import json

    from configs import sac
    from psrl_jax.config import read_saved_config

    paths = sorted(glob.glob(os.path.join(ROOT, "docs", "runs", "*", "config.json")))
    assert paths
    for path in paths:
        with open(path) as f:
            saved = json.load(f)
        defaults = sac.get_config() if "task" in saved["env"] else rainbow.get_config()
        config = read_saved_config(saved, defaults, path)
        assert config.to_dict() == saved


def test_a_saved_config_of_an_unknown_version_or_other_fields_is_refused_with_them_named():
    from psrl_jax.config import CONFIG_VERSION, config_to_dict, read_saved_config

    saved = config_to_dict(rainbow.get_config())
    defaults = rainbow.get_config()
    assert read_saved_config(saved, defaults, "x").to_dict() == saved
    for version in (None, 0, CONFIG_VERSION + 1, "1"):
        with pytest.raises(ConfigError, match=f"x has config_version {version!r}; this code reads versions 1 to"):
            read_saved_config({**saved, "config_version": version}, defaults, "x")
    odd = {
        **saved,
        "agent": {**saved["agent"], "lr_typo": 1.0},
        "env": {k: v for k, v in saved["env"].items() if k != "noop_max"},
    }
    with pytest.raises(ConfigError, match=r"unknown: agent.lr_typo; missing: env.noop_max"):
        read_saved_config(odd, defaults, "x")


def test_a_saved_config_is_migrated_step_by_step(monkeypatch):
    """The mechanism a new version uses: version 1 -> 2 adds a field with the value older runs ran with."""
    from psrl_jax import config as config_module

    saved = config_module.config_to_dict(rainbow.get_config())
    defaults = rainbow.get_config()
    defaults.agent.new_field = "today"
    defaults.config_version = 2
    monkeypatch.setattr(config_module, "CONFIG_VERSION", 2)
    monkeypatch.setitem(
        config_module.MIGRATIONS, 1, lambda s: {**s, "config_version": 2, "agent": {**s["agent"], "new_field": "then"}}
    )
    migrated = config_module.read_saved_config(saved, defaults, "x")
    assert migrated.agent.new_field == "then" and migrated.config_version == 2


# The PSRL supplementary's Table 2 (DMControl), written out from the paper: (config path, value).
SUPPLEMENTARY_TABLE_2 = {
    "env.crop_size": 84,  # Observation Size (84, 84)
    "env.image_size": 100,  # Observation Rendering (100, 100)
    "env.frame_stack": 3,  # Stacked Frames
    "eval.episodes": 10,  # Evaluation Episodes
    "agent.gamma": 0.99,  # Discount Factor
    "agent.adam_b1": 0.9,  # (beta1, beta2) of f, pi, Q: (0.9, 0.999)
    "agent.adam_b2": 0.999,
    "agent.alpha_b1": 0.5,  # (beta1, beta2) of alpha: (0.5, 0.999)
    "agent.alpha_b2": 0.999,
    "agent.learning_rate": 1e-3,  # 1e-3 (otherwise)
    "agent.learning_rate_per_task.cheetah_run": 2e-4,  # 2e-4 (cheetah-run)
    "agent.alpha_learning_rate": 1e-4,
    "agent.batch_size": 64,
    "replay.capacity": 100_000,  # Replay Buffer Size
    "replay.min_size": 1000,  # Initial Steps
    "agent.hidden": (1024, 1024),  # Hidden Units (MLP)
    "agent.critic_tau": 0.01,  # Q Function EMA tau
    "agent.critic_target_update_every": 2,
    "agent.encoder_channels": (32, 32, 32, 32),  # 4 convolutional layers, 32 filters
    "agent.latent_dim": 50,
    "agent.init_temperature": 0.1,
    "agent.augmentation.enabled": True,  # Random crop, translation
}


def _field(config, path):
    for name in path.split("."):
        config = config[name]
    return config


def test_sac_table2_variant_is_the_supplementary_table_2():
    from configs import sac, sac_psrl
    from psrl_jax.envs.dmc import resolve_dmc_env

    for config in (sac.get_config("table2"), sac_psrl.get_config("table2")):
        for path, value in SUPPLEMENTARY_TABLE_2.items():
            assert _field(config, path) == value, (config.name, path)
        assert config.agent.augmentation.translate_pad > 0  # "translation" on top of the crop
        assert config.agent.target_augmentations == config.agent.q_augmentations == 1
        # Action Repeat: 2 finger-spin, walker-walk; 8 cartpole-swingup; 4 otherwise.
        for task, repeat in (("finger_spin", 2), ("walker_walk", 2), ("cartpole_swingup", 8), ("cheetah_run", 4)):
            config.env.task = task
            assert resolve_dmc_env(config)[1] == repeat
        config.env.task = "cartpole_swingup"
        config.env.action_repeat = 8
        validate_dmc_config(config)
    assert sac_psrl.get_config("table2").psrl.cat_local  # the PSRL terms stay on
    assert (sac.get_config("table2").name, sac_psrl.get_config("table2").name) == ("sac-table2", "sac_psrl-table2")


def test_sac_defaults_depart_from_table_2_only_in_temperature_optimiser_and_render_size():
    """configs/sac.py is Table 2 but for the recipe study's two choices (DrQ's temperature Adam and
    84 px rendering); any other drift from the paper's table would go unnoticed in the runs."""
    from configs import sac, sac_psrl

    departures = {"agent.alpha_learning_rate": 1e-3, "agent.alpha_b1": 0.9, "env.image_size": 84}
    for config in (sac.get_config(), sac_psrl.get_config()):
        differing = {
            path: _field(config, path) for path, value in SUPPLEMENTARY_TABLE_2.items() if _field(config, path) != value
        }
        assert differing == departures, config.name
        assert config.env.crop_size == 84 and config.agent.augmentation.translate_pad == 4  # DrQ's shift
        config.env.action_repeat = 8
        validate_dmc_config(config)


def test_runs_over_several_processes_refuse_unsharded_seeds_and_the_fused_loop():
    from configs import sac

    for config in (rainbow.get_config("smoke"), sac.get_config("smoke")):
        validate_process_count(config, 2)  # the defaults run over several processes
        config.shard_seeds = "off"
        validate_process_count(config, 1)
        with pytest.raises(ConfigError, match="spans 2 processes"):
            validate_process_count(config, 2)
    fused = rainbow.get_config("smoke")
    fused.loop = "fused"
    validate_process_count(fused, 1)
    with pytest.raises(ConfigError, match="runs in one process"):
        validate_process_count(fused, 3)
