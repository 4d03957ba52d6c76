"""Predicted vs measured peak of one training step of a full-width HunyuanVideo (test_plan.py).

Prints JSON: the meta-device prediction and the process's peak-RSS growth over one real CPU
step (after a warm-up step). Runs in its own process because it fixes glibc's mmap threshold
(every block over 64 KiB is mapped and unmapped on free, so RSS follows the live bytes) and
resets the kernel's peak-RSS counter.

    python tests/scripts/plan_peak_rss.py MODEL_DIR CHECKPOINTING FRAMES HEIGHT WIDTH
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


def lora_model(spec, model, ckpt: str):
    add_lora(model, peft_config(LoraConfig(rank=4), resolve_targets(spec, model, "attn")))
    if ckpt != "none":
        model.enable_gradient_checkpointing()
    return model.train()


def step(model, inputs) -> None:
    pred = model(**inputs)[0]
    F.mse_loss(pred.float(), torch.zeros(pred.shape)).backward()


def main() -> None:
    model_dir, ckpt = sys.argv[1], sys.argv[2]
    bucket = tuple(int(x) for x in sys.argv[3:6])
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    spec = get_spec("hunyuan-video")
    meta, inputs = spec.plan_model(model_dir, *bucket, 1, torch.float32)
    predicted = profile_step(lora_model(spec, meta, ckpt), inputs)
    real, _ = spec.plan_model(model_dir, *bucket, 1, torch.float32)
    real.to_empty(device="cpu")
    with torch.no_grad():
        for p in real.parameters():
            p.normal_(0.0, 0.02)
    real = lora_model(spec, real, ckpt)
    g = torch.Generator().manual_seed(0)
    real_inputs = {k: (torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else
                       torch.ones(v.shape, dtype=v.dtype)) if isinstance(v, torch.Tensor) else v
                   for k, v in inputs.items()}
    real_inputs["encoder_attention_mask"] = torch.ones_like(real_inputs["encoder_attention_mask"])
    step(real, real_inputs)  # warm-up: thread pools and library buffers are allocated once
    real.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = rss("VmRSS")
    step(real, real_inputs)
    print(json.dumps({"predicted": predicted.peak + predicted.grads, "saved": predicted.saved,
                      "measured": rss("VmHWM") - before}))


if __name__ == "__main__":
    main()
