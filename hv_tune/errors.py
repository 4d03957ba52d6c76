"""Errors a user can act on. The CLI prints these without a traceback and exits non-zero."""


class HvTuneError(Exception):
    """Base class for errors whose message tells the user what to fix."""

    exit_code = 2  # what ``finetune.py`` returns for it


class ConfigError(HvTuneError):
    """A config key has a bad value, or is unknown. The message names the key."""


class HubUnreachable(ConfigError):
    """A file must come from the Hugging Face hub, and the hub cannot be reached (or HF_HUB_OFFLINE is set)."""


class TrainingError(HvTuneError):
    """Training cannot go on (for example a non-finite loss)."""


class DataError(HvTuneError):
    """A dataset or cache input is missing or malformed. The message names the file."""


class DiskFullError(TrainingError):
    """Not enough free space to save; the message names the folder, the space needed and the fix."""


class Interrupted(TrainingError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (exit code 128 + signal)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
