"""Errors a user can act on: the CLI prints them without a traceback and exits with code 2.

Curation's errors are hv_tune's (``hv_tune.errors``): one tree, no translation between the two.
``ConfigError`` is hv_tune's own (the typed config loader raises it for both packages);
``InputError`` is a ``DataError`` (a file, folder or stored state that is missing or malformed).
"""

from hv_tune.errors import ConfigError, DataError, HvTuneError

CurationError = HvTuneError  # the base the CLI catches (kept as a name for callers)

__all__ = ["ConfigError", "CurationError", "InputError", "out_of_space"]


class InputError(DataError):
    """An input folder, output folder or stored state is missing or malformed."""


def out_of_space(err: BaseException) -> bool:
    """True when a write failed for lack of room: a full volume (ENOSPC), a quota (EDQUOT) or the
    size limit of one file (EFBIG, ``ulimit -f``), also when a library reports it only in its
    message (pyarrow, torch, safetensors) or wraps it in another exception."""
    import errno

    from hv_tune.io import is_disk_full

    signs = ("No space left on device", "Disk quota exceeded", "File too large", "os error 27", "os error 28")
    seen = 0
    while err is not None and seen < 8:  # the exception and what it was raised from
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if is_disk_full(err) or any(s in str(err) for s in signs):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False
