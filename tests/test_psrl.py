"""PSRL losses inside the Rainbow update: the RL path is untouched, each term reaches exactly the
modules it should, masks, BatchNorm statistics, the EMA target and the ablation configs."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_level import jit_at_launch_level
from synthetic import sequence_batch

from configs import rainbow_psrl
from psrl_jax.agents.rainbow import RainbowAgent
from psrl_jax.config import ConfigError, validate_atari_config
from psrl_jax.losses.psrl import TERMS, active_terms

NUM_ACTIONS = 4
MODULES = ("torso", "head", "correspondence", "transform", "projection", "predictor")
# Which modules each term alone must send gradient to; every other module must get exactly zero.
ROUTES = {
    "cat_local": {"torso", "correspondence"},
    "cat_global": {"torso", "correspondence", "projection", "predictor"},
    "aat_local": {"torso", "transform"},
    "aat_global": {"torso", "transform", "projection", "predictor"},
    "internal": {"torso", "correspondence"},
}


def _config(terms=TERMS, **psrl):
    config = rainbow_psrl.get_config("smoke")
    for term in TERMS:
        config.psrl[term] = term in terms
    for name, value in psrl.items():
        config.psrl[name] = value
    return config


def _agent(config):
    size = config.env.image_size
    return RainbowAgent.from_config(config, NUM_ACTIONS, (config.env.frame_stack, size, size))


def _batch(config, seed=0, importance_weight=1.0):
    return sequence_batch(config, NUM_ACTIONS, seed, importance_weight)


def _grads(agent, state, batch, seed=5, jit=jax.jit):
    trainable = {"q": state.params, "aux": state.aux_params}
    return jit(jax.grad(agent.loss, has_aux=True))(trainable, state, batch, jax.random.PRNGKey(seed))


def _module_grads(grads):
    out = {"torso": grads["q"]["params"]["torso"], "head": grads["q"]["params"]["head"]}
    out.update({name: grads["aux"].get(name, {}) for name in MODULES[2:]})
    return out


def _max_abs(tree):
    leaves = jax.tree.leaves(tree)
    return max((float(jnp.max(jnp.abs(x))) for x in leaves), default=0.0)


def test_all_loss_weights_zero_give_exactly_the_rainbow_update():
    on = _config(local_weight=0.0, global_weight=0.0)
    off = _config(terms=())
    assert active_terms(on.psrl) == () and active_terms(off.psrl) == ()
    batch, key = _batch(on), jax.random.PRNGKey(0)
    new_on, prio_on, _ = jax.jit(_agent(on).update)(_agent(on).init(key), batch)
    new_off, prio_off, _ = jax.jit(_agent(off).update)(_agent(off).init(key), batch)
    np.testing.assert_array_equal(prio_on, prio_off)
    for a, b in zip(jax.tree.leaves(new_on.params), jax.tree.leaves(new_off.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert new_on.aux_params == {} and new_on.batch_stats == {} and new_on.ema_params == {}


def test_psrl_on_leaves_the_rl_loss_and_q_head_gradient_unchanged():
    """The PSRL terms share o_k's augmentation and forward pass but must not perturb the RL path."""
    on, off = _config(), _config(terms=())
    key = jax.random.PRNGKey(1)
    agent_on, agent_off = _agent(on), _agent(off)
    state_on, state_off = agent_on.init(key), agent_off.init(key)
    for a, b in zip(jax.tree.leaves(state_on.params), jax.tree.leaves(state_off.params), strict=True):
        np.testing.assert_array_equal(a, b)  # adding PSRL does not change the Q network's init
    batch = _batch(on)
    # Two programs asked for the same bits: equal at -O1; at -O0 their RL losses differ in the last bit.
    grads_on, (rl_on, _, metrics_on) = _grads(agent_on, state_on, batch, jit=jit_at_launch_level)
    grads_off, (rl_off, _, metrics_off) = _grads(agent_off, state_off, batch, jit=jit_at_launch_level)
    np.testing.assert_array_equal(rl_on, rl_off)
    assert float(metrics_on["loss/rl"]) == float(metrics_off["loss/rl"])
    head_on, head_off = grads_on["q"]["params"]["head"], grads_off["q"]["params"]["head"]
    for a, b in zip(jax.tree.leaves(head_on), jax.tree.leaves(head_off), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert _max_abs(jax.tree.map(jnp.subtract, grads_on["q"]["params"]["torso"], grads_off["q"]["params"]["torso"]))
    for name in ("loss/cat_local", "loss/cat_global", "loss/aat_local", "loss/aat_global", "loss/internal"):
        assert np.isfinite(float(metrics_on[name])) and float(metrics_on[name]) > 0, name
    assert "psrl/flow_magnitude" in metrics_on and "psrl/internal_flow_magnitude" in metrics_on


@pytest.mark.parametrize("term", TERMS)
def test_each_term_alone_reaches_exactly_its_modules(term):
    # Importance weights 0 remove the RL loss, so what is left is the PSRL term alone (left
    # unweighted here; test_psrl_reference checks the weighting).
    config = _config(terms=(term,), importance_weighted=False)
    agent = _agent(config)
    state = agent.init(jax.random.PRNGKey(2))
    grads, _ = _grads(agent, state, _batch(config, importance_weight=0.0))
    per_module = {name: _max_abs(g) for name, g in _module_grads(grads).items()}
    reached = {name for name, value in per_module.items() if value > 0}
    assert reached == ROUTES[term], per_module


def _randomised_flow_heads(aux_params):
    def randomise(path, leaf):
        if "flow" in jax.tree_util.keystr(path):
            return 0.1 * jax.random.normal(jax.random.PRNGKey(leaf.size), leaf.shape)
        return leaf

    return {**aux_params, "correspondence": jax.tree_util.tree_map_with_path(randomise, aux_params["correspondence"])}


def test_masked_steps_and_invalid_samples_contribute_nothing():
    config = _config(importance_weighted=False)  # importance weights 0 below remove the RL loss alone
    agent = _agent(config)
    batch = _batch(config, importance_weight=0.0)
    state = agent.init(jax.random.PRNGKey(3))
    # The flow heads start at zero; give them real weights so that masked pairs could leak into
    # the other samples' flows through the correspondence module's BatchNorm statistics.
    state = state.replace(aux_params=_randomised_flow_heads(state.aux_params))
    k = config.replay.prediction_steps
    # Sample 0: invalid; sample 1: its sequence ends after the first step.
    mask = np.ones((config.agent.batch_size, k), np.float32)
    mask[0] = 0.0
    mask[1, 1:] = 0.0
    valid = np.ones(config.agent.batch_size, np.float32)
    valid[0] = 0.0
    batch = batch.replace(future_mask=jnp.asarray(mask), valid=jnp.asarray(valid))
    trainable = {"q": state.params, "aux": state.aux_params}
    loss = jax.jit(lambda b: agent.loss(trainable, state, b, jax.random.PRNGKey(0))[0])
    base = float(loss(batch))
    noise = np.random.default_rng(9).integers(0, 256, batch.future_obs.shape, dtype=np.uint8)
    future = np.asarray(batch.future_obs).copy()
    future[0] = noise[0]  # anything in an invalid sample
    future[1, 1:] = noise[1, 1:]  # anything after sample 1's episode end
    changed = float(loss(batch.replace(future_obs=jnp.asarray(future))))
    np.testing.assert_allclose(changed, base, rtol=1e-6)
    future[2, 1] = noise[2, 1]  # ... but an unmasked step does count
    assert abs(float(loss(batch.replace(future_obs=jnp.asarray(future)))) - base) > 1e-6


def test_batch_stats_move_only_with_the_correspondence_module_and_ema_follows_decay():
    config = _config(target_ema_decay=0.5)
    agent = _agent(config)
    state = agent.init(jax.random.PRNGKey(4))
    new, _, _ = jax.jit(agent.update)(state, _batch(config))
    assert _max_abs(jax.tree.map(jnp.subtract, new.batch_stats, state.batch_stats)) > 0
    expected_torso = jax.tree.map(
        lambda old, online: 0.5 * old + 0.5 * online,
        state.ema_params["torso"],
        new.params["params"]["torso"],
    )
    for a, b in zip(jax.tree.leaves(new.ema_params["torso"]), jax.tree.leaves(expected_torso), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    expected_projection = jax.tree.map(
        lambda old, online: 0.5 * old + 0.5 * online, state.ema_params["projection"], new.aux_params["projection"]
    )
    for a, b in zip(jax.tree.leaves(new.ema_params["projection"]), jax.tree.leaves(expected_projection), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)

    aat_only = _config(terms=("aat_local", "aat_global"))
    aat_state = _agent(aat_only).init(jax.random.PRNGKey(4))
    assert aat_state.batch_stats == {} and "correspondence" not in aat_state.aux_params


def test_full_table3_graph_gradients_reach_every_correspondence_layer():
    """Three refinement levels (Table 3), narrow: once the zero-initialised flow heads are open (here
    every auxiliary parameter nudged by noise, as any first update does; a compiled update besides the
    gradient doubled this test's time), every parameter of the correspondence module receives gradient."""
    config = _config(terms=("cat_local", "internal"), refinement_levels=3, importance_weighted=False)
    agent = _agent(config)
    state = agent.init(jax.random.PRNGKey(6))
    leaves, tree = jax.tree.flatten(state.aux_params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    nudged = [x + 1e-2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    state = state.replace(aux_params=jax.tree.unflatten(tree, nudged))
    batch = _batch(config, importance_weight=0.0)
    grads, _ = _grads(agent, state, batch)
    flat = jax.tree_util.tree_flatten_with_path(grads["aux"]["correspondence"])[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if float(jnp.max(jnp.abs(g))) == 0.0]
    assert not dead, dead
    assert _max_abs(grads["q"]["params"]["torso"]) > 0


@pytest.mark.parametrize(
    "name, terms",
    [
        ("rainbow_psrl", set(TERMS)),
        ("rainbow_psrl_spr_like", {"aat_global"}),
        ("rainbow_psrl_cat_only", {"cat_local", "cat_global", "internal"}),
        ("rainbow_psrl_aat_only", {"aat_local", "aat_global"}),
        ("rainbow_psrl_local_only", {"cat_local", "aat_local", "internal"}),
        ("rainbow_psrl_global_only", {"cat_global", "aat_global"}),
    ],
)
def test_ablation_configs_are_valid_and_switch_the_right_terms(name, terms):
    module = importlib.import_module(f"configs.{name}")
    for variant in ("", "smoke"):
        config = module.get_config(variant)
        validate_atari_config(config)
        assert set(active_terms(config.psrl)) == terms
        assert config.agent.encoder == "framewise" and config.replay.prediction_steps >= 1


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("agent.encoder", "stacked", "framewise"),
        ("replay.prediction_steps", 0, "prediction_steps"),
        ("psrl.cat_steps", 9, "cat_steps"),
        ("psrl.correlation", "dense", "correlation"),
        ("psrl.refinement_levels", 4, "refinement_levels"),
        ("psrl.target_ema_decay", 1.0, "target_ema_decay"),
        ("psrl.correspondence_width", 0.0, "correspondence_width"),
    ],
)
def test_bad_psrl_config_is_refused(field, value, message):
    config = rainbow_psrl.get_config("smoke")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate_atari_config(config)


def _flows_pushed_off_the_map(aux_params, dx=40.0):
    """The coarse flow head outputs a constant (dx, 0): every flow points far right of the map."""
    correspondence = dict(aux_params["correspondence"])
    correspondence["flow3"] = {**correspondence["flow3"], "bias": jnp.asarray([dx, 0.0])}
    return {**aux_params, "correspondence": correspondence}


def _loss_metrics(loss, state, batch, seed=5):
    """The metrics of agent.loss (jitted as `loss`) at `state`: a forward pass, no gradients."""
    _, (_, _, metrics) = loss({"q": state.params, "aux": state.aux_params}, state, batch, jax.random.PRNGKey(seed))
    return metrics


def test_warp_padding_matters_only_where_flows_leave_the_map():
    """config.psrl.warp_padding: at init (zero flow) "zeros" and "border" give the same losses and no
    flow leaves the map; with every flow pushed off the map both report it (outside fraction 1) and the
    warped losses differ (zeros vs the edge's features), while the AAT terms stay the same."""
    metrics = {}
    for padding in ("zeros", "border"):
        config = _config(warp_padding=padding)
        agent = _agent(config)
        state = agent.init(jax.random.PRNGKey(3))
        batch = _batch(config)
        loss = jax.jit(agent.loss)  # the forward pass is enough, compiled once for both states
        pushed = state.replace(aux_params=_flows_pushed_off_the_map(state.aux_params))
        metrics[padding] = (_loss_metrics(loss, state, batch), _loss_metrics(loss, pushed, batch))
    warped = ("loss/cat_local", "loss/cat_global", "loss/internal")
    for name in (*warped, "loss/aat_local", "loss/aat_global"):
        assert float(metrics["zeros"][0][name]) == float(metrics["border"][0][name]), name
    for name in ("psrl/flow_outside_fraction", "psrl/internal_flow_outside_fraction"):
        assert float(metrics["zeros"][0][name]) == 0.0
        assert float(metrics["zeros"][1][name]) == float(metrics["border"][1][name]) == 1.0
    for name in warped:
        assert abs(float(metrics["zeros"][1][name]) - float(metrics["border"][1][name])) > 1e-4, name
    for name in ("loss/aat_local", "loss/aat_global"):
        assert float(metrics["zeros"][1][name]) == float(metrics["border"][1][name]), name


def test_unknown_warp_padding_is_a_config_error():
    with pytest.raises(ConfigError, match="warp_padding"):
        validate_atari_config(_config(warp_padding="reflect"))


def test_shared_shift_gives_o_k_and_its_future_frames_one_augmentation():
    """psrl.shared_shift: with o_{k+1} equal to o_k, an untrained module (zero flow, EMA target equal
    to the online encoder, no dropout) sees the same maps on both sides only if both got the same
    random shift and intensity: the CAT local loss is then 0; independent augmentations make it > 0."""
    losses = {}
    for shared in (True, False):
        config = _config(terms=("cat_local",), shared_shift=shared)
        config.agent.dropout_rate = 0.0
        agent = _agent(config)
        state = agent.init(jax.random.PRNGKey(0))
        batch = _batch(config)
        same = jnp.broadcast_to(batch.obs[:, None], batch.future_obs.shape)
        batch = batch.replace(future_obs=same)
        losses[shared] = float(_loss_metrics(jax.jit(agent.loss), state, batch)["loss/cat_local"])
    assert losses[True] < 1e-6 < 0.01 < losses[False], losses
