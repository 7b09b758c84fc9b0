"""What the launchers (launch/*.py) share: flag parsing and input checks whose mistakes are one-line errors.

absl reports its own flag errors in one line, but a --config override is parsed by ml_collections,
which raises Python exceptions (an unknown field is an AttributeError with a "did you mean"), so a
misspelt field used to end in a traceback. `run(main)` is app.run(main) with that turned into
`error: ...` and exit status 1, before anything is built or compiled.
"""

import dataclasses
import os
import sys

from absl import app, flags


def parse_flags(argv: list) -> list:
    """flags.FLAGS(argv), with any parsing error (absl's or ml_collections') as a one-line exit."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        text = str(error)
        if "Traceback (most recent call last):" in text:  # ml_collections quotes the config file's traceback
            head, tail = text.split("Traceback (most recent call last):", 1)
            text = f"{head.strip()} {[line for line in tail.splitlines() if line.strip()][-1].strip()}"
        sys.exit(f"error: {text}\nPass --helpshort or --helpfull to see help on flags.")
    except Exception as error:  # ml_collections: AttributeError / KeyError / ValueError while loading --config
        sys.exit(f"error: bad --config flags: {error_text(error)}")


def error_text(error: BaseException) -> str:
    """An exception's message in one line, unwrapped: ConfigDict raises an AttributeError around a
    KeyError whose str() is quoted and escaped ('\\'batchsize\\'\\nDid you mean ...')."""
    cause = error
    while isinstance(cause, BaseException) and cause.args:
        cause = cause.args[0]
    return " ".join(str(cause).split())


def require_out_directory(path: str) -> None:
    """A one-line exit, before any work, when --out's directory does not exist."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        sys.exit(f"error: --out {path}: its directory does not exist ({directory})")


def load_run_config(run_dir: str, atari_defaults, dmc_defaults):
    """A run directory's config.json as a ConfigDict of today's config version, or a one-line exit
    naming what is wrong (no file, not JSON, an unknown config_version, unknown or missing fields).
    The defaults are today's base configs (configs/rainbow.py, configs/sac.py) whose fields it must have."""
    import json

    from psrl_jax.config import ConfigError, is_dmc_config, read_saved_config

    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        sys.exit(f"error: {run_dir} is not a run directory (no config.json)")
    try:
        with open(path) as f:
            loaded = json.load(f)
    except json.JSONDecodeError as error:
        sys.exit(f"error: {path} is not valid JSON ({error})")
    if not isinstance(loaded, dict) or not isinstance(loaded.get("env"), dict):
        sys.exit(f"error: {path} is not a run's config (no env section)")
    try:
        return read_saved_config(loaded, dmc_defaults if is_dmc_config(loaded) else atari_defaults, path)
    except ConfigError as error:
        sys.exit(f"error: {error}")


def run(main) -> None:
    app.run(main, flags_parser=parse_flags)


def loaded(config):
    """The --config flag's value, or a one-line exit: ml_collections defers a config file it could not
    load (a missing path) to the first use of the value, as an OSError."""
    try:
        config.keys()
    except OSError as error:
        sys.exit(f"error: --config: {' '.join(str(error).split())}")
    return config


@dataclasses.dataclass(frozen=True)
class MultihostFlags:
    """--coordinator, --num_processes and --process_id of a training launcher (one run over several
    processes or hosts, psrl_jax/train/multihost.py). Defining them imports no JAX, so a launcher can
    refuse a config before JAX starts."""

    coordinator: flags.FlagHolder
    processes: flags.FlagHolder
    process_id: flags.FlagHolder

    @classmethod
    def define(cls) -> "MultihostFlags":
        return cls(
            flags.DEFINE_string(
                "coordinator",
                None,
                "Multi-host: host:port of process 0 for jax.distributed.initialize (the same everywhere)",
            ),
            flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (one per host)"),
            flags.DEFINE_integer("process_id", None, "Multi-host: this process's index in [0, num_processes)"),
        )

    def num_processes(self) -> int:
        """How many processes the run spans: 1 without the flags; a one-line exit when some are missing
        or --process_id is out of range."""
        values = (self.coordinator.value, self.processes.value, self.process_id.value)
        if all(v is None for v in values):
            return 1
        if any(v is None for v in values):
            sys.exit("error: multi-host needs all of --coordinator=host:port --num_processes=N --process_id=i")
        if not 0 <= self.process_id.value < self.processes.value:
            sys.exit(
                f"error: --process_id={self.process_id.value} must be in [0, --num_processes={self.processes.value})"
            )
        return self.processes.value

    def initialize(self) -> None:
        """jax.distributed.initialize from the flags, before anything else touches JAX (nothing
        without them)."""
        if self.num_processes() > 1 or self.coordinator.value is not None:
            from psrl_jax.train import multihost

            multihost.initialize(self.coordinator.value, self.processes.value, self.process_id.value)


def refuse_or_start_jax(config, check, multihost: MultihostFlags) -> None:
    """What a training launcher can refuse before JAX starts, in about a second: `check(config)` (its
    domain's checks, config.check_atari_config or check_dmc_config) and what several processes cannot
    do, each a one-line exit; then jax.distributed from the multi-host flags, before anything else
    touches JAX."""
    from psrl_jax.config import ConfigError, validate_process_count

    try:
        check(config)
        validate_process_count(config, multihost.num_processes())
    except ConfigError as error:
        sys.exit(f"error: {error}")
    multihost.initialize()
