"""Throughput of one config's pieces, measured side by side in one process. Any config: Atari
(configs/rainbow*.py) or DeepMind Control (configs/sac*.py, which name an env.task).

    python launch/benchmark.py --config configs/rainbow.py [--config.num_seeds=4] [--repeats=20] [--out=b.json]
    python launch/benchmark.py --config configs/rainbow_psrl.py --seeds_list=1,2,4,8 --trace_dir=/tmp/trace

Prints and writes JSON with: compile times, updates/s (U updates per dispatch, all seeds; timed
after 3 untimed dispatches, whose times are `update_warmup_seconds`), collect (act + replay insert)
steps/s, raw env steps/s with random actions (envpool's Atari, or the DMC backend's rendered
steps), projected end-to-end env steps/s, replay bytes per transition, FLOPs per
update from XLA's cost analysis, achieved FLOP/s and its fraction of the device's peak (MFU; peaks
in psrl_jax/perf.py), peak device memory (GPU) or XLA's memory analysis of the update (CPU) and the
host's peak RSS. `--seeds_list` measures several seed counts one after another in this process and
adds the speed-up of S vmapped seeds over S single-seed updates run one after another;
`--updates_per_dispatch_list=1,2,8` does the same for U updates per dispatch (one lax.scan) against
one dispatch per update. `--trace_dir` writes a jax.profiler trace of a few update dispatches (named
scopes: encoder, correspondence, warp, aat, distributional_loss, optimizer, ...) for TensorBoard's
profile plugin or Perfetto, and prints (and adds to the JSON as `time_by_scope`) the time of the
traced ops per named scope, forward and backward apart (psrl_jax/profile_scopes.py).
`--loops` measures the training loops themselves instead: agent env steps/s of the host loop and of
the fused loop (config.loop="fused") after the warm-up and during it (acting only: the per-step
overhead the fused loop removes), and raw envpool steps/s with random actions, on the same envs. The
replay is filled with random frames (no training), so numbers measure the machinery, not learning.
`--sharding` (more than one device, e.g. XLA_FLAGS=--xla_force_host_platform_device_count=2) times
the sharded update dispatch as the trainer runs it (shard_map: each device its own seeds) against
the same vmapped update left to XLA's SPMD partitioner, and counts the collectives in each compiled
program (Atari or DMC configs).
"""

import json
import os
import resource
import sys
import time

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from psrl_jax import cli, cpu_settings
from psrl_jax.config import ConfigError, is_dmc_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/rainbow.py[:smoke]")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed dispatches per measurement")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here")
_SEEDS_LIST = flags.DEFINE_string(
    "seeds_list", "", "Comma-separated seed counts to measure (default: config.num_seeds)"
)
_DISPATCH_LIST = flags.DEFINE_string(
    "updates_per_dispatch_list",
    "",
    "Comma-separated U to measure: U updates per seed in one dispatch (update_every=U, updates_per_step=1)",
)
_TRACE_DIR = flags.DEFINE_string("trace_dir", "", "Write a jax.profiler trace of update dispatches here")
_LOOPS = flags.DEFINE_bool(
    "loops",
    False,
    "Measure the training loops instead: the host loop and the fused loop (config.loop) after the warm-up, "
    "and raw envpool with random actions, one after another on the same envs (chunk = config.log.every_steps)",
)
_SHARDING = flags.DEFINE_bool(
    "sharding",
    False,
    "Measure the sharded update instead: shard_map (the trainer's SeedAxis.jit) vs XLA's SPMD partitioner",
)
_CHUNKS = flags.DEFINE_integer("chunks", 2, "With --loops: timed chunks of log.every_steps env steps per loop")
flags.mark_flags_as_required(["config"])


def make_trainer(config):
    """(trainer, is_dmc): the trainer of the config's domain (train/domains.py)."""
    from psrl_jax.train.trainer import Trainer

    return Trainer(config), is_dmc_config(config)


UPDATE_WARMUP_DISPATCHES = 3  # untimed update dispatches before the timed ones (measure())


