"""Memory features on CPU: fp8 storage, block swap schedule, activation offload, compile, SDPA."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hv_tune.config import MemoryConfig, load_config
from hv_tune.errors import ConfigError
from hv_tune.lora import add_lora, lora_parameters, peft_config, resolve_targets
from hv_tune.memory.fp8 import FP8, apply_fp8_storage, storage_bytes
from hv_tune.memory.runtime import MemoryRuntime, compile_blocks
from hv_tune.memory.swap import BlockSwapper
from hv_tune.models import LoadOptions

from .conftest import train_overrides

# MKL picks kernels by memory alignment, so the same weights at another address can round
# differently (4e-7 measured on the tiny model). Tests named *bitwise* compare swapped and
# offloaded runs bit for bit, so they run in a child process started with MKL_CBWR=AUTO,STRICT
# (read when MKL loads). Setting it for the whole suite would shift every other test's numerics.
STRICT_MKL = os.environ.get("MKL_CBWR") == "AUTO,STRICT"
bitwise = pytest.mark.skipif(not STRICT_MKL, reason="runs in the MKL_CBWR=AUTO,STRICT child process")


def test_bitwise_checks_in_a_strict_mkl_process():
    if STRICT_MKL:
        pytest.skip("this is the child process")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "bitwise"],
        env={**os.environ, "MKL_CBWR": "AUTO,STRICT"}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout, proc.stdout[-2000:]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def lora_model(spec, tiny_model, dtype=torch.float32, dropout=0.0, checkpointing=True):
    """Tiny transformer with a rank-4 LoRA whose B is non-zero (so it changes the output)."""
    torch.manual_seed(0)
    model = spec.load_transformer(LoadOptions(str(tiny_model), dtype=dtype))
    cfg = load_config(None, [f"model.path={tiny_model}", "lora.rank=4", "lora.alpha=2", f"lora.dropout={dropout}"])
    add_lora(model, peft_config(cfg.lora, resolve_targets(spec, model, "attn")))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model.train()


def inputs(dtype=torch.float32, batch=1):
    g = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(batch, 4, 3, 8, 8, generator=g).to(dtype),  # [B, C, F, H, W] latents
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, 7, 16, generator=g).to(dtype),
        "encoder_attention_mask": torch.ones(batch, 7, dtype=dtype),
        "pooled_projections": torch.randn(batch, 8, generator=g).to(dtype),
        "guidance": torch.full((batch,), 1000.0, dtype=dtype),
        "return_dict": False,
    }


def step(model, dtype=torch.float32, context=None):
    """Output and LoRA gradients of one forward + backward (seeded: LoRA dropout is random)."""
    for p in lora_parameters(model):
        p.grad = None
    torch.manual_seed(5)
    with context or torch.enable_grad():
        out = model(**inputs(dtype))[0]
    out.float().pow(2).mean().backward()
    return out.detach().float(), [p.grad.clone() for p in lora_parameters(model)]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ----------------------------------------------------------------------------- fp8


def test_fp8_storage_is_within_stated_tolerance_of_bf16(spec, tiny_model):
    bf16 = lora_model(spec, tiny_model, torch.bfloat16)
    fp8 = copy.deepcopy(bf16)
    cast = apply_fp8_storage(fp8, spec.fp8_keep_patterns("transformer", fp8), torch.bfloat16)
    # what is fp8: the frozen projections in the blocks; norms, modulation, embedders, refiner, LoRA are not
    assert len(cast) == 34 and all(n.startswith(("transformer_blocks.", "single_transformer_blocks.")) for n in cast)
    assert not any("norm" in n or "lora_" in n for n in cast)
    dtypes = {n: p.dtype for n, p in fp8.named_parameters()}
    assert dtypes["transformer_blocks.0.attn.to_q.base_layer.weight"] == FP8
    assert dtypes["transformer_blocks.0.norm1.linear.weight"] == torch.bfloat16
    assert dtypes["time_text_embed.timestep_embedder.linear_1.weight"] == torch.bfloat16
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert storage_bytes(fp8) < 0.85 * storage_bytes(bf16)

    out_ref, grads_ref = step(bf16, torch.bfloat16)
    out, grads = step(fp8, torch.bfloat16)
    assert {p.dtype for p in fp8.parameters() if not p.requires_grad} == {FP8, torch.bfloat16}  # cast back after use
    g, g_ref = torch.cat([x.flatten() for x in grads]), torch.cat([x.flatten() for x in grads_ref])
    # Measured on the tiny model (random weights, e4m3 keeps 3 mantissa bits): output 0.52 % relative
    # L2 error, LoRA gradients 3.6 % relative, cosine 0.9994. Tolerances leave ~3x room.
    assert rel(out, out_ref) < 0.015
    assert rel(g, g_ref) < 0.10
    assert torch.nn.functional.cosine_similarity(g, g_ref, dim=0) > 0.995


def test_fp8_text_encoder_embeddings_close(spec, tiny_model):
    enc = spec.text.load(LoadOptions(str(tiny_model)))
    ref = spec.text.encode(enc, ["a red ball bounces"], 33)
    llm = enc["text_encoder"].model.requires_grad_(False)
    cast = apply_fp8_storage(llm, spec.fp8_keep_patterns("text_encoder", llm), torch.float32)
    assert cast and not any("embed_tokens" in n or "norm" in n for n in cast)
    out = spec.text.encode(enc, ["a red ball bounces"], 33)
    # measured: 2.2 % relative L2 error on the tiny Llama; CLIP is untouched
    assert rel(out["prompt_embeds"], ref["prompt_embeds"]) < 0.06
    assert torch.equal(out["pooled_prompt_embeds"], ref["pooled_prompt_embeds"])


# ----------------------------------------------------------------------------- block swap


@bitwise
def test_bitwise_block_swap_schedule_placement_and_gradients(spec, tiny_model):
    model = lora_model(spec, tiny_model, dropout=0.1)  # dropout: the recompute must replay the same masks
    out_ref, grads_ref = step(model)
    blocks = spec.transformer_blocks(model)  # 2 double + 2 single
    swapper = BlockSwapper(blocks, [2, 3], "cpu", record=True)
    assert not swapper.on_device(2) and not swapper.on_device(3)

    seen = []

    def check(i):
        def hook(module, args):  # registered after the swapper's: runs once it has acted
            seen.append((i, torch.is_grad_enabled(), swapper.on_device(i) if i in (2, 3) else None))
            if i in (2, 3):
                assert swapper.on_device(i), f"block {i} runs without its weights on the device"
        return hook

    for i, b in enumerate(blocks):
        b.register_forward_pre_hook(check(i))
    in_backward = []
    for i in (2, 3):  # a LoRA gradient of block i is computed while block i is on the device
        for p in lora_parameters(blocks[i]):
            p.register_hook(lambda g, i=i: in_backward.append((i, swapper.on_device(i))) or g)

    out, grads = step(model)
    assert torch.equal(out, out_ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref))
    assert swapper.events == [
        ("prefetch", 2), ("activate", 2), ("prefetch", 3),  # forward: 2 was fetched while 0 and 1 ran
        ("release", 2), ("activate", 3),  # 3 stays: backward needs it first
        ("prefetch", 2), ("release", 3), ("activate", 2), ("release", 2),  # backward, 3 then 2
    ]
    assert not any(e == "load" for e, _ in swapper.events)  # every copy was a prefetch
    assert [i for i, _, _ in seen] == [0, 1, 2, 3, 3, 2, 1, 0]  # backward: the checkpoint recomputes each block
    assert in_backward and all(ok for _, ok in in_backward)
    assert not swapper.on_device(2) and not swapper.on_device(3)
    swapper.after_backward()  # nothing left to free here; idempotent
    assert swapper.events[-1] == ("release", 2)


@bitwise
def test_bitwise_block_swap_first_blocks_and_no_grad(spec, tiny_model):
    """Swapping block 0 (inputs need no gradient: freed by after_backward) and a no-grad forward."""
    model = lora_model(spec, tiny_model)
    out_ref, grads_ref = step(model)
    with torch.no_grad():
        plain = model(**inputs())[0]
    blocks = spec.transformer_blocks(model)
    swapper = BlockSwapper(blocks, [0, 1, 2, 3], "cpu", record=True)
    out, grads = step(model)
    assert torch.equal(out, out_ref) and all(torch.equal(a, b) for a, b in zip(grads, grads_ref))
    assert swapper.on_device(0) and not any(swapper.on_device(i) for i in (1, 2, 3))
    swapper.after_backward()
    assert not swapper.on_device(0)
    swapper.events.clear()
    with torch.no_grad():
        assert torch.equal(model(**inputs())[0], plain)
    assert swapper.events == [
        ("load", 0), ("activate", 0),  # nothing runs before the first block: a synchronous copy
        ("prefetch", 1), ("release", 0), ("activate", 1), ("prefetch", 2), ("release", 1),
        ("activate", 2), ("prefetch", 3), ("release", 2), ("activate", 3), ("release", 3),
    ]
    swapper.remove()
    assert torch.equal(step(model)[0], out_ref)


@bitwise
def test_bitwise_block_swap_with_fp8_matches_fp8(spec, tiny_model):
    model = lora_model(spec, tiny_model, torch.bfloat16)
    apply_fp8_storage(model, spec.fp8_keep_patterns("transformer", model), torch.bfloat16)
    out_ref, grads_ref = step(model, torch.bfloat16)
    swapper = BlockSwapper(spec.transformer_blocks(model), [1, 2, 3], "cpu")
    assert {m.dtype for i in (1, 2, 3) for m in swapper._masters[i]} == {FP8, torch.bfloat16}  # stored as fp8
    out, grads = step(model, torch.bfloat16)
    assert torch.equal(out, out_ref) and all(torch.equal(a, b) for a, b in zip(grads, grads_ref))


# ----------------------------------------------------------------------------- activation offload


@bitwise
def test_bitwise_activation_offload_gradients_and_block_inputs_offloaded(spec, tiny_model):
    model = lora_model(spec, tiny_model, dropout=0.1)
    out_ref, grads_ref = step(model)
    runtime = MemoryRuntime(MemoryConfig(checkpointing="offload"), "auto", torch.device("cpu"))
    with runtime.forward_context() as hooks:
        torch.manual_seed(5)
        out = model(**inputs())[0]
    for p in lora_parameters(model):
        p.grad = None
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in lora_parameters(model)]
    assert torch.equal(out.detach(), out_ref) and all(torch.equal(a, b) for a, b in zip(grads, grads_ref))
    # torch.utils.checkpoint saves each block's inputs through the saved-tensor hooks: the latent stream
    # [1, 3*4*4 tokens, 64] of all 4 blocks was offloaded, not only what the layers outside blocks saved
    assert hooks.packed_shapes.count((1, 48, 64)) >= 4


# ----------------------------------------------------------------------------- config and runtime


@pytest.mark.parametrize("overrides, key", [
    (["memory.blocks_to_swap=2", "training.gradient_checkpointing=false"], "memory.blocks_to_swap"),
    (["memory.checkpointing=offload", "training.gradient_checkpointing=false"], "memory.checkpointing"),
    (["memory.compile=true", "memory.blocks_to_swap=2"], "memory.compile"),
    (["memory.compile=true", "model.base_dtype=fp8"], "memory.compile"),
    (["memory.blocks_to_swap=-1"], "memory.blocks_to_swap"),
    (["memory.preset=12gb"], "memory.preset"),
])
def test_unsupported_memory_combinations_fail_at_load(tiny_model, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"model.path={tiny_model}", *overrides])


def test_swap_needs_cuda_one_process_and_enough_blocks(spec, tiny_model):
    cfg = load_config(None, [f"model.path={tiny_model}", "memory.blocks_to_swap=2"])
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        MemoryRuntime.from_config(cfg, "cpu")
    with pytest.raises(ConfigError, match="several processes"):
        MemoryRuntime.from_config(cfg, "cuda", num_processes=2)
    runtime = MemoryRuntime(MemoryConfig(blocks_to_swap=5), "auto", torch.device("cpu"))  # the test path
    with pytest.raises(ConfigError, match="has 4 blocks"):
        runtime.prepare(spec, lora_model(spec, tiny_model))


def test_presets_fill_only_unset_keys(tiny_model):
    base = [f"model.path={tiny_model}"]
    cfg = load_config(None, [*base, "memory.preset=16gb"])
    assert (cfg.model.base_dtype, cfg.memory.blocks_to_swap, cfg.memory.checkpointing) == ("fp8", 36, "offload")
    cfg = load_config(None, [*base, "memory.preset=24gb", "model.base_dtype=bf16", "memory.checkpointing=full"])
    assert (cfg.model.base_dtype, cfg.memory.blocks_to_swap, cfg.memory.checkpointing) == ("bf16", 0, "full")
    cfg = load_config(None, [*base, "memory.preset=80gb"])
    assert (cfg.model.base_dtype, cfg.memory.checkpointing) == ("bf16", "full")
    assert load_config(None, base).memory == MemoryConfig()
    shipped = load_config(Path(__file__).resolve().parent.parent / "configs" / "hunyuan_video_lora.yaml", base)
    assert (shipped.model.base_dtype, shipped.memory.blocks_to_swap, shipped.memory.checkpointing) == (
        "fp8", 0, "offload")  # memory.preset: 24gb


def test_runtime_prepare_fp8_and_summary(spec, tiny_model):
    cfg = load_config(None, [f"model.path={tiny_model}", "model.base_dtype=fp8", "memory.checkpointing=offload"])
    runtime = MemoryRuntime.from_config(cfg, "cpu")
    model = runtime.prepare(spec, lora_model(spec, tiny_model, torch.bfloat16))
    assert model.transformer_blocks[0].attn.to_q.base_layer.weight.dtype == FP8
    assert "fp8 storage: 34 linear layers" in runtime.summary() and "activation offload" in runtime.summary()


# ----------------------------------------------------------------------------- attention and compile


def test_attention_goes_through_torch_sdpa(spec, tiny_model):
    """diffusers' HunyuanVideo processor dispatches to F.scaled_dot_product_attention (native backend)."""
    model = lora_model(spec, tiny_model, checkpointing=False)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(**inputs())
    calls = sum(e.count for e in prof.key_averages() if e.key == "aten::scaled_dot_product_attention")
    assert calls == 5  # 2 double + 2 single blocks + 1 token-refiner block


