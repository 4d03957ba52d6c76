"""Prompt files in musubi-tuner's line syntax, for ``sample --from-file`` and ``validation.prompts``.

One prompt per line; settings follow the prompt as `` --KEY VALUE`` (split at each `` --``, the
option letters in any case), as musubi-tuner's ``line_to_prompt_dict`` reads them:

==========  ======================================  =================================
option      meaning                                 value
==========  ======================================  =================================
``--w``     width in pixels                         whole number
``--h``     height in pixels                        whole number
``--f``     frame count                             whole number
``--d``     seed                                    whole number
``--s``     denoising steps                         whole number
``--g``     guidance scale                          number
``--fs``    flow shift of the sampler               number
``--i``     first frame (image-to-video models)     path (relative: to the file's folder)
``--n``     negative prompt                         text, as written, up to the next `` --``
``--l``     classifier-free guidance scale          number
==========  ======================================  =================================

``--n`` and ``--l`` follow musubi-tuner's meaning per family (docs/decisions.md, "Negative prompts"):
on HunyuanVideo 1.5 (T2V and I2V) the negative prompt replaces the empty prompt on the unconditional side
of the pipeline's classifier-free guidance, and ``--l`` is that guidance's scale (over ``--g``); on
HunyuanVideo (v1, guidance-distilled: ``--g`` is the embedded guidance) ``--n`` runs diffusers' true
classifier-free guidance at scale ``--l``, so a v1 line with ``--n`` needs ``--l`` above 1 and ``--l``
needs ``--n`` (the family's ``PipelineAdapter.check_guidance``).

A line whose first character is ``#`` is a comment, blank lines are skipped (musubi-tuner's
rule: an indented ``#`` starts a prompt). Unlike musubi-tuner, which skips what it cannot read
and keeps the last of a repeated option, an unknown, repeated or malformed option is an error
naming the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hv_tune.errors import ConfigError

_INT = re.compile(r"\d+")
_FLOAT = re.compile(r"\d+(\.\d*)?|\.\d+")
#: option -> (PromptLine field, kind)
OPTIONS: dict[str, tuple[str, str]] = {
    "w": ("width", "int"), "h": ("height", "int"), "f": ("frames", "int"), "d": ("seed", "int"),
    "s": ("steps", "int"), "g": ("guidance", "float"), "fs": ("shift", "float"), "i": ("image", "path"),
    "n": ("negative_prompt", "text"), "l": ("cfg_scale", "float"),
}


@dataclass
class PromptLine:
    """One prompt and the settings its line gives (None = the caller's default)."""

    prompt: str
    where: str = ""  # "FILE:LINE", for messages
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    shift: float | None = None
    image: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None

    def settings(self) -> dict[str, Any]:
        """The settings this line sets, by field name."""
        return {k: getattr(self, k) for k, _ in OPTIONS.values() if getattr(self, k) is not None}


def parse_prompt_line(text: str, where: str = "") -> PromptLine:
    """One line (already stripped, not a comment) as a ``PromptLine``.

    Raises:
        ConfigError: an empty prompt, an unknown option, an option given twice (``--w`` and ``--W``
            too), or a value that is not what the option takes; the message starts with ``where``.
    """
    prompt, *parts = text.split(" --")
    line = PromptLine(prompt.strip(), where)
    if not line.prompt or line.prompt.startswith("--"):
        raise ConfigError(f"{where}: the line has no prompt before its options: {text!r}")
    for part in parts:
        if not part.strip():
            continue
        option, _, value = part.strip().partition(" ")
        value = value.strip()
        known = OPTIONS.get(option.lower())
        if known is None:
            raise ConfigError(f"{where}: unknown option --{option}; a line takes "
                              f"{', '.join('--' + o for o in OPTIONS)} (musubi-tuner's syntax)")
        name, kind = known
        if getattr(line, name) is not None:
            raise ConfigError(f"{where}: --{option} is given twice; give each option once")
        setattr(line, name, _value(value, kind, f"{where}: --{option}"))
    return line


def _value(value: str, kind: str, what: str) -> Any:
    if not value:
        raise ConfigError(f"{what}: needs a value")
    if kind in ("int", "float"):
        pattern = _INT if kind == "int" else _FLOAT
        if not pattern.fullmatch(value):
            number = "a whole number >= 0" if kind == "int" else "a number >= 0"
            raise ConfigError(f"{what} {value!r}: must be {number}")
        return int(value) if kind == "int" else float(value)
    return value


def read_prompt_file(path: str | Path) -> list[PromptLine]:
    """Every prompt of a prompt file, in order; ``--i`` paths resolved against the file's folder.

    Raises:
        ConfigError: the file cannot be read, holds no prompt, or a line is bad (named ``FILE:LINE``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"prompt file {path}: cannot be read ({e})") from e
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        line = parse_prompt_line(raw.strip(), f"{path}:{number}")
        if line.image is not None:
            image = Path(line.image).expanduser()
            line.image = str(image if image.is_absolute() else path.parent / image)
        lines.append(line)
    if not lines:
        raise ConfigError(f"prompt file {path}: holds no prompt (blank lines and # comments only)")
    return lines


def apply_line(defaults: Any, line: PromptLine) -> Any:
    """``defaults`` (a dataclass such as ``SampleRequest``) with the line's prompt and settings."""
    return replace(defaults, prompt=line.prompt, **{k: v for k, v in line.settings().items() if k != "image"})


def check_line_shape(spec: Any, line: PromptLine, frames: int, height: int, width: int) -> None:
    """The line's frame count and size (after defaults) by the model's rules, and its ``--n`` / ``--l``
    by the family's (``spec.pipeline.check_guidance``).

    Raises:
        ConfigError: naming the line and the rule.
    """
    rules = spec.video
    if not rules.frames_ok(frames):
        raise ConfigError(f"{line.where}: --f {frames}: {spec.name} takes {rules.frame_rule} frames")
    for flag, side in (("--h", height), ("--w", width)):
        if not rules.side_ok(side):
            raise ConfigError(f"{line.where}: {flag} {side}: must be a positive multiple of {rules.pixel_multiple}")
    if line.steps is not None and line.steps < 1:
        raise ConfigError(f"{line.where}: --s {line.steps}: must be >= 1")
    if line.shift is not None and line.shift <= 0:
        raise ConfigError(f"{line.where}: --fs {line.shift:g}: must be > 0")
    spec.pipeline.check_guidance(line.where, line.negative_prompt, line.cfg_scale)