def _timed(fn, repeats):
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    import jax

    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def measure(config, repeats: int, trace_dir: str = "") -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from psrl_jax.perf import peak_flops
    from psrl_jax.replay.sequence_replay import bytes_per_transition

    trainer, dmc = make_trainer(config)
    S, E = config.num_seeds, config.env.envs_per_seed
    results = {"config": config.name, "num_seeds": S, "envs_per_seed": E}
    results["task" if dmc else "game"] = trainer.domain.name if dmc else trainer.domain.task_id
    device = jax.devices()[0]
    results["device"] = f"{device} ({getattr(device, 'device_kind', '')})"
    results["backend"] = jax.default_backend()
    results["compute_dtype"] = config.agent.compute_dtype

    start = time.perf_counter()
    state = jax.block_until_ready(trainer.init_fn(trainer.seeds.keys()))
    results["init_seconds"] = time.perf_counter() - start
    results["replay_bytes_per_transition"] = float(bytes_per_transition(jax.tree.map(lambda x: x[0], state.replay)))

    rng = np.random.default_rng(0)
    rows = max(config.replay.min_size // E, 64)

    def random_step(first=False):
        frame = jnp.asarray(rng.integers(0, 255, (S, E, *trainer.frame_shape)).astype(trainer.frame_dtype))
        reward = jnp.asarray(rng.random((S, E), dtype=np.float32))
        discount = jnp.ones((S, E), jnp.float32)
        return frame, reward, discount, jnp.full((S, E), first)

    # Fill replay (random actions path), timing the collect dispatch once compiled.
    start = time.perf_counter()
    state, actions = trainer.collect_random(state, *random_step(first=True))
    jax.block_until_ready(actions)
    results["compile_collect_seconds"] = time.perf_counter() - start
    for _ in range(rows):
        state, actions = trainer.collect_random(state, *random_step())
    jax.block_until_ready(actions)

    start = time.perf_counter()
    state, actions = trainer.collect_policy(state, *random_step())
    jax.block_until_ready(actions)
    results["compile_collect_policy_seconds"] = time.perf_counter() - start
    step_inputs = random_step()
    holder = {"state": state}

    def collect_once():
        holder["state"], acts = trainer.collect_policy(holder["state"], *step_inputs)
        return acts

    seconds = _timed(collect_once, repeats)
    results["collect_steps_per_s_all_seeds"] = S * E / seconds

    args = (jnp.float32(0.4 if not dmc else 0.0),)  # replay's importance exponent beta
    lowered = trainer.update_fn.lower(holder["state"], *args)
    start = time.perf_counter()
    compiled = lowered.compile()
    results["compile_update_seconds"] = time.perf_counter() - start
    U = trainer.updates_per_dispatch
    results["updates_per_dispatch"] = U
    results["update_every"] = config.update_every
    results.update(update_flops(compiled, trainer, S))
    seed_devices = results["seed_devices"]

    def update_once():
        holder["state"], metrics = trainer.update_fn(holder["state"], *args)
        return metrics

    # The first dispatches after the compile can be far slower than the rest (sac_psrl on a 2-core
    # CPU: 10.1 s for the second, then 3.8-5.2 s), so timing starts after a few; their times are kept.
    warmup = []
    for _ in range(UPDATE_WARMUP_DISPATCHES):
        start = time.perf_counter()
        jax.block_until_ready(update_once())
        warmup.append(time.perf_counter() - start)
    results["update_warmup_seconds"] = warmup
    seconds = _timed(update_once, repeats)
    results["update_dispatch_seconds"] = seconds
    results["updates_per_s_all_seeds"] = U * S / seconds
    results["achieved_flops_per_s"] = results["flops_per_update_per_seed"] * U * S / seconds
    peak, source = peak_flops(device, results["compute_dtype"])
    if peak and device.platform != "cpu":  # forced CPU devices share the same cores
        peak, source = peak * seed_devices, f"{source}, x{seed_devices} devices"
    results["device_peak_flops_per_s"] = peak
    results["device_peak_source"] = source
    results["mfu"] = results["achieved_flops_per_s"] / peak if peak else None
    memory = compiled.memory_analysis()
    if memory is not None:
        results["update_memory_bytes"] = {
            k: int(getattr(memory, f"{k}_size_in_bytes"))
            for k in ("argument", "output", "temp", "generated_code")
            if hasattr(memory, f"{k}_size_in_bytes")
        }
    stats = device.memory_stats() or {}
    results["device_peak_bytes_in_use"] = stats.get("peak_bytes_in_use")  # GPU/TPU; None on CPU
    results["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if trace_dir:
        from psrl_jax.profile_scopes import format_scope_table, profile_dispatches

        def run_compiled():  # the compiled program itself, so its HLO names the traced ops
            holder["state"], metrics = compiled(holder["state"], *args)
            jax.block_until_ready(metrics)

        traced = 3
        summary = profile_dispatches(run_compiled, compiled.as_text(), traced, os.path.join(trace_dir, f"seeds_{S}"))
        results["trace_dir"] = summary["trace_dir"]
        results["time_by_scope"] = summary
        print(f"update dispatch, S={S}: time per named scope ({traced} traced dispatches)")
        print(format_scope_table(summary), flush=True)

    # The raw envs with random actions, same pool size: envpool's Atari steps, or DMC agent steps
    # (action_repeat physics steps and one render each) of the trainer's backend.
    env = trainer.envs
    env.reset()
    n = max(repeats * 10, 200) if not dmc else max(repeats * 2, 20)
    start = time.perf_counter()
    for _ in range(n):
        if dmc:
            env.step(rng.uniform(-1, 1, (S * E, env.action_dim)).astype(np.float32))
        else:
            env.step(rng.integers(0, env.num_actions, S * E).astype(np.int32))
    raw_agent_steps_per_s = n * S * E / (time.perf_counter() - start)
    repeat = trainer.domain.action_repeat  # Atari 100k counts agent steps as env steps
    results["action_repeat"] = repeat
    results["raw_env_steps_per_s_all_seeds"] = raw_agent_steps_per_s * repeat
    # Projected end-to-end: per agent step one collect and one env step, plus U updates every
    # update_every agent steps.
    per_step = S * E / results["collect_steps_per_s_all_seeds"] + S * E / raw_agent_steps_per_s
    per_step += results["update_dispatch_seconds"] / config.update_every
    results["projected_env_steps_per_s_per_seed"] = E * repeat / per_step
    results["projected_hours_for_total_env_steps"] = (
        config.total_env_steps / results["projected_env_steps_per_s_per_seed"] / 3600
    )
    env.close()
    trainer.checkpointer.close()
    return results


def update_flops(compiled, trainer, num_seeds: int) -> dict:
    """XLA's FLOP count of a compiled update dispatch, per update and per seed."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    U = trainer.updates_per_dispatch
    # XLA's cost analysis counts a rolled loop's body once: exact per-update FLOPs need a full unroll.
    counted_updates = U if trainer.scan_unroll >= U else 1
    # Sharded, the compiled program is one device's: its S / devices seeds (SeedAxis.jit).
    seed_devices = len(trainer.seeds.sharding.device_set) if trainer.seeds.sharding is not None else 1
    return {
        "seed_devices": seed_devices,
        "flops_per_update_per_seed": flops / (counted_updates * (num_seeds // seed_devices)),
        "flops_count_exact": trainer.scan_unroll >= U,
    }


def measure_loops(config, chunks: int) -> dict:
    """Agent env steps/s of the host loop and of the fused loop, and raw envpool steps/s, after the
    warm-up (replay.min_size random steps, run by the fused warm-up chunks), on the same envs."""
    import jax
    import numpy as np

    from psrl_jax.envs.episodes import EpisodeStats
    from psrl_jax.train.trainer import Trainer

    config.loop = "fused"
    trainer = Trainer(config)
    envs = trainer.envs
    S, E, L = config.num_seeds, config.env.envs_per_seed, config.log.every_steps
    results = {"config": config.name, "game": trainer.domain.task_id, "num_seeds": S, "envs_per_seed": E}
    results["device"] = str(jax.devices()[0])
    results["chunk_env_steps"] = L
    results["updates_per_dispatch"] = trainer.updates_per_dispatch

    state = trainer.init_fn(trainer.seeds.keys())
    env = trainer.xla_envs.carry(envs.reset(), trainer.seeds.put_env_rows)
    start, step = time.perf_counter(), 0
    while step < config.replay.min_size:
        state, env, _, _ = trainer.fused_chunk(state, env, step)
        step += L
    jax.block_until_ready(state)
    results["fused_warmup_seconds_incl_compile"] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(chunks):  # more warm-up chunks (env_step 0: random actions, no updates)
        state, env, _, _ = trainer.fused_chunk(state, env, 0)
    jax.block_until_ready(state)
    results["fused_warmup_env_steps_per_s_all_seeds"] = chunks * L * S / (time.perf_counter() - start)

    start = time.perf_counter()
    state, env, _, _ = trainer.fused_chunk(state, env, step)
    jax.block_until_ready(state)
    results["fused_first_training_chunk_seconds_incl_compile"] = time.perf_counter() - start
    step += L
    start = time.perf_counter()
    for _ in range(chunks):
        state, env, _, _ = trainer.fused_chunk(state, env, step)
        step += L
    jax.block_until_ready(state)
    results["fused_env_steps_per_s_all_seeds"] = chunks * L * S / (time.perf_counter() - start)

    arrays = envs.reset()
    episodes = EpisodeStats(S * E)
    state, arrays, _ = trainer.host_iteration(state, arrays, 0)  # compile the random collect
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(chunks * L // E):
        state, arrays, _ = trainer.host_iteration(state, arrays, 0)
        episodes.update(arrays)
    jax.block_until_ready(state)
    results["host_warmup_env_steps_per_s_all_seeds"] = chunks * L * S / (time.perf_counter() - start)
    for _ in range(config.update_every):  # compile the host loop's collect and update first
        state, arrays, _ = trainer.host_iteration(state, arrays, step)
        step += E
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(chunks * L // E):
        state, arrays, _ = trainer.host_iteration(state, arrays, step)
        episodes.update(arrays)
        step += E
    jax.block_until_ready(state)
    results["host_env_steps_per_s_all_seeds"] = chunks * L * S / (time.perf_counter() - start)

    rng = np.random.default_rng(0)
    envs.reset()
    start = time.perf_counter()
    for _ in range(chunks * L // E):
        envs.step(rng.integers(0, envs.num_actions, S * E).astype(np.int32))
    results["raw_env_steps_per_s_all_seeds"] = chunks * L * S / (time.perf_counter() - start)
    results["fused_vs_host_warmup"] = (
        results["fused_warmup_env_steps_per_s_all_seeds"] / results["host_warmup_env_steps_per_s_all_seeds"]
    )
    results["fused_vs_host"] = results["fused_env_steps_per_s_all_seeds"] / results["host_env_steps_per_s_all_seeds"]
    results["host_vs_raw_env"] = results["host_env_steps_per_s_all_seeds"] / results["raw_env_steps_per_s_all_seeds"]
    results["fused_vs_raw_env"] = results["fused_env_steps_per_s_all_seeds"] / results["raw_env_steps_per_s_all_seeds"]
    envs.close()
    trainer.checkpointer.close()
    return results


COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def measure_sharding(config, repeats: int) -> dict:
    """ms per update dispatch, sharded over every device: shard_map vs the SPMD partitioner, timed
    alternately on the same state; the collectives XLA put into each compiled program; and the
    shard_map update's FLOPs per update per seed, counted as measure() counts them."""
    import re

    import jax
    import jax.numpy as jnp
    import numpy as np

    if jax.device_count() < 2:
        sys.exit("error: --sharding needs more than one device (XLA_FLAGS=--xla_force_host_platform_device_count=2)")
    config.shard_seeds = "on"
    trainer, dmc = make_trainer(config)
    seeds, S, E = trainer.seeds, config.num_seeds, config.env.envs_per_seed
    state = trainer.init_fn(seeds.keys())
    rng = np.random.default_rng(0)
    for i in range(max(config.agent.batch_size, 64) + 16):  # enough rows to sample sequences from
        frame = seeds.put(rng.integers(0, 255, (S, E, *trainer.frame_shape), dtype=np.uint8))
        reward = seeds.put(rng.random((S, E), dtype=np.float32))
        state, _ = trainer.collect_random(
            state, frame, reward, seeds.put(np.ones((S, E), np.float32)), seeds.put(np.full((S, E), i == 0))
        )
    args = (jnp.float32(0.4 if not dmc else 0.0),)  # replay's importance exponent beta
    programs = {
        "shard_map": trainer.update_fn,
        "spmd_partitioner": jax.jit(trainer.vmapped_update, out_shardings=seeds.sharding, donate_argnums=0),
    }
    pattern = "(" + "|".join(COLLECTIVES) + r")(?:-start)?\("
    results = {"config": config.name, "num_seeds": S, "devices": jax.device_count(), "device": str(jax.devices()[0])}
    results["updates_per_dispatch"] = trainer.updates_per_dispatch
    times = {name: [] for name in programs}
    for name, fn in programs.items():
        compiled = fn.lower(state, *args).compile()
        results[f"{name}_collectives"] = len(re.findall(pattern, compiled.as_text()))
        if name == "shard_map":  # the trainer's own update, as measure() counts it
            results.update(update_flops(compiled, trainer, S))
        state, metrics = fn(state, *args)  # compile and warm up
        jax.block_until_ready(metrics)
    for _ in range(3):  # alternate, keep each one's best
        for name, fn in programs.items():
            start = time.perf_counter()
            for _ in range(repeats):
                state, metrics = fn(state, *args)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - start) / repeats)
    for name in programs:
        results[f"{name}_ms_per_dispatch"] = 1000 * min(times[name])
    results["speedup_shard_map_vs_spmd"] = min(times["spmd_partitioner"]) / min(times["shard_map"])
    trainer.envs.close()
    trainer.checkpointer.close()
    return results


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = cli.loaded(_CONFIG.value)
    config.run_dir = config.run_dir or "/tmp/psrl_jax_benchmark"
    config.resume = False
    if _SEEDS_LIST.value and _DISPATCH_LIST.value:
        sys.exit("error: vary one thing per benchmark: --seeds_list or --updates_per_dispatch_list")
    if _LOOPS.value and is_dmc_config(config):
        sys.exit("error: --loops compares Atari's host and fused loops; DMC configs have the host loop only")
    _check_before_measuring(config)
    try:
        results = _measure_all(config)
    except ConfigError as error:  # e.g. a seed count the device count does not divide
        sys.exit(f"error: {error}")
    from psrl_jax.perf import host_info

    text = json.dumps({**results, "host": host_info()}, indent=2)
    print(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text + "\n")


