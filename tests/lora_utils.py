"""Helpers for the export tests: random LoRAs saved through our code, reference outputs via diffusers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from hv_tune.config import LoraConfig
from hv_tune.lora import add_lora, lora_state_dict, peft_config, resolve_targets
from hv_tune.models import LoadOptions


def random_lora(spec, model: Path, out: Path, rank: int, alpha: float, targets="attn", seed: int = 0) -> Path:
    """A diffusers-format LoRA with random A and B (a clearly visible update), saved like training does."""
    transformer = spec.load_transformer(LoadOptions(str(model)))
    cfg = peft_config(LoraConfig(rank=rank, alpha=alpha, targets=targets), resolve_targets(spec, transformer, targets))
    add_lora(transformer, cfg)
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in lora_state_dict(transformer).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        os.replace(spec.save_lora(Path(tmp), state, cfg), out)
    return out


def transformer_inputs(spec, model: Path, seed: int = 5) -> dict:
    enc = spec.text.load(LoadOptions(str(model)))
    text = spec.text.encode(enc, ["a green square moves up on a light background"], 5)
    noisy = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(seed))
    return spec.transformer_inputs(noisy, torch.tensor([0.6]), text, guidance_scale=1.0)


def peft_output(model: Path, loras: list[tuple[Path, float]], inputs: dict) -> torch.Tensor:
    """The transformer's output with the LoRAs active as PEFT adapters, loaded by diffusers."""
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_pretrained(model)
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"lora{i}")
        names.append(f"lora{i}")
    pipe.set_adapters(names, [s for _, s in loras])
    with torch.no_grad():
        return pipe.transformer(**inputs)[0]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|."""
    return ((a - ref).abs().max() / ref.abs().max()).item()


def assert_adapter_file_reproduces_training(spec, model: Path, lora_cfg: LoraConfig, adapter: dict, lora_path: Path,
                                            inputs: dict) -> None:
    """Our trained transformer (base + ``adapter`` injected as training does) and diffusers'
    ``transformer.load_lora_adapter(lora_path)`` with no argument give the same output (1e-5), and the
    LoRA visibly changes it. ``model`` is a diffusers folder whose transformer ``spec`` loads."""
    from hv_tune.lora import load_lora_state_dict

    with torch.no_grad():
        ours = spec.load_transformer(LoadOptions(str(model)))
        cls = type(ours)  # the diffusers class, loaded again below by diffusers alone
        targets = resolve_targets(spec, ours, lora_cfg.targets)
        add_lora(ours, peft_config(lora_cfg, targets, [n for n, _ in ours.named_modules()]))
        load_lora_state_dict(ours, adapter)
        want = ours.eval()(**inputs)[0]
        theirs = cls.from_pretrained(str(model), subfolder=spec.transformer_subfolder)
        base = theirs(**inputs)[0]
        theirs.load_lora_adapter(str(lora_path))
        got = theirs(**inputs)[0]
    assert (want - base).abs().max() > 1e-3  # the LoRA changes the output
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def convert_round_trip(model: Path, lora: Path, tmp_path: Path, layout: str) -> tuple[list[str], Path]:
    """`convert` ``lora`` to ``layout`` and back to diffusers (family from ``model``'s model_index.json):
    the layout file's keys and the path of the file read back."""
    from safetensors.torch import load_file

    from hv_tune.cli import main

    out, back = tmp_path / f"lora_{layout}.safetensors", tmp_path / "back" / "pytorch_lora_weights.safetensors"
    assert main(["convert", str(lora), str(out), "--to", layout, "--model", str(model)]) == 0
    back.parent.mkdir()
    assert main(["convert", str(out), str(back), "--to", "diffusers", "--model", str(model)]) == 0
    return list(load_file(str(out))), back
