"""LoRA formats: fusing math, conversions both ways, diffusers' loader as the independent check."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import HunyuanVideoPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hv_tune.cli import main
from hv_tune.errors import HvTuneError
from hv_tune.export.convert import check_same_updates, convert_lora
from hv_tune.export.lora_io import read_lora, write_lora
from hv_tune.export.lora_math import LoraModule, delta_weight, fold_scale, fuse, unfuse
from hv_tune.models import LoadOptions

from .lora_utils import peft_output, random_lora, rel_err, transformer_inputs


def _mod(gen, r, n_in, n_out, alpha):
    return LoraModule(torch.randn(r, n_in, generator=gen), torch.randn(n_out, r, generator=gen), alpha)


@pytest.fixture(scope="module")
def tiny_shapes(spec, tiny_model):
    return spec.linear_shapes(str(tiny_model))


# ----------------------------------------------------------------------------- pure math


def test_fuse_block_diagonal_keeps_every_update_and_unfuses_exactly():
    gen = torch.Generator().manual_seed(0)
    q, k = _mod(gen, 4, 6, 5, 2.0), _mod(gen, 4, 6, 5, 2.0)
    fused, ranks = fuse([q, k, None, None], [5, 5, 5, 7])  # like a single block's linear1 without mlp
    assert ranks == [4, 4, 0, 0] and fused.rank == 8 and fused.up.shape == (22, 8)
    assert fused.scale == q.scale  # alpha 4.0 at rank 8 == alpha 2.0 at rank 4
    d = delta_weight(fused)  # [22, 6]
    torch.testing.assert_close(d[:5], delta_weight(q), rtol=0, atol=1e-6)
    torch.testing.assert_close(d[5:10], delta_weight(k), rtol=0, atol=1e-6)
    assert not d[10:].any()
    back = unfuse(fused, [5, 5, 5, 7], ranks)
    assert back[2] is None and back[3] is None
    for orig, got in zip([q, k], back):
        assert torch.equal(orig.down, got.down) and torch.equal(orig.up, got.up) and orig.alpha == got.alpha


def test_fuse_with_different_scales_folds_them():
    gen = torch.Generator().manual_seed(1)
    a, b = _mod(gen, 2, 3, 4, 1.0), _mod(gen, 3, 3, 4, 9.0)
    fused, _ = fuse([a, b], [4, 4])
    assert fused.alpha == fused.rank  # scale 1, per-part scales folded into up
    d = delta_weight(fused)
    torch.testing.assert_close(d, torch.cat([delta_weight(a), delta_weight(b)]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(delta_weight(fold_scale(a)), delta_weight(a), rtol=1e-6, atol=1e-6)


def test_shared_down_fuses_to_itself_and_zero_rows_are_padding():
    gen = torch.Generator().manual_seed(2)
    fused = _mod(gen, 4, 6, 15, 3.0)
    fused.up[10:] = 0  # third part has no update
    parts = unfuse(fused, [5, 5, 5])  # no layout record: shared down, as diffusers reads it
    assert parts[2] is None and all(p.down is fused.down for p in parts[:2])
    again, ranks = fuse(parts, [5, 5, 5])
    assert ranks is None and torch.equal(again.up, fused.up) and torch.equal(again.down, fused.down)
    with pytest.raises(ValueError, match="rows"):
        unfuse(fused, [5, 5])


def test_rank_check_catches_a_changed_update():
    gen = torch.Generator().manual_seed(5)
    a = {"x": _mod(gen, 2, 4, 3, 2.0)}
    same = {"x": LoraModule(a["x"].down, a["x"].up * 2, 1.0)}  # scale halved, up doubled: same update
    assert "rank 2 -> 2" in check_same_updates(a, same, {"x": (3, 4)})[0]
    with pytest.raises(HvTuneError, match="check failed: x"):
        check_same_updates(a, {"x": LoraModule(a["x"].down, a["x"].up, 2.1)}, {"x": (3, 4)})


# ----------------------------------------------------------------------------- formats


def test_comfyui_export_loads_in_diffusers_and_reproduces_outputs(spec, tiny_model, tiny_shapes, tmp_path):
    """Independent check: diffusers' converter of the original format reads our export.

    Its single-block path assumes width 3072, so this LoRA is on double blocks only.
    """
    targets = ["transformer_blocks.*.attn.*", "transformer_blocks.*.ff.net.*", "transformer_blocks.*.norm1_context.linear"]
    lora = random_lora(spec, tiny_model, tmp_path / "d.safetensors", rank=4, alpha=2.0, targets=targets)
    comfy = convert_lora(spec, lora, tmp_path / "c.safetensors", "comfyui", tiny_shapes).out
    keys = set(load_file(str(comfy)))
    assert "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight" in keys
    assert "diffusion_model.double_blocks.1.txt_mod.linear.lora_B.weight" in keys
    assert not any(k.endswith(".alpha") for k in keys)  # alpha is folded into B
    inputs = transformer_inputs(spec, tiny_model)
    ours = peft_output(tiny_model, [(lora, 1.0)], inputs)
    pipe = HunyuanVideoPipeline.from_pretrained(tiny_model)
    pipe.load_lora_weights(str(comfy))
    with torch.no_grad():
        theirs = pipe.transformer(**inputs)[0]
    assert rel_err(theirs, ours) < 1e-5


def test_single_block_fusing_matches_diffusers_converter_at_full_width(spec, tmp_path):
    """The 3072-wide single-block path of diffusers' converter, on LoRA tensors alone (no model)."""
    shapes = spec.linear_shapes(None)
    gen = torch.Generator().manual_seed(3)
    modules = {f"single_transformer_blocks.7.{m}": _mod(gen, 4, 3072, shapes[f"single_transformer_blocks.7.{m}"][0], 2.0)
               for m in ("attn.to_q", "attn.to_k", "attn.to_v")}
    modules["transformer_blocks.0.attn.to_q"] = _mod(gen, 4, 3072, 3072, 2.0)  # makes diffusers detect the format
    comfy = write_lora(spec, modules, tmp_path / "c.safetensors", "comfyui", shapes)
    assert load_file(str(comfy))["diffusion_model.single_blocks.7.linear1.lora_B.weight"].shape == (3 * 3072 + 12288, 12)
    theirs = HunyuanVideoPipeline.lora_state_dict(str(comfy))  # diffusers' own conversion
    for name, m in modules.items():
        a, b = theirs[f"transformer.{name}.lora_A.weight"], theirs[f"transformer.{name}.lora_B.weight"]
        # diffusers reads this format with scale 1 (no alpha): equal updates
        torch.testing.assert_close(b @ a, delta_weight(m), rtol=1e-5, atol=1e-6)
    mlp = theirs["transformer.single_transformer_blocks.7.proj_mlp.lora_B.weight"]
    assert not mlp.any()  # the q/k/v-only LoRA leaves the mlp rows of linear1 untouched
    back = read_lora(spec, comfy, shapes).modules  # and our own inverse restores the separate LoRAs
    assert set(back) == set(modules)
    assert check_same_updates(modules, back, shapes)


