"""Curation fixtures: tiny random models in their real formats, generated videos, a tiny config."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from curation.config import CurationConfig, load_config  # noqa: E402
from curation.samples import write_samples  # noqa: E402
from curation.tiny import build_tiny_models  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "curation_tiny.yaml"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The same folders `python -m curation tiny-models DIR` writes."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def model_overrides(models: dict[str, Path]) -> list[str]:
    return [f"clip.model=local-dir:{models['clip']}", f"clip.aesthetic_head={models['aesthetic']}",
            f"caption.model={models['vlm']}"]


@pytest.fixture(scope="session")
def tiny_config(tiny_models):
    """``tiny_config(*overrides)`` -> the tiny config pointing at the session's tiny models."""

    def make(*overrides: str) -> CurationConfig:
        return load_config(TINY_CONFIG, model_overrides(tiny_models) + list(overrides))

    return make


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> Path:
    """The demo's input folder: two moving shapes, a static shot, a video with a cut, an image."""
    out = tmp_path_factory.mktemp("samples") / "in"
    write_samples(out)
    return out
