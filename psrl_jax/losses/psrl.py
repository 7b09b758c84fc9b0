"""PSRL's paired-similarity losses (DESIGN.md 1; supplementary Sec. 1.4, Sec. 4, Fig. 5, Table 3).

From a replayed sequence o_k, a_k, o_{k+1}, ..., o_{k+K} three kinds of per-frame latent stacks
are compared:
  target       Z^t_{k+j}     EMA encoder on o_{k+j} (stop-gradient), min-max normalised per frame
  CAT          Z^{q,tr}      online query maps warped by the correspondence module's dense flow
  AAT          Z^{q,pr}      the action-aware transform rolled out from Z^q_k for K steps
each by a local L1 on the 3-D volume and a global cosine loss on projected vectors, plus the
internal correspondence (first -> last frame of the query stack, local L1 only).

Every term has a switch and the terms share two weights (lambda_local, lambda_global); a term
that is off (switch False or its weight 0) is not computed at all, so switching every term off
gives exactly the Rainbow update. All terms are masked where a sequence crosses an episode end
(replay's future_mask) and for invalid samples; correspondence pairs that involve stack padding
(replay's frame masks) are left out (psrl.mask_padded_frames). The AAT terms compare the predicted
newest frame with the target's (psrl.aat_target). The agents multiply the per-sample loss by the
importance weights and average it over the batch (PSRLAuxiliary.loss), as SPR does. Everything is
batched: the correspondence module runs once on all (query, target) pairs of the batch, and the warp
is one vmapped op.

Mixed precision (config.agent.compute_dtype): the modules compute in that dtype but return float32
maps, flows and vectors, so the normalisation, warp, L1 and cosine losses here run in float32.
The pieces are wrapped in jax.named_scope ("encoder", "correspondence", "warp", "aat",
"global_heads") so that profiler traces show them by name.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from psrl_jax.config import PSRL_TERMS
from psrl_jax.networks.correspondence import CorrespondenceNet, flows_at
from psrl_jax.networks.q_network import compute_dtype
from psrl_jax.networks.transform import (
    ActionAwareTransform,
    GlobalPredictor,
    GlobalProjection,
    cosine_distance,
    predict_stack,
)
from psrl_jax.ops.normalize import minmax_normalize
from psrl_jax.ops.warp import outside_fraction, warp

TERMS = PSRL_TERMS  # one list of term names, shared with the config checks
LOCAL_TERMS = ("cat_local", "aat_local", "internal")


def active_terms(psrl_config: ml_collections.ConfigDict) -> tuple:
    """Terms that are switched on and have a non-zero weight (static: decides what is compiled)."""
    weights = {t: psrl_config.local_weight if t in LOCAL_TERMS else psrl_config.global_weight for t in TERMS}
    return tuple(t for t in TERMS if psrl_config[t] and weights[t] != 0)


@dataclasses.dataclass(frozen=True)
class PSRLHyperparams:
    """config.psrl (configs/rainbow.py documents every field) read once, with the encoder facts the
    modules need; `terms` holds the active terms only."""

    terms: tuple
    local_weight: float
    global_weight: float
    cat_steps: int
    mask_padded_frames: bool
    multiscale_decay: float
    warp_padding: str
    aat_target: str
    target_ema_decay: float
    importance_weighted: bool
    shared_shift: bool
    correspondence_width: float
    refinement_levels: int
    correlation: str
    max_displacement: int
    leaky_relu_slope: float
    bn_momentum: float
    transform_hidden: int
    projection_dim: int
    frame_stack: int  # query and target stacks hold this many per-frame maps
    map_channels: int  # the encoder's last layer: the AAT predicts maps of this width
    dtype: Any  # the agent's compute dtype, for every PSRL module

    @classmethod
    def from_config(cls, config) -> "PSRLHyperparams | None":
        """None when no term is active (the agent is then exactly its RL update)."""
        p = config.psrl
        terms = active_terms(p)
        if not terms:
            return None
        return cls(
            terms=terms,
            local_weight=float(p.local_weight),
            global_weight=float(p.global_weight),
            cat_steps=int(p.cat_steps),
            mask_padded_frames=bool(p.mask_padded_frames),
            multiscale_decay=float(p.multiscale_decay),
            warp_padding=p.warp_padding,
            aat_target=p.aat_target,
            target_ema_decay=float(p.target_ema_decay),
            importance_weighted=bool(p.importance_weighted),
            shared_shift=bool(p.shared_shift),
            correspondence_width=p.correspondence_width,
            refinement_levels=int(p.refinement_levels),
            correlation=p.correlation,
            max_displacement=int(p.max_displacement),
            leaky_relu_slope=float(p.leaky_relu_slope),
            bn_momentum=float(p.bn_momentum),
            transform_hidden=int(p.transform_hidden),
            projection_dim=int(p.projection_dim),
            frame_stack=int(config.env.frame_stack),
            map_channels=int(config.agent.encoder_channels[-1]),
            dtype=compute_dtype(config.agent),
        )

    @property
    def needed_modules(self) -> tuple:
        return needed_modules(self.terms)


@dataclasses.dataclass(frozen=True)
class PSRLAuxiliary:
    """PSRL as one auxiliary loss on an agent's encoder, used unchanged by Rainbow and SAC: its modules
    (static; their params live in the agent state), their init, the loss and the EMA target's update.

    `network` is the RL network whose encoder PSRL shapes (Rainbow's Q network or SAC's critic): it
    has an `encode` method and its encoder params under "torso"; with the EMA torso it is the target
    encoder. `num_actions` is the discrete action count (one-hot in the AAT), or 0 for continuous
    actions of size `action_dim`."""

    hp: PSRLHyperparams
    network: Any
    correspondence: CorrespondenceNet
    transform: ActionAwareTransform
    projection: GlobalProjection
    predictor: GlobalPredictor
    num_actions: int
    action_dim: int

    @classmethod
    def build(cls, hp: PSRLHyperparams, network, num_actions: int, action_dim: int = 1) -> "PSRLAuxiliary":
        return cls(
            hp=hp,
            network=network,
            correspondence=CorrespondenceNet(
                width=hp.correspondence_width,
                refinement_levels=hp.refinement_levels,
                correlation=hp.correlation,
                max_displacement=hp.max_displacement,
                negative_slope=hp.leaky_relu_slope,
                bn_momentum=hp.bn_momentum,
                dtype=hp.dtype,
            ),
            transform=ActionAwareTransform(
                num_actions=num_actions, hidden=hp.transform_hidden, out_channels=hp.map_channels, dtype=hp.dtype
            ),
            projection=GlobalProjection(dim=hp.projection_dim, dtype=hp.dtype),
            predictor=GlobalPredictor(dim=hp.projection_dim, dtype=hp.dtype),
            num_actions=num_actions,
            action_dim=action_dim,
        )

    def encode_target(self, ema_params, obs):
        """Per-frame maps of the EMA target encoder (eval mode: no dropout); only the torso is read."""
        variables = {"params": {"torso": ema_params["torso"]}}
        return self.network.apply(variables, obs, train=False, method="encode")

    def init(self, key, network_params, maps_shape, skip_shape):
        """(params, ema_params, batch_stats): params of the modules the active terms need (of
        "correspondence", "transform", "projection", "predictor"), the EMA target's starting copy and
        the correspondence module's BatchNorm statistics ({} without it), for per-frame maps of shape
        (h, w, C) and skip maps (h2, w2, C2)."""
        needed = self.hp.needed_modules
        k_corr, k_tr, k_proj, k_pred = jax.random.split(key, 4)
        maps = jnp.zeros((1, *maps_shape), jnp.float32)
        stack = jnp.zeros((1, self.hp.frame_stack, *maps_shape), jnp.float32)
        params, batch_stats = {}, {}
        if "correspondence" in needed:
            skip = jnp.zeros((1, *skip_shape), jnp.float32)
            corr_vars = self.correspondence.init(k_corr, maps, maps, skip, train=False)
            params["correspondence"], batch_stats = corr_vars["params"], corr_vars["batch_stats"]
        if "transform" in needed:
            if self.num_actions > 0:
                action = jnp.zeros((1,), jnp.int32)
            else:
                action = jnp.zeros((1, self.action_dim), jnp.float32)
            params["transform"] = self.transform.init(k_tr, stack, action)["params"]
        if "projection" in needed:
            params["projection"] = self.projection.init(k_proj, stack)["params"]
            params["predictor"] = self.predictor.init(k_pred, jnp.zeros((1, self.predictor.dim)))["params"]
        return params, ema_source(network_params, params), batch_stats

    def target_update(self, network_params, params, ema_params):
        """The EMA target after an update: target <- decay * target + (1 - decay) * online (decay 0, as
        SPR on Atari, copies the online side)."""
        step = 1.0 - self.hp.target_ema_decay
        return optax.incremental_update(ema_source(network_params, params), ema_params, step)

    def augment_with_future(self, augment, obs_key, future_key, obs, future_obs):
        """o_k [B, F, ...] and o_{k+1..k+K} [B, K, F, ...] through the agent's `augment(key, x)`: with
        one shared random shift per sample (psrl.shared_shift: the correspondence then sees the true
        motion, not two independent crops), else each with its own key. o_k's augmentation is the one
        the RL loss would draw with obs_key either way."""
        batch, frames = obs.shape[:2]
        future = future_obs.reshape((batch, -1) + obs.shape[2:])
        if self.hp.shared_shift:
            both = augment(obs_key, jnp.concatenate([obs, future], axis=1))
            obs, future = both[:, :frames], both[:, frames:]
        else:
            obs, future = augment(obs_key, obs), augment(future_key, future)
        return obs, future.reshape(future_obs.shape[:3] + future.shape[2:])

    def loss(self, params, batch_stats, ema_params, *, online_maps, online_skip, future_obs, batch, encode_online):
        """The batch's PSRL loss: psrl_loss's per-sample values times the samples' importance weights
        (psrl.importance_weighted; 1 under uniform replay), averaged over the batch as SPR's
        (spr_loss * weights).mean(). Returns (loss, new batch_stats, metrics with "loss/psrl")."""
        with jax.named_scope("psrl_loss"):
            per_sample, batch_stats, metrics = psrl_loss(
                params,
                batch_stats,
                ema_params,
                online_maps=online_maps,
                online_skip=online_skip,
                future_obs=future_obs,
                actions=batch.future_actions,
                future_mask=batch.future_mask * batch.valid[:, None],
                valid=batch.valid,
                obs_frame_mask=batch.obs_frame_mask,
                future_frame_mask=batch.future_frame_mask,
                aux=self,
                encode_online=encode_online,
            )
        if self.hp.importance_weighted:
            per_sample = per_sample * batch.importance_weights
        total = jnp.mean(per_sample)
        return total, batch_stats, {**metrics, "loss/psrl": total}


def needed_modules(terms) -> tuple:
    """The PSRL modules the active terms use (only those get parameters)."""
    needed = []
    if any(t in terms for t in ("cat_local", "cat_global", "internal")):
        needed.append("correspondence")
    if any(t in terms for t in ("aat_local", "aat_global")):
        needed.append("transform")
    if any(t in terms for t in ("cat_global", "aat_global")):
        needed += ["projection", "predictor"]
    return tuple(needed)


def ema_source(q_params, aux_params) -> dict:
    """The online parameters the EMA target tracks: the encoder and (with global terms) the projection."""
    source = {"torso": q_params["params"]["torso"]}
    if "projection" in aux_params:
        source["projection"] = aux_params["projection"]
    return source


def _masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _l1(a, b):
    """Mean absolute difference per sample over every axis but the first."""
    return jnp.mean(jnp.abs(a - b), axis=tuple(range(1, a.ndim)))


def _l1_per_frame(a, b):
    """[B, F, h, w, C] pair -> mean absolute difference per sample and frame [B, F]."""
    return jnp.mean(jnp.abs(a - b), axis=(2, 3, 4))


def _frame_mean(values, frame_mask):
    """[B, F] values averaged over the frames where frame_mask is 1 (0 where none is)."""
    return jnp.sum(values * frame_mask, axis=1) / jnp.maximum(jnp.sum(frame_mask, axis=1), 1.0)


def psrl_loss(
    aux_params,
    batch_stats,
    ema_params,
    *,
    online_maps,
    online_skip,
    future_obs,
    actions,
    future_mask,
    valid,
    obs_frame_mask,
    future_frame_mask,
    aux: PSRLAuxiliary,
    encode_online=None,
):
    """The PSRL auxiliary loss of one batch.

    online_maps  [B, F, h, w, C]   online encoder maps of the augmented o_k (train mode, shared with the RL loss)
    online_skip  [B, F, h2, w2, C2] the encoder's previous layer (for the finest refinement level)
    future_obs   [B, K, F, H, W]   augmented float o_{k+1} .. o_{k+K}
    actions      [B, K]            a_k .. a_{k+K-1} (replay's future_actions)
    future_mask  [B, K]            1 where o_{k+j+1} is in a_k's episode (times the sample's validity)
    valid        [B]               1 for valid samples (masks the internal term, which needs no future)
    obs_frame_mask    [B, F]       1 for o_k's real frames, 0 for stack padding (replay's obs_frame_mask)
    future_frame_mask [B, K, F]    the same for o_{k+1} .. o_{k+K}
    encode_online(obs [N, F, H, W]) -> (maps, skip): the online encoder, only needed when cat_steps > 1.
    Returns (per-sample loss [B], new batch_stats, metrics): the per-sample loss is the weighted sum
    over terms and prediction steps; the caller applies importance weights and the batch mean.
    """
    p, modules = aux.hp, aux
    terms = p.terms
    batch, frames = online_maps.shape[:2]
    k_steps = future_obs.shape[1]
    cat_steps = min(p.cat_steps, k_steps)
    h, w = online_maps.shape[2:4]
    metrics = {}
    local_total = jnp.zeros((batch,))
    global_total = jnp.zeros((batch,))
    if not p.mask_padded_frames:
        obs_frame_mask, future_frame_mask = jnp.ones_like(obs_frame_mask), jnp.ones_like(future_frame_mask)

    query = minmax_normalize(online_maps, num_feature_dims=3)  # [B, F, h, w, C]
    # Target side: EMA encoder (eval mode: no dropout), stop-gradient.
    with jax.named_scope("encoder"):
        target_maps = modules.encode_target(ema_params, future_obs.reshape((batch * k_steps,) + future_obs.shape[2:]))
    target_maps = jax.lax.stop_gradient(target_maps.reshape((batch, k_steps) + target_maps.shape[1:]))
    target = minmax_normalize(target_maps, num_feature_dims=3)  # [B, K, F, h, w, C]

    def project_online(stacks):  # [N, F, h, w, C] -> [N, D] through projection and predictor
        with jax.named_scope("global_heads"):
            z = modules.projection.apply({"params": aux_params["projection"]}, stacks)
            return modules.predictor.apply({"params": aux_params["predictor"]}, z)

    needs_global = any(t in terms for t in ("cat_global", "aat_global"))
    if needs_global:
        flat_target = target.reshape((batch * k_steps,) + target.shape[2:])
        with jax.named_scope("global_heads"):
            target_vectors = modules.projection.apply({"params": ema_params["projection"]}, flat_target)
        target_vectors = jax.lax.stop_gradient(target_vectors.reshape(batch, k_steps, -1))

    new_batch_stats = batch_stats
    uses_correspondence = any(t in terms for t in ("cat_local", "cat_global", "internal"))
    if uses_correspondence:
        # Query stacks for the CAT steps: o_k from the shared forward pass, later ones re-encoded online.
        q_raw, q_skip, q_norm = [online_maps], [online_skip], [query]
        if cat_steps > 1 and any(t in terms for t in ("cat_local", "cat_global")):
            later = future_obs[:, : cat_steps - 1].reshape((batch * (cat_steps - 1),) + future_obs.shape[2:])
            with jax.named_scope("encoder"):
                maps, skip = encode_online(later)
            maps = maps.reshape((batch, cat_steps - 1) + maps.shape[1:])
            skip = skip.reshape((batch, cat_steps - 1) + skip.shape[1:])
            for j in range(cat_steps - 1):
                q_raw.append(maps[:, j])
                q_skip.append(skip[:, j])
                q_norm.append(minmax_normalize(maps[:, j], num_feature_dims=3))
        use_external = any(t in terms for t in ("cat_local", "cat_global"))
        n_ext = cat_steps if use_external else 0
        # A pair counts where both of its frames are real (not stack padding): [B, F] per step j,
        # times the step's future mask; the internal pair needs o_k's first and last frames.
        query_frames = [obs_frame_mask] + [future_frame_mask[:, j] for j in range(cat_steps - 1)]
        ext_pair_mask = [query_frames[j] * future_frame_mask[:, j] * future_mask[:, j, None] for j in range(n_ext)]
        internal_mask = valid * obs_frame_mask[:, 0] * obs_frame_mask[:, -1]
        # All pairs in one batch: external (query frame f of step j -> target frame f of o_{k+j+1}),
        # then internal (first -> last query frame of o_k; the target side is stop-gradient).
        pair_q, pair_t, pair_s, pair_mask = [], [], [], []
        for j in range(n_ext):
            pair_q.append(q_raw[j].reshape((batch * frames,) + q_raw[j].shape[2:]))
            pair_t.append(target_maps[:, j].reshape((batch * frames,) + target_maps.shape[3:]))
            pair_s.append(q_skip[j].reshape((batch * frames,) + q_skip[j].shape[2:]))
            pair_mask.append(ext_pair_mask[j].reshape(-1))
        if "internal" in terms:
            pair_q.append(online_maps[:, 0])
            pair_t.append(jax.lax.stop_gradient(online_maps[:, -1]))
            pair_s.append(online_skip[:, 0])
            pair_mask.append(internal_mask)
        # BatchNorm statistics over the pairs that count only (all pairs if, rarely, none does).
        pair_mask = jnp.concatenate(pair_mask) > 0
        pair_mask = jnp.logical_or(pair_mask, ~jnp.any(pair_mask))
        with jax.named_scope("correspondence"):
            flows, updates = modules.correspondence.apply(
                {"params": aux_params["correspondence"], "batch_stats": batch_stats},
                jnp.concatenate(pair_q),
                jnp.concatenate(pair_t),
                jnp.concatenate(pair_s),
                train=True,
                mask=pair_mask,
                mutable=["batch_stats"],
            )
            new_batch_stats = updates["batch_stats"]
            flows = flows_at(flows, h, w)  # every scale, finest first, in pixels of the feature map
        scale_weights = [p.multiscale_decay**s for s in range(len(flows))]  # finest first; 0**0 = 1
        padding = p.warp_padding
        n_ext_pairs = n_ext * batch * frames

        if use_external:
            ext_flows = [f[:n_ext_pairs].reshape(n_ext, batch, frames, h, w, 2) for f in flows]
            metrics["psrl/flow_magnitude"] = jnp.mean(jnp.linalg.norm(ext_flows[0], axis=-1))
            metrics["psrl/flow_outside_fraction"] = outside_fraction(ext_flows[0])
            for j in range(n_ext):
                mask_j = future_mask[:, j]
                pairs_j = ext_pair_mask[j]  # [B, F]
                tgt = target[:, j]
                if "cat_local" in terms:
                    # Per-frame L1 averaged over the pairs that count.
                    l1 = sum(
                        sw * _frame_mean(_l1_per_frame(warp(q_norm[j], f[j], padding), tgt), pairs_j)
                        for sw, f in zip(scale_weights, ext_flows, strict=False)
                        if sw != 0
                    )
                    local_total += mask_j * l1
                    metrics.setdefault("loss/cat_local", []).append((l1, mask_j))
                if "cat_global" in terms:
                    # The global head reads a stack: a frame whose pair does not count enters as the
                    # target's own map, so it adds neither difference nor gradient.
                    warped = warp(q_norm[j], ext_flows[0][j], padding)
                    warped = jnp.where(pairs_j[:, :, None, None, None] > 0, warped, tgt)
                    ls = cosine_distance(project_online(warped), target_vectors[:, j])
                    global_total += mask_j * ls
                    metrics.setdefault("loss/cat_global", []).append((ls, mask_j))
        if "internal" in terms:
            int_flows = [f[n_ext_pairs:] for f in flows]
            last = jax.lax.stop_gradient(query[:, -1])
            l1 = sum(
                sw * _l1(warp(query[:, 0], f, padding), last)
                for sw, f in zip(scale_weights, int_flows, strict=False)
                if sw
            )
            local_total += internal_mask * l1
            metrics["loss/internal"] = [(l1, internal_mask)]
            metrics["psrl/internal_flow_magnitude"] = jnp.mean(jnp.linalg.norm(int_flows[0], axis=-1))
            metrics["psrl/internal_flow_outside_fraction"] = outside_fraction(int_flows[0])

    if any(t in terms for t in ("aat_local", "aat_global")):
        transform = lambda stack, action: modules.transform.apply({"params": aux_params["transform"]}, stack, action)
        with jax.named_scope("aat"):
            stack = query
            predicted = []
            for j in range(k_steps):  # recurrent rollout, as SPR's transition model (K = 5 by default)
                stack = predict_stack(transform, stack, actions[:, j])
                predicted.append(stack)
            predicted = jnp.stack(predicted, axis=1)  # [B, K, F, h, w, C]
        if p.aat_target == "newest_frame":
            # What the AAT predicts is the newest frame's map: compared with the target's map of that
            # frame (local), and inside the target's own stack (global), so the frames carried over
            # from the query, which the target also holds, add neither difference nor gradient.
            compared, against = predicted[:, :, -1], target[:, :, -1]  # [B, K, h, w, C]
            predicted = jnp.concatenate([target[:, :, :-1], predicted[:, :, -1:]], axis=2)
        else:  # "stack": the whole predicted stack against the whole target stack
            compared, against = predicted, target
        if "aat_local" in terms:
            l1 = jax.vmap(_l1, in_axes=1, out_axes=1)(compared, against)  # [B, K]
            local_total += jnp.sum(future_mask * l1, axis=1)
            metrics["loss/aat_local"] = [(l1, future_mask)]
        if "aat_global" in terms:
            vectors = project_online(predicted.reshape((batch * k_steps,) + predicted.shape[2:]))
            ls = cosine_distance(vectors, target_vectors.reshape(batch * k_steps, -1)).reshape(batch, k_steps)
            global_total += jnp.sum(future_mask * ls, axis=1)
            metrics["loss/aat_global"] = [(ls, future_mask)]

    per_sample = p.local_weight * local_total + p.global_weight * global_total
    out = {}
    for name, value in metrics.items():
        if isinstance(value, list):  # per-step (values, mask) pairs -> masked mean per prediction step
            values = jnp.concatenate([jnp.reshape(v, (batch, -1)) for v, _ in value], axis=1)
            masks = jnp.concatenate([jnp.reshape(m, (batch, -1)) for _, m in value], axis=1)
            out[name] = _masked_mean(values, masks)
        else:
            out[name] = value
    return per_sample, new_batch_stats, out
