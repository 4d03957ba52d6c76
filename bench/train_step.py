"""Training-step benchmarks: framework overhead on CPU, speed and memory of the full-size model on GPU.

    python bench/train_step.py --size small [--steps 24]
    python bench/train_step.py --size full [--presets 24gb,16gb] [--buckets 33x512x512,33x544x960]
    python bench/train_step.py --size full --estimate      # no GPU needed: bytes, FLOPs, predicted peaks
    python bench/train_step.py --size full --model-name hunyuan-video-1.5 [--estimate]

``--size small`` (CPU): the family's small model (``build_tiny(small=True)``) trained from a real cache. Times
our full step (``TrainLoop.optimizer_step``: cache read, latent sample, noise, forward,
backward, clipping, AdamW, schedule, TensorBoard log every step) against a bare
forward + backward + AdamW step of the same model on a prepared batch in a plain loop. The
two alternate step by step (a shared machine's load then hits both alike); prints the
ratio of the median step times.

``--size full`` (CUDA): the family's full-size transformer (``--model-name``; the published checkpoint's
config kept with the family: HunyuanVideo 12.8B, 1.5 8.3B parameters), built through the spec's
``plan_model`` with random weights and the plan's input constants (masks, the I2V/T2V branch), materialised block by block directly on the GPU from the
meta device, a rank-32 LoRA on the attention projections, batch 1, gradient
checkpointing, bf16 autocast, each memory preset through the same ``MemoryRuntime`` the
trainer uses. Each (preset, bucket) runs in a fresh process; reports peak
``max_memory_allocated`` / ``max_memory_reserved`` next to the memory plan's prediction
(``predicted_allocated_gb``, ``prediction_error`` = predicted / measured - 1), s/step and MFU (model FLOPs = 2 x the
forward's FLOPs, counted by ``FlopCounterMode``: forward plus input-gradient backward; the
frozen weights get no weight gradient and the checkpoint recompute is not counted; ``hfu``
counts it). ``--estimate`` prints the weight bytes per preset and the FLOPs per bucket
from the meta-device model, and the memory plan's predicted peak per preset and bucket
(docs/memory.md), without a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hv_tune.config import load_config
from hv_tune.data.demo import write_demo_folder
from hv_tune.data.encode import build_cache
from hv_tune.lora import add_lora, lora_parameters, peft_config, resolve_targets
from hv_tune.memory.known import KnownValues
from hv_tune.memory.runtime import MemoryRuntime
from hv_tune.memory.swap import swap_indices
from hv_tune.models import DEFAULT_MODEL, get_spec

# dense bf16 tensor TFLOPS (NVIDIA datasheets), matched in order against the device name
PEAK_BF16_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("RTX 6000 Ada", 364.2), ("L40", 181.0),
                    ("RTX 4090", 165.2), ("RTX A6000", 154.8), ("RTX 3090", 71.0)]
FULL_BUCKETS = ["33x512x512", "33x544x960"]
TEXT_TOKENS = 256  # v1's text tokens (the checkpoint estimate of --estimate)


def parse_bucket(bucket: str) -> tuple[int, int, int]:
    frames, height, width = (int(x) for x in bucket.split("x"))
    return frames, height, width


# ----------------------------------------------------------------------------- small (CPU)


def small_setup(root: Path, frames: int, size: int, items: int, model_name: str):
    """A small model folder (the family's ``build_tiny(small=True)``), generated clips cached through
    our cache stage, and the config."""
    spec = get_spec(model_name)
    model = spec.build_tiny(root / "model", small=True)
    write_demo_folder(root / "clips", items, frames, size, size)
    cfg = load_config(None, [
        f"model.path={model}", f"model.name={spec.name}", f"data.cache_dir={root / 'cache'}",
        f"output_dir={root / 'run'}", f"data.sources=[{{path: {root / 'clips'}}}]", f"data.frame_buckets=[{frames}]",
        f"data.resolution={size}", "lora.rank=16", "lora.alpha=16", "training.max_steps=100000",
        "training.checkpoint_every=0", "training.batch_size=1", "training.log_every=1", "training.lr_warmup_steps=0",
        "data.caption_dropout=0.1",
    ])
    build_cache(spec, cfg, "cpu")
    return spec, cfg


def our_loop(cfg):
    """The run ``train()`` builds (``build_run``) and its loop, so ``optimizer_step`` is the real one."""
    from hv_tune.data.sampler import DataState
    from hv_tune.training.checkpoint import TrainerState
    from hv_tune.training.setup import build_run
    from hv_tune.training.trainer import TrainLoop

    loop = TrainLoop(build_run(cfg))
    return loop, TrainerState(0, DataState(), cfg.lora.rank, cfg.lora.alpha, cfg.training.seed)


def bare_step_fn(loop):
    """A plain forward + MSE + backward + AdamW step of the same model on one prepared batch."""
    from hv_tune.data.cache import collate

    spec, model = loop.spec, loop.acc.unwrap_model(loop.model)
    batch = collate([loop.dataset[(0, 0)]])
    x0 = batch["latent_mean"] * float(loop.vae_config["scaling_factor"])
    noise, sigma = torch.randn_like(x0), torch.full((1,), 0.5)
    # the whole batch, as the real step hands it to the spec
    inputs = spec.transformer_inputs((1 - sigma) * x0 + sigma * noise, sigma, batch, 1.0, loop.model_dtype)
    target = noise - x0
    params = lora_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        loss = F.mse_loss(model(**inputs)[0].float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_small(args: argparse.Namespace) -> dict:
    frames, size = 9, 128
    with tempfile.TemporaryDirectory() as tmp:
        spec, cfg = small_setup(Path(tmp), frames, size, items=6, model_name=args.model_name)
        loop, state = our_loop(cfg)
        bare = bare_step_fn(loop)

        def ours() -> None:
            loop.optimizer_step(state)
            state.step += 1

        for _ in range(2):  # warm-up: allocator, first-call kernels, TensorBoard writer
            ours()
            bare()
        t_ours, t_bare = [], []
        for _ in range(args.steps):  # interleaved pairs: load from other jobs hits both sides alike
            t_ours.append(timed(ours))
            t_bare.append(timed(bare))
        n_params = sum(p.numel() for p in loop.acc.unwrap_model(loop.model).parameters())
        loop.acc.end_training()
    return {
        "bench": "train_step", "size": "small", "model": spec.name, "params_m": round(n_params / 1e6, 2),
        "bucket": f"{frames}x{size}x{size}", "pairs": args.steps,
        "ours_s_per_step": round(statistics.median(t_ours), 4), "bare_s_per_step": round(statistics.median(t_bare), 4),
        "ratio_of_medians": round(statistics.median(t_ours) / statistics.median(t_bare), 4),
        "median_pair_ratio": round(statistics.median(a / b for a, b in zip(t_ours, t_bare)), 4),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- full (CUDA)


def bench_config(preset: str, model_name: str = DEFAULT_MODEL):
    """The family's published model (``FULL_SIZE`` in its ``plan.py``: the config is a fact, no
    download), a rank-32 LoRA, ``preset``."""
    from hv_tune.training.plan import family_facts

    path = family_facts(get_spec(model_name)).FULL_SIZE[model_name]
    return load_config(None, [f"model.path={path}", f"model.name={model_name}",
                              f"memory.preset={preset}", "lora.rank=32", "lora.alpha=32"], need_weights=False)


def meta_lora_transformer(spec, cfg, bucket: tuple[int, int, int] = (1, 16, 16)):
    """The full-size transformer on the meta device (bf16) through the spec's ``plan_model``, with the
    configured LoRA, and its meta inputs for ``bucket``; ``known`` holds the inputs' constants."""
    known = KnownValues()
    with known:
        model, inputs = spec.plan_model(cfg.model.path, *bucket, 1, torch.bfloat16)
    add_lora(model, peft_config(cfg.lora, resolve_targets(spec, model, cfg.lora.targets),
                                [n for n, _ in model.named_modules()]))
    model.enable_gradient_checkpointing()
    return model.train(), inputs, known


