"""Predicted vs measured peak of one training step of a full-width model (test_plan.py, test_plan_hv15.py).

Prints JSON: the meta-device prediction and the process's peak-RSS growth over one real CPU
step (after a warm-up step). Runs in its own process because it fixes glibc's mmap threshold
(every block over 64 KiB is mapped and unmapped on free, so RSS follows the live bytes) and
resets the kernel's peak-RSS counter.

    python tests/scripts/plan_peak_rss.py MODEL_DIR FRAMES HEIGHT WIDTH CHECKPOINTING... [--model-name NAME]

The meta inputs' constants (masks, image embeddings) are known to the meta step (``KnownValues``) and
the real inputs hold the same values (masks ones; image embeddings zeros for text-to-video, random
for image-to-video), so both take the same branch of the forward.
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
from hv_tune.memory.known import KnownValues
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
    argv = sys.argv[1:]
    name = "hunyuan-video"
    if "--model-name" in argv:
        i = argv.index("--model-name")
        name, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    model_dir, modes = argv[0], argv[4:]
    bucket = tuple(int(x) for x in argv[1:4])
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    spec = get_spec(name)
    known = KnownValues()
    with known:
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
    for key, v in inputs.items():  # the constants the plan knows: the same values on the real side
        if isinstance(v, torch.Tensor) and known.value(v) is not None and not (key == "image_embeds" and known.value(v)):
            real_inputs[key] = torch.full(v.shape, known.value(v), dtype=v.dtype)
    out = {}
    for ckpt in modes:
        set_checkpointing(meta, ckpt)
        with known:
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
