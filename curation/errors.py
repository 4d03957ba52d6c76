"""Errors a user can act on: the CLI prints them without a traceback and exits with code 2."""


class CurationError(Exception):
    """Base class: the message names the file or config key and what to do."""


class ConfigError(CurationError):
    """A config key is unknown or has a bad value."""


class InputError(CurationError):
    """An input folder, output folder or stored state is missing or malformed."""
