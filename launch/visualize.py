"""Draw a run's learned dense correspondences, as in the PSRL supplementary's Figure 1.

    python launch/visualize.py --run_dir runs/<run> [--seed_index 0] [--samples 3] [--frame -1] [--out fig.png]

Restores the latest checkpoint of a PSRL run, Atari (rainbow_psrl, launch/atari.py) or DMC (sac_psrl,
launch/dmc.py), replays `samples` sequences from seed `seed_index`'s replay buffer (fixed key,
--sample_seed) and, in eval mode (no augmentation, no dropout, BatchNorm running averages; DMC frames
centre-cropped as when acting), runs the correspondence module on
  external: frame `frame` of o_k (online encoder) -> the same frame of o_{k+1} (EMA target encoder)
  internal: frame 0 -> frame F-1 of o_k (online encoder for both)
as the PSRL loss pairs them (DESIGN.md 1). Writes a PNG (default <run_dir>/correspondence_<env_step>_seed<i>.png)
with one row per sample and kind: source frame, target frame, finest flow as a colour wheel, and the
flow resized to the feature map as arrows on the source; and a JSON of the same stem with each
sample's mean and largest flow magnitude in feature-map pixels and the fraction of its flow vectors
that point off the feature map (where the "zeros" warp reads zeros). The JSON's "pool" block (also
printed) covers all --pool replayed sequences and every frame pair the loss uses: the local L1
between the normalised target and the query warped by no flow, by the learned flow with the "zeros"
warp, and by the same flow with the "border" warp, which tells how much of what the module learned
is correspondence and how much is pointing off the map (config.psrl.warp_padding). The drawing is
psrl_jax/analysis/flow_vis.py.
"""

import math
import os
import sys

from absl import flags, logging

from configs import rainbow, sac
from psrl_jax import cli, cpu_settings

KINDS = ("external", "internal")
# Per-pair figures of the JSON's pool summary (see `correspondences` in main).
DIAGNOSTICS = ("l1_identity", "l1_learned_zeros", "l1_learned_border", "outside_fraction")

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory holding config.json and checkpoints/")
_SEED_INDEX = flags.DEFINE_integer("seed_index", 0, "Which of the run's vmapped seeds (0 .. num_seeds-1)")
_SAMPLES = flags.DEFINE_integer("samples", 3, "Replayed sequences to draw (one row per sample and kind)")
_FRAME = flags.DEFINE_integer("frame", -1, "Frame of the stack for the external pair (-1 = newest)")
_SAMPLE_SEED = flags.DEFINE_integer("sample_seed", 0, "Key for drawing the replayed sequences")
_KINDS = flags.DEFINE_list("kinds", list(KINDS), "Correspondences to draw: external, internal or both")
_OUT = flags.DEFINE_string("out", None, "PNG path (default <run_dir>/correspondence_<env_step>_seed<i>.png)")
_POOL = flags.DEFINE_integer("pool", 128, "Replayed sequences drawn for the figure's picks and the JSON's pool summary")
flags.mark_flags_as_required(["run_dir"])