def _positive_ints(text: str, flag: str) -> list:
    try:
        values = [int(n) for n in text.split(",")] if text else []
    except ValueError:
        sys.exit(f"error: {flag} must be integers separated by commas, got {text!r}")
    if any(v < 1 for v in values):
        sys.exit(f"error: {flag} values must be >= 1, got {text!r}")
    return values


def _check_before_measuring(config) -> None:
    """Flags, --out and every configuration the benchmark will build, before the first compile (a
    mistake found after minutes of measuring would lose them)."""
    from psrl_jax.config import validate_any_config

    if _REPEATS.value < 1:
        sys.exit(f"error: --repeats must be >= 1, got {_REPEATS.value}")
    if _OUT.value:
        cli.require_out_directory(_OUT.value)
    variants = [{"num_seeds": n} for n in _positive_ints(_SEEDS_LIST.value, "--seeds_list")]
    variants += [
        {"update_every": u, "updates_per_step": 1}
        for u in _positive_ints(_DISPATCH_LIST.value, "--updates_per_dispatch_list")
    ]
    for variant in variants or [{}]:
        trial = ml_collections.ConfigDict(config.to_dict())
        trial.update(variant)
        try:
            validate_any_config(trial)
        except ConfigError as error:
            sys.exit(f"error: {error}" + (f" (with {variant})" if variant else ""))


