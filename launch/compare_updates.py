"""Cost of one gradient update of several configs, measured side by side in one process.

    python launch/compare_updates.py configs/rainbow.py configs/rainbow_psrl.py \
        "configs/rainbow_psrl.py@psrl.correspondence_width=0.0625,psrl.refinement_levels=1" --repeats 5
    python launch/compare_updates.py configs/sac.py configs/sac_psrl.py --repeats 5      # DMC (SAC)

Each argument is a config file, optionally with a :variant and @field=value overrides. For each one
this builds the agent, compiles `agent.update` on a synthetic batch of the config's batch size (random
frames: the cost does not depend on the data), reads the FLOPs from XLA's cost analysis and then times
the updates round-robin (config 1, 2, ..., 1, 2, ...) so that every config sees the same machine load.
Prints a table with the ratio to the first config and writes JSON with --out. One seed, no envs,
no replay sampling: this isolates the network and loss cost that PSRL adds.

--seed_axis times each config once per way of holding its seeds: `none` (the plain update, one
seed), `vmap` (jax.vmap over a seed axis), `vmap_seeds` (psrl_jax/train/common.py's vmap_seeds, which
indexes a size-1 seed axis away and vmaps larger ones) and `unroll` (vmap_seeds with unroll: the
one-seed update traced once per seed into one program, config.seed_batching="unroll"); the last three
run --num_seeds seeds per dispatch, e.g.

    python launch/compare_updates.py configs/sac_psrl.py --seed_axis=none,vmap,vmap_seeds
    python launch/compare_updates.py configs/sac.py --seed_axis=none,vmap,unroll --num_seeds=2

--scopes=N traces N more updates of each config with jax.profiler after the timing and prints where
their time goes per jax.named_scope (encoder, correspondence, warp, aat, soft_target, ...), forward
and backward apart (psrl_jax/profile_scopes.py); --scope_depth cuts scope paths to that many names.
The tables go into the JSON too, and the traces (TensorBoard / Perfetto) stay in --trace_dir, e.g.

    python launch/compare_updates.py configs/sac.py@agent.encoder=framewise configs/sac_psrl.py --scopes=3
"""

import json
import os
import sys
import tempfile
import time

from absl import flags, logging

from psrl_jax import cli, cpu_settings
from psrl_jax.config import ConfigError, is_dmc_config
from psrl_jax.perf import host_info

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed updates per config (round-robin)")
_NUM_ACTIONS = flags.DEFINE_integer("num_actions", 18, "Action count of the synthetic agent (18: full Atari set)")
_ACTION_DIM = flags.DEFINE_integer("action_dim", 6, "DMC configs: action dimensions (6: walker, cheetah)")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here")
_SEED_AXIS = flags.DEFINE_list(
    "seed_axis", ["none"], "Per config, time the update with: none (one seed), vmap, vmap_seeds, unroll (--num_seeds)"
)
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 1, "Seeds per dispatch for --seed_axis vmap, vmap_seeds and unroll")
_SEED_AXES = ("none", "vmap", "vmap_seeds", "unroll")
_SCOPES = flags.DEFINE_integer("scopes", 0, "Trace this many more updates per config and print time per named scope")
_TRACE_DIR = flags.DEFINE_string(
    "trace_dir", "", "With --scopes: keep the traces here, config_<i> each (default: a temp dir)"
)
_SCOPE_DEPTH = flags.DEFINE_integer("scope_depth", 0, "With --scopes: cut scope paths to this many names (0: whole)")