def _load_config(run_dir):
    """The run's config, checked for everything a figure needs before anything is built or compiled."""

    from psrl_jax.losses.psrl import active_terms, needed_modules

    config = cli.load_run_config(run_dir, rainbow.get_config(), sac.get_config())
    checkpoints = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(checkpoints) or not any(d.isdigit() for d in os.listdir(checkpoints)):
        sys.exit(f"error: {run_dir} holds no checkpoint (nothing under {checkpoints})")
    terms = active_terms(config.psrl)
    if "correspondence" not in needed_modules(terms):
        sys.exit(
            f"error: {run_dir} ({config.name}) was trained without PSRL's correspondence module "
            "(none of psrl.cat_local / cat_global / internal is on; "
            + (f"active PSRL terms: {', '.join(terms)}" if terms else "a plain Rainbow run")
            + "), so there is no correspondence to visualise"
        )
    kinds = [k.strip() for k in _KINDS.value if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        sys.exit(f"error: --kinds must name one or both of {KINDS}, got {_KINDS.value}")
    if "external" in kinds and config.replay.prediction_steps == 0:
        sys.exit(
            f"error: {run_dir} replays no future steps (replay.prediction_steps == 0), so its buffer gives no "
            "o_k+1 for the external correspondence; pass --kinds=internal"
        )
    if not 0 <= _SEED_INDEX.value < config.num_seeds:
        sys.exit(f"error: --seed_index={_SEED_INDEX.value} is out of range: the run has {config.num_seeds} seed(s)")
    if _SAMPLES.value < 1:
        sys.exit(f"error: --samples must be >= 1, got {_SAMPLES.value}")
    if _OUT.value:  # before the restore and compile, not after
        from psrl_jax.config import ConfigError, check_writable_directory

        try:
            check_writable_directory(os.path.dirname(os.path.abspath(_OUT.value)))
        except ConfigError as error:
            sys.exit(f"error: --out {_OUT.value}: {error}")
    frames = config.env.frame_stack
    if not -frames <= _FRAME.value < frames:
        sys.exit(f"error: --frame={_FRAME.value} is outside the stack of {frames} frames")
    config.run_dir = run_dir
    config.resume = True
    return config, kinds


class _Run:
    """What differs between an Atari and a DMC run when drawing correspondences: the trainer, the
    online encoder's params in the agent state, and the frames the encoder reads (DMC renders are
    RGB and centre-cropped to config.env.crop_size, as when acting)."""

    def __init__(self, config):
        from psrl_jax.config import is_dmc_config
        from psrl_jax.train.trainer import Trainer

        self.dmc = is_dmc_config(config)
        self.crop = int(config.env.crop_size) if self.dmc else None
        self.trainer = Trainer(config)
        self.env_name = self.trainer.domain.name

    def online_params(self, agent_state):
        return agent_state.critic_params if self.dmc else agent_state.params

    def encoder_input(self, obs_uint8):
        """uint8 [N, F, H, W(, 3)] -> the float stack the encoder reads."""
        from psrl_jax.ops.augment import center_crop, to_float

        return to_float(center_crop(obs_uint8, self.crop) if self.dmc else obs_uint8)

    def shown(self, obs_uint8):
        """The same frames as uint8 NumPy, for drawing."""
        import numpy as np

        from psrl_jax.ops.augment import center_crop

        return np.asarray(center_crop(obs_uint8, self.crop) if self.dmc else obs_uint8)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    run_dir = _RUN_DIR.value
    config, kinds = _load_config(run_dir)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from psrl_jax.analysis.flow_vis import CorrespondenceRow, pick_replay_samples, plot_correspondence_figure
    from psrl_jax.config import ConfigError, save_json_atomic
    from psrl_jax.networks.correspondence import flows_at
    from psrl_jax.ops.normalize import minmax_normalize
    from psrl_jax.ops.warp import outside_fraction, warp
    from psrl_jax.train.checkpoint import CheckpointError

    seed_index, frames = _SEED_INDEX.value, config.env.frame_stack
    frame = _FRAME.value % frames
    try:
        run = _Run(config)
        state, header = run.trainer.restore_latest()
    except (ConfigError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    trainer = run.trainer
    trainer.envs.close()
    env_step = int(header["env_step"])
    pick = lambda tree: jax.tree.map(lambda x: x[seed_index], tree)
    agent_state, replay_state = pick(state.agent), pick(state.replay)
    del state
    if int(trainer.replay.num_sampleable_items(replay_state)) == 0:
        sys.exit(f"error: seed {seed_index}'s replay buffer holds no complete sequence yet")

    # A larger pool than needed (several batches with one fixed key), then the best `samples` of it.
    batch_size = int(config.agent.batch_size)
    draws = math.ceil(max(_POOL.value, _SAMPLES.value) / batch_size)
    sample = jax.jit(lambda s, k: trainer.replay.sample(s, k, 1.0))
    keys = jax.random.split(jax.random.PRNGKey(_SAMPLE_SEED.value), draws)
    pool = jax.tree.map(lambda *xs: np.concatenate(xs), *[jax.device_get(sample(replay_state, k)) for k in keys])
    chosen = pick_replay_samples(pool, frame, _SAMPLES.value)
    batch = jax.tree.map(lambda x: x[chosen], pool)

    modules = trainer.agent.psrl

    @jax.jit
    def correspondences(agent_state, obs_uint8, next_uint8):
        """Every pair of the pool as the loss pairs them (external: each frame of o_k -> the same frame
        of o_k+1, folded sample-major; internal: frame 0 -> frame F-1), in eval mode: the finest flow
        at its own resolution and resized to the feature map, and per pair the local L1 between the
        min-max normalised target and the query warped by no flow, by the learned flow with the
        "zeros" warp and with the "border" warp, and the fraction of flow vectors off the map."""
        maps, skip = modules.network.apply(
            run.online_params(agent_state), run.encoder_input(obs_uint8), train=False, return_skip=True, method="encode"
        )
        batch, frames_, h, w, _ = maps.shape
        variables = {"params": agent_state.aux_params["correspondence"], "batch_stats": agent_state.batch_stats}
        query = minmax_normalize(maps, num_feature_dims=3)
        pairs = {}
        if "external" in kinds:
            target = modules.encode_target(agent_state.ema_params, run.encoder_input(next_uint8))
            fold = lambda x: x.reshape((batch * frames_,) + x.shape[2:])
            pairs["external"] = (fold(maps), fold(target), fold(skip), fold(query), fold(minmax_normalize(target, 3)))
        if "internal" in kinds:
            pairs["internal"] = (maps[:, 0], maps[:, -1], skip[:, 0], query[:, 0], query[:, -1])
        out = {}
        for kind, (q_maps, t_maps, q_skip, q_norm, t_norm) in pairs.items():
            native = modules.correspondence.apply(variables, q_maps, t_maps, q_skip, train=False)[0]
            flow = flows_at([native], h, w)[0]
            l1 = lambda warped, t=t_norm: jnp.mean(jnp.abs(warped - t), axis=(1, 2, 3))
            out[kind] = {
                "native": native,
                "feature": flow,
                "l1_identity": l1(q_norm),
                "l1_learned_zeros": l1(warp(q_norm, flow, "zeros")),
                "l1_learned_border": l1(warp(q_norm, flow, "border")),
                "outside_fraction": jax.vmap(outside_fraction)(flow),
            }
        return out

    pool_next = pool.future_obs[:, 0] if pool.future_obs.shape[1] else pool.obs
    computed = jax.device_get(correspondences(agent_state, pool.obs, pool_next))
    pool_summary = {"samples": int(len(pool.indices))}
    for kind, values in computed.items():
        # The pairs the loss counts: valid samples, and for external pairs o_k+1 in o_k's episode.
        keep = pool.valid > 0
        if kind == "external":
            keep = np.repeat(keep & (pool.future_mask[:, 0] > 0), frames)
        pool_summary[kind] = {name: float(np.mean(values[name][keep])) for name in DIAGNOSTICS}
        pool_summary[kind]["pairs"] = int(keep.sum())
    # The drawn pairs: frame `frame` of each chosen sample (external), each chosen sample (internal).
    drawn = {"external": chosen * frames + frame, "internal": chosen}
    flows = {kind: (values["native"][drawn[kind]], values["feature"][drawn[kind]]) for kind, values in computed.items()}

    next_obs = batch.future_obs[:, 0] if batch.future_obs.shape[1] else batch.obs
    # From here on the frames as the encoder saw them (DMC: the centre crop), so flows line up.
    obs_shown, next_shown = run.shown(batch.obs), run.shown(next_obs)
    feat_h, feat_w = flows[kinds[0]][1].shape[1:3]

    rows, records = [], []
    for j in range(len(chosen)):
        record = {
            "replay_index": int(batch.indices[j]),
            "valid": bool(batch.valid[j] > 0),
            "future_mask_0": float(batch.future_mask[j, 0]) if batch.future_mask.shape[1] else None,
        }
        for kind in kinds:
            native, feature = flows[kind][0][j], flows[kind][1][j]
            if kind == "external":
                source, target = obs_shown[j, frame], next_shown[j, frame]
                label = f"sample {j} external\nframe {frame} of o_k -> frame {frame} of o_k+1"
            else:
                source, target = obs_shown[j, 0], obs_shown[j, -1]
                label = f"sample {j} internal\nframe 0 -> frame {frames - 1} of o_k"
            rows.append(CorrespondenceRow(label, source, target, native, feature))
            record[f"{kind}_mean_flow_magnitude"] = float(np.linalg.norm(feature, axis=-1).mean())
            record[f"{kind}_max_flow_magnitude"] = float(np.linalg.norm(feature, axis=-1).max())
            record[f"{kind}_outside_fraction"] = float(outside_fraction(feature))  # sample points off the map
        records.append(record)

    height, width = obs_shown.shape[2:4]
    cell = height / feat_h
    title = (
        f"{config.name} | {run.env_name} | env step {env_step} | "
        f"seed index {seed_index} (seed {config.seed + seed_index}) | learned correspondences"
    )
    pairs = {
        "external": f"external: frame {frame} of o_k (online encoder) -> frame {frame} of o_k+1 (EMA target encoder)",
        "internal": f"internal: frame 0 -> frame {frames - 1} of o_k (online encoder)",
    }
    caption = (
        "; ".join(pairs[k] for k in kinds) + ". Eval mode: no augmentation, dropout or BatchNorm batch statistics.\n"
        "Backward warp (warp(source, flow) ~ target): the vector at cell p points to the source location p + flow(p) "
        "whose features land on p. (c) finest flow at its own resolution, nearest-upscaled; hue = direction, "
        "saturation = magnitude (white = 0; legend top right).\n"
        f"(d) flow resized to the {feat_h}x{feat_w} feature map, drawn in input pixels: one feature cell ~ "
        f"{cell:.0f} input pixels at {height}x{width} / {feat_h}x{feat_w}."
    )
    out = _OUT.value or os.path.join(run_dir, f"correspondence_{env_step}_seed{seed_index}.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plot_correspondence_figure(rows, out, title, caption=caption)
    summary = {
        "run_dir": os.path.abspath(run_dir),
        "env_step": env_step,
        "seed_index": seed_index,
        "frame": frame,
        "kinds": kinds,
        "flow_units": f"feature-map pixels ({feat_h}x{feat_w}; one ~ {cell:.0f} input pixels)",
        "samples": records,
        # Over the whole pool: how much of the local L1 the learned flow removes against no flow, and
        # what the same flows give with the "border" warp (docs/RESULTS.md reads these).
        "pool": pool_summary,
        "figure": os.path.abspath(out),
    }
    save_json_atomic(os.path.splitext(out)[0] + ".json", summary)
    for kind in kinds:
        d = pool_summary[kind]
        print(
            f"{kind} pairs {d['pairs']}: local L1 no flow {d['l1_identity']:.4g}, learned flow "
            f"{d['l1_learned_zeros']:.4g} (zeros warp) / {d['l1_learned_border']:.4g} (border warp); "
            f"{100 * d['outside_fraction']:.1f}% of flow vectors off the map"
        )
    print(out)


if __name__ == "__main__":
    cpu_settings.apply()  # XLA:CPU flags and glibc malloc, before JAX starts (psrl_jax/cpu_settings.py)
    cli.run(main)