def _kohya_file(spec, tiny_shapes, path):
    """A musubi-style kohya LoRA on every double/single block layer of the tiny model."""
    gen = torch.Generator().manual_seed(4)
    state = {}
    originals = sorted({spec.keys.original_module(m) for m in tiny_shapes if "blocks." in m and "refiner" not in m})
    for i, original in enumerate(originals):
        parts = spec.keys.original_parts(original)
        rows = sum(tiny_shapes[p.module][0] for p in parts)
        rank = 8 if i == 3 else 4  # one layer with another rank
        flat = "lora_unet_" + original.replace(".", "_")
        state[f"{flat}.lora_down.weight"] = torch.randn(rank, tiny_shapes[parts[0].module][1], generator=gen)
        up = torch.randn(rows, rank, generator=gen)
        if original == "single_blocks.1.linear1":
            up[3 * 64 :] = 0  # a q/k/v-only update: zero mlp rows
        state[f"{flat}.lora_up.weight"] = up
        state[f"{flat}.alpha"] = torch.tensor(1.0 if i % 2 else 3.0)
    save_file(state, str(path))
    return state


def test_kohya_to_diffusers_to_kohya_keeps_every_tensor_and_alpha(spec, tiny_model, tiny_shapes, tmp_path):
    state = _kohya_file(spec, tiny_shapes, tmp_path / "k.safetensors")
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in state
    d = convert_lora(spec, tmp_path / "k.safetensors", tmp_path / "d.safetensors", "diffusers", tiny_shapes, check=True)
    assert d.source_format == "kohya" and d.check
    meta = json.loads(safe_open(str(tmp_path / "d.safetensors"), "pt").metadata()["lora_adapter_metadata"])
    assert meta["transformer.alpha_pattern"] and meta["transformer.rank_pattern"]  # per-layer alpha and rank kept
    k2 = convert_lora(spec, tmp_path / "d.safetensors", tmp_path / "k2.safetensors", "kohya", tiny_shapes).out
    again = load_file(str(k2))
    assert set(again) == set(state)
    for key, value in state.items():
        assert torch.equal(again[key], value.to(again[key].dtype)), key
    # and diffusers loads the converted file with the same strength as the kohya file says
    inputs = transformer_inputs(spec, tiny_model)
    ours = read_lora(spec, tmp_path / "k.safetensors", tiny_shapes)
    base = spec.load_transformer(LoadOptions(str(tiny_model)))
    with torch.no_grad():
        for name, module in base.named_modules():
            if name in ours.modules:
                module.weight += delta_weight(ours.modules[name])
        merged = base(**inputs)[0]
    assert rel_err(peft_output(tiny_model, [(tmp_path / "d.safetensors", 1.0)], inputs), merged) < 1e-5


