"""Mixed precision (config.agent.compute_dtype = "bfloat16": bf16 compute, float32 params and
losses) and the profiler name scopes of the update."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import sequence_batch

from configs import rainbow, rainbow_psrl
from psrl_jax.agents.rainbow import RainbowAgent
from psrl_jax.config import ConfigError, validate_atari_config

NUM_ACTIONS = 4
CONFIGS = {"rainbow": rainbow, "rainbow_psrl": rainbow_psrl}
SCOPES = ("encoder", "correspondence", "warp", "aat", "global_heads", "distributional_loss", "psrl_loss", "optimizer")


def _config(name, dtype=None):
    config = CONFIGS[name].get_config("smoke")
    if dtype is not None:
        config.agent.compute_dtype = dtype
    return config


def _agent(config):
    size = config.env.image_size
    return RainbowAgent.from_config(config, NUM_ACTIONS, (config.env.frame_stack, size, size))


def _init(agent, seed=0):
    """agent.init compiled without LLVM optimisation: a quarter of the compile time on CPU (the
    initialisers run once, so their speed does not matter)."""
    key = jax.random.PRNGKey(seed)
    return jax.jit(agent.init).lower(key).compile(compiler_options={"xla_backend_optimization_level": 0})(key)


def _batch(config, seed=0):
    return sequence_batch(config, NUM_ACTIONS, seed)


def _eqns(jaxpr):
    """Every equation of a jaxpr, nested ones (pjit, custom_vjp, scan bodies) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    yield from _eqns(sub.jaxpr)
                elif hasattr(sub, "eqns"):
                    yield from _eqns(sub)


