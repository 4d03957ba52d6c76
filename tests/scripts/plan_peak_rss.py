"""Predicted vs measured peak of one training step of a full-width HunyuanVideo (test_plan.py).

Prints JSON: the meta-device prediction and the process's peak-RSS growth over one real CPU
step (after a warm-up step). Runs in its own process because it fixes glibc's mmap threshold
(every block over 64 KiB is mapped and unmapped on free, so RSS follows the live bytes) and
resets the kernel's peak-RSS counter.

    python tests/scripts/plan_peak_rss.py MODEL_DIR FRAMES HEIGHT WIDTH CHECKPOINTING...
"""

import ctypes
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from hv_tune.config import LoraConfig
from hv_tune.lora import add_lora, peft_config, resolve_targets
from hv_tune.memory.estimate import profile_step
from hv_tune.models import get_spec

M_MMAP_THRESHOLD = -3


def rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def lora_model(spec, model):
    add_lora(model, peft_config(LoraConfig(rank=4), resolve_targets(spec, model, "attn")))
    return model.train()


def set_checkpointing(model, ckpt: str) -> None:
    if ckpt == "none":
        model.disable_gradient_checkpointing()
    else:
        model.enable_gradient_checkpointing()


def step(model, inputs) -> None:
    pred = model(**inputs)[0]
    F.mse_loss(pred.float(), torch.zeros(pred.shape)).backward()


def main() -> None:
    model_dir, modes = sys.argv[1], sys.argv[5:]
    bucket = tuple(int(x) for x in sys.argv[2:5])
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    spec = get_spec("hunyuan-video")
    meta, inputs = spec.plan_model(model_dir, *bucket, 1, torch.float32)
    meta = lora_model(spec, meta)
    real, _ = spec.plan_model(model_dir, *bucket, 1, torch.float32)
    real.to_empty(device="cpu")
    with torch.no_grad():
        for p in real.parameters():
            p.normal_(0.0, 0.02)
    real = lora_model(spec, real)
    g = torch.Generator().manual_seed(0)
    real_inputs = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) if isinstance(v, torch.Tensor) else v
                   for k, v in inputs.items()}
    real_inputs["encoder_attention_mask"] = torch.ones_like(real_inputs["encoder_attention_mask"])
    out = {}
    for ckpt in modes:
        set_checkpointing(meta, ckpt)
        predicted = profile_step(meta, inputs)
        set_checkpointing(real, ckpt)
        step(real, real_inputs)  # warm-up: thread pools and library buffers are allocated once
        real.zero_grad(set_to_none=True)
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = rss("VmRSS")
        step(real, real_inputs)
        out[ckpt] = {"predicted": predicted.peak + predicted.grads, "measured": rss("VmHWM") - before}
        real.zero_grad(set_to_none=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
