"""Peak memory of `finetune.py merge` against the size of the transformer it merges into.

Builds the default family's transformer at the released width with one block of each kind
(``spec.build_full_width``; HunyuanVideo: 3072, about 1.4 GB in bf16) with random weights, saved as
diffusers shards, plus a random rank-32 LoRA on every `all-linear` layer. Then runs the merge verb in a
fresh process per output format; that process reports its own peak RSS (``VmHWM`` of
/proc/self/status, Linux: unlike ``ru_maxrss`` it does not inherit the parent's peak
across fork+exec). The import baseline (a process that only imports what merge
imports) is reported too.

With ``--check`` (default), the original-format output is loaded through the family's independent
converter (``spec.reference_transformer``: diffusers' ``from_single_file``, which needs the real width)
and compared tensor by tensor with the diffusers-format output.

    python bench/merge.py --work runs/bench-merge            # JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.3


def build_model(folder: Path, shard_size: str) -> tuple[int, dict]:
    """Random-weight transformer (bf16 shards) + model_index.json, built by the default family's spec;
    returns the weights' bytes and what was built."""
    from hv_tune.models import DEFAULT_MODEL, get_spec

    model = get_spec(DEFAULT_MODEL).build_full_width(folder, "transformer", shard_size)
    config = {k: model.config[k] for k in ("num_attention_heads", "attention_head_dim") if k in model.config}
    config |= {"blocks": "one of each kind", "dtype": "bf16", "family": DEFAULT_MODEL}
    return sum(p.numel() * p.element_size() for p in model.parameters()), config


def build_lora(model: Path, out: Path, rank: int) -> int:
    """A random diffusers-format LoRA on every `all-linear` layer, written by our writer."""
    import torch

    from hv_tune.export.lora_io import write_lora
    from hv_tune.export.lora_math import LoraModule
    from hv_tune.lora import match_modules
    from hv_tune.models import DEFAULT_MODEL, get_spec

    spec = get_spec(DEFAULT_MODEL)
    shapes = spec.linear_shapes(str(model))
    gen = torch.Generator().manual_seed(1)
    modules = {}
    for name in match_modules(list(shapes), list(spec.lora_presets["all-linear"])):
        out_f, in_f = shapes[name]
        modules[name] = LoraModule(torch.randn(rank, in_f, generator=gen) * 0.01,
                                   torch.randn(out_f, rank, generator=gen) * 0.01, float(rank) / 2)
    write_lora(spec, modules, out, "diffusers", shapes)
    return len(modules)


def vm_hwm() -> int:
    """This process's peak resident set size in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measured(argv: list[str]) -> None:
    """Child mode: run ``finetune.py`` with ``argv`` (or only import what merge imports), print the peak RSS."""
    from hv_tune.cli import main as cli_main

    if not argv:
        import hv_tune.export.merge  # noqa: F401  (torch, safetensors, tqdm: the import baseline)
        import hv_tune.models  # noqa: F401
    elif cli_main(argv) != 0:
        raise SystemExit(1)
    print(f"VmHWM {vm_hwm()}")


def peak_rss(argv: list[str]) -> tuple[int, float]:
    """Peak resident set size (bytes) and wall time of a fresh process running ``finetune.py argv``."""
    start = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", *argv]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    hwm = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("VmHWM "))
    return hwm, time.time() - start


def check_original(model: Path, merged_dir: Path, original: Path) -> dict:
    """Load the original-format file with the family's independent converter; compare with our diffusers output."""
    import torch
    from safetensors import safe_open

    from hv_tune.models import DEFAULT_MODEL, get_spec

    reference = get_spec(DEFAULT_MODEL).reference_transformer(str(original), str(model), torch.bfloat16)
    if reference is None:
        return {"skipped": f"{DEFAULT_MODEL} has no independent converter of its original layout"}
    loaded = reference.state_dict()
    index = json.loads((merged_dir / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    mismatched = []
    for name, shard in index["weight_map"].items():
        with safe_open(str(merged_dir / "transformer" / shard), "pt") as f:
            if not torch.equal(f.get_tensor(name), loaded[name]):
                mismatched.append(name)
    return {"tensors_compared": len(index["weight_map"]), "mismatched": mismatched}


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        return measured(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench-merge", help="scratch folder (rebuilt)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--shard-size", default="500MB", help="shards of the base and the merged output")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the independent converter's check")
    args = p.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    model, lora = args.work / "model", args.work / "lora.safetensors"
    size, config = build_model(model, args.shard_size)
    layers = build_lora(model, lora, args.rank)
    baseline, _ = peak_rss([])
    runs = []
    for fmt, out in (("diffusers", args.work / "merged"), ("original", args.work / "merged.safetensors")):
        rss, wall = peak_rss(["merge", "--model", str(model), "--lora", str(lora), "--format", fmt,
                              "--out", str(out), "--max-shard-size", args.shard_size])
        runs.append({"format": fmt, "peak_rss_bytes": rss, "ratio_to_transformer": round(rss / size, 3),
                     "ratio_above_import_baseline": round((rss - baseline) / size, 3), "wall_s": round(wall, 1)})
    result = {
        "transformer_bytes": size,
        "transformer_config": config,
        "lora": {"rank": args.rank, "layers": layers, "preset": "all-linear"},
        "import_baseline_rss_bytes": baseline,
        "runs": runs,
        "target_ratio": TARGET_RATIO,
        "pass": all(r["ratio_to_transformer"] < TARGET_RATIO for r in runs),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}",
    }
    if args.check:
        result["original_format_check"] = check_original(model, args.work / "merged", args.work / "merged.safetensors")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