def predicted_rows(spec, presets: list[str], buckets: list[str]):
    """The memory plan's predictions for the full-size model (meta device, no GPU), one dict per pair."""
    from hv_tune.training.plan import GiB, Planner

    cfgs = {p: bench_config(p, spec.name) for p in presets}
    for bucket in buckets:
        planner = Planner(spec, cfgs[presets[0]], parse_bucket(bucket))
        for preset, cfg in cfgs.items():
            r = planner.predict(preset, cfg)
            yield {"model": spec.name, "preset": preset, "bucket": bucket,
                   "predicted_weights_gb": {k: round(v / GiB, 2) for k, v in r.weights.items()},
                   "predicted_cpu_weights_gb": round(r.weights_cpu / GiB, 2), "predicted_lora_gb": round(r.lora / GiB, 2),
                   "predicted_activations_gb": round((r.activations + r.fp8_copies) / GiB, 2),
                   "predicted_offloaded_gb": round(r.offloaded / GiB, 2),
                   "predicted_allocated_gb": round(r.allocated / GiB, 2), "predicted_total_gb": round(r.total / GiB, 2)}


def predicted(spec, preset: str, bucket: str) -> dict:
    row = next(predicted_rows(spec, [preset], [bucket]))
    return {k: row[k] for k in ("predicted_allocated_gb", "predicted_total_gb")}