def test_compiled_blocks_give_the_same_gradients(spec, tiny_model):
    model = lora_model(spec, tiny_model)
    out_ref, grads_ref = step(model)
    names = [n for n, _ in model.named_parameters()]
    torch._dynamo.reset()
    compile_blocks(spec.transformer_blocks(model), backend="aot_eager")  # graph capture + autograd, no C++ build
    out, grads = step(model)
    assert [n for n, _ in model.named_parameters()] == names  # LoRA keys unchanged by compile
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- through the trainer


def test_train_with_fp8_and_activation_offload(tiny_model, demo_cache, tmp_path):
    from hv_tune.training.trainer import train

    cfg = load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "run", **{
        "model.base_dtype": "fp8", "memory.checkpointing": "offload", "training.max_steps": 3}))
    result = train(cfg)
    assert result.lora_path.is_file() and result.steps == 3
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in result.adapter.values())


def test_train_with_block_swap_on_cpu_is_a_config_error(tiny_model, demo_cache, tmp_path):
    from hv_tune.training.trainer import train

    cfg = load_config(None, train_overrides(tiny_model, demo_cache, tmp_path / "run", **{"memory.preset": "16gb"}))
    with pytest.raises(ConfigError, match="memory.blocks_to_swap"):
        train(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()  # failed before anything ran


@pytest.mark.parametrize("name", ["hunyuan-video", "hunyuan-video-1.5-i2v"])
def test_gpu_benchmark_builder_runs_on_cpu(tiny_model, hv15_i2v_tiny, name):
    """bench/train_step.py --size full builds through the spec from meta, block by block, with the
    plan's input constants; run its builder on CPU for v1 and 1.5 (image-to-video)."""
    import importlib.util

    from hv_tune.models import get_spec

    path = Path(__file__).resolve().parent.parent / "bench" / "train_step.py"
    mod_spec = importlib.util.spec_from_file_location("bench_train_step", path)
    bench = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(bench)
    spec, folder = get_spec(name), tiny_model if name == "hunyuan-video" else hv15_i2v_tiny
    cfg = load_config(None, [f"model.path={folder}", f"model.name={name}", "model.base_dtype=fp8",
                             "memory.blocks_to_swap=1"])
    runtime = MemoryRuntime(MemoryConfig(blocks_to_swap=1), "fp8", torch.device("cpu"))  # the CPU test path
    model, batch, target = bench.build_full(spec, cfg, runtime, (5, 32, 32), "cpu")
    blocks = spec.transformer_blocks(model)
    assert runtime.swapper is not None and runtime.swapper.swapped == [len(blocks) - 1]
    assert blocks[0].attn.to_q.base_layer.weight.dtype == FP8
    assert all(p.device.type == "cpu" and not p.is_meta for p in model.parameters())
    if "image_embeds" in batch:  # image-to-video: a non-zero image condition (its branch), masks all ones
        assert bool((batch["image_embeds"] != 0).all()) and bool((batch["encoder_attention_mask"] == 1).all())
    out = model(**batch)[0]
    assert out.shape == target.shape
    out.float().pow(2).mean().backward()
    runtime.after_backward()
    # 1.5: the last block's text-stream output is unused, so its to_add_out LoRA gets no gradient
    grads = [p.grad for p in lora_parameters(model) if p.grad is not None]
    assert len(grads) >= len(lora_parameters(model)) - 2 and all(torch.isfinite(g).all() for g in grads)
