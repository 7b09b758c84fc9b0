"""Config checks that run before anything is compiled, and helpers to record a run's config.

Unknown field names are rejected by ml_collections itself (configs are locked before overrides);
here we check values: sizes, consistency and the output directory.
"""

import json
import os
import tempfile

import ml_collections

from psrl_jax.errors import ConfigError


def _require(condition: bool, message: str):
    if not condition:
        raise ConfigError(message)


def _require_integers(fields: dict, minimum: int) -> None:
    """Every value of {"path.in.config": value} is an int >= minimum."""
    for name, value in fields.items():
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        _require(isinstance(value, int) and value >= minimum, f"config.{name} must be {kind}, got {value!r}")


def _require_even_eval_split(ev) -> None:
    """Evaluation episodes split evenly over the evaluation envs."""
    for name in ("episodes", "final_episodes"):
        episodes = ev[name]
        envs = min(episodes, ev.max_parallel_envs)
        _require(
            episodes % envs == 0,
            f"config.eval.{name}={episodes} must be a multiple of min({name}, eval.max_parallel_envs)={envs} "
            "so that every evaluation env plays the same number of episodes (no bias to short episodes)",
        )


def _require_compute_dtype(agent) -> None:
    compute_dtype = agent.compute_dtype
    _require(
        compute_dtype in ("float32", "bfloat16"),
        f"config.agent.compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}",
    )


def _require_stack_padding(env) -> None:
    padding = env.stack_padding
    _require(
        padding in ("zeros", "first_frame"),
        f"config.env.stack_padding must be 'zeros' or 'first_frame', got {padding!r}",
    )


def sequence_length(config) -> int:
    """Rows per replayed sequence: the anchor's stack history, then max(n, K) steps ahead."""
    r = config.replay
    return config.env.frame_stack - 1 + max(r.n_step, r.prediction_steps) + 1


WARP_PADDINGS = ("zeros", "border")  # psrl_jax/ops/warp.py PADDINGS
AAT_TARGETS = ("newest_frame", "stack")  # psrl_jax/losses/psrl.py
GRAD_CLIPS = ("per_group", "global")  # psrl_jax/agents/rainbow.py
PRIORITIES = ("kl", "cross_entropy")  # psrl_jax/losses/rainbow.py
SEED_BATCHING_MODES = ("auto", "vmap", "unroll")  # psrl_jax/train/common.py resolve_seed_batching


def _check_seed_batching(config) -> None:
    mode = config.seed_batching
    _require(mode in SEED_BATCHING_MODES, f"config.seed_batching must be 'auto', 'vmap' or 'unroll', got {mode!r}")