def load_config(spec: str):
    """'path[:variant][@a.b=v,c=w]' -> a validated ConfigDict; ConfigError naming the spec otherwise."""
    import importlib.util

    import yaml  # ml_collections depends on PyYAML; parses 1, 0.5, true, strings

    from psrl_jax.config import ConfigError, validate_any_config

    text = spec
    spec, _, overrides = spec.partition("@")
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise ConfigError(f"{text}: {path} is not a config file")
    module_spec = importlib.util.spec_from_file_location("config_module", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{text}: {path} defines no get_config()")
    try:
        config = module.get_config(variant)
    except ValueError as error:  # an unknown variant
        raise ConfigError(f"{text}: {error}") from error
    for item in filter(None, overrides.split(",")):
        field, sep, value = item.partition("=")
        *parents, name = field.split(".")
        try:
            if not sep:
                raise ValueError("an override must look like field=value")
            node = config
            for parent in parents:
                node = node[parent]
            old = node[name]
            node[name] = type(old)(yaml.safe_load(value)) if old is not None else yaml.safe_load(value)
        except (KeyError, AttributeError, TypeError, ValueError) as error:
            raise ConfigError(f"{text}: override {item!r}: {cli.error_text(error)}") from error
    try:  # the game or task name too; a DMC task's default action repeat (the update's cost does not depend on it)
        validate_any_config(config)
    except ConfigError as error:
        raise ConfigError(f"{text}: {error}") from error
    return config


def synthetic_batch(config, rng):
    """A batch of the config's shapes: Atari gray frames and discrete actions, or DMC RGB frames
    (HWC) and continuous actions of _ACTION_DIM dimensions."""
    import jax.numpy as jnp

    from psrl_jax.replay.sequence_replay import SequenceBatch

    b, k, f, s = config.agent.batch_size, config.replay.prediction_steps, config.env.frame_stack, config.env.image_size
    frame = (s, s, 3) if is_dmc_config(config) else (s, s)

    def frames(*shape):
        return jnp.asarray(rng.integers(0, 256, shape + frame, dtype="uint8"))

    def actions(*shape):
        if is_dmc_config(config):
            return jnp.asarray(rng.uniform(-1, 1, shape + (_ACTION_DIM.value,)), jnp.float32)
        return jnp.asarray(rng.integers(0, _NUM_ACTIONS.value, shape), jnp.int32)

    return SequenceBatch(
        obs=frames(b, f),
        action=actions(b),
        n_step_return=jnp.ones((b,), jnp.float32),
        bootstrap_discount=jnp.full((b,), 0.9, jnp.float32),
        next_obs=frames(b, f),
        valid=jnp.ones((b,), jnp.float32),
        future_obs=frames(b, k, f),
        future_actions=actions(b, k),
        future_mask=jnp.ones((b, k), jnp.float32),
        obs_frame_mask=jnp.ones((b, f), jnp.float32),
        future_frame_mask=jnp.ones((b, k, f), jnp.float32),
        indices=jnp.arange(b, dtype=jnp.int32),
        probabilities=jnp.full((b,), 1.0 / b, jnp.float32),
        importance_weights=jnp.ones((b,), jnp.float32),
    )


def main(argv):
    specs = argv[1:]
    if not specs:
        sys.exit("usage: launch/compare_updates.py CONFIG[:variant][@field=value,...] ...")
    logging.set_verbosity(logging.WARNING)
    unknown = sorted(set(_SEED_AXIS.value) - set(_SEED_AXES))
    if unknown:
        sys.exit(f"error: --seed_axis: unknown {unknown} (known: {', '.join(_SEED_AXES)})")
    if _NUM_SEEDS.value < 1:
        sys.exit(f"error: --num_seeds must be >= 1, got {_NUM_SEEDS.value}")
    if _SCOPES.value < 0 or _SCOPE_DEPTH.value < 0:
        sys.exit("error: --scopes and --scope_depth must be >= 0")
    if _OUT.value:
        cli.require_out_directory(_OUT.value)
    try:  # every spec, before JAX and the agents are imported
        configs = {spec: load_config(spec) for spec in specs}
    except ConfigError as error:
        sys.exit(f"error: {error}")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from psrl_jax.agents.rainbow import RainbowAgent
    from psrl_jax.agents.sac import SACAgent
    from psrl_jax.train.common import vmap_seeds

    def update_fn(agent, seed_axis):  # (state, batch) -> new state, for either agent
        update = lambda state, batch: agent.update(state, batch)[0]  # noqa: E731
        return {
            "none": update,
            "vmap": jax.vmap(update),
            "vmap_seeds": vmap_seeds(update),
            "unroll": vmap_seeds(update, unroll=True),
        }[seed_axis]

    # S copies of one seed's state and batch: the cost does not depend on the values
    with_seed_axis = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * _NUM_SEEDS.value), tree)  # noqa: E731
    rows = []
    for spec, seed_axis in [(spec, axis) for spec in specs for axis in _SEED_AXIS.value]:
        config = configs[spec].copy_and_resolve_references()
        if is_dmc_config(config) and config.env.observation != "pixels":
            sys.exit(f"error: {spec}: env.observation={config.env.observation!r}; this script times pixel updates")
        size, frames = config.env.image_size, config.env.frame_stack
        if is_dmc_config(config):
            agent = SACAgent.from_config(config, _ACTION_DIM.value, (frames, size, size, 3))
        else:
            agent = RainbowAgent.from_config(config, _NUM_ACTIONS.value, (frames, size, size))
        state = agent.init(jax.random.PRNGKey(0))
        batch = synthetic_batch(config, np.random.default_rng(0))
        if seed_axis != "none":
            state, batch = with_seed_axis(state), with_seed_axis(batch)
        seeds = 1 if seed_axis == "none" else _NUM_SEEDS.value
        label = spec if seed_axis == "none" else f"{spec} [{seed_axis} x{seeds}]"
        start = time.perf_counter()
        compiled = jax.jit(update_fn(agent, seed_axis)).lower(state, batch).compile()
        compile_seconds = time.perf_counter() - start
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        start = time.perf_counter()
        state = compiled(state, batch)  # warm-up
        jax.block_until_ready(state)
        warmup_seconds = time.perf_counter() - start
        trained = (state.critic_params, state.actor_params) if is_dmc_config(config) else state.params
        params = sum(x.size for x in jax.tree.leaves((trained, state.aux_params)))
        rows.append(
            dict(
                spec=label,
                seed_axis=seed_axis,
                seeds=seeds,
                compiled=compiled,
                state=state,
                batch=batch,
                times=[],
                compile_seconds=compile_seconds,
                flops=float(cost.get("flops", float("nan"))),
                params=int(params),
            )
        )
        print(f"{label}: compiled in {compile_seconds:.1f}s, first update {warmup_seconds:.2f}s", flush=True)
    for _ in range(_REPEATS.value):
        for row in rows:
            start = time.perf_counter()
            row["state"] = row["compiled"](row["state"], row["batch"])
            jax.block_until_ready(row["state"])
            row["times"].append(time.perf_counter() - start)
            print(f"  {row['spec']}: {row['times'][-1]:.3f}s", flush=True)
    if _SCOPES.value:
        trace_root = _TRACE_DIR.value or tempfile.mkdtemp(prefix="compare_updates_trace_")
        for i, row in enumerate(rows):
            trace_dir = os.path.join(trace_root, f"config_{i}")
            row["scopes"] = _time_by_scope(row, _SCOPES.value, _SCOPE_DEPTH.value, trace_dir)
    base = rows[0]
    results = {"device": str(jax.devices()[0]), "backend": jax.default_backend(), "host": host_info()}
    results.update(repeats=_REPEATS.value, rows=[])
    # ms/upd: one dispatch (all its seeds); ms/seed: per seed's update, the figure to compare across S
    print(f"\n{'config':78s} {'GFLOP':>8s} {'x':>6s} {'ms/upd':>9s} {'x':>6s} {'ms/seed':>9s} {'params':>11s}")
    for row in rows:
        median = float(np.median(row["times"]))
        entry = {
            "config": row["spec"],
            "seed_axis": row["seed_axis"],
            "num_seeds": row["seeds"],
            "flops_per_update": row["flops"],
            "flops_ratio": row["flops"] / base["flops"],
            "median_update_seconds": median,
            "time_ratio": median / float(np.median(base["times"])),
            "median_seconds_per_seed_update": median / row["seeds"],
            "update_seconds": row["times"],
            "compile_seconds": row["compile_seconds"],
            "trainable_params": row["params"],
        }
        if "scopes" in row:
            entry["time_by_scope"] = row["scopes"]
        results["rows"].append(entry)
        print(
            f"{row['spec'][:78]:78s} {row['flops'] / 1e9:8.2f} {entry['flops_ratio']:6.1f} "
            f"{median * 1e3:9.1f} {entry['time_ratio']:6.1f} {median * 1e3 / row['seeds']:9.1f} {row['params']:11,d}"
        )
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


def _time_by_scope(row: dict, dispatches: int, depth: int, trace_dir: str) -> dict:
    """Trace `dispatches` more updates of one row into trace_dir and print its time per named scope."""
    import jax

    from psrl_jax.profile_scopes import format_scope_table, profile_dispatches

    def run_compiled():
        row["state"] = row["compiled"](row["state"], row["batch"])
        jax.block_until_ready(row["state"])

    summary = profile_dispatches(run_compiled, row["compiled"].as_text(), dispatches, trace_dir, depth)
    print(f"\n{row['spec']}: time per named scope, {dispatches} traced updates (trace: {trace_dir})")
    print(format_scope_table(summary), flush=True)
    return summary


if __name__ == "__main__":
    cpu_settings.apply()  # XLA:CPU flags and glibc malloc, before JAX starts (psrl_jax/cpu_settings.py)
    cli.run(main)
