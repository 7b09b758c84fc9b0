"""The errors a user's input can raise before anything is built (imported by config.py and the envs)."""


class ConfigError(ValueError):
    """A config value that cannot work; the message says which field and why."""
