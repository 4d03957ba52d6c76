"""Random-weight components at a released model's size, for the benches that need real sizes
(``bench/merge.py``, ``bench/cache.py --vae full``, ``bench/train_step.py --size full``): each family's
``tiny.py`` says which classes and widths; the saving is the same for every family."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def save_full_width(out_dir: Path, component: str, builders: dict[str, Callable[[], nn.Module]],
                    pipeline_class: str, max_shard_size: str = "10GB", seed: int = 0) -> nn.Module:
    """Build ``builders[component]()`` with seed ``seed``, save it in diffusers' layout under
    ``out_dir/<component>`` and write a ``model_index.json`` naming ``pipeline_class`` unless one exists.

    Returns:
        The module (what the benches time or count).

    Raises:
        ValueError: ``component`` is not one of ``builders``.
    """
    if component not in builders:
        raise ValueError(f"component {component!r}: one of {', '.join(repr(c) for c in builders)}")
    torch.manual_seed(seed)
    model = builders[component]()
    model.save_pretrained(Path(out_dir) / component, max_shard_size=max_shard_size)
    index = Path(out_dir) / "model_index.json"
    if not index.is_file():
        index.write_text(json.dumps({"_class_name": pipeline_class}))
    return model
