"""One exception type for every user-facing mistake, so the CLI can print it cleanly instead of a traceback."""


class LmforgeError(Exception):
    """Bad input from the user: a config key, a file, a checkpoint, a prompt. The message says what and where."""


class ConfigError(LmforgeError):
    """A config file or override that does not fit the schema."""


class DataError(LmforgeError):
    """A data file that is missing, empty or malformed."""


class CheckpointError(LmforgeError):
    """A checkpoint that is missing, incomplete or does not match the model config."""