def _operand_dtypes(fn, *args, primitive):
    """The set of operand dtypes of every `primitive` equation in fn's jaxpr (asserted non-empty)."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    dtypes = [tuple(str(v.aval.dtype) for v in e.invars) for e in _eqns(jaxpr) if e.primitive.name == primitive]
    assert dtypes, f"no {primitive} in the jaxpr"
    return set(dtypes)


def test_compute_dtype_is_validated():
    config = _config("rainbow")
    assert config.agent.compute_dtype == "float32"  # off by default
    config.agent.compute_dtype = "bfloat16"
    validate_atari_config(config)
    config.agent.compute_dtype = "float16"
    with pytest.raises(ConfigError, match="compute_dtype"):
        validate_atari_config(config)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bfloat16_smoke_config_trains_to_finite_losses_with_float32_params(name):
    config = _config(name, "bfloat16")
    validate_atari_config(config)
    agent = _agent(config)
    state = _init(agent)
    stored = (state.params, state.aux_params, state.ema_params, state.batch_stats, state.opt_state)
    floats = [x for x in jax.tree.leaves(stored) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    update = jax.jit(agent.update)
    new = state
    for step in range(3):
        new, priorities, metrics = update(new, _batch(config, seed=step))
        assert priorities.dtype == jnp.float32 and np.all(np.isfinite(priorities))
        for key, value in metrics.items():
            assert np.isfinite(float(value)), (step, key, value)
    assert float(metrics["loss/rl"]) > 0
    if name == "rainbow_psrl":
        assert float(metrics["loss/psrl"]) > 0 and new.batch_stats
    stored = (new.params, new.aux_params, new.ema_params, new.batch_stats, new.opt_state)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(stored) if jnp.issubdtype(x.dtype, jnp.floating))
    for before, after in ((state.params, new.params), (state.aux_params, new.aux_params)):
        changed = [
            not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
        ]
        assert all(changed), "every parameter must train"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_convolutions_and_matmuls_run_in_the_compute_dtype(dtype):
    config = _config("rainbow_psrl", dtype)
    agent = _agent(config)
    state = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    rngs = {"noise": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}
    want = {(dtype, dtype)}
    # The Q network (framewise encoder with dropout, noisy dueling head): every conv and matmul.
    q_fn = lambda params, obs: agent.network.apply(params, obs, train=True, noisy_sample=True, rngs=rngs)
    obs = jnp.zeros((2, 4, 84, 84), jnp.float32)
    assert _operand_dtypes(q_fn, state.params, obs, primitive="conv_general_dilated") == want
    assert _operand_dtypes(q_fn, state.params, obs, primitive="dot_general") == want
    assert jax.eval_shape(q_fn, state.params, obs).dtype == jnp.float32  # logits leave in float32
    # The PSRL modules. The correspondence module's correlation is a compute-dtype matmul; its
    # flows are resized (matmuls too) in float32.
    psrl, aux = agent.psrl, state.aux_params
    maps = jnp.zeros((6, 7, 7, config.agent.encoder_channels[-1]), jnp.float32)
    stack = jnp.zeros((2, config.env.frame_stack) + maps.shape[1:], jnp.float32)
    corr_vars = {"params": aux["correspondence"], "batch_stats": state.batch_stats}
    corr_fn = lambda v, m: psrl.correspondence.apply(v, m, m, train=True, mutable=["batch_stats"])
    assert _operand_dtypes(corr_fn, corr_vars, maps, primitive="conv_general_dilated") == want
    assert (dtype, dtype) in _operand_dtypes(corr_fn, corr_vars, maps, primitive="dot_general")
    aat_fn = lambda p, s: psrl.transform.apply({"params": p}, s, jnp.zeros((2,), jnp.int32))
    assert _operand_dtypes(aat_fn, aux["transform"], stack, primitive="conv_general_dilated") == want
    proj_fn = lambda p, s: psrl.predictor.apply({"params": p[1]}, psrl.projection.apply({"params": p[0]}, s))
    assert _operand_dtypes(proj_fn, (aux["projection"], aux["predictor"]), stack, primitive="dot_general") == want
    # The whole update, backward pass included: every convolution runs in the compute dtype.
    assert _operand_dtypes(agent.update, state, _batch(config), primitive="conv_general_dilated") == want


def test_default_float32_is_the_graph_without_a_compute_dtype():
    """compute_dtype="float32" (the default) traces to exactly the graph of modules with dtype=None
    (flax infers float32 from the float32 inputs and params: the networks before the option), so
    it changes no output. The full three-level correspondence graph, skip input included."""
    config = _config("rainbow_psrl")
    config.psrl.refinement_levels = 3
    agent = _agent(config)
    net, psrl = agent.network, agent.psrl
    assert net.dtype == jnp.float32 and psrl.correspondence.dtype == jnp.float32
    legacy_net = net.clone(dtype=None)
    legacy = dataclasses.replace(
        psrl,
        network=legacy_net,
        **{
            name: getattr(psrl, name).clone(dtype=None)
            for name in ("correspondence", "transform", "projection", "predictor")
        },
    )
    state = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    obs = jnp.zeros((2, 4, 84, 84), jnp.float32)
    rngs = {"noise": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}
    maps = jnp.zeros((6, 7, 7, config.agent.encoder_channels[-1]), jnp.float32)
    skip = jnp.zeros((6, 9, 9, config.agent.encoder_channels[-2]), jnp.float32)
    stack = jnp.zeros((2, config.env.frame_stack) + maps.shape[1:], jnp.float32)

    def forward(net, psrl, state):
        aux = state.aux_params
        variables = {"params": aux["correspondence"], "batch_stats": state.batch_stats}
        return (
            net.apply(state.params, obs, train=True, noisy_sample=True, rngs=rngs),
            psrl.correspondence.apply(variables, maps, maps, skip, train=True, mutable=["batch_stats"]),
            psrl.transform.apply({"params": aux["transform"]}, stack, jnp.zeros((2,), jnp.int32)),
            psrl.predictor.apply(
                {"params": aux["predictor"]}, psrl.projection.apply({"params": aux["projection"]}, stack)
            ),
        )

    new = jax.make_jaxpr(lambda s: forward(net, psrl, s))(state)
    old = jax.make_jaxpr(lambda s: forward(legacy_net, legacy, s))(state)
    assert "bf16" not in str(new)
    assert str(new) == str(old)


def test_update_pieces_are_named_scopes_in_the_lowered_hlo():
    config = _config("rainbow_psrl")
    agent = _agent(config)
    state = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    text = jax.jit(agent.update).lower(state, _batch(config)).as_text(debug_info=True)
    for scope in SCOPES:  # e.g. loc("jit(update)/jvp(psrl_loss)/warp/...")
        assert re.search(rf"[/(]{scope}[/)]", text), scope
