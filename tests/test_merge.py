"""Merging LoRAs into the base: equal to PEFT with the adapters active, streamed, in both layouts."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hv_tune.cli import main
from hv_tune.errors import HvTuneError
from hv_tune.export import merge as merge_module
from hv_tune.export.convert import convert_lora
from hv_tune.export.merge import merge_loras

from .lora_utils import peft_output, random_lora, rel_err, transformer_inputs

TOL = 1e-5  # relative: max |merged - peft| / max |peft|


def _merged_output(path, inputs):
    model = HunyuanVideoTransformer3DModel.from_pretrained(path, subfolder="transformer")
    with torch.no_grad():
        return model(**inputs)[0]


def _state(folder):
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(folder / shard)))
    return out


def test_merge_one_lora_alpha_not_rank_equals_peft(spec, tiny_model, tmp_path):
    lora = random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=8, alpha=3.0)
    inputs = transformer_inputs(spec, tiny_model)
    ref = peft_output(tiny_model, [(lora, 1.0)], inputs)
    base = _merged_output(tiny_model, inputs)
    assert rel_err(base, ref) > 1e-2  # the LoRA matters
    res = merge_loras(spec, tiny_model, [(str(lora), 1.0)], tmp_path / "merged")
    assert res.shards == 1 and res.merged_layers == 22
    assert rel_err(_merged_output(tmp_path / "merged", inputs), ref) < TOL


def test_merge_two_stacked_loras_with_scales_equals_peft(spec, tiny_model, tmp_path):
    a = random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=4, alpha=2.0, seed=1)
    b = random_lora(spec, tiny_model, tmp_path / "b.safetensors", rank=8, alpha=16.0, targets="all-linear", seed=2)
    inputs = transformer_inputs(spec, tiny_model)
    ref = peft_output(tiny_model, [(a, 0.8), (b, -0.5)], inputs)
    # the second one as a kohya file: the format is detected and the fused layers split back
    kohya = convert_lora(spec, b, tmp_path / "b_kohya.safetensors", "kohya", spec.linear_shapes(str(tiny_model))).out
    out = tmp_path / "merged"
    code = main(["merge", "--model", str(tiny_model), "--lora", f"{a}:0.8", "--lora", str(kohya), "--scale", "-0.5",
                 "--out", str(out), "--max-shard-size", "100KB"])
    assert code == 0
    assert rel_err(_merged_output(out, inputs), ref) < TOL
    # diffusers layout: shards + index, other components linked, not re-saved
    shards = sorted((out / "transformer").glob("diffusion_pytorch_model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out / "transformer" / "config.json").is_file()
    for part in ("model_index.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json"):
        assert (out / part).stat().st_ino == (tiny_model / part).stat().st_ino, part
    pipe = HunyuanVideoPipeline.from_pretrained(out)
    assert pipe.transformer.dtype == torch.float32


def test_merge_original_format_has_tencent_names_and_same_weights(spec, tiny_model, tmp_path, monkeypatch):
    # every linear layer (embedders, refiner, final layer with its swapped halves), merged in blocks of rows
    lora = random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=4, alpha=1.0, targets=["*"])
    monkeypatch.setattr(merge_module, "BLOCK_ELEMENTS", 200)
    merge_loras(spec, tiny_model, [(str(lora), 0.7)], tmp_path / "d", max_shard_bytes=10**5)
    code = main(["merge", "--model", str(tiny_model), "--lora", f"{lora}:0.7", "--format", "original",
                 "--out", str(tmp_path / "orig.safetensors")])
    assert code == 0
    original, merged = load_file(str(tmp_path / "orig.safetensors")), _state(tmp_path / "d" / "transformer")
    assert "double_blocks.1.img_attn_qkv.weight" in original and "single_blocks.0.linear1.weight" in original
    # independent check: diffusers' converter of Tencent's layout (its single-block path needs width 3072)
    back = convert_hunyuan_video_transformer_to_diffusers({k: v for k, v in original.items() if not k.startswith("single_blocks")})
    for k, v in back.items():  # both layouts merge every row in the same row blocks: the same products
        assert torch.equal(v, merged[k]), k
    # single blocks: linear1 = merged [q; k; v; mlp], deltas included
    for n in range(2):
        parts = [merged[f"single_transformer_blocks.{n}.{m}.weight"] for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
        assert torch.equal(original[f"single_blocks.{n}.linear1.weight"], torch.cat(parts))
        assert torch.equal(original[f"single_blocks.{n}.linear2.weight"], merged[f"single_transformer_blocks.{n}.proj_out.weight"])
    # every tensor is there: 8 per single block in the original layout (linear1/2, modulation: weight+bias; q/k norm)
    assert len(merged) == len(back) + sum(k.startswith("single_transformer_blocks") for k in merged)
    assert sum(k.startswith("single_blocks") for k in original) == 2 * 8


def test_merge_of_comfyui_export_gives_the_same_weights(spec, tiny_model, tmp_path):
    """Single-block fusing, checked numerically: merging the ComfyUI export changes the weights as the original."""
    lora = random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=4, alpha=2.0)
    comfy = convert_lora(spec, lora, tmp_path / "c.safetensors", "comfyui", spec.linear_shapes(str(tiny_model))).out
    merge_loras(spec, tiny_model, [(str(lora), 1.0)], tmp_path / "m1.safetensors", fmt="original")
    merge_loras(spec, tiny_model, [(str(comfy), 1.0)], tmp_path / "m2.safetensors", fmt="original")
    a, b = load_file(str(tmp_path / "m1.safetensors")), load_file(str(tmp_path / "m2.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_merge_dtype_and_refusals(spec, tiny_model, tmp_path):
    lora = random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=4, alpha=4.0)
    merge_loras(spec, tiny_model, [(str(lora), 1.0)], tmp_path / "bf16.safetensors", fmt="original", dtype=torch.bfloat16)
    assert {v.dtype for v in load_file(str(tmp_path / "bf16.safetensors")).values()} == {torch.bfloat16}
    with pytest.raises(HvTuneError, match="already exists"):
        merge_loras(spec, tiny_model, [(str(lora), 1.0)], tmp_path / "bf16.safetensors", fmt="original")
    with pytest.raises(HvTuneError, match="not a diffusers-format model folder"):
        merge_loras(spec, tmp_path, [(str(lora), 1.0)], tmp_path / "x")
    assert main(["merge", "--model", str(tiny_model), "--lora", str(lora), "--format", "original",
                 "--out", str(tmp_path / "x.bin")]) == 2
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-written left behind


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_merge_out_is_never_an_input(spec, tiny_model, tmp_path, capsys):
    """--out inside --model would add a folder to the base model; --out equal to an input is refused by name."""
    lora = random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=2, alpha=2.0)
    before = _listing(tiny_model)
    args = ["merge", "--model", str(tiny_model), "--lora", str(lora)]
    for out, fmt in [(tiny_model / "merged", "diffusers"), (tiny_model / "transformer" / "x", "diffusers"),
                     (tiny_model / "merged.safetensors", "original"), (tiny_model / "transformer" / ".." / "m", "diffusers")]:
        assert main([*args, "--format", fmt, "--out", str(out)]) == 2, out
        assert "is inside the --model folder" in capsys.readouterr().err
    assert _listing(tiny_model) == before
    assert main([*args, "--format", "original", "--out", str(lora)]) == 2
    assert f"is the --lora {lora} file" in capsys.readouterr().err
    orig = tmp_path / "o.safetensors"
    assert main([*args, "--format", "original", "--out", str(orig)]) == 0
    (tmp_path / "same.safetensors").hardlink_to(orig)
    assert main([*args, "--transformer", str(orig), "--format", "original", "--out", str(tmp_path / "same.safetensors")]) == 2
    assert "is the --transformer file" in capsys.readouterr().err


def _record(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["hv_tune.merged_loras"])


def test_merging_a_lora_twice_is_refused_by_content(spec, tiny_model, tmp_path, capsys):
    shapes = spec.linear_shapes(str(tiny_model))
    lora = random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=4, alpha=1.0)  # alpha != rank: folded
    other = random_lora(spec, tiny_model, tmp_path / "b.safetensors", rank=4, alpha=1.0, seed=3)
    copy = tmp_path / "renamed.safetensors"
    copy.write_bytes(lora.read_bytes())
    kohya = convert_lora(spec, lora, tmp_path / "k.safetensors", "kohya", shapes).out
    comfy = convert_lora(spec, lora, tmp_path / "c.safetensors", "comfyui", shapes).out
    half = tmp_path / "bf16.safetensors"
    with safe_open(str(lora), framework="pt") as f:  # alpha is in the metadata: keep it
        meta = f.metadata()
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(lora)).items()}, str(half), meta)
    realpha = tmp_path / "alpha4.safetensors"  # the same tensors with another alpha: another update
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["transformer.lora_alpha"] == 1.0
    save_file(load_file(str(lora)), str(realpha),
              {**meta, "lora_adapter_metadata": json.dumps({**config, "transformer.lora_alpha": 4.0})})
    args = ["merge", "--model", str(tiny_model)]
    # twice in one command, under any name, format or precision
    for again, how in [(lora, "same tensors"), (copy, "same tensors"), (kohya, "same update"), (comfy, "same update"),
                       (half, "same update")]:
        assert main([*args, "--lora", f"{lora}:0.5", "--lora", f"{again}:0.5", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert f"--lora {again} ({how}" in err and f"as --lora {lora}) is given twice" in err, err
        assert "--allow-repeat" in err and not (tmp_path / "x").exists()
    merge_loras(spec, tiny_model, [(str(lora), 1.0), (str(realpha), 1.0)], tmp_path / "alpha")  # not a repeat
    # into a model that already holds it: diffusers folder, then an original file used as --transformer
    m1 = tmp_path / "m1"
    assert main([*args, "--lora", str(lora), "--out", str(m1)]) == 0
    for again in (copy, comfy):
        assert main(["merge", "--model", str(m1), "--lora", str(other), "--lora", str(again), "--out", str(tmp_path / "y")]) == 2
        err = capsys.readouterr().err
        assert f"--lora {again} (" in err and "as a.safetensors) is already merged into the base transformer" in err
        assert f"{m1 / 'transformer'} (scale 1, by the merge that wrote m1)" in err, err
    orig = tmp_path / "m2.safetensors"
    assert main(["merge", "--model", str(m1), "--lora", f"{other}:0.3", "--format", "original", "--out", str(orig)]) == 0
    record = _record(orig)
    assert record["version"] == 1
    assert [(e["file"], e["scale"], e["into"]) for e in record["loras"]] == [
        ("a.safetensors", 1.0, "m1"), ("b.safetensors", 0.3, "m2.safetensors")]
    assert record["loras"][0]["sha256"] != record["loras"][1]["sha256"] and len(record["loras"][0]["sketch"]) == 8
    assert main([*args, "--transformer", str(orig), "--lora", str(kohya), "--out", str(tmp_path / "z")]) == 2
    assert f"is already merged into the base transformer {orig}" in capsys.readouterr().err
    # --allow-repeat merges it anyway, says so, and records it twice: the result is the LoRA at twice the scale
    m3 = tmp_path / "m3"
    assert main(["merge", "--model", str(m1), "--lora", str(copy), "--allow-repeat", "--out", str(m3)]) == 0
    assert "merged again (--allow-repeat)" in capsys.readouterr().out
    assert [e["into"] for e in _record(m3 / "transformer" / "diffusion_pytorch_model.safetensors")["loras"]] == ["m1", "m3"]
    merge_loras(spec, tiny_model, [(str(lora), 2.0)], tmp_path / "twice")
    got, want = _state_of(m3 / "transformer"), _state_of(tmp_path / "twice" / "transformer")
    for k in want:  # W + u + u vs W + 2u: two float32 roundings apart
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)


def _state_of(folder):
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_a_changed_lora_is_not_a_repeat(spec, tiny_model, tmp_path):
    """One value changed: another LoRA (another sha256 and sketch), merged without a word."""
    lora = random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=2, alpha=2.0)
    state = load_file(str(lora))
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key][0, 0] += 0.5
    save_file(state, str(tmp_path / "a2.safetensors"))
    res = merge_loras(spec, tiny_model, [(str(lora), 1.0), (str(tmp_path / "a2.safetensors"), 1.0)], tmp_path / "m")
    assert not [n for n in res.notes if "again" in n]
