"""Orbax checkpoints of the whole training state (agents, optimisers, replay, keys) plus a JSON header.

Orbax writes each step into a temporary directory and renames it when complete, so an interrupted
save never leaves a half-written "latest" checkpoint. On resume the header is checked against the
current config first (a clear error for an incompatible run), then the arrays are restored into the
shapes the current config implies (a clear error for a corrupted or mismatched checkpoint). A failed
restore never deletes or overwrites anything.
"""

import os

import jax
import orbax.checkpoint as ocp

from psrl_jax.config import ConfigError

# Config fields that change array shapes or the meaning of the saved state: a checkpoint written with
# other values cannot be continued.
COMPATIBILITY_FIELDS = (
    "num_seeds",
    "env.game",  # Atari
    "env.task",  # DMC
    "env.action_repeat",
    "env.crop_size",
    "env.envs_per_seed",
    "env.frame_stack",
    "env.stack_padding",
    "env.image_size",
    "env.observation",  # DMC: pixels or states
    "replay.capacity",
    "replay.n_step",
    "replay.prediction_steps",
    "replay.priority",
    "agent",
    "psrl",
)


class CheckpointError(RuntimeError):
    pass


def _lookup(config_dict: dict, dotted: str):
    """The field's value, or None where this kind of config has no such field (env.task on Atari)."""
    value = config_dict
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def compatibility_header(config_dict: dict) -> dict:
    """The COMPATIBILITY_FIELDS of a config dict (None where this kind of config has no such field),
    with its config_version: a resume compares both."""
    header = {field: _lookup(config_dict, field) for field in COMPATIBILITY_FIELDS}
    return {"config_version": config_dict.get("config_version"), **header}


class Checkpointer:
    def __init__(self, run_dir: str, keep: int):
        self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self):
        return self._manager.latest_step()

    def save(self, env_step: int, state, header: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), header=ocp.args.JsonSave(header))
        self._manager.save(env_step, args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, state_template, config_dict: dict):
        """Restore the latest checkpoint into the structure/shapes of `state_template` (arrays or
        `jax.eval_shape` structs).

        Returns (state, header). Raises CheckpointError with a clear message otherwise."""
        step = self._manager.latest_step()
        if step is None:
            raise CheckpointError(f"resume requested but {self.directory} holds no complete checkpoint")
        where = os.path.join(self.directory, str(step))
        try:
            header = self._manager.restore(step, args=ocp.args.Composite(header=ocp.args.JsonRestore())).header
        except Exception as error:  # orbax raises many types for unreadable files
            raise CheckpointError(
                f"checkpoint {where} is corrupted or unreadable ({_brief(error)}). "
                "It was left untouched; move it away to resume from an older one, or start a new run_dir."
            ) from error
        expected, saved = compatibility_header(config_dict), header.get("compatibility", {})
        if saved.get("config_version") != expected["config_version"]:
            raise ConfigError(
                f"checkpoint {where} was written with config_version {saved.get('config_version')!r} and this "
                f"code's is {expected['config_version']!r}; continue it with the code that wrote it, or start "
                "a new run_dir"
            )
        mismatched = [k for k in expected if _normalise(saved.get(k)) != _normalise(expected[k])]
        if mismatched:
            details = "; ".join(line for k in mismatched for line in _differences(k, saved.get(k), expected[k]))
            raise ConfigError(
                f"checkpoint {where} was written with an incompatible config ({details}). "
                "Resume with the run's original config.json values, or start a new run_dir."
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as error:
            raise CheckpointError(
                f"checkpoint {where} could not be restored into the current state "
                f"({_brief(error)}). It was left untouched."
            ) from error
        return restored.state, header

    def close(self):
        self._manager.close()


def _brief(error: Exception, limit: int = 300) -> str:
    """An orbax / TensorStore error in one line: their messages carry whole JSON specs."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}{' ...' if len(text) > limit else ''}"


def _differences(name: str, saved, current) -> list:
    """'field: checkpoint X vs config Y' for each differing leaf (a section names its fields)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        lines = []
        for key in sorted(set(saved) | set(current), key=str):
            have, want = saved.get(key, "(absent)"), current.get(key, "(absent)")
            if _normalise(have) != _normalise(want):
                lines += _differences(f"{name}.{key}", have, want)
        return lines
    return [f"{name}: checkpoint {saved!r} vs config {current!r}"]


def _normalise(value):
    """JSON round trips turn tuples into lists; compare structurally."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def checkpoint_header(env_step, config_dict, episode_counts, updates_per_seed, last_eval, eval_index) -> dict:
    """The JSON saved next to a checkpoint's arrays: where the run stands, and the config fields a
    resume must match."""
    return {
        "env_step": int(env_step),
        "compatibility": compatibility_header(config_dict),
        "episode_counts": [int(c) for c in episode_counts],
        "updates_per_seed": int(updates_per_seed),
        "last_eval": last_eval,
        "eval_index": eval_index,
    }
