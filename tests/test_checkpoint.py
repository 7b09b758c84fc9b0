"""Checkpointer's config check on resume: mismatched fields are named; a field added to the
compatibility header later (env.observation, agent.trunk_tanh, psrl.warp_padding) does not lock out checkpoints
written before it, and a config that grows a field without saying what older checkpoints meant
fails here rather than at a user's resume."""

import copy
import importlib
import pkgutil

import jax.numpy as jnp
import numpy as np
import pytest

import configs
from psrl_jax.config import ConfigError
from psrl_jax.train.checkpoint import ADDED_LATER, COMPATIBILITY_FIELDS, Checkpointer, checkpoint_header


def _config(psrl=None, agent=None, **env):
    agent = {"lr": 1e-3} if agent is None else agent
    config = {"num_seeds": 1, "env": {"task": "cartpole_swingup", "frame_stack": 3, **env}, "agent": agent}
    if psrl is not None:
        config["psrl"] = psrl
    return config


def _save(tmp_path, config_dict, drop=()):
    header = copy.deepcopy(checkpoint_header(8000, config_dict, [3], 100, None, 1))  # drop leaves config_dict be
    for field in drop:  # "env.observation" is a header key; "psrl.warp_padding" is inside one
        holder, key = header["compatibility"], field
        if field not in holder:
            section, _, key = field.partition(".")
            holder = holder[section]
        del holder[key]
    checkpointer = Checkpointer(str(tmp_path), keep=1)
    checkpointer.save(8000, {"w": jnp.arange(4.0)}, header)
    return checkpointer


def test_mismatched_field_is_named(tmp_path):
    checkpointer = _save(tmp_path, _config(observation="pixels"))
    with pytest.raises(ConfigError, match="env.observation: checkpoint 'pixels' vs config 'state'"):
        checkpointer.restore({"w": jnp.zeros(4)}, _config(observation="state"))
    state, header = checkpointer.restore({"w": jnp.zeros(4)}, _config(observation="pixels"))
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    assert header["env_step"] == 8000
    checkpointer.close()


def test_checkpoint_from_before_a_field_existed_still_resumes(tmp_path):
    checkpointer = _save(tmp_path, _config(), drop=("env.observation",))
    state, _ = checkpointer.restore({"w": jnp.zeros(4)}, _config(observation="pixels"))
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    with pytest.raises(ConfigError, match="env.frame_stack"):  # older fields are still checked
        checkpointer.restore({"w": jnp.zeros(4)}, _config(observation="pixels", frame_stack=1))
    checkpointer.close()


def test_checkpoint_from_before_stack_padding_means_zeros(tmp_path):
    checkpointer = _save(tmp_path, _config(stack_padding="zeros"), drop=("env.stack_padding",))
    state, _ = checkpointer.restore({"w": jnp.zeros(4)}, _config(stack_padding="zeros"))
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    checkpointer.restore({"w": jnp.zeros(4)}, _config())  # a config from before the field: zeros too
    with pytest.raises(ConfigError, match="env.stack_padding: checkpoint 'zeros' vs config 'first_frame'"):
        checkpointer.restore({"w": jnp.zeros(4)}, _config(stack_padding="first_frame"))
    checkpointer.close()


def _psrl(**fields):
    return {"cat_local": True, "max_displacement": 2, "warp_padding": "zeros", **fields}


def test_checkpoint_from_before_warp_padding_means_zeros(tmp_path):
    # Seed 1's sac_psrl run (session 15) was written before psrl.warp_padding existed; resuming it
    # with today's config must work, since "zeros" is what every warp did then.
    checkpointer = _save(tmp_path, _config(psrl=_psrl()), drop=("psrl.warp_padding",))
    state, _ = checkpointer.restore({"w": jnp.zeros(4)}, _config(psrl=_psrl()))
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    with pytest.raises(ConfigError, match=r"\(psrl.warp_padding: checkpoint 'zeros' vs config 'border'\)"):
        checkpointer.restore({"w": jnp.zeros(4)}, _config(psrl=_psrl(warp_padding="border")))
    with pytest.raises(
        ConfigError, match="psrl.max_displacement: checkpoint 2 vs config 1"
    ):  # older fields still checked
        checkpointer.restore({"w": jnp.zeros(4)}, _config(psrl=_psrl(max_displacement=1)))
    checkpointer.close()


