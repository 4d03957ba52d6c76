"""The one error type of the media layer."""


class MediaError(Exception):
    """A media file cannot be used; the message says why (and what to do, when something can be done)."""
