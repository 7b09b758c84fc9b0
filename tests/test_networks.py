"""Encoders, noisy/dueling heads and the Rainbow Q network."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.rainbow import get_config
from psrl_jax.networks.encoders import AtariEncoder, concat_frames
from psrl_jax.networks.heads import DuelingC51Head, NoisyDense
from psrl_jax.networks.q_network import RainbowQNetwork

SMALL = (8, 16, 16)  # narrow channels keep the tests fast; spatial sizes are the real ones


def key(seed):
    # "rbg" keys: threefry's unrolled hash takes seconds to compile on CPU for the dropout
    # masks and initialisers; the modules are PRNG-agnostic (NoisyDense is also tested with
    # default keys below).
    return jax.random.key(seed, impl="rbg")


def _obs(batch=2, frames=4, size=84, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, frames, size, size)), jnp.float32)


def _rngs(seed=0):
    return {"params": key(3 * seed), "noise": key(3 * seed + 1), "dropout": key(3 * seed + 2)}


@pytest.mark.parametrize("framewise", [False, True])
def test_encoder_shapes(framewise):
    enc = AtariEncoder(channels=SMALL, framewise=framewise)
    x = _obs(batch=2, frames=4)
    params = enc.init(key(0), x, train=False)
    out = enc.apply(params, x, train=False)
    expected = (2, 4, 7, 7, 16) if framewise else (2, 7, 7, 16)
    chex.assert_shape(out, expected)
    if framewise:
        chex.assert_shape(params["params"]["Conv_0"]["kernel"], (8, 8, 1, 8))
        chex.assert_shape(concat_frames(out), (2, 7, 7, 64))
        # Shared weights: a frame's map does not depend on its position in the stack.
        swapped = enc.apply(params, x[:, ::-1], train=False)
        np.testing.assert_allclose(swapped[:, 0], out[:, 3], rtol=1e-5, atol=1e-6)


def test_concat_frames_order():
    maps = jnp.arange(2 * 3 * 1 * 1 * 2).reshape(2, 3, 1, 1, 2)
    np.testing.assert_array_equal(concat_frames(maps)[0, 0, 0], [0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("framewise", [False, True])
def test_dropout_only_in_training(framewise):
    enc = AtariEncoder(channels=SMALL, dropout_rate=0.5, framewise=framewise)
    x = _obs()
    params = enc.init(key(0), x, train=False)
    eval_a = enc.apply(params, x, train=False, rngs={"dropout": key(1)})
    eval_b = enc.apply(params, x, train=False)  # no dropout rng needed at eval
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = enc.apply(params, x, train=True, rngs={"dropout": key(1)})
    train_b = enc.apply(params, x, train=True, rngs={"dropout": key(2)})
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, eval_a)
    # rate 0: train mode is deterministic and needs no rng
    plain = AtariEncoder(channels=SMALL, framewise=framewise)
    np.testing.assert_array_equal(plain.apply(params, x, train=True), eval_a)


def test_noisy_dense_mean_and_noise():
    layer = NoisyDense(6, sigma0=0.5)
    x = jax.random.normal(jax.random.key(0), (3, 10))
    params = layer.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, x, noisy=True)
    p = params["params"]
    bound = 1 / np.sqrt(10)
    assert np.all(np.abs(p["mu_kernel"]) <= bound) and np.all(np.abs(p["mu_bias"]) <= bound)
    np.testing.assert_allclose(p["sigma_kernel"], 0.5 / np.sqrt(10), rtol=1e-6)
    mean = layer.apply(params, x, noisy=False)  # no noise rng needed
    np.testing.assert_allclose(mean, x @ p["mu_kernel"] + p["mu_bias"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mean, layer.apply(params, x, noisy=False))
    n1 = layer.apply(params, x, noisy=True, rngs={"noise": jax.random.key(1)})
    n1b = layer.apply(params, x, noisy=True, rngs={"noise": jax.random.key(1)})
    n2 = layer.apply(params, x, noisy=True, rngs={"noise": jax.random.key(2)})
    np.testing.assert_array_equal(n1, n1b)
    assert not np.allclose(n1, n2) and not np.allclose(n1, mean)


@pytest.mark.parametrize("dueling", [True, False])
@pytest.mark.parametrize("noisy", [True, False])
def test_head_shapes(dueling, noisy):
    head = DuelingC51Head(num_actions=5, num_atoms=11, hidden_size=16, noisy=noisy, dueling=dueling)
    x = jnp.ones((3, 20))
    params = head.init(_rngs(), x, noisy_sample=True)
    logits = head.apply(params, x, noisy_sample=False)
    chex.assert_shape(logits, (3, 5, 11))
    names = set(params["params"])
    assert names == (
        {"value_hidden", "value_out", "advantage_hidden", "advantage_out"} if dueling else {"q_hidden", "q_out"}
    )


def test_dueling_combination():
    """logits = V + A - mean_a A per atom: averaging logits over actions recovers V."""
    head = DuelingC51Head(num_actions=4, num_atoms=7, hidden_size=8, noisy=False, dueling=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)), jnp.float32)
    params = head.init(key(1), x, noisy_sample=False)
    logits, state = head.apply(params, x, noisy_sample=False, capture_intermediates=True)
    value = state["intermediates"]["value_out"]["__call__"][0]
    np.testing.assert_allclose(logits.mean(axis=1), value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder", ["stacked", "framewise"])
def test_q_network_shapes_and_split(encoder):
    net = RainbowQNetwork(
        num_actions=6,
        num_atoms=11,
        hidden_size=16,
        encoder=encoder,
        encoder_channels=SMALL,
    )
    x = _obs()
    params = net.init(_rngs(), x, train=False, noisy_sample=True)
    logits = net.apply(params, x, train=False, noisy_sample=False)
    chex.assert_shape(logits, (2, 6, 11))
    features = net.apply(params, x, train=False, method=RainbowQNetwork.encode)
    chex.assert_shape(features, (2, 4, 7, 7, 16) if encoder == "framewise" else (2, 7, 7, 16))
    again = net.apply(params, features, noisy_sample=False, method=RainbowQNetwork.q_head)
    np.testing.assert_allclose(again, logits, rtol=1e-6)
    n1 = net.apply(params, x, train=False, noisy_sample=True, rngs={"noise": key(5)})
    n2 = net.apply(params, x, train=False, noisy_sample=True, rngs={"noise": key(6)})
    assert not np.allclose(n1, n2)


@pytest.mark.parametrize("encoder", ["stacked", "framewise"])
def test_gradients_reach_every_parameter(encoder):
    net = RainbowQNetwork(
        num_actions=3,
        num_atoms=5,
        hidden_size=16,
        encoder=encoder,
        encoder_channels=SMALL,
        dropout_rate=0.1,
    )
    x = _obs(batch=2, size=44)  # 44 -> 10 -> 4 -> 2: small but every layer is used
    params = net.init(_rngs(), x, train=False, noisy_sample=True)
    weights = jnp.asarray(np.random.default_rng(9).normal(size=(2, 3, 5)), jnp.float32)  # asymmetric over actions

    def loss(p):
        logits = net.apply(p, x, train=True, noisy_sample=True, rngs=_rngs(1))
        return jnp.sum(weights * jax.nn.log_softmax(logits))

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)


def test_rainbow_agent_builds_its_q_network_from_the_config():
    from psrl_jax.agents.rainbow import RainbowAgent

    config = get_config("smoke")
    config.agent.encoder = "framewise"
    net = RainbowAgent.from_config(config, 18, (4, 84, 84)).network
    assert net.num_atoms == 51 and net.hidden_size == 64 and net.encoder == "framewise"
    assert tuple(net.encoder_channels) == (16, 32, 32) and net.sigma0 == config.agent.noisy_sigma0
    shapes = jax.eval_shape(lambda: net.init(_rngs(), _obs(), train=False, noisy_sample=True))
    chex.assert_shape(shapes["params"]["head"]["advantage_out"]["mu_kernel"], (64, 18 * 51))
    with pytest.raises(ValueError):
        bad = RainbowQNetwork(num_actions=2, encoder="nope")
        bad.init(_rngs(), _obs(), train=False, noisy_sample=False)


def _q_net_and_maps(renormalize, dueling_grad_scale=1.0):
    net = RainbowQNetwork(
        num_actions=3,
        hidden_size=32,
        encoder="framewise",
        encoder_channels=SMALL,
        renormalize=renormalize,
        dueling_grad_scale=dueling_grad_scale,
    )
    variables = net.init(_rngs(0), _obs(batch=3), train=False, noisy_sample=False)
    maps = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 4, 7, 7, 16)), jnp.float32)
    return net, variables, maps


def test_q_head_reads_renormalised_maps():
    """config.agent.renormalize (SPR's renormalize(conv_out, -3)): the head reads each sample's maps
    rescaled to [0, 1] over (h, w, C) of the concatenated frames, so a positive scale and a shift of
    a sample's maps (not of single frames) leave its logits unchanged; without it they change."""
    for renormalize in (True, False):
        net, variables, maps = _q_net_and_maps(renormalize)
        head = lambda m, net=net, variables=variables: net.apply(  # noqa: E731
            variables, m, noisy_sample=False, method=RainbowQNetwork.q_head
        )
        moved = (
            maps * jnp.asarray([3.0, 0.5, 7.0])[:, None, None, None, None]
            + jnp.asarray([1.0, -2.0, 0.25])[:, None, None, None, None]
        )
        same = np.allclose(head(maps), head(moved), rtol=1e-4, atol=1e-5)
        assert same == renormalize
    # The normalisation is per sample, not per frame: scaling one frame alone changes the logits.
    net, variables, maps = _q_net_and_maps(True)
    head = lambda m: net.apply(variables, m, noisy_sample=False, method=RainbowQNetwork.q_head)  # noqa: E731
    assert not np.allclose(head(maps), head(maps.at[:, 0].multiply(4.0)), rtol=1e-4, atol=1e-5)


def test_dueling_grad_scale_scales_the_encoder_gradient_not_the_logits():
    """SPR's dueling head scales the gradient into its input by 2**-0.5 (rlpyt's scale_grad): same
    logits bit for bit, the gradient reaching the maps times the scale."""
    scale = 2**-0.5
    logits, grads = [], []
    for s in (1.0, scale):
        net, variables, maps = _q_net_and_maps(True, dueling_grad_scale=s)

        def total(m, net=net, variables=variables):
            return jnp.sum(net.apply(variables, m, noisy_sample=False, method=RainbowQNetwork.q_head) ** 2)

        logits.append(net.apply(variables, maps, noisy_sample=False, method=RainbowQNetwork.q_head))
        grads.append(jax.grad(total)(maps))
    np.testing.assert_array_equal(logits[0], logits[1])
    np.testing.assert_allclose(grads[1], scale * grads[0], rtol=1e-5, atol=1e-9)
    assert float(jnp.max(jnp.abs(grads[0]))) > 0
