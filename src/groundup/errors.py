"""Errors a user can cause and fix.

Each carries a message that names the problem and says what to do. The CLI prints the message
(no traceback) and exits with status 2; library callers catch `GroundupError`.
"""


class GroundupError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class ConfigError(GroundupError):
    """A config file, a --set override, or a model/training setting is invalid."""


class TokenizerError(GroundupError):
    """A tokenizer file, vocabulary size or token id is invalid."""


class DataError(GroundupError):
    """A corpus or prepared token file is missing, empty or unreadable."""


class CheckpointError(GroundupError):
    """A run directory or checkpoint is missing, corrupt or does not match its config."""