def _measure_all(config) -> dict:
    if _SHARDING.value:
        runs = _over_seed_counts(
            config,
            lambda c: measure_sharding(c, _REPEATS.value),
            lambda r: f"shard_map {r['speedup_shard_map_vs_spmd']:.2f}x the SPMD partitioner",
        )
        results = runs[0] if len(runs) == 1 else {"runs": runs}
    elif _LOOPS.value:
        runs = _over_seed_counts(
            config, lambda c: measure_loops(c, _CHUNKS.value), lambda r: f"fused/host {r['fused_vs_host']:.2f}x"
        )
        results = runs[0] if len(runs) == 1 else {"runs": runs}
    elif _DISPATCH_LIST.value:
        # same replay ratio (1 update per env step), U of them per dispatch every U env steps
        runs = []
        for u in (int(n) for n in _DISPATCH_LIST.value.split(",")):
            config.update_every, config.updates_per_step = u, 1
            runs.append(measure(config, _REPEATS.value, _TRACE_DIR.value))
            print(f"measured U={u}: {runs[-1]['updates_per_s_all_seeds']:.1f} updates/s", flush=True)
        results = {"runs": runs, "dispatch_scaling": _dispatch_scaling(runs)}
    else:
        runs = _over_seed_counts(
            config,
            lambda c: measure(c, _REPEATS.value, _TRACE_DIR.value),
            lambda r: f"{r['updates_per_s_all_seeds']:.1f} updates/s",
        )
        results = runs[0] if len(runs) == 1 else {"runs": runs, "seed_scaling": _seed_scaling(runs)}
    return results