def materialise(module: torch.nn.Module, device: str) -> None:
    """Allocate a meta module on ``device`` and fill it with random values generated there."""
    module.to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.fill_(1.0)
            else:  # copy_ casts into fp8 storage where layerwise casting made the weight fp8
                p.copy_(torch.randn(p.shape, device=device, dtype=torch.bfloat16) * 0.02)


def build_full(spec, cfg, runtime: MemoryRuntime, bucket: tuple[int, int, int], device: str = "cuda"):
    """Random full-size LoRA transformer fitted by ``runtime`` (never whole on the GPU in bf16), and
    real inputs for ``bucket``: the plan's constants (masks, image condition branch) as they are, the
    rest random."""
    model, meta, known = meta_lora_transformer(spec, cfg, bucket)
    runtime.apply_fp8(spec, model)  # on meta: fp8 weights are then allocated as fp8
    blocks = spec.transformer_blocks(model)
    swapped = set(swap_indices(len(blocks), cfg.memory.blocks_to_swap))
    block_ids = {id(b) for b in blocks}
    for child in model.children():
        if not any(id(m) in block_ids for m in child.children()):
            materialise(child, device)
    for i, block in enumerate(blocks):
        materialise(block, device)
        if i in swapped:
            block.to("cpu")  # the swapper pins it; only one block is on the GPU at a time here
    runtime.place(spec, model)
    g = torch.Generator(device).manual_seed(0)
    inputs = {}
    for k, v in meta.items():
        value = known.value(v) if isinstance(v, torch.Tensor) else None
        if not isinstance(v, torch.Tensor):
            inputs[k] = v
        elif value is not None:  # the plan's constants: masks, the image condition's branch (zeros: T2V)
            inputs[k] = torch.full(v.shape, value, dtype=v.dtype, device=device)
        else:
            inputs[k] = torch.randn(v.shape, generator=g, dtype=v.dtype, device=device)
    out_channels = model.config.out_channels
    target = torch.randn(inputs["hidden_states"].shape[0], out_channels, *inputs["hidden_states"].shape[2:],
                         generator=g, device=device)
    return model, inputs, target