# The fields of the whole-section compatibility entries ("agent", "psrl") as of 2026-12-01. Any field
# a config has beyond these must be in ADDED_LATER, with the value that reproduces runs from before
# it, or checkpoints from before it stop resuming (that happened with psrl.warp_padding).
SECTION_FIELDS_SNAPSHOT = {
    "agent": {
        *("actor_update_every", "adam_b1", "adam_b2", "adam_eps", "alpha_b1", "alpha_b2"),
        *("alpha_learning_rate", "augmentation", "batch_size", "compute_dtype", "critic_target_update_every"),
        *("critic_tau", "double_q", "dropout_rate", "dueling", "encoder", "encoder_channels"),
        *("encoder_strides", "encoder_tau", "gamma", "hidden", "hidden_size", "init_temperature"),
        *("latent_dim", "learning_rate", "learning_rate_per_task", "log_std_max", "log_std_min"),
        *("max_grad_norm", "noisy", "noisy_sigma0", "num_atoms", "target_entropy_per_dim"),
        *("target_update_period", "v_max", "v_min"),
        "weight_init",  # added later, refused on purpose (checkpoint.py, ADDED_LATER's comment)
    },
    "psrl": {
        *("aat_global", "aat_local", "bn_momentum", "cat_global", "cat_local", "cat_steps", "correlation"),
        *("correspondence_width", "global_weight", "internal", "leaky_relu_slope", "local_weight"),
        *("max_displacement", "multiscale_decay", "projection_dim", "refinement_levels", "shared_shift"),
        *("target_ema_decay", "transform_hidden"),
    },
}


def _every_config():
    for module in pkgutil.iter_modules(configs.__path__):
        for variant in ("", "smoke"):
            yield module.name, variant, importlib.import_module(f"configs.{module.name}").get_config(variant).to_dict()


def test_every_new_section_field_says_what_older_checkpoints_meant():
    sections = [field for field in COMPATIBILITY_FIELDS if "." not in field and field != "num_seeds"]
    assert sorted(sections) == sorted(SECTION_FIELDS_SNAPSHOT)
    for name, variant, config in _every_config():
        for section in sections:
            for field in config.get(section) or {}:
                assert field in SECTION_FIELDS_SNAPSHOT[section] or f"{section}.{field}" in ADDED_LATER, (
                    f"configs/{name}.py:{variant} has {section}.{field}, which checkpoints written before it "
                    f"lack: add '{section}.{field}' to checkpoint.ADDED_LATER with the value that reproduces "
                    "older runs (or to SECTION_FIELDS_SNAPSHOT if older checkpoints must be refused)"
                )


def test_agent_fields_added_later_apply_only_where_the_config_has_them(tmp_path):
    sac = {"lr": 1e-3, "compute_dtype": "float32", "trunk_tanh": True, "weight_init": "lecun"}
    checkpointer = _save(tmp_path, _config(agent=sac), drop=("agent.compute_dtype", "agent.trunk_tanh"))
    checkpointer.restore({"w": jnp.zeros(4)}, _config(agent=sac))  # a header from before both: float32, tanh
    with pytest.raises(ConfigError, match="agent.trunk_tanh: checkpoint True vs config False"):
        checkpointer.restore({"w": jnp.zeros(4)}, _config(agent={**sac, "trunk_tanh": False}))
    checkpointer.close()
    # Rainbow's agent has no trunk_tanh: nothing is filled in for it.
    rainbow = {"lr": 1e-3, "compute_dtype": "float32"}
    checkpointer = _save(tmp_path / "rainbow", _config(agent=rainbow), drop=("agent.compute_dtype",))
    checkpointer.restore({"w": jnp.zeros(4)}, _config(agent=rainbow))
    checkpointer.close()
    # The other way round: an older config.json (evaluate.py reads the run's own) and a newer header.
    checkpointer = _save(tmp_path / "newer", _config(agent=rainbow))
    checkpointer.restore({"w": jnp.zeros(4)}, _config(agent={"lr": 1e-3}))
    with pytest.raises(ConfigError, match="agent.compute_dtype: checkpoint 'float32' vs config 'bfloat16'"):
        checkpointer.restore({"w": jnp.zeros(4)}, _config(agent={**rainbow, "compute_dtype": "bfloat16"}))
    checkpointer.close()
    # weight_init is not in ADDED_LATER: a header without it is refused.
    checkpointer = _save(tmp_path / "init", _config(agent=sac), drop=("agent.weight_init",))
    with pytest.raises(ConfigError, match="agent.weight_init: checkpoint '\\(absent\\)' vs config 'lecun'"):
        checkpointer.restore({"w": jnp.zeros(4)}, _config(agent=sac))
    checkpointer.close()