def _over_seed_counts(config, measure_one, summary) -> list:
    """measure_one(config) for each --seeds_list count (default: config.num_seeds), one after another,
    printing summary(result) as each finishes."""
    counts = [int(n) for n in _SEEDS_LIST.value.split(",")] if _SEEDS_LIST.value else [config.num_seeds]
    runs = []
    for num_seeds in counts:
        config.num_seeds = num_seeds
        runs.append(measure_one(config))
        print(f"measured num_seeds={num_seeds}: {summary(runs[-1])}", flush=True)
    return runs


def _seed_scaling(runs: list) -> list:
    """Speed-up of S vmapped seeds over S single-seed updates one after another (needs S = 1 measured)."""
    single = next((r for r in runs if r["num_seeds"] == 1), None)
    rows = []
    for r in runs:
        row = {"num_seeds": r["num_seeds"], "updates_per_s_all_seeds": r["updates_per_s_all_seeds"]}
        if single is not None:
            # S single-seed runs in sequence take S x the one-seed dispatch time for the same updates
            row["speedup_vs_sequential_single_seed"] = r["updates_per_s_all_seeds"] / single["updates_per_s_all_seeds"]
        rows.append(row)
    return rows


def _dispatch_scaling(runs: list) -> list:
    """Speed-up of U updates in one dispatch (a lax.scan) over one dispatch per update (needs U = 1)."""
    one = next((r for r in runs if r["updates_per_dispatch"] == 1), None)
    rows = []
    for r in runs:
        row = {
            "updates_per_dispatch": r["updates_per_dispatch"],
            "updates_per_s_all_seeds": r["updates_per_s_all_seeds"],
            "compile_update_seconds": r["compile_update_seconds"],
        }
        if one is not None:
            row["speedup_vs_one_dispatch_per_update"] = r["updates_per_s_all_seeds"] / one["updates_per_s_all_seeds"]
        rows.append(row)
    return rows


if __name__ == "__main__":
    cpu_settings.apply()  # XLA:CPU flags and glibc malloc, before JAX starts (psrl_jax/cpu_settings.py)
    cli.run(main)
