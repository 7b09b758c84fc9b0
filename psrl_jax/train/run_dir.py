"""The run directory: resolved config, package versions, per-seed JSONL metrics, TensorBoard events.

Layout (one directory per run):
    config.json            the resolved config (every field, after overrides)
    versions.json          python, platform, jax backend/devices, XLA_FLAGS and package versions
    *.before_<step>.json   config.json / versions.json as they were before a resume at <step>
                           that changed them (other packages, other non-shape settings)
    metrics/seed_<i>.jsonl one JSON record per line: {"kind": "train_episode"|"update"|"eval"|..., "env_step": ...}
    tensorboard/seed_<i>/  TensorBoard event files with the same scalars
    checkpoints/           orbax checkpoints (see checkpoint.py)
"""

import importlib.metadata
import json
import os
import platform
import sys
import time

from psrl_jax import cpu_settings
from psrl_jax.config import config_to_dict, save_json_atomic
from psrl_jax.perf import host_info

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "chex",
    "rlax",
    "flashbax",
    "envpool",
    "dm-control",  # DMC's second backend and its renderer
    "mujoco",
    "distrax",
    "orbax-checkpoint",
    "ml-collections",
    "numpy",
    "tensorboardX",
)


def package_versions() -> dict:
    import jax  # here, so that reading metrics (plots, reports) does not load JAX

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version,
        "platform": platform.platform(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # e.g. psrl_jax/xla_cpu.py's convolution flag
        "cpu_settings": cpu_settings.applied(),  # what the launcher's cpu_settings.apply() set ({}: not called)
        "host": host_info(),  # CPU model, vector ISA, cores, memory: what a rate was measured on
        "packages": versions,
    }


def write_run_info(run_dir: str, config, resumed_at: int | None = None, **extra) -> None:
    """config.json and versions.json; `extra` entries (e.g. seed_placement: the devices the seeds
    span) are added to versions.json. On a resume (`resumed_at`: the checkpoint's step) a file whose
    content changes (beyond config.resume) is first kept as <name>.before_<step>.json, so a run
    continued under other packages or settings records both."""
    for name, content in (("config", config_to_dict(config)), ("versions", {**package_versions(), **extra})):
        path = os.path.join(run_dir, f"{name}.json")
        if resumed_at is not None and os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
            if {**previous, "resume": None} != {**json.loads(json.dumps(content)), "resume": None}:
                os.replace(path, os.path.join(run_dir, f"{name}.before_{resumed_at}.json"))
        save_json_atomic(path, content)


def metrics_path(run_dir: str, seed_index: int | str) -> str:
    """seed_index may be "*" to glob every seed's file."""
    return os.path.join(run_dir, "metrics", f"seed_{seed_index}.jsonl")


def read_metrics(run_dir: str, seed_index: int) -> list:
    """The seed's records; a last line that does not parse (a run killed mid-write) is skipped."""
    with open(metrics_path(run_dir, seed_index)) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{metrics_path(run_dir, seed_index)}: record {number} is not valid JSON") from None
    return records


def truncate_metrics_after(run_dir: str, seed_indices, env_step: int) -> None:
    """On resume from a checkpoint at `env_step`, drop the records of these seeds written after it
    (they will be produced again); the dropped lines are kept in seed_<i>.jsonl.after_<step>, and so
    is a line that does not parse (a run killed mid-write leaves a partial last line)."""
    for i in seed_indices:
        path = metrics_path(run_dir, i)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
        keep, dropped = [], []
        for line in lines:
            try:
                later = json.loads(line).get("env_step", 0) > env_step
            except json.JSONDecodeError:
                later = True
            (dropped if later else keep).append(line)
        if dropped:
            with open(f"{path}.after_{env_step}", "a") as f:
                f.writelines(dropped)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)