def validate_atari_config(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError with a clear message for values that cannot work. Cheap: no env, no compile."""
    _require(
        "game" in config.env,
        "this config names no env.game: a DMC config (env.task) is trained with launch/dmc.py, not launch/atari.py",
    )
    env, replay, agent, ev = config.env, config.replay, config.agent, config.eval
    positive = {
        "num_seeds": config.num_seeds,
        "total_env_steps": config.total_env_steps,
        "env.envs_per_seed": env.envs_per_seed,
        "env.frame_skip": env.frame_skip,
        "env.frame_stack": env.frame_stack,
        "env.max_episode_frames": env.max_episode_frames,
        "env.noop_max": env.noop_max,  # envpool 1.2.5 crashes at reset with noop_max=0; 1 = no random no-ops
        "replay.capacity": replay.capacity,
        "replay.min_size": replay.min_size,
        "replay.n_step": replay.n_step,
        "agent.batch_size": agent.batch_size,
        "agent.num_atoms": agent.num_atoms,
        "agent.hidden_size": agent.hidden_size,
        "agent.target_update_period": agent.target_update_period,
        "updates_per_step": config.updates_per_step,
        "update_every": config.update_every,
        "eval.episodes": ev.episodes,
        "eval.final_episodes": ev.final_episodes,
        "eval.max_parallel_envs": ev.max_parallel_envs,
        "eval.max_episode_frames": ev.max_episode_frames,
        "log.every_steps": config.log.every_steps,
    }
    _require_integers(positive, minimum=1)
    _require_stack_padding(env)
    _require_integers(
        {
            "replay.prediction_steps": replay.prediction_steps,
            "env.num_threads": env.num_threads,
            "eval.every_steps": ev.every_steps,
            "checkpoint.every_steps": config.checkpoint.every_steps,
            "update_scan_unroll": config.update_scan_unroll,
        },
        minimum=0,
    )
    _require(env.image_size >= 36, f"config.env.image_size must be >= 36 (three VALID convs), got {env.image_size}")
    _require(config.checkpoint.keep >= 1, f"config.checkpoint.keep must be >= 1, got {config.checkpoint.keep}")
    _require(0.0 <= env.sticky_action_prob <= 1.0, "config.env.sticky_action_prob must be in [0, 1]")
    _require(0.0 <= replay.priority_exponent <= 1.0, "config.replay.priority_exponent (alpha) must be in [0, 1]")
    for name in ("importance_beta_start", "importance_beta_end"):
        _require(0.0 <= replay[name] <= 1.0, f"config.replay.{name} must be in [0, 1]")
    _require(0.0 < agent.gamma <= 1.0, f"config.agent.gamma must be in (0, 1], got {agent.gamma}")
    _require(agent.v_min < agent.v_max, f"config.agent.v_min ({agent.v_min}) must be < v_max ({agent.v_max})")
    _require(agent.num_atoms >= 2, "config.agent.num_atoms must be >= 2")
    _require(agent.learning_rate > 0, "config.agent.learning_rate must be > 0")
    _require(0.0 <= agent.dropout_rate < 1.0, "config.agent.dropout_rate must be in [0, 1)")
    _require(0.0 <= ev.epsilon <= 1.0, "config.eval.epsilon must be in [0, 1]")
    grad_clip = agent.grad_clip
    _require(grad_clip in GRAD_CLIPS, f"config.agent.grad_clip must be one of {GRAD_CLIPS}, got {grad_clip!r}")
    _require(agent.max_grad_norm > 0, f"config.agent.max_grad_norm must be > 0, got {agent.max_grad_norm}")
    _require(
        isinstance(agent.renormalize, bool),
        "config.agent.renormalize must be True or False",
    )
    _require(agent.dueling_grad_scale > 0, "config.agent.dueling_grad_scale must be > 0")
    priority = replay.priority
    _require(priority in PRIORITIES, f"config.replay.priority must be one of {PRIORITIES}, got {priority!r}")
    _require(
        agent.encoder in ("stacked", "framewise"),
        f"config.agent.encoder must be 'stacked' or 'framewise', got {agent.encoder!r}",
    )
    _require_compute_dtype(agent)
    shard_seeds = config.shard_seeds
    _require(
        shard_seeds in ("auto", "on", "off"),
        f"config.shard_seeds must be 'auto', 'on' or 'off', got {shard_seeds!r}",
    )
    _check_seed_batching(config)
    _require(
        agent.augmentation.shift_pad >= 0 and agent.augmentation.intensity_scale >= 0,
        "config.agent.augmentation.shift_pad and intensity_scale must be >= 0",
    )
    seq = sequence_length(config)
    per_env_capacity = replay.capacity // env.envs_per_seed
    _require(
        per_env_capacity >= 2 * seq,
        f"config.replay.capacity={replay.capacity} over {env.envs_per_seed} envs leaves {per_env_capacity} rows per "
        f"env, fewer than twice the replayed sequence length {seq} (frame_stack-1 + max(n_step, prediction_steps) + 1)",
    )
    _require(
        replay.min_size <= replay.capacity,
        f"config.replay.min_size={replay.min_size} is larger than replay.capacity={replay.capacity}",
    )
    _require(
        replay.min_size >= agent.batch_size,
        f"config.agent.batch_size={agent.batch_size} is larger than config.replay.min_size={replay.min_size}: "
        "the first update would sample a batch from fewer transitions than it holds",
    )
    _require(
        replay.min_size // env.envs_per_seed >= seq,
        f"config.replay.min_size={replay.min_size} gives {replay.min_size // env.envs_per_seed} steps per env, "
        f"fewer than one replayed sequence ({seq} rows)",
    )
    _require(
        config.total_env_steps > replay.min_size,
        f"config.total_env_steps={config.total_env_steps} must exceed replay.min_size={replay.min_size} "
        "(no update would ever run)",
    )
    _require(
        config.total_env_steps % env.envs_per_seed == 0,
        f"config.total_env_steps={config.total_env_steps} must be a multiple of env.envs_per_seed={env.envs_per_seed}",
    )
    _require_even_eval_split(ev)
    _require(ev.max_episode_frames >= env.frame_skip, "config.eval.max_episode_frames must be >= env.frame_skip")
    loop = config.loop
    _require(loop in ("host", "fused"), f"config.loop must be 'host' or 'fused', got {loop!r}")
    if loop == "fused":
        validate_fused_loop_config(config)
    validate_psrl_config(config)


def validate_fused_loop_config(config) -> None:
    """The host comes back every log.every_steps env steps: everything the host does must fall on
    those boundaries. Cheap; called before any env or compile."""
    chunk = config.log.every_steps
    E, update_every = config.env.envs_per_seed, config.update_every
    problems = []
    if chunk % (E * update_every):
        problems.append(
            f"log.every_steps={chunk} must be a multiple of env.envs_per_seed * update_every = {E * update_every}"
        )
    for name, value in (
        ("replay.min_size", config.replay.min_size),
        ("eval.every_steps", config.eval.every_steps),
        ("checkpoint.every_steps", config.checkpoint.every_steps),
        ("total_env_steps", config.total_env_steps),
    ):
        if value % chunk:
            problems.append(f"{name}={value} must be a multiple of log.every_steps={chunk}")
    if problems:
        raise ConfigError(
            "config.loop='fused' runs log.every_steps env steps per compiled chunk: "
            + "; ".join(problems)
            + " (or use config.loop='host')"
        )


def validate_dmc_config(config: ml_collections.ConfigDict) -> None:
    """Value checks of a DMC (SAC) config, after env.action_repeat is resolved. Cheap: no env, no compile."""
    env, replay, agent, ev = config.env, config.replay, config.agent, config.eval
    positive = {
        "num_seeds": config.num_seeds,
        "total_env_steps": config.total_env_steps,
        "env.action_repeat": env.action_repeat,
        "env.image_size": env.image_size,
        "env.crop_size": env.crop_size,
        "env.frame_stack": env.frame_stack,
        "env.envs_per_seed": env.envs_per_seed,
        "replay.capacity": replay.capacity,
        "replay.min_size": replay.min_size,
        "replay.n_step": replay.n_step,
        "agent.batch_size": agent.batch_size,
        "agent.latent_dim": agent.latent_dim,
        "agent.critic_target_update_every": agent.critic_target_update_every,
        "agent.actor_update_every": agent.actor_update_every,
        "agent.target_augmentations": agent.target_augmentations,
        "agent.q_augmentations": agent.q_augmentations,
        "updates_per_step": config.updates_per_step,
        "update_every": config.update_every,
        "eval.episodes": ev.episodes,
        "eval.final_episodes": ev.final_episodes,
        "eval.max_parallel_envs": ev.max_parallel_envs,
        "log.every_steps": config.log.every_steps,
    }
    _require_integers(positive, minimum=1)
    _require_stack_padding(env)
    _require_integers(
        {
            "replay.prediction_steps": replay.prediction_steps,
            "env.num_threads": env.num_threads,
            "env.camera_id": env.camera_id,
            "eval.every_steps": ev.every_steps,
            "checkpoint.every_steps": config.checkpoint.every_steps,
            "update_scan_unroll": config.update_scan_unroll,
        },
        minimum=0,
    )
    observation = env.observation
    _require(
        observation in ("pixels", "state"), f"config.env.observation must be 'pixels' or 'state', got {observation!r}"
    )
    if observation == "state":
        _require(
            not any(config.psrl[t] for t in PSRL_TERMS),
            "config.env.observation='state' has no pixels for PSRL's losses: switch every config.psrl term off "
            "(configs/sac.py:state is plain state SAC)",
        )
        _require(
            agent.encoder == "stacked",
            f"config.agent.encoder={agent.encoder!r} is a pixel encoder; config.env.observation='state' uses none "
            "(leave agent.encoder at 'stacked')",
        )
    _require(
        env.crop_size <= env.image_size,
        f"config.env.image_size={env.image_size} (the rendered size) is smaller than config.env.crop_size="
        f"{env.crop_size}: the random crop must fit inside the rendered frame",
    )
    strides = tuple(agent.encoder_strides)
    smallest = 1
    for stride in reversed(strides):  # the input size that leaves a 1x1 map after the VALID 3x3 convs
        smallest = (smallest - 1) * stride + 3
    _require(
        env.crop_size >= smallest,
        f"config.env.crop_size={env.crop_size} is too small for the encoder: {len(strides)} VALID 3x3 convs "
        f"with strides {strides} need at least {smallest} px",
    )
    _require(
        len(strides) == len(agent.encoder_channels),
        "config.agent.encoder_strides and encoder_channels differ in length",
    )
    _require(
        env.backend in ("envpool", "dm_control"),
        f"config.env.backend must be 'envpool' or 'dm_control', got {env.backend!r}",
    )
    _require(env.gl in ("auto", "egl", "osmesa"), f"config.env.gl must be 'auto', 'egl' or 'osmesa', got {env.gl!r}")
    _require(
        agent.encoder in ("stacked", "framewise"),
        f"config.agent.encoder must be 'stacked' or 'framewise', got {agent.encoder!r}",
    )
    _require_compute_dtype(agent)
    _require(
        agent.weight_init in ("orthogonal", "orthogonal_flat", "lecun"),
        "config.agent.weight_init must be 'orthogonal', 'orthogonal_flat' or 'lecun', "
        f"got {agent.get('weight_init')!r}",
    )
    _require(
        isinstance(agent.trunk_tanh, bool),
        f"config.agent.trunk_tanh must be True or False, got {agent.get('trunk_tanh')!r}",
    )
    views = max(agent[n] for n in ("target_augmentations", "q_augmentations"))
    _require(
        views == 1 or (observation == "pixels" and agent.augmentation.enabled),
        "config.agent.target_augmentations / q_augmentations > 1 average over augmented views: they need "
        "pixels with config.agent.augmentation.enabled (identical views would only repeat the work)",
    )
    _require(config.shard_seeds in ("auto", "on", "off"), "config.shard_seeds must be 'auto', 'on' or 'off'")
    _check_seed_batching(config)
    _require(0.0 < agent.gamma <= 1.0, f"config.agent.gamma must be in (0, 1], got {agent.gamma}")
    for name in ("critic_tau", "encoder_tau"):
        _require(0.0 < agent[name] <= 1.0, f"config.agent.{name} must be in (0, 1], got {agent[name]}")
    for name in ("learning_rate", "alpha_learning_rate", "init_temperature"):
        _require(agent[name] > 0, f"config.agent.{name} must be > 0, got {agent[name]}")
    _require(agent.log_std_min < agent.log_std_max, "config.agent.log_std_min must be < log_std_max")
    _require(replay.priority_exponent == 0.0, "DMC replay is uniform: config.replay.priority_exponent must be 0")
    seq = sequence_length(config)
    _require(
        replay.min_size >= agent.batch_size,
        f"config.agent.batch_size={agent.batch_size} is larger than config.replay.min_size={replay.min_size}",
    )
    _require(
        replay.min_size // env.envs_per_seed >= seq,
        f"config.replay.min_size={replay.min_size} gives {replay.min_size // env.envs_per_seed} steps per env, "
        f"fewer than one replayed sequence ({seq} rows)",
    )
    _require(
        replay.capacity // env.envs_per_seed >= 2 * seq,
        f"config.replay.capacity={replay.capacity} is too small for sequences of {seq} rows",
    )
    per_iteration = env.envs_per_seed * env.action_repeat
    _require(
        config.total_env_steps % per_iteration == 0,
        f"config.total_env_steps={config.total_env_steps} must be a multiple of env.envs_per_seed x "
        f"env.action_repeat = {per_iteration} (environment steps per agent step of every env)",
    )
    _require(
        config.total_env_steps // env.action_repeat > replay.min_size,
        f"config.total_env_steps={config.total_env_steps} is {config.total_env_steps // env.action_repeat} agent "
        f"steps, not more than replay.min_size={replay.min_size}: no update would ever run",
    )
    _require_even_eval_split(ev)
    validate_psrl_config(config)


PSRL_TERMS = ("cat_local", "cat_global", "aat_local", "aat_global", "internal")

# The version of the config's fields. A change to the set of fields, or to what a field's value means,
# bumps it and adds a step to MIGRATIONS that rewrites a saved config.json of the previous version
# into one the current code runs as that run ran (tests/test_config.py holds the fields of this
# version and fails when they change without a new version).
CONFIG_VERSION = 1
MIGRATIONS: dict = {}  # version v -> function(saved dict of version v) -> saved dict of version v + 1
FREE_FORM_FIELDS = ("agent.learning_rate_per_task",)  # mappings whose keys are the user's (task names)


def config_fields(config: dict, prefix: str = "") -> set:
    """The dotted names of a config dict's fields (free-form mappings are one field)."""
    names = set()
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in FREE_FORM_FIELDS:
            names |= config_fields(value, f"{name}.")
        else:
            names.add(name)
    return names


def read_saved_config(saved: dict, defaults: ml_collections.ConfigDict, where: str) -> ml_collections.ConfigDict:
    """A saved config (a run's config.json) as a ConfigDict, migrated from its `config_version` to
    today's. Refused, with the fields named, when its version is unknown or when its fields are not
    exactly those of today's `defaults` (configs/rainbow.py or configs/sac.py's get_config())."""
    version = saved.get("config_version")
    if not isinstance(version, int) or not 1 <= version <= CONFIG_VERSION:
        raise ConfigError(
            f"{where} has config_version {version!r}; this code reads versions 1 to {CONFIG_VERSION}"
            + (" (a config from before versions: migrate it or start a new run)" if version is None else "")
        )
    for step in range(version, CONFIG_VERSION):
        saved = MIGRATIONS[step](saved)
    have, want = config_fields(saved), config_fields(config_to_dict(defaults))
    unknown, missing = sorted(have - want), sorted(want - have)
    if unknown or missing:
        raise ConfigError(
            f"{where} (config_version {version}) does not match today's fields: "
            + "; ".join(
                part
                for part in (
                    f"unknown: {', '.join(unknown)}" if unknown else "",
                    f"missing: {', '.join(missing)}" if missing else "",
                )
                if part
            )
        )
    return ml_collections.ConfigDict(saved)  # every field there, of today's version


def is_dmc_config(config) -> bool:
    """A DMC config (configs/sac*.py) names env.task, an Atari one env.game. A ConfigDict or a run's
    config.json as a dict."""
    return "task" in config["env"]


def validate_any_config(config: ml_collections.ConfigDict) -> None:
    """The value checks a trainer runs before building anything, for either domain, the game or task
    name included: a DMC config's task is resolved and its action repeat written into
    config.env.action_repeat first (so pass a copy to keep the original). Cheap: envpool's task
    registry, no env, no compile."""
    if is_dmc_config(config):
        check_dmc_config(config)
    else:
        check_atari_config(config)


def check_atari_config(config: ml_collections.ConfigDict) -> str:
    """validate_atari_config, then the game name: its envpool task id, or a ConfigError naming the
    field (with close matches). Cheap: envpool's registry, no env, no compile."""
    validate_atari_config(config)  # the fields first: they need no envpool
    from psrl_jax.envs.atari import resolve_game

    try:
        return resolve_game(config.env.game)
    except ValueError as error:
        raise ConfigError(f"config.env.game: {error}") from error


def check_dmc_config(config: ml_collections.ConfigDict):
    """(DMCTask, action repeat) of a DMC config after its value checks; the repeat, resolved from the
    task when unset, is written into config.env.action_repeat so that config.json records it. Cheap:
    envpool's registry, no env, no compile."""
    from psrl_jax.envs.dmc import resolve_dmc_env

    task, repeat = resolve_dmc_env(config)
    config.env.action_repeat = repeat
    validate_dmc_config(config)
    return task, repeat


def validate_process_count(config: ml_collections.ConfigDict, num_processes: int) -> None:
    """What a run over several processes (jax.distributed) cannot do; nothing with one process."""
    if num_processes == 1:
        return
    _require(
        config.shard_seeds != "off",
        f"config.shard_seeds='off' keeps every seed on one device, but this run spans {num_processes} "
        "processes (jax.distributed): use 'auto' or 'on'",
    )
    _require(
        config.get("loop", "host") != "fused",  # DMC configs have the host loop only
        "config.loop='fused' runs in one process: envpool's XLA step takes every env's action on one "
        "device. Use config.loop='host' for a run over several processes (jax.distributed).",
    )


def validate_psrl_config(config: ml_collections.ConfigDict) -> None:
    """Checks of the psrl section (configs/rainbow.py psrl_config); nothing to check when every term is off."""
    p = config.psrl
    for term in PSRL_TERMS:
        _require(isinstance(p[term], bool), f"config.psrl.{term} must be True or False, got {p[term]!r}")
    _require(p.local_weight >= 0 and p.global_weight >= 0, "config.psrl.local_weight and global_weight must be >= 0")
    if not any(p[t] for t in PSRL_TERMS):
        return
    k = config.replay.prediction_steps
    _require(
        config.agent.encoder == "framewise",
        f"PSRL compares per-frame maps: config.agent.encoder must be 'framewise', got {config.agent.encoder!r}",
    )
    needs_future = any(p[t] for t in ("cat_local", "cat_global", "aat_local", "aat_global"))
    _require(
        not needs_future or k >= 1,
        "the CAT/AAT terms need replayed future steps: set config.replay.prediction_steps >= 1 (K, e.g. 5)",
    )
    _require(
        1 <= p.cat_steps <= max(k, 1),
        f"config.psrl.cat_steps={p.cat_steps} must be in [1, replay.prediction_steps={k}]",
    )
    _require(
        0.0 <= p.target_ema_decay < 1.0, f"config.psrl.target_ema_decay must be in [0, 1), got {p.target_ema_decay}"
    )
    _require(p.correspondence_width > 0, f"config.psrl.correspondence_width must be > 0, got {p.correspondence_width}")
    _require(
        p.refinement_levels in (0, 1, 2, 3), f"config.psrl.refinement_levels must be 0..3, got {p.refinement_levels}"
    )
    _require(
        p.correlation in ("all_pairs", "local"),
        f"config.psrl.correlation must be 'all_pairs' or 'local', got {p.correlation!r}",
    )
    _require(p.max_displacement >= 1, f"config.psrl.max_displacement must be >= 1, got {p.max_displacement}")
    _require(0.0 <= p.multiscale_decay <= 1.0, "config.psrl.multiscale_decay must be in [0, 1]")
    _require(
        p.warp_padding in WARP_PADDINGS,
        f"config.psrl.warp_padding must be one of {WARP_PADDINGS}, got {p.warp_padding!r}",
    )
    _require(0.0 < p.bn_momentum < 1.0, "config.psrl.bn_momentum must be in (0, 1)")
    aat_target = p.aat_target
    _require(aat_target in AAT_TARGETS, f"config.psrl.aat_target must be one of {AAT_TARGETS}, got {aat_target!r}")
    for name in ("importance_weighted", "mask_padded_frames"):
        value = p[name]
        _require(isinstance(value, bool), f"config.psrl.{name} must be True or False, got {value!r}")
    for name in ("transform_hidden", "projection_dim"):
        _require(isinstance(p[name], int) and p[name] >= 1, f"config.psrl.{name} must be a positive integer")


def check_writable_directory(path: str) -> None:
    """Create `path` if needed and prove we can write there, before any long compile."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ConfigError(f"run directory {path!r} is not writable: {error}") from error


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def save_json_atomic(path: str, data) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
