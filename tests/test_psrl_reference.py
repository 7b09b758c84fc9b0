"""The PSRL auxiliary loss of a Rainbow update against an independent NumPy/SciPy reference.

The other PSRL tests check where gradients go, masks and switches; this one checks the numbers, at
the default loss settings of configs/rainbow_psrl.py (every term, K = 5, local and global weights,
importance weighting, the AAT's newest-frame reading, padded-frame masks), on narrow modules. The
reference is written from the method's definition (DESIGN.md 1) and SPR's code (mila-iqia/spr
src/algos.py and src/models.py), not from psrl_loss's structure:

    SPR:   model_spr_loss = (spr_loss * nonterminals)[1:].mean(0)       (mean over the K steps)
           loss = (model_spr_weight * model_spr_loss * is_weights).mean()   (model_spr_weight = 5)
    PSRL:  + lambda_local * (L1_CAT + L1_internal + sum_k L1_AAT) + lambda_global * Ls_CAT, per sample,
           times the same importance weight, averaged over the batch.

Per-frame min-max normalisation is SPR's renormalize, the warp is SciPy's bilinear map_coordinates
with zeros outside, the global heads are NumPy matrix products, the cosine loss is SPR's normalised
MSE with F.normalize's eps. Inputs the loss takes from learned modules are given: the encoders' maps,
the AAT's predicted frame for a stack, and a constant flow, set through the coarse flow head's bias
(every flow kernel is zero at init, so each refinement level passes it on unchanged).

The batch holds an invalid sample, episode ends after the first and second prediction steps, and
two samples whose stacks start with padding (an episode's first and second steps).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from synthetic import sequence_batch

from configs import rainbow_psrl
from psrl_jax.agents.rainbow import RainbowAgent
from psrl_jax.networks.q_network import RainbowQNetwork

NUM_ACTIONS = 5
FLOW = (0.6, -1.3)  # (dx, dy) in feature-map pixels: fractional, and partly off the 7x7 map
SPR_MODEL_WEIGHT = 5.0  # SPR scripts/run.py --model-spr-weight
IMPORTANCE = [1.0, 0.5, 0.25, 0.8, 1.0, 0.3, 0.9, 0.6]
VALID = [1, 1, 1, 0, 1, 1, 1, 1]
EPISODE_STEPS = {1: 1, 2: 2, 3: 0}  # sample -> prediction steps inside its episode (else all K)
PADDED = {4: 0, 5: 1}  # sample -> o_k's position in its episode (0: its first step, 3 frames of padding)


def _renormalize(x):
    """SPR's renormalize(x, -3) on per-frame [..., h, w, C] maps; a constant map (a padding frame's,
    where SPR would divide by zero) is all zeros, as ops/normalize.py documents."""
    lo = x.min(axis=(-3, -2, -1), keepdims=True)
    hi = x.max(axis=(-3, -2, -1), keepdims=True)
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


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


def _spr_loss(p, t):
    """SPR's spr_loss per sample: F.normalize(eps=1e-3) both sides, squared distance summed."""
    p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-3)
    t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-3)
    return np.sum((p - t) ** 2, axis=-1)


def _config(psrl=True):
    config = rainbow_psrl.get_config("smoke")
    config.replay.prediction_steps = 5  # K of configs/rainbow_psrl.py (and SPR)
    config.agent.batch_size = len(IMPORTANCE)
    # Deterministic online maps, so the reference can recompute them: no dropout, no augmentation.
    config.agent.dropout_rate = 0.0
    config.agent.augmentation.enabled = False
    if not psrl:
        for term in ("cat_local", "cat_global", "aat_local", "aat_global", "internal"):
            config.psrl[term] = False
    return config


