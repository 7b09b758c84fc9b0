"""psrl_jax/xla_cpu.py: convolutions leave YNNPACK for Eigen on the checked jaxlibs, and only there;
importing psrl_jax changes nothing (psrl_jax/cpu_settings.py applies it)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from psrl_jax import cpu_settings, xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NHWC = ("NHWC", "HWIO", "NHWC")
needs_flag = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not xla_cpu.wanted({}), reason="the flag applies: CPU, a checked jaxlib"
)


# YNNPACK's cost model leaves tiny convolutions to Eigen anyway: 32 -> 32 channels at 21x21 it takes.
X_SHAPE, W_SHAPE = (8, 21, 21, 32), (3, 3, 32, 32)


def compiled_conv_text() -> str:
    x, w = jnp.ones(X_SHAPE), jnp.ones(W_SHAPE)
    conv = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC))
    return conv.lower(x, w).compile().as_text()


@pytest.mark.parametrize(
    "environ,version,expected",
    [
        ({}, (0, 10, 2), True),
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, (0, 10, 2), True),
        ({}, (0, 9, 2), True),
        ({}, (0, 9, 1), False),  # before the flag existed: XLA would abort on it
        ({}, (0, 11, 0), False),  # unchecked (our GPU version)
        ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}, (0, 10, 2), False),
        ({"PSRL_JAX_XLA_CPU_DEFAULTS": "1"}, (0, 10, 2), False),
        ({"PSRL_JAX_XLA_CPU_DEFAULTS": "0"}, (0, 10, 2), True),
    ],
)
def test_wanted(environ, version, expected):
    assert xla_cpu.wanted(environ, version) is expected


@needs_flag
def test_convolutions_compile_to_eigen_not_ynnpack():
    # tests/conftest.py applied the launchers' CPU settings before JAX started its backend.
    assert xla_cpu.FLAG in os.environ["XLA_FLAGS"]
    assert cpu_settings.applied()["xla_convolutions_on_eigen"] is True
    text = compiled_conv_text()
    assert "convolution(" in text and "ynn_fusion" not in text


@needs_flag
def test_defaults_kept_on_request_and_values_agree():
    """With PSRL_JAX_XLA_CPU_DEFAULTS=1 the convolution stays XLA's YNNPACK fusion (so the flag above
    is what changes it), and both compute the same values."""
    script = (
        "import sys, numpy as np; from psrl_jax import cpu_settings; print(cpu_settings.apply());"
        "import jax, jax.numpy as jnp; from jax import lax;"
        "from tests.test_xla_cpu import compiled_conv_text, NHWC, X_SHAPE, W_SHAPE;"
        "x = jnp.asarray(np.random.default_rng(0).standard_normal(X_SHAPE), jnp.float32);"
        "w = jnp.asarray(np.random.default_rng(1).standard_normal(W_SHAPE), jnp.float32);"
        "y = lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=NHWC);"
        "print('ynn_fusion' in compiled_conv_text()); np.save(sys.argv[2], np.asarray(y))"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PSRL_JAX_XLA_CPU_DEFAULTS="1", JAX_PLATFORMS="cpu")
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"xla_cpu_defaults_{os.getpid()}.npy")
    result = subprocess.run(
        [sys.executable, "-c", script, ROOT, out], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    applied, ynn = result.stdout.strip().splitlines()
    assert "'xla_convolutions_on_eigen': False" in applied and ynn == "True"
    x = jnp.asarray(np.random.default_rng(0).standard_normal(X_SHAPE), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(W_SHAPE), jnp.float32)
    eigen = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC)
    np.testing.assert_allclose(np.load(out), eigen, rtol=1e-4, atol=1e-4)
    os.remove(out)


@pytest.mark.parametrize(
    "environ,backend,expected",
    [
        ({}, "cpu", {xla_cpu.LEVEL_FLAG: 1}),
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, "cpu", {xla_cpu.LEVEL_FLAG: 1}),
        ({"XLA_FLAGS": "--xla_backend_optimization_level=3"}, "cpu", None),  # the user's level wins
        ({}, "gpu", None),
        ({}, "tpu", None),
    ],
)
def test_one_shot_compiler_options(environ, backend, expected):
    assert xla_cpu.one_shot_compiler_options(environ, backend) == expected


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the one-shot level is an XLA:CPU option")
@pytest.mark.parametrize("config_name", ["rainbow:smoke", "sac_psrl:smoke"])
def test_init_at_the_one_shot_level_is_bit_identical_to_xla_default(config_name):
    """The trainers compile the agents' init at -O1 (one_shot_compiler_options): every parameter,
    BatchNorm statistic, optimiser moment and key must be what XLA's default level (-O3, which this
    test names explicitly: the suite itself runs at -O1) computes, bit for bit. Noisy nets (rainbow)
    and the SAC + PSRL modules cover every initialiser the agents use."""
    import importlib

    from psrl_jax.agents.rainbow import RainbowAgent
    from psrl_jax.agents.sac import SACAgent

    module, variant = config_name.split(":")
    config = importlib.import_module(f"configs.{module}").get_config(variant)
    size = config.env.image_size
    if module.startswith("sac"):
        agent = SACAgent.from_config(config, 2, (config.env.frame_stack, size, size, 3))
    else:
        agent = RainbowAgent.from_config(config, 6, (config.env.frame_stack, size, size))
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    lowered = jax.jit(jax.vmap(agent.init)).lower(keys)
    # Users' XLA: the fusion emitters on (tests/conftest.py turns them off for the suite's speed).
    users = {xla_cpu.FUSION_EMITTERS_FLAG: True}
    default = lowered.compile(compiler_options={**users, xla_cpu.LEVEL_FLAG: 3})(keys)
    one_shot = lowered.compile(compiler_options={**users, **xla_cpu.one_shot_compiler_options({}, "cpu")})(keys)
    default, one_shot = jax.device_get(default), jax.device_get(one_shot)
    paths = jax.tree_util.tree_flatten_with_path(default)[0]
    assert len(paths) > 20  # the whole agent state, not an empty tree
    for (path, a), b in zip(paths, jax.tree.leaves(one_shot), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("trainer_name", ["atari", "dmc"])
def test_the_trainer_compiles_its_init_with_the_one_shot_options(monkeypatch, tmp_path, trainer_name):
    """The wiring: the trainer's init_fn (either domain) is compiled with one_shot_compiler_options() (here an
    option XLA does not know, so the compile must fail; the suite's own -O1 would return None)."""
    from configs import rainbow, sac
    from psrl_jax.train.trainer import Trainer

    config = (rainbow if trainer_name == "atari" else sac).get_config("smoke")
    config.run_dir = str(tmp_path / "run")
    monkeypatch.setattr(xla_cpu, "one_shot_compiler_options", lambda: {"xla_not_an_option_psrl_jax": 1})
    trainer = Trainer(config)
    try:
        with pytest.raises(Exception, match="xla_not_an_option_psrl_jax"):
            trainer.init_fn.lower(trainer.seeds.keys()).compile()
    finally:
        trainer.checkpointer.close()
        trainer.envs.close()


def test_importing_the_package_changes_no_environment_variable():
    """Only cpu_settings.apply() sets XLA_FLAGS or malloc settings: importing every module of the
    package (and a launcher) in a fresh interpreter leaves os.environ as it was."""
    script = (
        "import os, pkgutil, importlib, json;"
        "import envpool, jax, flax, matplotlib;"  # third-party imports set variables of their own (envpool)
        "before = dict(os.environ); import psrl_jax;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(psrl_jax.__path__, 'psrl_jax.')];"
        "import launch.dmc;"
        "print(json.dumps({k: [before.get(k), v] for k, v in os.environ.items() if before.get(k) != v}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "{}"
