"""psrl_loss's values against an independent NumPy/SciPy reference.

The other PSRL tests check where gradients go, masks and switches; this one checks the numbers. Every
term is recomputed here from the loss's definition (DESIGN.md 1): per-frame min-max normalisation,
a bilinear warp with zeros outside (SciPy's map_coordinates), the L1 of the normalised volumes, the
global heads as NumPy matrix products, SPR's normalised-MSE cosine loss, the AAT's recurrent rollout
(drop the oldest frame, append the prediction), the masks and the two weights. Inputs the loss takes
from learned modules are given: the encoders' maps, the AAT's predicted frame for a stack, and a
constant flow, set through the coarse flow head's bias (its kernel is zero at init).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from configs import rainbow_psrl
from psrl_jax.agents.rainbow import RainbowAgent
from psrl_jax.losses.psrl import psrl_loss
from psrl_jax.networks.q_network import RainbowQNetwork

NUM_ACTIONS = 5
FLOW = (0.6, -1.3)  # (dx, dy) in feature-map pixels: fractional, and partly off the 7x7 map


def _minmax(x, eps=1e-5):
    lo = x.min(axis=(-3, -2, -1), keepdims=True)
    hi = x.max(axis=(-3, -2, -1), keepdims=True)
    return (x - lo) / (hi - lo + eps)


def _warp(feat, flow):
    """feat [h, w, C] sampled at (y + dy, x + dx), zeros outside."""
    h, w, _ = feat.shape
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    coords = [ys + flow[1], xs + flow[0]]
    return np.stack(
        [
            scipy.ndimage.map_coordinates(feat[..., c], coords, order=1, mode="grid-constant")
            for c in range(feat.shape[-1])
        ],
        axis=-1,
    )


def _dense(x, layer):
    return x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)


def _cosine_loss(p, t):
    p = p / np.linalg.norm(p, axis=-1, keepdims=True)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    return np.sum((p - t) ** 2, axis=-1)


@pytest.fixture(scope="module")
def case():
    config = rainbow_psrl.get_config("smoke")
    config.psrl.refinement_levels = 0  # one flow scale: the coarse head, at the feature map's size
    config.psrl.local_weight, config.psrl.global_weight = 0.7, 1.9  # unequal, so a swap shows
    config.psrl.cat_steps = 1
    b, k, f, s = 4, config.replay.prediction_steps, config.env.frame_stack, config.env.image_size
    agent = RainbowAgent(config, NUM_ACTIONS, (f, s, s))
    state = agent.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(7)
    aux = dict(state.aux_params)
    aux["correspondence"] = {**aux["correspondence"], "flow3": {**aux["correspondence"]["flow3"]}}
    aux["correspondence"]["flow3"]["bias"] = jnp.asarray(FLOW, jnp.float32)
    # A target side unlike the online one (at init the EMA equals the online weights).
    ema = jax.tree.map(lambda x: x + 0.05 * jnp.asarray(rng.normal(size=x.shape), x.dtype), state.ema_params)
    obs = jnp.asarray(rng.uniform(size=(b, f, s, s)), jnp.float32)
    maps, skip = agent.network.apply(state.params, obs, train=False, return_skip=True, method=RainbowQNetwork.encode)
    inputs = dict(
        online_maps=maps,
        online_skip=skip,
        future_obs=jnp.asarray(rng.uniform(size=(b, k, f, s, s)), jnp.float32),
        actions=jnp.asarray(rng.integers(0, NUM_ACTIONS, (b, k)), jnp.int32),
        # sample 1 crosses an episode end after one step; sample 3 is invalid (and so masked throughout)
        future_mask=jnp.asarray([[1, 1, 1], [1, 0, 0], [1, 1, 1], [0, 0, 0]][:b], jnp.float32)[:, :k],
        valid=jnp.asarray([1, 1, 1, 0][:b], jnp.float32),
    )
    per_sample, _, metrics = jax.jit(
        lambda aux, stats, ema, inputs: psrl_loss(aux, stats, ema, **inputs, config=config, modules=agent.psrl)
    )(aux, state.batch_stats, ema, inputs)
    return config, agent, aux, ema, inputs, np.asarray(per_sample, np.float64), metrics


def _reference(config, agent, aux, ema, inputs):
    """Per-sample loss and per-term masked means, in float64 NumPy."""
    maps = np.asarray(inputs["online_maps"], np.float64)
    future_obs = inputs["future_obs"]
    mask, valid = np.asarray(inputs["future_mask"], np.float64), np.asarray(inputs["valid"], np.float64)
    b, k = mask.shape
    f = maps.shape[1]
    target_maps = agent.psrl.encode_target(ema, future_obs.reshape((b * k,) + future_obs.shape[2:]))
    target = _minmax(np.asarray(target_maps, np.float64).reshape((b, k) + maps.shape[1:]))  # [B, K, F, h, w, C]
    query = _minmax(maps)  # [B, F, h, w, C]

    def project(stacks, params):  # [N, F, h, w, C] -> Dense-ReLU
        return np.maximum(_dense(stacks.reshape(len(stacks), -1), params["Dense_0"]), 0.0)

    target_vectors = project(target.reshape((b * k,) + target.shape[2:]), ema["projection"]).reshape(b, k, -1)

    def online_vectors(stacks):
        return _dense(project(stacks, aux["projection"]), aux["predictor"]["Dense_0"])

    warped = np.stack([np.stack([_warp(query[i, j], FLOW) for j in range(f)]) for i in range(b)])
    cat_local = np.abs(warped - target[:, 0]).mean(axis=(1, 2, 3, 4))
    cat_global = _cosine_loss(online_vectors(warped), target_vectors[:, 0])
    internal = np.abs(np.stack([_warp(query[i, 0], FLOW) for i in range(b)]) - query[:, -1]).mean(axis=(1, 2, 3))

    stack, aat_local, aat_global = query, [], []
    for j in range(k):
        new = agent.psrl.transform.apply(
            {"params": aux["transform"]}, jnp.asarray(stack, jnp.float32), inputs["actions"][:, j]
        )
        stack = np.concatenate([stack[:, 1:], np.asarray(new, np.float64)[:, None]], axis=1)
        aat_local.append(np.abs(stack - target[:, j]).mean(axis=(1, 2, 3, 4)))
        aat_global.append(_cosine_loss(online_vectors(stack), target_vectors[:, j]))
    aat_local, aat_global = np.stack(aat_local, 1), np.stack(aat_global, 1)

    p = config.psrl
    local = mask[:, 0] * cat_local + valid * internal + np.sum(mask * aat_local, axis=1)
    global_ = mask[:, 0] * cat_global + np.sum(mask * aat_global, axis=1)
    per_sample = p.local_weight * local + p.global_weight * global_

    def masked_mean(values, m):
        return np.sum(values * m) / max(np.sum(m), 1.0)

    terms = {
        "loss/cat_local": masked_mean(cat_local, mask[:, 0]),
        "loss/cat_global": masked_mean(cat_global, mask[:, 0]),
        "loss/internal": masked_mean(internal, valid),
        "loss/aat_local": masked_mean(aat_local, mask),
        "loss/aat_global": masked_mean(aat_global, mask),
    }
    return per_sample, terms


def test_every_term_and_the_weighted_sum_match_numpy(case):
    config, agent, aux, ema, inputs, per_sample, metrics = case
    want, terms = _reference(config, agent, aux, ema, inputs)
    for name, value in terms.items():
        np.testing.assert_allclose(float(metrics[name]), value, rtol=2e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(per_sample, want, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["loss/psrl"]), want.mean(), rtol=2e-4)
    assert per_sample[3] == 0.0  # the invalid sample contributes nothing
    # The constant flow is what the loss used: magnitude and the share of sample points off the map.
    np.testing.assert_allclose(float(metrics["psrl/flow_magnitude"]), np.hypot(*FLOW), rtol=1e-5)
    h, w = inputs["online_maps"].shape[2:4]
    ys, xs = np.meshgrid(np.arange(h) + FLOW[1], np.arange(w) + FLOW[0], indexing="ij")
    off = np.mean((xs < 0) | (xs > w - 1) | (ys < 0) | (ys > h - 1))
    np.testing.assert_allclose(float(metrics["psrl/flow_outside_fraction"]), off, rtol=1e-6)
