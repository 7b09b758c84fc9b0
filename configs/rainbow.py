"""Data-efficient Rainbow on Atari 100k (the DER/SPR recipe; DESIGN.md section 2, supplementary Table 1).

Run:   python launch/atari.py --config configs/rainbow.py --config.env.game=RoadRunner
Smoke: python launch/atari.py --config configs/rainbow.py:smoke   (a couple of minutes on a 2-core CPU)

Every field below can be overridden with --config.<path>=<value>; an unknown field is an error.
Choices that are ours rather than the paper's are marked (ours).
"""

import ml_collections


def psrl_config() -> ml_collections.ConfigDict:
    """The PSRL section, every term off. K (prediction steps) is replay.prediction_steps."""
    p = ml_collections.ConfigDict()
    # One switch per loss term (supplementary Fig. 5 and Sec. 1.4):
    p.cat_local = False  # L1 between the warped (CAT) query stack and the target stack
    p.cat_global = False  # cosine loss between projections of the CAT stack and the target stack
    p.aat_local = False  # L1 between the AAT-predicted stacks and the target stacks, K steps
    p.aat_global = False  # cosine loss of the AAT-predicted stacks (SPR's loss), K steps
    p.internal = False  # L1 between the first query frame warped by the internal correspondence and the last
    p.local_weight = 1.0  # lambda_local (ours)
    # lambda_global, on the sum over the K prediction steps: SPR's effective weight. SPR's code
    # (src/algos.py) adds model_spr_weight * spr_loss[1:].mean(0) with model_spr_weight = 5 and 5
    # steps (scripts/run.py: --model-spr-weight 5, --jumps 5): 5 * (1/5) * sum_k = 1 * sum_k.
    p.global_weight = 1.0
    # Each auxiliary term is multiplied per sample by the prioritised-replay importance weight, as the
    # RL loss is (SPR: spr_loss * weights in src/algos.py). False: a plain batch mean (an ablation).
    p.importance_weighted = True
    # What the AAT losses compare (DESIGN.md 1): "newest_frame", the map the AAT predicts against
    # the target's map of that frame (the global head reads it in the target's stack, with the
    # target's own maps for the frames carried over); "stack", the whole predicted stack against the
    # whole target stack, frames carried over from the query included (an ablation).
    p.aat_target = "newest_frame"
    # Correspondence pairs that involve stack padding (the frames before an episode's first frame)
    # are left out of every CAT and internal term and of the BatchNorm statistics (DESIGN.md 1).
    p.mask_padded_frames = True
    p.cat_steps = 1  # prediction steps that also get CAT (ours; <= replay.prediction_steps)
    p.target_ema_decay = 0.0  # target <- d * target + (1 - d) * online; 0 = SPR on Atari (copy, stop-grad)
    p.shared_shift = True  # o_k and o_{k+1..k+K} share one random shift (ours: flows see true motion)
    # Correspondence estimation module (Table 3 rows 4-22):
    p.correspondence_width = 1.0  # multiplier on every hidden width (1.0 = Table 3)
    p.refinement_levels = 3  # coarse-to-fine levels after the coarse flow head (Table 3: 3)
    p.correlation = "all_pairs"  # "all_pairs" (7x7 maps: 49 channels) or "local"
    p.max_displacement = 3  # local correlation window radius, in feature-map pixels
    p.leaky_relu_slope = 0.1  # (ours)
    p.bn_momentum = 0.9  # flax convention (= PyTorch momentum 0.1)
    p.multiscale_decay = 0.5  # local CAT loss weight of the s-th coarser flow scale: decay**s (0: finest only; ours)
    # What the warp reads where a flow points off the feature map: "zeros" (DESIGN.md, grid_sample's
    # default) or "border", the nearest edge value (ours, an ablation: with zeros, pointing off the map
    # is a way to output zeros, and the logged psrl/flow_outside_fraction shows how much that is used).
    p.warp_padding = "zeros"
    # Action-aware transform and global heads:
    p.transform_hidden = 256  # Table 3: Conv(256, 3)
    p.projection_dim = 256  # global projection / predictor width (ours, SPR's)
    return p


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "rainbow"
    c.config_version = 1  # the fields' version (psrl_jax/config.py CONFIG_VERSION); saved in config.json
    c.seed = 0  # seed of the first agent; agent i uses PRNGKey(seed + i), as a one-seed run with that seed
    c.num_seeds = 1  # S independent agents trained in one process (vmapped); S = 1 is the same code
    # Seed axis over devices (psrl_jax/train/sharding.py): "auto" shards it over all devices when there
    # is more than one and num_seeds is a multiple of the device count; "on" requires that (a
    # ConfigError before anything compiles otherwise); "off" keeps every seed on the default device.
    c.shard_seeds = "auto"
    # How one device runs its seeds' updates (ours; psrl_jax/train/common.py resolve_seed_batching):
    # "vmap" batches them into one program (grouped convolutions: what accelerators want), "unroll"
    # runs them one after another in the same program (what XLA:CPU wants: its grouped convolutions
    # are slow), "auto" unrolls on the CPU and vmaps elsewhere. Same results to float rounding.
    c.seed_batching = "auto"
    c.total_env_steps = 100_000  # agent steps per seed (x4 frames = 400k frames: the Atari 100k protocol)
    c.run_dir = ""  # empty: runs/<name>-<game>-s<seed>x<num_seeds>-<timestamp>
    c.resume = False  # continue run_dir from its latest checkpoint (replay included)

    c.env = ml_collections.ConfigDict()
    c.env.game = "RoadRunner"  # any envpool Atari game, e.g. Breakout, KungFuMaster
    c.env.envs_per_seed = 1  # parallel training environments per seed (Atari 100k: 1)
    c.env.frame_skip = 4  # action repeat
    c.env.frame_stack = 4
    c.env.stack_padding = "zeros"  # before an episode's first frame: zeros (Dopamine/SPR), or "first_frame"
    c.env.image_size = 84  # square gray frames
    c.env.noop_max = 30  # random no-ops at reset
    c.env.max_episode_frames = 108_000  # episode cap in emulator frames (27k agent steps)
    c.env.terminal_on_life_loss = True  # training only; evaluation always plays full episodes
    c.env.reward_clip = True  # training only: sign(r)
    c.env.sticky_action_prob = 0.0  # Atari 100k: no sticky actions
    c.env.fire_reset = False  # (ours) SPR's environment does not press FIRE at reset
    c.env.num_threads = 0  # envpool worker threads; 0 = one per core

    c.replay = ml_collections.ConfigDict()
    c.replay.capacity = 100_000  # transitions per seed (frames stored once)
    c.replay.min_size = 2000  # env steps of uniform-random acting before updates start
    c.replay.priority_exponent = 0.5  # alpha
    c.replay.importance_beta_start = 0.4  # beta, annealed linearly to beta_end over the run
    c.replay.importance_beta_end = 1.0
    c.replay.priority_eps = 1e-6  # added to the priority when priorities are updated (ours)
    # What a sample's priority is: "kl", the KL divergence of the projected target distribution from
    # the predicted one, as SPR (src/algos.py dist_rl_loss: target clamped to [1e-6, 1], KL clamped
    # to [1e-6, 1e6]); "cross_entropy", the loss itself (= KL + the target's entropy; an ablation).
    c.replay.priority = "kl"
    c.replay.n_step = 10
    c.replay.prediction_steps = 0  # K future stacks per sample for PSRL's K-step losses (0: none)

    c.agent = ml_collections.ConfigDict()
    c.agent.gamma = 0.99
    c.agent.num_atoms = 51
    c.agent.v_min = -10.0
    c.agent.v_max = 10.0
    c.agent.noisy = True
    c.agent.noisy_sigma0 = 0.5
    c.agent.dueling = True
    c.agent.double_q = True
    c.agent.hidden_size = 256
    c.agent.encoder = "stacked"  # "stacked": frames as channels (DER/SPR); "framewise": PSRL's Table 3
    c.agent.encoder_channels = (32, 64, 64)
    c.agent.dropout_rate = 0.0  # encoder dropout during updates (ours: 0 for the Rainbow baseline)
    # Compute dtype of every network (Q network and PSRL modules): "float32" or "bfloat16" (mixed
    # precision: bf16 convs/matmuls; float32 params, optimiser, BatchNorm statistics and losses). Ours.
    c.agent.compute_dtype = "float32"
    c.agent.learning_rate = 1e-4
    c.agent.adam_eps = 1.5e-4
    c.agent.max_grad_norm = 10.0
    # "per_group" (SPR: src/algos.py clips the encoder + Q head and the transition model separately):
    # one norm each for the Q network, the AAT with the global projection and predictor, and the
    # correspondence module, so the PSRL modules' gradients cannot shrink the RL update; "global":
    # one norm over everything (an ablation). Each group's norm is logged (optim/grad_norm/<group>).
    c.agent.grad_clip = "per_group"
    # Min-max renormalise the encoder output per sample over (h, w, C) before the Q head, as SPR
    # (src/models.py renormalize(conv_out, -3); scripts/run.py --renormalize 1). DER does not.
    c.agent.renormalize = True
    # Gradient into the dueling head's input scaled by 2**-0.5 (SPR's DQNDistributionalDuelingHeadModel
    # grad_scale, after Wang et al. 2016: the value and advantage streams both feed the encoder).
    c.agent.dueling_grad_scale = 2**-0.5
    c.agent.batch_size = 32
    c.agent.target_update_period = 1  # SPR: the target network is the online network of the last update
    c.agent.augmentation = ml_collections.ConfigDict()
    c.agent.augmentation.enabled = True
    c.agent.augmentation.shift_pad = 4  # random shift of +-4 px (replicate padding, then crop)
    c.agent.augmentation.intensity_scale = 0.05  # x * (1 + scale * clip(N(0,1), -2, 2))

    # PSRL's paired-similarity losses (DESIGN.md 1; configs/rainbow_psrl.py switches them on). All
    # terms off = plain Rainbow: the PSRL modules are not even built.
    c.psrl = psrl_config()

    c.updates_per_step = 2  # gradient updates per env step per environment (replay ratio)
    # Env steps between update dispatches; each dispatch runs
    # update_every * updates_per_step * envs_per_seed updates in one lax.scan.
    c.update_every = 1
    # lax.scan unroll of the updates in one dispatch; 0 = auto (full unroll on CPU, where XLA runs
    # convolutions inside loops ~6x slower; no unroll on GPU/TPU).
    c.update_scan_unroll = 0
    # "host": a Python loop, one collect dispatch and one envpool step per env step (the default; every
    # platform). "fused": acting, envpool's XLA step, replay insert and updates of log.every_steps env
    # steps in one compiled lax.scan (psrl_jax/train/trainer.py; one device, and log.every_steps
    # must divide replay.min_size, eval/checkpoint intervals and total_env_steps). Ours.
    c.loop = "host"

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 10_000  # periodic evaluation interval in env steps (0: only final)
    c.eval.episodes = 10  # episodes per seed at periodic evaluations
    c.eval.final_episodes = 100  # episodes per seed at the end of the run
    c.eval.max_parallel_envs = 100  # per seed; episodes are split evenly over min(episodes, this) envs
    # epsilon-greedy during evaluation; noisy nets act with their mean weights. SPR: eps_eval 0.001
    # with noisy nets (src/utils.py set_config), the mean weights (src/agent.py eval_mode).
    c.eval.epsilon = 0.001
    c.eval.max_episode_frames = 108_000

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 1000  # env steps between loss/throughput records
    c.log.tensorboard = True
    c.log.progress_bar = True

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 20_000  # env steps between checkpoints (0: only at the end)
    c.checkpoint.keep = 2

    if variant == "smoke":
        # Same code, a run that finishes in a couple of minutes on a 2-core CPU.
        c.name = "rainbow-smoke"
        # Several smoke seeds are vmapped, not unrolled as "auto" does on the CPU: a smoke run is
        # mostly compiling, and with 2 seeds the vmapped update compiles in about half the time
        # (rainbow_psrl:smoke 86 -> 47 s, sac_psrl:smoke 57 -> 30 s, rainbow 35 -> 18 s, sac 24 -> 12 s)
        # and runs at 78-95% of the unrolled speed (docs/BENCHMARKS.md, 2 cores of an AMD EPYC). One
        # seed is the same program either way.
        c.seed_batching = "vmap"
        c.total_env_steps = 1200
        c.replay.capacity = 5000
        c.replay.min_size = 400
        c.agent.batch_size = 8
        c.agent.hidden_size = 64
        c.agent.encoder_channels = (16, 32, 32)
        # One update per env step, each dispatched alone (update_every stays 1): on the CPU the updates
        # of one dispatch are unrolled into one program, so two per dispatch compile twice the code
        # (rainbow_psrl:smoke with 2 seeds, -O1: 46.8 s for two, 23.1 s for one; docs/BENCHMARKS.md).
        # The full config's two updates per dispatch are run end to end by tests/test_fused_loop.py.
        c.updates_per_step = 1
        c.eval.every_steps = 600
        c.eval.episodes = 2
        c.eval.final_episodes = 4
        c.eval.max_episode_frames = 4000
        c.log.every_steps = 200
        c.checkpoint.every_steps = 400
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of configs/rainbow.py (known: 'smoke')")
    return c