def forward_flops(spec, cfg, frames: int, height: int, width: int) -> float:
    """FLOPs of one forward (matmuls, convolutions, attention), counted on the meta model."""
    from torch.utils.flop_counter import FlopCounterMode

    model, inputs, known = meta_lora_transformer(spec, cfg, (frames, height, width))
    with torch.no_grad(), known, FlopCounterMode(display=False) as counter:
        model(**inputs)
    return float(counter.get_total_flops())


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for key, v in PEAK_BF16_TFLOPS if key in name), None)


def run_one(preset: str, bucket: str, steps: int, peak_override: float | None, model_name: str = DEFAULT_MODEL) -> dict:
    """One (preset, bucket) measurement in this process (the parent starts one per pair)."""
    spec, cfg = get_spec(model_name), bench_config(preset, model_name)
    frames, height, width = parse_bucket(bucket)
    runtime = MemoryRuntime.from_config(cfg, "cuda")
    model, inputs, target = build_full(spec, cfg, runtime, (frames, height, width))
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-4)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 2):  # 2 warm-up steps
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16), runtime.forward_context():
            pred = model(**inputs)[0]
        F.mse_loss(pred.float(), target).backward()
        runtime.after_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    s_step = statistics.median(times[2:])
    measured = torch.cuda.max_memory_allocated() / 1024**3
    plan = predicted(spec, preset, bucket)
    fwd = forward_flops(spec, cfg, frames, height, width)
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name, peak_override)
    return {
        "bench": "train_step", "size": "full", "model": spec.name, "preset": preset, "bucket": bucket, "gpu": name,
        "max_allocated_gb": round(measured, 2), **plan,
        "prediction_error": round(plan["predicted_allocated_gb"] / measured - 1, 3),
        "max_reserved_gb": round(torch.cuda.max_memory_reserved() / 1024**3, 2),
        "s_per_step": round(s_step, 3), "forward_tflop": round(fwd / 1e12, 1),
        "mfu": round(2 * fwd / s_step / (peak * 1e12), 3) if peak else None,
        "hfu": round(3 * fwd / s_step / (peak * 1e12), 3) if peak else None,
        "peak_bf16_tflops": peak, "memory": runtime.summary(), "steps": steps,
        "date": time.strftime("%Y-%m-%d"),
    }


