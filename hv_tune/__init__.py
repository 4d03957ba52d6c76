"""hv-tune: turn your own videos into a HunyuanVideo style LoRA."""

__version__ = "0.1.0"
