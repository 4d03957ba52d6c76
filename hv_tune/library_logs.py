"""Library log lines a user cannot act on, dropped from the verbs' output.

Each entry is one logger and the start of one message, with why a user gains nothing from it.
Everything else the libraries log still reaches the user. The CLIs (``finetune.py``,
``python -m curation``) install the filters once at start-up.
"""

from __future__ import annotations

import logging

# logger name -> message fragments to drop (why, for each)
UNACTIONABLE: dict[str, tuple[str, ...]] = {
    # HunyuanVideo folders name `LlamaTokenizer(Fast)` for a Llama 3 (ByteLevel) tokenizer.json; transformers 5
    # then loads the right backend anyway, which is what hv-tune wants (docs/decisions.md). The advice is
    # to edit the model's files, which would make them differ from the published checkpoint.
    "transformers.models.auto.tokenization_auto": ("but `tokenizer.json` is ByteLevel",),
    # diffusers warns on `.to(dtype)` even when the list of float32 modules is empty: nothing is affected.
    "diffusers.models.modeling_utils": ("that should be kept in float32: []",),
    # Printed each time a HunyuanVideo 1.5 pipeline builds its classifier-free-guidance guider.
    "diffusers.guiders.guider_utils": ("Guiders are currently an experimental feature",),
}


class _DropFragments(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def drop_unactionable_library_logs() -> None:
    """Attach one filter per logger of ``UNACTIONABLE`` (idempotent)."""
    for name, fragments in UNACTIONABLE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropFragments) for f in logger.filters):
            logger.addFilter(_DropFragments(fragments))
