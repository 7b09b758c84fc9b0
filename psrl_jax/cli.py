"""What the absl launchers (launch/*.py) share: flag parsing whose mistakes are one-line errors.

absl reports its own flag errors in one line, but a --config override is parsed by ml_collections,
which raises Python exceptions (an unknown field is an AttributeError with a "did you mean"), so a
misspelt field used to end in a traceback. `run(main)` is app.run(main) with that turned into
`error: ...` and exit status 1, before anything is built or compiled.
"""

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
        cause = error
        while isinstance(cause, BaseException) and cause.args:  # ml_collections wraps a KeyError's text
            cause = cause.args[0]
        sys.exit(f"error: bad --config flags: {' '.join(str(cause).split())}")


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
