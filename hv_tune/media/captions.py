"""Caption files and the caption rule: one reader and one rule for every stage.

UTF-8 (a byte-order mark is stripped) and UTF-16 with a byte-order mark are read as such;
anything else is decoded as cp1252 (then latin-1, which never fails) and noted, so a caption
saved by an old Windows editor is used instead of crashing a run.

The caption rule (``apply_caption_rule``), applied by curation (user and model captions) and
by the cache (every source kind): a caption file ``clip.txt`` (any case of ``.txt``) is ONE
caption, its lines joined, unless a source asks for one caption per line; control characters
are removed; ai-toolkit's ``[trigger]`` is replaced by the trigger word; the trigger word
starts every caption exactly once.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path


def decode_caption_bytes(raw: bytes) -> tuple[str, str | None]:
    """Text of a caption file, and a note when it was not plain UTF-8 (None when it was)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), "caption decoded as UTF-16"
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), "caption not UTF-8; decoded as cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "caption not UTF-8; decoded as latin-1"


def read_caption_file(path: str | Path) -> tuple[str, str | None]:
    """``(text, note)`` of a caption file (see ``decode_caption_bytes``).

    Raises:
        OSError: when the file cannot be read.
    """
    return decode_caption_bytes(Path(path).read_bytes())


# ----------------------------------------------------------------------------- the caption rule
# One rule for every caption, in curation (user and model captions) and in the cache (every
# source kind); docs/curation.md "Captions" and the README's `cache` section describe it.

TRIGGER_PLACEHOLDER = "[trigger]"  # ai-toolkit's placeholder for the trigger word
_PLACEHOLDER = re.compile(re.escape(TRIGGER_PLACEHOLDER), re.IGNORECASE)
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")
_KEEP_FORMAT = {"\u200c", "\u200d"}  # zero-width (non-)joiners: part of some scripts and emoji
#: what the rule may do to a caption, as counted in the curation and cache summaries
EDITS = {
    "prefixed": "prefixed with the trigger word",
    "placeholder": "with [trigger] replaced",
    "joined": "joined from several lines",
    "split": "split into one caption per line",
    "cleaned": "with control characters removed",
}


def clean_line(text: str) -> tuple[str, bool]:
    """``text`` without control characters, whitespace collapsed; and whether any were removed.

    Whitespace controls (tab, vertical tab, form feed) become spaces; every other control or
    invisible format character (NUL, ESC, DEL, C1 codes, zero-width space, BOM) is dropped.
    """
    out, removed = [], False
    for ch in text:
        cat = unicodedata.category(ch)
        if ch.isspace():
            out.append(" ")
        elif cat == "Cc" or (cat == "Cf" and ch not in _KEEP_FORMAT):
            removed = True
        else:
            out.append(ch)
    return " ".join("".join(out).split()), removed


def starts_with_trigger(caption: str, trigger: str) -> bool:
    """True when ``caption`` begins with the whole word(s) ``trigger`` (``sks,`` yes, ``sksboard`` no)."""
    if not trigger or not caption.startswith(trigger):
        return False
    rest = caption[len(trigger):]
    return not rest or not (rest[0].isalnum() or rest[0] == "_")


def replace_placeholder(text: str, trigger: str) -> tuple[str, bool]:
    """``text`` with every ``[trigger]`` (any case) replaced by ``trigger``; whether there was one.

    Without a trigger word the placeholder is removed with the separator it leaves behind.
    """
    if not _PLACEHOLDER.search(text):
        return text, False
    out = _PLACEHOLDER.sub(trigger, text)
    if not trigger:
        out = re.sub(r"\s+([,;])", r"\1", " ".join(out.split())).strip(" ,;")
        out = re.sub(r"([,;]){2,}", r"\1", out)
    return out, True


def apply_caption_rule(value: str | list[str] | None, trigger: str = "",
                       per_line: bool = False) -> tuple[list[str], list[str]]:
    """Captions of one caption file or field, by the one rule; and the edits made (``EDITS`` keys).

    Args:
        value: the text of a caption file or field, or a list of alternative captions (a
            source that lists them asks for alternatives); None or blank gives no caption.
        trigger: ``caption.trigger_word`` / ``data.trigger_word``; empty = none.
        per_line: each non-empty line is an alternative caption (a source's
            ``caption_lines: split``); by default a text is ONE caption, its lines joined with
            spaces, as musubi-tuner and diffusion-pipe read a caption file.

    Returns:
        ``(captions, edits)``: each caption has its control characters removed, whitespace
        collapsed, ``[trigger]`` replaced by the trigger word, and starts with the trigger word
        exactly once (``'<trigger>, <caption>'``, not added when the caption already starts with
        it). The rule is idempotent: applying it to its own output changes nothing.
    """
    edits: set[str] = set()
    texts = [str(v) for v in value] if isinstance(value, list) else [] if value is None else [str(value)]
    pieces: list[str] = []
    for text in texts:
        lines = []
        for raw in _LINE_BREAKS.split(text):
            line, removed = clean_line(raw)
            edits |= {"cleaned"} if removed else set()
            if line:
                lines.append(line)
        if len(lines) > 1:
            edits.add("split" if per_line else "joined")
        pieces += lines if per_line else [" ".join(lines)] if lines else []
    trigger = clean_line(trigger or "")[0]
    captions = []
    for caption in pieces:
        caption, replaced = replace_placeholder(caption, trigger)
        caption, prefixed = with_trigger(caption, trigger)
        edits |= {name for name, done in (("placeholder", replaced), ("prefixed", prefixed)) if done}
        if caption:
            captions.append(caption)
    return captions, sorted(edits)


def with_trigger(caption: str, trigger: str) -> tuple[str, bool]:
    """``'<trigger>, <caption>'`` unless ``caption`` already starts with the trigger word (or none is
    set); and whether it was prefixed. An empty caption becomes the trigger word alone."""
    if not trigger or starts_with_trigger(caption, trigger):
        return caption, False
    return (f"{trigger}, {caption}" if caption else trigger), True


def caption_edit_counts(edits: dict[str, int]) -> str:
    """``'2 prefixed with the trigger word, 1 joined from several lines'`` (empty when none)."""
    return ", ".join(f"{edits[k]} {EDITS[k]}" for k in EDITS if edits.get(k))


def is_caption_name(name: str) -> bool:
    """True for a caption file name: ``.txt`` in any case (``clip.txt``, ``clip.TXT``)."""
    return Path(name).suffix.lower() == ".txt"


def find_caption_file(media: str | Path) -> Path | None:
    """The caption file of a media file: same folder and stem, ``.txt`` in any case; None if none.

    ``clip.txt`` is preferred when a case-sensitive file system holds several spellings.
    """
    media = Path(media)
    exact = media.with_suffix(".txt")
    if exact.is_file():
        return exact
    try:
        names = sorted(p for p in media.parent.iterdir() if p.stem == media.stem and is_caption_name(p.name))
    except OSError:
        return None
    return next((p for p in names if p.is_file()), None)
