"""HunyuanVideo 1.5 memory features on CPU through the spec's hooks: fp8 storage and block swap."""

from __future__ import annotations

from pathlib import Path

import torch

from hv_tune.config import LoraConfig
from hv_tune.lora import add_lora, lora_parameters, peft_config, resolve_targets
from hv_tune.memory.fp8 import FP8, apply_fp8_storage, storage_bytes
from hv_tune.memory.swap import BlockSwapper
from hv_tune.models import LoadOptions, get_spec

from .test_hv15_train import _inputs

SPEC = get_spec("hunyuan-video-1.5")


def _model(model_dir: Path, dtype: torch.dtype):
    torch.manual_seed(0)
    model = SPEC.load_transformer(LoadOptions(str(model_dir), dtype=dtype))
    add_lora(model, peft_config(LoraConfig(rank=4, alpha=2), resolve_targets(SPEC, model, "all-linear")))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    model.enable_gradient_checkpointing()
    return model.train()


def _step(model, inputs):
    for p in lora_parameters(model):
        p.grad = None
    out = model(**inputs)[0]
    out.float().pow(2).mean().backward()
    # the last block's text-stream outputs are unused: its ff_context / to_add_out LoRAs get no gradient
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in lora_parameters(model)]
    return out.detach().float(), torch.cat([g.flatten() for g in grads])


def test_fp8_casts_only_block_projections_and_stays_close(hv15_tiny):
    inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in _inputs(hv15_tiny).items()}
    ref = _model(hv15_tiny, torch.bfloat16)
    fp8 = _model(hv15_tiny, torch.bfloat16)
    cast = apply_fp8_storage(fp8, SPEC.fp8_keep_patterns("transformer", fp8), torch.bfloat16)
    assert cast and all(n.startswith("transformer_blocks.") for n in cast)
    assert not any("norm" in n or "lora_" in n for n in cast)  # adaLN modulation and LoRA stay
    dtypes = {n: p.dtype for n, p in fp8.named_parameters()}
    assert dtypes["transformer_blocks.0.attn.to_q.base_layer.weight"] == FP8
    assert dtypes["transformer_blocks.0.norm1.linear.base_layer.weight"] == torch.bfloat16  # all-linear adapts it
    assert dtypes["context_embedder_2.linear_1.weight"] == dtypes["image_embedder.linear_1.weight"] == torch.bfloat16
    assert storage_bytes(fp8) < storage_bytes(ref)
    (out_ref, g_ref), (out, g) = _step(ref, inputs), _step(fp8, inputs)
    assert (out - out_ref).norm() / out_ref.norm() < 0.05
    assert torch.nn.functional.cosine_similarity(g, g_ref, dim=0) > 0.98


def test_block_swap_over_the_spec_blocks_is_exact(hv15_tiny):
    inputs = _inputs(hv15_tiny)
    model = _model(hv15_tiny, torch.float32)
    for p in model.parameters():  # the swapper's copies are freshly allocated; loaded weights may sit at
        p.data = p.data.clone()  # unaligned file offsets, where CPU matmul kernels round differently
    out_ref, g_ref = _step(model, inputs)
    blocks = SPEC.transformer_blocks(model)
    assert len(blocks) == 2  # the tiny model's dual-stream blocks (54 in the released one)
    swapper = BlockSwapper(blocks, [1], "cpu", record=True)
    out, g = _step(model, inputs)
    swapper.after_backward()
    assert torch.equal(out, out_ref) and torch.equal(g, g_ref)
    assert ("activate", 1) in swapper.events and not swapper.on_device(1)