def test_rainbow_checkpoint_from_before_the_psrl_section_resumes(tmp_path):
    off = _psrl(cat_local=False)
    checkpointer = _save(tmp_path, _config(psrl=off), drop=("psrl",))
    state, _ = checkpointer.restore({"w": jnp.zeros(4)}, _config(psrl=off))
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    checkpointer.close()


def test_a_moved_psrl_agent_state_round_trips_exactly(tmp_path):
    """A rainbow_psrl agent state with every leaf moved off its initial value (parameters, BatchNorm
    statistics, EMA target, optimiser moments, counters, keys) is restored leaf for leaf into the
    shapes init implies; a restore that re-initialised any part of it would differ. (Moved by a
    random perturbation, not by an update: compiling the update for this took 46 s of CPU.)"""
    import chex
    import jax

    from configs import rainbow_psrl
    from psrl_jax.agents.rainbow import RainbowAgent
    from psrl_jax.config import config_to_dict

    config = rainbow_psrl.get_config("smoke")
    size = config.env.image_size
    agent = RainbowAgent(config, 5, (config.env.frame_stack, size, size))
    fresh = jax.jit(agent.init)(jax.random.PRNGKey(0))
    leaves, tree = jax.tree.flatten(fresh)
    rng = np.random.default_rng(0)
    moved = jax.tree.unflatten(
        tree,
        [
            x + rng.normal(size=x.shape).astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else x + 1
            for x in map(np.asarray, leaves)
        ],
    )
    assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(moved), strict=True))
    assert jax.tree.leaves(fresh.batch_stats)  # the statistics a lost restore would reset are there
    config_dict = config_to_dict(config)
    checkpointer = Checkpointer(str(tmp_path), keep=1)
    checkpointer.save(100, moved, checkpoint_header(100, config_dict, [0], 1, None, 0))
    restored, header = checkpointer.restore(jax.eval_shape(agent.init, jax.random.PRNGKey(1)), config_dict)
    chex.assert_trees_all_equal(restored, moved)
    assert header["updates_per_seed"] == 1
    checkpointer.close()


def test_an_unsharded_resume_lowers_the_fresh_runs_programs(tmp_path):
    """An unsharded run's state from SeedAxis.jit and the same state restored into the trainers'
    template (SeedAxis.state_template) lower a jitted step to the same program text, so a resumed
    run reads its programs from a persistent compilation cache instead of compiling them again.
    (Orbax restores committed arrays, which lower with sharding annotations; a fresh run's state
    was uncommitted, without them.)"""
    import jax

    from psrl_jax.train.common import SeedAxis, vmap_seeds

    seeds = SeedAxis(2, 0, None, slice(0, 2))
    init = seeds.jit(vmap_seeds(lambda key: {"w": jax.random.normal(key, (3,)), "count": jnp.zeros((), jnp.int32)}))
    fresh = init(seeds.keys())
    config_dict = _config()
    checkpointer = Checkpointer(str(tmp_path), keep=1)
    checkpointer.save(100, fresh, checkpoint_header(100, config_dict, [0, 1], 1, None, 0))
    restored, _ = checkpointer.restore(seeds.state_template(init), config_dict)
    step = seeds.jit(vmap_seeds(lambda state: jax.tree.map(lambda x: x + 1, state)))
    assert step.lower(restored).as_text() == step.lower(fresh).as_text()
    assert step.lower(step(fresh)).as_text() == step.lower(fresh).as_text()  # and the run's later steps
    checkpointer.close()
