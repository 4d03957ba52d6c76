"""Adapters out into the world: LoRA file formats, conversion between them, merging into base weights."""
