"""Errors a user can act on. The CLI prints these without a traceback and exits non-zero."""


class HvTuneError(Exception):
    """Base class for errors whose message tells the user what to fix."""


class ConfigError(HvTuneError):
    """A config key has a bad value, or is unknown. The message names the key."""


class TrainingError(HvTuneError):
    """Training cannot go on (for example a non-finite loss)."""


class DataError(HvTuneError):
    """A dataset or cache input is missing or malformed. The message names the file."""
