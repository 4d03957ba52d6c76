"""The project's one dtype table: config names -> torch dtypes (models, training and curation's captioner)."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The dtype a model is loaded and computes in.

    ``auto`` = bf16 on GPU, fp32 on CPU (bf16 matmuls on CPU are slow and inexact);
    ``fp8`` = bf16 (the weights are then stored in fp8 by ``hv_tune.memory.fp8``).
    """
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name == "fp8":
        return torch.bfloat16
    return DTYPES[name]