def _batch(config):
    """sequence_batch's random frames with the masks of EPISODE_STEPS, VALID and PADDED applied."""
    batch = sequence_batch(config, NUM_ACTIONS, seed=3)
    b, k, f = config.agent.batch_size, config.replay.prediction_steps, config.env.frame_stack
    future_mask = np.ones((b, k), np.float32)
    for i, steps in EPISODE_STEPS.items():
        future_mask[i, steps:] = 0.0
    future_mask *= np.asarray(VALID, np.float32)[:, None]
    obs, future_obs = np.asarray(batch.obs).copy(), np.asarray(batch.future_obs).copy()
    obs_frame_mask, future_frame_mask = np.ones((b, f), np.float32), np.ones((b, k, f), np.float32)
    for i, position in PADDED.items():
        for j in range(k + 1):  # o_{k+j} holds min(F, position + j + 1) real frames, zeros before them
            padding = max(f - 1 - position - j, 0)
            if j == 0:
                obs[i, :padding], obs_frame_mask[i, :padding] = 0, 0.0
            else:
                future_obs[i, j - 1, :padding], future_frame_mask[i, j - 1, :padding] = 0, 0.0
    return batch.replace(
        obs=jnp.asarray(obs),
        future_obs=jnp.asarray(future_obs),
        future_mask=jnp.asarray(future_mask),
        valid=jnp.asarray(VALID, jnp.float32),
        importance_weights=jnp.asarray(IMPORTANCE, jnp.float32),
        obs_frame_mask=jnp.asarray(obs_frame_mask),
        future_frame_mask=jnp.asarray(future_frame_mask),
    )


@pytest.fixture(scope="module")
def case():
    config = _config()
    agent = RainbowAgent.from_config(config, NUM_ACTIONS, (config.env.frame_stack, 84, 84))
    state = agent.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(7)
    aux = dict(state.aux_params)
    aux["correspondence"] = {**aux["correspondence"], "flow3": {**aux["correspondence"]["flow3"]}}
    aux["correspondence"]["flow3"]["bias"] = jnp.asarray(FLOW, jnp.float32)
    # A target side unlike the online one (at init the EMA equals the online weights).
    ema = jax.tree.map(lambda x: x + 0.05 * jnp.asarray(rng.normal(size=x.shape), x.dtype), state.ema_params)
    state = state.replace(aux_params=aux, ema_params=ema)
    batch = _batch(config)
    key = jax.random.PRNGKey(11)
    total, (_, _, metrics) = jax.jit(agent.loss)({"q": state.params, "aux": aux}, state, batch, key)
    # The same update without PSRL: its loss is the RL loss alone (same Q network, same keys).
    plain = RainbowAgent.from_config(_config(psrl=False), NUM_ACTIONS, (config.env.frame_stack, 84, 84))
    rl_total, _ = jax.jit(plain.loss)({"q": state.params, "aux": {}}, state.replace(aux_params={}), batch, key)
    return config, agent, state, batch, float(total) - float(rl_total), metrics


