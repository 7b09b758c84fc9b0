"""Checkpointer's config check on resume: mismatched fields are named; a field added to the
compatibility header later (env.observation) does not lock out checkpoints written before it."""

import jax.numpy as jnp
import numpy as np
import pytest

from psrl_jax.config import ConfigError
from psrl_jax.train.checkpoint import Checkpointer, checkpoint_header


def _config(**env):
    return {"num_seeds": 1, "env": {"task": "cartpole_swingup", "frame_stack": 3, **env}, "agent": {"lr": 1e-3}}


def _save(tmp_path, config_dict, drop=()):
    header = checkpoint_header(8000, config_dict, [3], 100, None, 1)
    for field in drop:
        del header["compatibility"][field]
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
