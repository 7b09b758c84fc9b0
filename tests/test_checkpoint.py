"""Checkpointer's config check on resume: mismatched or absent fields are named, and a checkpoint of
another config_version is refused; a state restores leaf for leaf."""

import copy

import jax.numpy as jnp
import numpy as np
import pytest

from psrl_jax.config import CONFIG_VERSION, ConfigError
from psrl_jax.train.checkpoint import Checkpointer, checkpoint_header


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


def _psrl(**fields):
    return {"cat_local": True, "max_displacement": 2, "warp_padding": "zeros", **fields}


def test_section_fields_are_compared_leaf_by_leaf(tmp_path):
    checkpointer = _save(tmp_path, _config(psrl=_psrl()))
    state, _ = checkpointer.restore({"w": jnp.zeros(4)}, _config(psrl=_psrl()))
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    with pytest.raises(ConfigError, match=r"\(psrl.warp_padding: checkpoint 'zeros' vs config 'border'\)"):
        checkpointer.restore({"w": jnp.zeros(4)}, _config(psrl=_psrl(warp_padding="border")))
    with pytest.raises(ConfigError, match="psrl.max_displacement: checkpoint 2 vs config 1"):
        checkpointer.restore({"w": jnp.zeros(4)}, _config(psrl=_psrl(max_displacement=1)))
    checkpointer.close()


def test_a_header_without_a_field_is_refused_with_the_field_named(tmp_path):
    checkpointer = _save(tmp_path, _config(psrl=_psrl()), drop=("psrl.warp_padding", "env.observation"))
    with pytest.raises(ConfigError) as raised:
        checkpointer.restore({"w": jnp.zeros(4)}, _config(psrl=_psrl(), observation="pixels"))
    assert "psrl.warp_padding: checkpoint '(absent)' vs config 'zeros'" in str(raised.value)
    assert "env.observation: checkpoint None vs config 'pixels'" in str(raised.value)
    checkpointer.close()


@pytest.mark.parametrize("saved_version", [None, 0, CONFIG_VERSION + 1])
def test_a_checkpoint_of_another_config_version_is_refused(tmp_path, saved_version):
    saved = {**_config(), "config_version": saved_version}
    if saved_version is None:
        del saved["config_version"]  # a checkpoint from before config versions
    checkpointer = _save(tmp_path, saved)
    with pytest.raises(ConfigError, match=f"config_version {saved_version!r} and this code's is {CONFIG_VERSION}"):
        checkpointer.restore({"w": jnp.zeros(4)}, {**_config(), "config_version": CONFIG_VERSION})
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
    agent = RainbowAgent.from_config(config, 5, (config.env.frame_stack, size, size))
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
