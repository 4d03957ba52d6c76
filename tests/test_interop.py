"""Interop: every layout people share loads at the right strength (built from the tiny model's keys and shapes).

Each merged weight is checked against ``W' = W + s * (alpha / r) * B @ A`` (and ``b' = b + s * diff_b``,
``W' = W + s * diff``) on the original-layout tensors, so a wrong name, row split or alpha shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hv_tune.cli import main
from hv_tune.errors import HvTuneError
from hv_tune.export.alpha import resolve_alphas
from hv_tune.export.formats import Layout, classify_keys
from hv_tune.export.lora_io import read_lora
from hv_tune.export.merge import merge_loras, plan_original
from hv_tune.export.safetensors_stream import TensorInfo
from hv_tune.models import LoadOptions

from .lora_utils import random_lora

TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def shapes(spec, tiny_model):
    return spec.linear_shapes(str(tiny_model))


@pytest.fixture(scope="module")
def base_original(spec, tiny_model):
    """The tiny transformer in Tencent's layout (each fused tensor = its parts' rows)."""
    state = load_file(str(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors"))
    infos = {k: TensorInfo(k, Path("-"), v.dtype, tuple(v.shape)) for k, v in state.items()}
    return {t.name: torch.cat([state[s.module].chunk(s.chunks)[s.chunk] for s in t.sources])
            for t in plan_original(spec, infos, None)}


def fused_shape(spec, shapes, original):
    parts = spec.keys.original_parts(original)
    return sum(shapes[p.module][0] // p.chunks for p in parts), shapes[parts[0].module][1]


def _pair(gen, out_f, in_f, r):
    return torch.randn(r, in_f, generator=gen) * 0.3, torch.randn(out_f, r, generator=gen) * 0.3


# ComfyUI-internal names (comfy/ldm/hunyuan_video/model.py, flux/layers.py) -> Tencent's name
COMFY_INTERNAL = {
    "double_blocks.0.img_attn.qkv": "double_blocks.0.img_attn_qkv",
    "double_blocks.1.img_mlp.0": "double_blocks.1.img_mlp.fc1",
    "double_blocks.1.txt_mlp.2": "double_blocks.1.txt_mlp.fc2",
    "double_blocks.0.img_mod.lin": "double_blocks.0.img_mod.linear",
    "single_blocks.0.linear1": "single_blocks.0.linear1",
    "single_blocks.1.modulation.lin": "single_blocks.1.modulation.linear",
    "final_layer.linear": "final_layer.linear",
    "time_in.in_layer": "time_in.mlp.0",
    "txt_in.t_embedder.out_layer": "txt_in.t_embedder.mlp.2",
    "txt_in.individual_token_refiner.blocks.0.self_attn.qkv": "txt_in.individual_token_refiner.blocks.0.self_attn_qkv",
}


def comfy_internal_lora(spec, shapes, path, prefix="diffusion_model."):
    """A LoRA as ComfyUI extracts it: internal names, lora_up/down + alpha, .diff_b and .diff deltas."""
    gen = torch.Generator().manual_seed(3)
    state, expect = {}, {}
    for i, (name, original) in enumerate(COMFY_INTERNAL.items()):
        out_f, in_f = fused_shape(spec, shapes, original)
        r, alpha = 2 + i % 3, 1.0 + i
        down, up = _pair(gen, out_f, in_f, r)
        state |= {f"{prefix}{name}.lora_down.weight": down, f"{prefix}{name}.lora_up.weight": up,
                  f"{prefix}{name}.alpha": torch.tensor(alpha)}
        expect[f"{original}.weight"] = (alpha / r) * up @ down
    for name, original in (("double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn_qkv"),
                           ("single_blocks.1.linear2", "single_blocks.1.linear2")):
        out_f, _ = fused_shape(spec, shapes, original)
        state[f"{prefix}{name}.diff_b"] = torch.randn(out_f, generator=gen)
        expect[f"{original}.bias"] = state[f"{prefix}{name}.diff_b"]
    out_f, in_f = fused_shape(spec, shapes, "time_in.mlp.2")
    state[f"{prefix}time_in.out_layer.diff"] = torch.randn(out_f, in_f, generator=gen) * 0.1
    expect["time_in.mlp.2.weight"] = state[f"{prefix}time_in.out_layer.diff"]
    save_file(state, str(path))
    return path, expect


def _assert_merged(merged, base, expect, scale):
    for name, delta in expect.items():
        torch.testing.assert_close(merged[name], base[name] + scale * delta, **TOL, msg=name)
    untouched = [k for k in base if k not in expect]
    assert untouched and all(torch.equal(merged[k], base[k]) for k in untouched)


# ----------------------------------------------------------------------------- case 1: ComfyUI-internal names


@pytest.mark.parametrize("prefix", ["diffusion_model.", ""])
def test_comfyui_internal_lora_with_deltas_merges_by_the_formula(spec, tiny_model, shapes, base_original, tmp_path, prefix):
    lora, expect = comfy_internal_lora(spec, shapes, tmp_path / "comfy.safetensors", prefix)
    assert read_lora(spec, lora, shapes).format == Layout.COMFYUI_INTERNAL
    merge_loras(spec, tiny_model, [(str(lora), 0.6)], tmp_path / "m.safetensors", fmt="original")
    _assert_merged(load_file(str(tmp_path / "m.safetensors")), base_original, expect, 0.6)


def test_comfyui_internal_converts_to_comfyui_with_deltas_and_merges_the_same(spec, tiny_model, shapes, base_original, tmp_path):
    lora, expect = comfy_internal_lora(spec, shapes, tmp_path / "comfy.safetensors")
    code = main(["convert", str(lora), str(tmp_path / "c.safetensors"), "--to", "comfyui", "--model", str(tiny_model),
                 "--rank-check"])
    assert code == 0
    written = load_file(str(tmp_path / "c.safetensors"))
    assert "diffusion_model.double_blocks.0.img_attn_qkv.diff_b" in written  # ComfyUI applies .diff_b / .diff
    assert "diffusion_model.time_in.out_layer.diff" in written  # the name ComfyUI's key map has
    merge_loras(spec, tiny_model, [(str(tmp_path / "c.safetensors"), 1.0)], tmp_path / "m.safetensors", fmt="original")
    _assert_merged(load_file(str(tmp_path / "m.safetensors")), base_original, expect, 1.0)
    # kohya cannot carry deltas: listed by name, refused unless --skip-unknown
    with pytest.raises(HvTuneError, match=r"(?s)5 key\(s\) are weight/bias deltas.*time_text_embed.timestep_embedder.linear_2.weight"):
        from hv_tune.export.convert import convert_lora
        convert_lora(spec, lora, tmp_path / "k.safetensors", "kohya", shapes)


def test_flux_is_told_from_hunyuan_by_block_counts(spec):
    def keys(n_double, n_single):
        return ([f"diffusion_model.double_blocks.{i}.img_attn.qkv.lora_down.weight" for i in range(n_double)]
                + [f"diffusion_model.single_blocks.{i}.linear1.lora_down.weight" for i in range(n_single)])

    with pytest.raises(HvTuneError, match=r"looks like a Flux LoRA.*19 \+ 38"):
        classify_keys(spec, keys(19, 38), "flux.safetensors")
    with pytest.raises(HvTuneError, match="looks like a Flux"):
        classify_keys(spec, [k.replace("diffusion_model.", "lora_unet_").replace(".", "_").replace("_lora_down_weight", ".lora_down.weight")
                             for k in keys(19, 0)], "flux_kohya.safetensors")
    assert classify_keys(spec, keys(20, 40), "hv.safetensors").layout == Layout.COMFYUI_INTERNAL
    assert classify_keys(spec, keys(19, 38) + ["diffusion_model.txt_in.t_embedder.in_layer.alpha"], "hv").layout == Layout.COMFYUI_INTERNAL
    assert classify_keys(spec, keys(3, 0), "partial").layout == Layout.COMFYUI_INTERNAL  # few blocks: HunyuanVideo


def test_sample_applies_deltas_of_a_comfyui_internal_lora(spec, tiny_model, shapes, tmp_path):
    from hv_tune.sampling import load_pipeline

    lora, _ = comfy_internal_lora(spec, shapes, tmp_path / "comfy.safetensors")
    base = spec.load_transformer(LoadOptions(str(tiny_model)))
    pipe = load_pipeline(spec, str(tiny_model), [(str(lora), 0.5)], "cpu", torch.float32)
    diff_b = load_file(str(lora))["diffusion_model.single_blocks.1.linear2.diff_b"]
    proj_out = pipe.transformer.single_transformer_blocks[1].proj_out
    torch.testing.assert_close(getattr(proj_out, "base_layer", proj_out).bias,
                               base.single_transformer_blocks[1].proj_out.bias + 0.5 * diff_b, **TOL)
    assert "lora0" in pipe.transformer.transformer_blocks[0].attn.to_q.lora_A  # the low-rank part is an adapter


# ----------------------------------------------------------------------------- case 2: alpha resolution


@pytest.mark.parametrize("prefix", ["transformer.", "diffusion_model.", "base_model.model.", ""])
def test_tencent_named_peft_folder_takes_alpha_from_adapter_config(spec, tiny_model, shapes, base_original, tmp_path, prefix):
    gen = torch.Generator().manual_seed(1)
    out_f, in_f = fused_shape(spec, shapes, "double_blocks.0.img_attn_qkv")
    down, up = _pair(gen, out_f, in_f, 4)
    folder = tmp_path / "epoch1"
    folder.mkdir()
    save_file({f"{prefix}double_blocks.0.img_attn_qkv.lora_A.weight": down,
               f"{prefix}double_blocks.0.img_attn_qkv.lora_B.weight": up}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2, "peft_type": "LORA"}))
    lora = read_lora(spec, folder / "adapter_model.safetensors", shapes)
    assert {m.alpha for m in lora.modules.values()} == {2.0}
    assert any("adapter_config.json" in n for n in lora.notes)
    merge_loras(spec, tiny_model, [(str(folder / "adapter_model.safetensors"), 1.0)], tmp_path / "m.safetensors",
                fmt="original")
    _assert_merged(load_file(str(tmp_path / "m.safetensors")), base_original,
                   {"double_blocks.0.img_attn_qkv.weight": 0.5 * up @ down}, 1.0)


def test_alpha_resolution_order(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2, "alpha_pattern": {"b": 6}}))
    path = tmp_path / "x.safetensors"
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 3})}
    ranks = {"a": 4, "b": 4}
    notes: list[str] = []
    assert resolve_alphas(path, meta, ranks, {"a": 1.0, "b": 1.5}, notes) == {"a": 1.0, "b": 1.5}  # own keys first
    assert resolve_alphas(path, meta, ranks, {"a": 1.0}, notes) == {"a": 1.0, "b": 3.0}  # then the metadata
    assert resolve_alphas(path, {}, ranks, {}, notes) == {"a": 2.0, "b": 6.0}  # then adapter_config.json
    (tmp_path / "adapter_config.json").unlink()
    notes.clear()
    assert resolve_alphas(path, {}, ranks, {}, notes) == {"a": 4.0, "b": 4.0}  # else alpha = rank, said so
    assert any("alpha = rank" in n for n in notes)


# ----------------------------------------------------------------------------- case 3/4: what ComfyUI loads


# ComfyUI's HunyuanVideo LoRA key map (comfy/lora.py, model_lora_keys_unet): each internal weight name
# with these substrings replaced, under "diffusion_model." / "transformer."; kohya: "lora_unet_" +
# the internal name with dots as underscores.
_COMFY_RENAMES = [("_mod.lin.", "_mod.linear."), ("_attn.qkv.", "_attn_qkv."), ("_attn.proj.", "_attn_proj."),
                  ("mlp.0.", "mlp.fc1."), ("mlp.2.", "mlp.fc2."), (".modulation.lin.", ".modulation.linear.")]
_COMFY_EMBEDDERS = ["time_in.in_layer", "time_in.out_layer", "guidance_in.in_layer", "guidance_in.out_layer",
                    "vector_in.in_layer", "vector_in.out_layer", "txt_in.t_embedder.in_layer",
                    "txt_in.t_embedder.out_layer", "txt_in.c_embedder.in_layer", "txt_in.c_embedder.out_layer",
                    "txt_in.input_embedder", "final_layer.linear", "final_layer.adaLN_modulation.1"]


def comfy_key_map(n_double=2, n_single=2, n_refiner=1):  # the tiny model
    internal = list(_COMFY_EMBEDDERS)
    for i in range(n_double):
        internal += [f"double_blocks.{i}.{s}_{m}" for s in ("img", "txt")
                     for m in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2", "mod.lin")]
    for i in range(n_single):
        internal += [f"single_blocks.{i}.{m}" for m in ("linear1", "linear2", "modulation.lin")]
    for i in range(n_refiner):
        internal += [f"txt_in.individual_token_refiner.blocks.{i}.{m}"
                     for m in ("self_attn.qkv", "self_attn.proj", "mlp.0", "mlp.2", "adaLN_modulation.1")]
    lora_names, kohya_names = set(), set()
    for name in internal:
        key = f"diffusion_model.{name}.weight"
        for old, new in _COMFY_RENAMES:
            key = key.replace(old, new)
        lora_names.add(key[len("diffusion_model."):-len(".weight")])
        kohya_names.add("lora_unet_" + name.replace(".", "_"))
    return lora_names, kohya_names


def test_comfyui_export_uses_names_comfyui_maps_for_every_trainable_layer(spec, tiny_model, shapes, tmp_path):
    lora = random_lora(spec, tiny_model, tmp_path / "all.safetensors", rank=2, alpha=1.0, targets=["*"])
    assert main(["convert", str(lora), str(tmp_path / "c.safetensors"), "--to", "comfyui", "--model", str(tiny_model),
                 "--rank-check"]) == 0
    loaded, _ = comfy_key_map()
    modules = {k.removeprefix("diffusion_model.").rsplit(".", 2)[0] for k in load_file(str(tmp_path / "c.safetensors"))}
    assert {"time_in.in_layer", "guidance_in.out_layer", "txt_in.t_embedder.in_layer", "txt_in.c_embedder.out_layer"} <= modules
    assert modules <= loaded, sorted(modules - loaded)
    assert len(modules) == len(loaded), sorted(loaded - modules)  # every layer of the tiny model, each under a name ComfyUI maps
    assert main(["convert", str(lora), str(tmp_path / "o.safetensors"), "--to", "original", "--model", str(tiny_model)]) == 0
    assert (tmp_path / "o.safetensors").read_bytes() == (tmp_path / "c.safetensors").read_bytes()  # an alias


def test_kohya_export_warns_about_layers_comfyui_skips_and_states_true_ranks(spec, tiny_model, shapes, tmp_path, capsys):
    lora = random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=4, alpha=2.0, targets="all-linear")
    assert main(["convert", str(lora), str(tmp_path / "k.safetensors"), "--to", "kohya", "--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    _, kohya_loaded = comfy_key_map()
    written = {k.split(".")[0] for k in load_file(str(tmp_path / "k.safetensors"))}
    skipped = sorted(written - kohya_loaded)
    assert "lora_unet_double_blocks_0_img_mlp_fc1" in skipped
    assert "not loaded" in out and "--to comfyui" in out and all(s in out for s in skipped[:5])
    attn = random_lora(spec, tiny_model, tmp_path / "b.safetensors", rank=4, alpha=2.0, targets="attn")
    main(["convert", str(attn), str(tmp_path / "k2.safetensors"), "--to", "kohya", "--model", str(tiny_model)])
    from safetensors import safe_open
    with safe_open(str(tmp_path / "k2.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "12" and json.loads(meta["hv_tune.ranks"]) == [4, 12]  # q,k,v fused: 3r
    assert "not loaded" not in capsys.readouterr().out  # attention only: ComfyUI loads all of it


def test_train_save_writes_formats_and_warns_about_kohya(spec, tiny_model, tmp_path):
    from peft import LoraConfig

    from hv_tune.export.save import save_trained_lora
    lora = load_file(str(random_lora(spec, tiny_model, tmp_path / "a.safetensors", rank=4, alpha=2.0,
                                     targets="all-linear")))
    adapter = {k.removeprefix("transformer."): v for k, v in lora.items()}
    cfg = LoraConfig(r=4, lora_alpha=2.0, target_modules=sorted({k.rsplit(".", 2)[0] for k in adapter}))
    (tmp_path / "run").mkdir()
    lines = save_trained_lora(spec, tmp_path / "run", adapter, cfg, ["diffusers", "kohya", "comfyui"], str(tiny_model))
    assert (tmp_path / "run" / "lora_kohya.safetensors").is_file() and (tmp_path / "run" / "lora_comfyui.safetensors").is_file()
    assert any("lora_comfyui.safetensors" in line and "not loaded" in line for line in lines)


# ----------------------------------------------------------------------------- NaN / inf


def _nan_lora(spec, tiny_model, tmp_path):
    path = random_lora(spec, tiny_model, tmp_path / "ok.safetensors", rank=2, alpha=2.0)
    state = load_file(str(path))
    state["transformer.transformer_blocks.1.attn.to_k.lora_B.weight"][0, 0] = float("nan")
    state["transformer.single_transformer_blocks.0.attn.to_v.lora_A.weight"][1, 1] = float("inf")
    save_file(state, str(tmp_path / "nan.safetensors"))
    return tmp_path / "nan.safetensors"


def test_nan_lora_is_refused_by_convert_merge_and_sample(spec, tiny_model, tmp_path, capsys):
    bad = str(_nan_lora(spec, tiny_model, tmp_path))
    runs = [["convert", bad, str(tmp_path / "c.safetensors"), "--to", "comfyui", "--model", str(tiny_model)],
            ["merge", "--model", str(tiny_model), "--lora", bad, "--out", str(tmp_path / "m")],
            ["sample", "--model", str(tiny_model), "--lora", bad, "--prompt", "x", "--frames", "1",
             "--height", "16", "--width", "16", "--steps", "1", "--out", str(tmp_path / "s.png")]]
    for argv in runs:
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert "NaN or inf" in err and "transformer_blocks.1.attn.to_k" in err, argv[0]
        assert "single_transformer_blocks.0.attn.to_v" in err, argv[0]
    assert not (tmp_path / "c.safetensors").exists() and not (tmp_path / "m").exists()


def test_rank_check_fails_on_nan():
    from hv_tune.export.convert import check_same_updates
    from hv_tune.export.lora_math import LoraModule

    ok = LoraModule(torch.ones(2, 3), torch.ones(4, 2), 2.0)
    bad = LoraModule(torch.ones(2, 3), torch.full((4, 2), float("nan")), 2.0)
    assert check_same_updates({"x": ok}, {"x": ok}, {"x": (4, 3)})
    with pytest.raises(HvTuneError, match="check failed: x.*nan"):
        check_same_updates({"x": ok}, {"x": bad}, {"x": (4, 3)})


def test_norm_delta_merges_and_converts(spec, tiny_model, shapes, base_original, tmp_path):
    """A `.diff` on a 1:1 tensor that is no linear layer (a q-norm) is applied and carried too."""
    delta = torch.randn_like(base_original["double_blocks.1.img_attn_q_norm.weight"])
    save_file({"diffusion_model.double_blocks.1.img_attn_q_norm.diff": delta}, str(tmp_path / "n.safetensors"))
    assert main(["convert", str(tmp_path / "n.safetensors"), str(tmp_path / "c.safetensors"), "--to", "comfyui",
                 "--model", str(tiny_model)]) == 0
    merge_loras(spec, tiny_model, [(str(tmp_path / "c.safetensors"), 2.0)], tmp_path / "m.safetensors", fmt="original")
    _assert_merged(load_file(str(tmp_path / "m.safetensors")), base_original,
                   {"double_blocks.1.img_attn_q_norm.weight": delta}, 2.0)