def _reference(config, agent, state, batch, mask_padding=True, importance_weighted=True):
    """The batch's auxiliary loss and per-term masked means, in float64 NumPy."""
    p = config.psrl
    obs = jnp.asarray(batch.obs, jnp.float32) / 255.0
    future_obs = jnp.asarray(batch.future_obs, jnp.float32) / 255.0
    mask, valid = np.asarray(batch.future_mask, np.float64), np.asarray(batch.valid, np.float64)
    weights = np.asarray(batch.importance_weights, np.float64)
    obs_real, future_real = np.asarray(batch.obs_frame_mask), np.asarray(batch.future_frame_mask)
    if not mask_padding:
        obs_real, future_real = np.ones_like(obs_real), np.ones_like(future_real)
    b, k = mask.shape
    maps = agent.network.apply(state.params, obs, train=False, method=RainbowQNetwork.encode)
    ema_vars = {"params": {"torso": state.ema_params["torso"]}}
    target_maps = agent.network.apply(
        ema_vars, future_obs.reshape((b * k,) + obs.shape[1:]), train=False, method="encode"
    )
    f = maps.shape[1]
    query = _renormalize(np.asarray(maps, np.float64))  # [B, F, h, w, C]
    target = _renormalize(np.asarray(target_maps, np.float64).reshape((b, k) + query.shape[1:]))  # [B, K, F, ...]
    scales = sum(p.multiscale_decay**s for s in range(p.refinement_levels + 1))  # every scale sees FLOW

    def project(stacks, params):  # [N, F, h, w, C] -> Dense-ReLU
        return np.maximum(_dense(stacks.reshape(len(stacks), -1), params["Dense_0"]), 0.0)

    def online_vectors(stacks):
        return _dense(project(stacks, state.aux_params["projection"]), state.aux_params["predictor"]["Dense_0"])

    target_vectors = project(target.reshape((b * k,) + target.shape[2:]), state.ema_params["projection"])
    target_vectors = target_vectors.reshape(b, k, -1)

    # CAT at the first step: pair (query frame f of o_k, target frame f of o_{k+1}) counts where both are real.
    pairs = obs_real * future_real[:, 0]  # [B, F]
    warped = np.stack([np.stack([_warp(query[i, j], FLOW) for j in range(f)]) for i in range(b)])
    per_frame = np.abs(warped - target[:, 0]).mean(axis=(2, 3, 4))
    cat_local = scales * np.sum(pairs * per_frame, axis=1) / np.maximum(pairs.sum(axis=1), 1)
    cat_stack = np.where(pairs[:, :, None, None, None] > 0, warped, target[:, 0])
    cat_global = _spr_loss(online_vectors(cat_stack), target_vectors[:, 0])
    internal_mask = valid * obs_real[:, 0] * obs_real[:, -1]
    internal = scales * np.abs(np.stack([_warp(query[i, 0], FLOW) for i in range(b)]) - query[:, -1]).mean((1, 2, 3))

    # AAT: rolled out from the query stack; each step's predicted frame against the target's newest frame.
    stack, aat_local, aat_global = query, [], []
    for j in range(k):
        new = agent.psrl.transform.apply(
            {"params": state.aux_params["transform"]}, jnp.asarray(stack, jnp.float32), batch.future_actions[:, j]
        )
        new = np.asarray(new, np.float64)
        stack = np.concatenate([stack[:, 1:], new[:, None]], axis=1)
        aat_local.append(np.abs(new - target[:, j, -1]).mean(axis=(1, 2, 3)))
        in_target_stack = np.concatenate([target[:, j, :-1], new[:, None]], axis=1)
        aat_global.append(_spr_loss(online_vectors(in_target_stack), target_vectors[:, j]))
    aat_local, aat_global = np.stack(aat_local, 1), np.stack(aat_global, 1)

    # SPR: the K-step global loss is model_spr_weight times its mean over the steps (here K = 5,
    # so weight 1 on the sum, DESIGN.md's lambda_global), masked after an episode's end.
    model_spr_loss = (aat_global * mask).mean(axis=1)
    global_ = SPR_MODEL_WEIGHT * model_spr_loss + p.global_weight * mask[:, 0] * cat_global
    local = mask[:, 0] * cat_local + internal_mask * internal + np.sum(mask * aat_local, axis=1)
    per_sample = p.local_weight * local + global_
    if importance_weighted:
        per_sample = per_sample * weights

    def masked_mean(values, m):
        return np.sum(values * m) / max(np.sum(m), 1.0)

    terms = {
        "loss/cat_local": masked_mean(cat_local, mask[:, 0]),
        "loss/cat_global": masked_mean(cat_global, mask[:, 0]),
        "loss/internal": masked_mean(internal, internal_mask),
        "loss/aat_local": masked_mean(aat_local, mask),
        "loss/aat_global": masked_mean(aat_global, mask),
    }
    return per_sample.mean(), terms


def test_the_auxiliary_loss_matches_spr_formula_in_numpy(case):
    config, agent, state, batch, aux_total, metrics = case
    assert config.psrl.global_weight == SPR_MODEL_WEIGHT / config.replay.prediction_steps == 1.0
    want, terms = _reference(config, agent, state, batch)
    for name, value in terms.items():
        np.testing.assert_allclose(float(metrics[name]), value, rtol=2e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(aux_total, want, rtol=2e-4)
    np.testing.assert_allclose(float(metrics["loss/psrl"]), want, rtol=2e-4)  # the logged value is what is added
    # What could go unnoticed does not: the importance weights change the total, and masking the padded
    # pairs changes every CAT and internal term, each by over ten times the tolerance.
    unweighted = _reference(config, agent, state, batch, importance_weighted=False)[0]
    assert abs(unweighted - want) > 2e-3 * abs(want)
    _, unmasked = _reference(config, agent, state, batch, mask_padding=False)
    for name in ("loss/cat_local", "loss/cat_global", "loss/internal"):
        assert abs(unmasked[name] - terms[name]) > 2e-3 * abs(terms[name]), (name, unmasked[name], terms[name])


def test_the_flow_the_loss_used_is_the_constant_one(case):
    _, _, _, batch, _, metrics = case
    np.testing.assert_allclose(float(metrics["psrl/flow_magnitude"]), np.hypot(*FLOW), rtol=1e-5)
    h = w = 7
    ys, xs = np.meshgrid(np.arange(h) + FLOW[1], np.arange(w) + FLOW[0], indexing="ij")
    off = np.mean((xs < 0) | (xs > w - 1) | (ys < 0) | (ys > h - 1))
    np.testing.assert_allclose(float(metrics["psrl/flow_outside_fraction"]), off, rtol=1e-6)
