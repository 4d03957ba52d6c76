"""Errors a user can act on: the CLI prints them without a traceback and exits with code 2."""


class CurationError(Exception):
    """Base class: the message names the file or config key and what to do."""


class ConfigError(CurationError):
    """A config key is unknown or has a bad value."""


class InputError(CurationError):
    """An input folder, output folder or stored state is missing or malformed."""


def out_of_space(err: BaseException) -> bool:
    """True when a write failed for lack of room: a full volume or quota (ENOSPC, EDQUOT, as
    ``hv_tune.io.is_disk_full`` also recognises them in library messages) or the size limit of
    one file (EFBIG, ``ulimit -f``)."""
    import errno

    from hv_tune.io import is_disk_full

    return is_disk_full(err) or (isinstance(err, OSError) and err.errno == errno.EFBIG)