def set_aside_previous_attempt(run_dir: str) -> list:
    """On a fresh start (no resume) in a run_dir that already has logs (a run killed before its first
    checkpoint), rename metrics/ and tensorboard/ to *.previous-<time> so the new logs do not append
    to them; nothing is deleted. Returns the new paths."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for name in ("metrics", "tensorboard"):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            os.rename(path, f"{path}.previous-{stamp}")
            moved.append(f"{path}.previous-{stamp}")
    return moved


class MetricsLogger:
    """Appends one JSON line per record to each seed's file, and mirrors scalars to TensorBoard.

    `seeds`: how many seeds (files seed_0 ... seed_<n-1>), or the indices of the seeds this process
    owns (multi-process runs: each process writes its own seeds' files)."""

    def __init__(self, run_dir: str, seeds, tensorboard: bool):
        self.seed_indices = list(range(seeds) if isinstance(seeds, int) else seeds)
        os.makedirs(os.path.join(run_dir, "metrics"), exist_ok=True)
        self._files = {i: open(metrics_path(run_dir, i), "a") for i in self.seed_indices}
        self._writers = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._writers = {
                i: SummaryWriter(os.path.join(run_dir, "tensorboard", f"seed_{i}")) for i in self.seed_indices
            }

    def write(self, seed_index: int, kind: str, env_step: int, values: dict) -> None:
        record = {"kind": kind, "env_step": int(env_step)}
        record.update({k: _to_python(v) for k, v in values.items()})
        self._files[seed_index].write(json.dumps(record) + "\n")
        if self._writers is not None:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name != "env_step":
                    self._writers[seed_index].add_scalar(f"{kind}/{name}", value, env_step)

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()
        if self._writers is not None:
            for w in self._writers.values():
                w.flush()

    def close(self) -> None:
        self.flush()
        for f in self._files.values():
            f.close()
        if self._writers is not None:
            for w in self._writers.values():
                w.close()


def _to_python(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


# ----- records the trainer writes (psrl_jax/train/trainer.py) -----------------------------------------


def write_episode_records(logger: MetricsLogger, finished, episode_counts, envs_per_seed: int, env_step: int) -> None:
    """One "train_episode" record per finished episode (FinishedEpisode of envs/atari.py), in the
    seed that owns its env (env_index counts the logger's envs, seed-major); `episode_counts` (one
    per logger seed) is advanced in place."""
    for episode in finished:
        row = episode.env_index // envs_per_seed
        episode_counts[row] += 1
        logger.write(
            logger.seed_indices[row],
            "train_episode",
            env_step,
            {
                "return": episode.episode_return,
                "length": episode.length,
                "truncated": bool(episode.truncated),
                "episode": int(episode_counts[row]),
            },
        )


def write_update_records(logger: MetricsLogger, env_step: int, rates: dict, means: dict) -> None:
    """One "update" record per logger seed: the rates plus each metric's window mean (host arrays,
    one row per logger seed; empty during the warm-up)."""
    for row, seed_index in enumerate(logger.seed_indices):
        logger.write(seed_index, "update", env_step, {**rates, **{k: float(v[row]) for k, v in means.items()}})
    logger.flush()


def write_eval_records(logger: MetricsLogger, kind: str, env_step: int, returns, seconds: float) -> None:
    """One "eval" / "final_eval" record per logger seed from returns [logger seeds, episodes]."""
    import numpy as np

    for row, seed_index in enumerate(logger.seed_indices):
        logger.write(
            seed_index,
            kind,
            env_step,
            {
                "return_mean": float(np.mean(returns[row])),
                "return_std": float(np.std(returns[row])),
                "episodes": int(returns.shape[1]),
                "returns": returns[row].tolist(),
                "seconds": seconds,
            },
        )
    logger.flush()


def latest_checkpoint_step(run_dir: str):
    """The latest complete checkpoint step under run_dir/checkpoints, or None: the same lookup as
    Checkpointer.latest_step (orbax's standard step names; unfinished *.orbax-checkpoint-tmp-* saves
    do not count), without creating anything."""
    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory) or not os.listdir(directory):
        return None  # the common case, answered without importing orbax (and JAX)
    from orbax.checkpoint import path as ocp_path

    latest = ocp_path.step.latest_step_metadata(os.path.abspath(directory), ocp_path.step.standard_name_format())
    return None if latest is None else latest.step