def test_diffusers_to_kohya_and_comfyui_and_back_keeps_updates(spec, tiny_model, tiny_shapes, tmp_path):
    lora = random_lora(spec, tiny_model, tmp_path / "d.safetensors", rank=4, alpha=3.0, targets="all-linear")
    for fmt in ("kohya", "comfyui"):
        out = convert_lora(spec, lora, tmp_path / f"{fmt}.safetensors", fmt, tiny_shapes, check=True).out
        back = convert_lora(spec, out, tmp_path / f"{fmt}-d.safetensors", "diffusers", tiny_shapes, check=True).out
        a, b = read_lora(spec, lora, tiny_shapes).modules, read_lora(spec, back, tiny_shapes).modules
        assert set(a) == set(b)
        for name in a:  # the block-diagonal layout is recorded, so ranks come back too
            assert b[name].rank == a[name].rank
            torch.testing.assert_close(delta_weight(b[name]), delta_weight(a[name]), rtol=1e-5, atol=1e-6)
    kohya = load_file(str(tmp_path / "kohya.safetensors"))
    assert kohya["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape[0] == 16  # q, k, v, mlp: 4 x rank 4
    assert kohya["lora_unet_single_blocks_0_linear1.alpha"].item() == 12.0  # alpha / rank kept: 3/4 == 12/16


# ----------------------------------------------------------------------------- bad input


def test_unknown_keys_are_listed_not_dropped(spec, tiny_model, tiny_shapes, tmp_path, capsys):
    lora = random_lora(spec, tiny_model, tmp_path / "d.safetensors", rank=4, alpha=4.0)
    state = load_file(str(lora))
    state["transformer.some_new_layer.lora_A.weight"] = torch.zeros(4, 8)
    state["text_encoder.foo.lora_A.weight"] = torch.zeros(4, 8)
    save_file(state, str(tmp_path / "extra.safetensors"), metadata=safe_open(str(lora), "pt").metadata())
    with pytest.raises(HvTuneError, match=r"(?s)2 key\(s\).*text_encoder\.foo.*some_new_layer.*--skip-unknown"):
        convert_lora(spec, tmp_path / "extra.safetensors", tmp_path / "o.safetensors", "kohya", tiny_shapes)
    code = main(["convert", str(tmp_path / "extra.safetensors"), str(tmp_path / "o.safetensors"), "--to", "kohya",
                 "--model", str(tiny_model), "--skip-unknown", "--rank-check"])
    out = capsys.readouterr().out
    assert code == 0 and "some_new_layer" in out and "left out" in out and "relative difference" in out


@pytest.mark.parametrize("key, family", [
    ("diffusion_model.txt_in.lora_A.weight", "Flux"),  # Flux-only modules; the rest: tests/test_interop.py
    ("lora_unet_img_in.alpha", "Flux"),
    ("transformer.x_embedder.lora_A.weight", "Flux"),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", "Stable Diffusion"),
    ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", "SDXL"),
    ("diffusion_model.blocks.0.self_attn.q.lora_A.weight", "Wan"),
    ("transformer.transformer_blocks.0.attn1.to_q.lora_A.weight", "LTX-Video"),
])
def test_other_model_families_are_refused_by_name(spec, tiny_shapes, tmp_path, key, family):
    path = tmp_path / "other.safetensors"
    save_file({key: torch.zeros(4, 8), "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 8)},
              str(path))
    with pytest.raises(HvTuneError, match=rf"other\.safetensors.*looks like a {family}"):
        read_lora(spec, path, tiny_shapes)


def test_bad_files_name_the_file_and_key(spec, tiny_model, tiny_shapes, tmp_path):
    with pytest.raises(HvTuneError, match="nope.safetensors does not exist"):
        read_lora(spec, tmp_path / "nope.safetensors", tiny_shapes)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HvTuneError, match="junk.safetensors: not a readable safetensors"):
        read_lora(spec, tmp_path / "junk.safetensors", tiny_shapes)
    torch.save({"x": object()}, tmp_path / "pickle.pt")  # needs unpickling of arbitrary objects
    with pytest.raises(HvTuneError, match="pickle.pt: cannot be read as a weights-only"):
        read_lora(spec, tmp_path / "pickle.pt", tiny_shapes)
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(HvTuneError, match=r"'transformer_blocks.0.attn.to_q' has no up"):
        read_lora(spec, tmp_path / "a.safetensors", tiny_shapes)
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 4)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(HvTuneError, match=r"b.safetensors: layer 'transformer_blocks.0.attn.to_q' .*another size"):
        read_lora(spec, tmp_path / "b.safetensors", tiny_shapes)
    save_file({"x.lora_magnitude_vector": torch.zeros(4)}, str(tmp_path / "dora.safetensors"))
    with pytest.raises(HvTuneError, match="dora.safetensors: no hunyuan-video adapter keys found"):
        read_lora(spec, tmp_path / "dora.safetensors", tiny_shapes)  # DoRA is read (test_adapter_types), not on no layer
    # a weights-only torch file of plain tensors is accepted
    lora = random_lora(spec, tiny_model, tmp_path / "d.safetensors", rank=2, alpha=2.0)
    torch.save(load_file(str(lora)), tmp_path / "d.pt")
    assert len(read_lora(spec, tmp_path / "d.pt", tiny_shapes).modules) == len(read_lora(spec, lora, tiny_shapes).modules)