def run_full(args: argparse.Namespace) -> list[dict]:
    """One child process per (preset, bucket): clean allocator state, and an OOM is one row."""
    rows = []
    for preset in args.presets.split(","):
        for bucket in args.buckets.split(","):
            cmd = [sys.executable, __file__, "--size", "full", "--one", preset, bucket, "--steps", str(args.steps),
                   "--model-name", args.model_name]
            if args.peak_tflops:
                cmd += ["--peak-tflops", str(args.peak_tflops)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "preset": preset, "bucket": bucket, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def weights_row(spec, cfg, runtime: MemoryRuntime, model: torch.nn.Module) -> tuple[list, dict]:
    """Apply fp8 storage to a meta model with LoRA; its blocks and the weight bytes on GPU / in CPU
    RAM (swapped blocks' frozen weights), LoRA size and AdamW state (16 B per parameter)."""
    runtime.apply_fp8(spec, model)
    blocks = spec.transformer_blocks(model)
    off = {id(p) for i in swap_indices(len(blocks), cfg.memory.blocks_to_swap)
           for p in blocks[i].parameters() if not p.requires_grad}
    size = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    lora = sum(p.numel() for p in lora_parameters(model))
    return blocks, {
        "base_dtype": cfg.model.base_dtype, "blocks_to_swap": cfg.memory.blocks_to_swap,
        "checkpointing": cfg.memory.checkpointing,
        "gpu_weights_gb": round(sum(v for k, v in size.items() if k not in off) / 1024**3, 2),
        "cpu_weights_gb": round(sum(size[k] for k in off) / 1024**3, 2),
        "lora_params_m": round(lora / 1e6, 1), "lora_adam_gb": round(lora * 16 / 1024**3, 2)}


def estimate(args: argparse.Namespace) -> list[dict]:
    """Weight bytes per preset and FLOPs per bucket from the meta-device model of ``--model-name``
    (no GPU), then the memory plan's predicted peaks per preset and bucket."""
    spec, rows = get_spec(args.model_name), []
    for preset in args.presets.split(","):
        cfg = bench_config(preset, spec.name)
        runtime = MemoryRuntime(cfg.memory, cfg.model.base_dtype, torch.device("cuda"))
        model, _, _ = meta_lora_transformer(spec, cfg)
        blocks, weights = weights_row(spec, cfg, runtime, model)
        row = {"model": spec.name, "preset": preset, **weights}
        hidden = min(p.shape[-1] for p in blocks[0].parameters() if p.ndim == 2 and not p.requires_grad)  # the width
        for bucket in args.buckets.split(","):
            f, h, w = parse_bucket(bucket)
            tokens = sequence_tokens(spec, cfg, (f, h, w))
            ckpt = len(blocks) * tokens * hidden * 2  # bf16 block inputs kept for the recompute
            row[bucket] = {"tokens": tokens, "checkpoints_gb": round(ckpt / 1024**3, 2),
                           "forward_tflop": round(forward_flops(spec, cfg, f, h, w) / 1e12, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    for row in predicted_rows(spec, args.presets.split(","), args.buckets.split(",")):
        print(json.dumps(row), flush=True)
    return rows


def sequence_tokens(spec, cfg, bucket: tuple[int, int, int]) -> int:
    """Video tokens (latent frames x patches) plus the condition tokens of the meta inputs (text, image)."""
    f, h, w = bucket
    video = ((f - 1) // spec.video.frame_step + 1) * (h // spec.video.pixel_multiple) * (w // spec.video.pixel_multiple)
    _, inputs, _ = meta_lora_transformer(spec, cfg, (1, 16, 16))
    cond = sum(v.shape[1] for k, v in inputs.items()
               if isinstance(v, torch.Tensor) and v.ndim == 3 and v is not inputs["hidden_states"])
    return video + cond


HV15_BUCKETS = "33x480x848,61x480x848,121x480x848"  # 480p (16:9, sides multiples of 16)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["small", "full"], required=True)
    p.add_argument("--steps", type=int, default=None, help="timed steps (small: ours/bare pairs, 24; full: 5)")
    p.add_argument("--presets", default=",".join(get_spec(DEFAULT_MODEL).memory_presets), help="full: comma-separated presets")
    p.add_argument("--buckets", default=",".join(FULL_BUCKETS), help="full: FRAMESxHEIGHTxWIDTH, comma-separated")
    p.add_argument("--peak-tflops", type=float, default=None, help="full: the GPU's dense bf16 peak, for MFU")
    p.add_argument("--estimate", action="store_true", help="full: bytes and FLOPs from the meta model, no GPU")
    p.add_argument("--model-name", default=DEFAULT_MODEL,
                   help="the family: small builds its small model; full builds its published model (config from "
                        "the family's facts) with its presets (other than the default family: 480p buckets)")
    p.add_argument("--one", nargs=2, metavar=("PRESET", "BUCKET"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.size == "small":
        args.steps = args.steps or 24
        print(json.dumps(run_small(args)), flush=True)
        return 0
    if args.model_name != DEFAULT_MODEL:
        if args.presets == ",".join(get_spec(DEFAULT_MODEL).memory_presets):
            args.presets = ",".join(get_spec(args.model_name).memory_presets)
        if args.buckets == ",".join(FULL_BUCKETS):
            args.buckets = HV15_BUCKETS
    if args.estimate:
        estimate(args)
        return 0
    if not torch.cuda.is_available():
        print("bench/train_step.py --size full needs a CUDA GPU (none is visible here); "
              "use --size small on CPU, or --size full --estimate for bytes and FLOPs", file=sys.stderr)
        return 2
    args.steps = args.steps or 5
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.steps, args.peak_tflops, args.model_name)), flush=True)
    else:
        run_full(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
