"""Trainable parameters and float32 file size of each adapter type (lora.type) at full model size.

    python bench/adapter_sizes.py [--rank 32] [--targets attn]

For each family, the targeted layers' shapes come from the spec (``linear_shapes(None)``: the
full-size model, no weights needed); one PEFT adapter per distinct shape is injected on the meta
device through ``hv_tune.lora.peft_config`` + ``add_lora`` (what training does) and its trainable
parameters counted. Prints one JSON object: family -> type -> parameters and MB (float32, the
native file and a checkpoint's adapter.safetensors).
"""

from __future__ import annotations

import argparse
import json
import platform
from collections import Counter

import torch
from torch import nn

from hv_tune.config import LoraConfig
from hv_tune.lora import add_lora, lora_parameters, match_modules, peft_config
from hv_tune.models import MODEL_SPECS

TYPES = ("lora", "dora", "lokr", "loha")


class OneLinear(nn.Module):
    """One linear layer with diffusers' ``add_adapter`` (what ``add_lora`` calls), on the meta device."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        with torch.device("meta"):
            self.proj = nn.Linear(in_features, out_features)

    def add_adapter(self, config) -> None:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, self)


def count(shapes: Counter, kind: str, rank: int) -> int:
    """Trainable parameters of ``kind`` over layers of these (out, in) shapes (with multiplicity)."""
    total = 0
    for (out_f, in_f), n in shapes.items():
        model = OneLinear(in_f, out_f)
        add_lora(model, peft_config(LoraConfig(type=kind, rank=rank, alpha=float(rank)), ["proj"]))
        total += n * sum(p.numel() for p in lora_parameters(model))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--targets", default="attn")
    args = parser.parse_args()
    result: dict = {"rank": args.rank, "targets": args.targets, "torch": torch.__version__,
                    "machine": platform.machine()}
    for name, spec in MODEL_SPECS.items():
        if args.targets not in spec.lora_presets:
            continue
        try:
            linear = spec.linear_shapes(None)
        except (OSError, ValueError, NotImplementedError):
            continue
        chosen = match_modules(list(linear), list(spec.lora_presets[args.targets]))
        shapes = Counter(tuple(linear[m]) for m in chosen)
        rows = {}
        for kind in TYPES:
            n = count(shapes, kind, args.rank)
            rows[kind] = {"parameters": n, "float32_MB": round(n * 4 / 2**20, 1)}
        result[name] = {"layers": len(chosen), **rows}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
