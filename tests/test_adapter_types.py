"""DoRA, LoKr and LoHa files: merged, written in every layout and read back, checked against PEFT's layers,
ComfyUI's and musubi-tuner's formulas (re-implemented from their source) and the LyCORIS library."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoHaConfig, LoKrConfig, LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from hv_tune.cli import main
from hv_tune.errors import HvTuneError
from hv_tune.export.adapter_io import peft_modules
from hv_tune.export.adapters import LokrModule, adapter_delta, lokr_delta
from hv_tune.export.convert import convert_lora
from hv_tune.export.formats import parse_key
from hv_tune.export.lora_io import read_lora, write_lora
from hv_tune.export.merge import base_weights_of, merge_loras
from hv_tune.export.peft_form import load_peft_adapter
from hv_tune.lora import resolve_targets
from hv_tune.models import LoadOptions, get_spec

_SUFFIX = re.compile(r"(.+)\.(lokr_w[12](?:_[ab])?|hada_w[12]_[ab]|alpha|diff|lora_(?:up|down|A|B)\.weight)")
TOL = 1e-5  # relative: max |merged - adapted| / max |adapted|, float32 sums in another order
LAYOUTS = ["diffusers", "comfyui", "kohya", "comfyui-internal"]
FAMILIES = [("hunyuan-video", "tiny_model"), ("hunyuan-video-1.5", "hv15_tiny"),
            ("hunyuan-video-1.5-i2v", "hv15_i2v_tiny")]


def configs(targets: list[str]) -> dict:
    """One PEFT config per type; ``lokr-full`` has both Kronecker factors full (PEFT still scales by
    alpha / r there, LyCORIS by 1: the case where the two conventions differ)."""
    return {
        "dora": LoraConfig(r=2, lora_alpha=3, target_modules=targets, use_dora=True),
        "lokr": LoKrConfig(r=2, alpha=3, target_modules=targets, decompose_both=True),
        "lokr-full": LoKrConfig(r=64, alpha=48, target_modules=targets),
        "loha": LoHaConfig(r=2, alpha=3, target_modules=targets),
    }


def adapted(spec, model: Path, cfg, seed: int = 0):
    """The transformer with a PEFT adapter of ``cfg``'s type (PEFT's own classes) and random non-zero weights."""
    transformer = spec.load_transformer(LoadOptions(str(model)))
    inject_adapter_in_model(cfg, transformer)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if any(k in name for k in ("lokr_", "hada_", "lora_")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if "magnitude" in name else 0.0))
    return transformer, get_peft_model_state_dict(transformer)


def layer_outputs(transformer, seed: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per adapted layer: probe input, base output, PEFT's adapted output (its forward, not merged)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for name, mod in transformer.named_modules():
            if isinstance(mod, BaseTunerLayer):
                base = mod.get_base_layer()
                x = torch.randn(3, base.in_features, generator=gen)
                out[name] = (x, base(x), mod(x))
    return out


def merged_state(spec, out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a merged model folder's transformer."""
    state = {}
    for f in sorted((out / spec.transformer_subfolder).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def assert_merged_equals_adapted(merged, outputs) -> None:
    for name, (x, base, want) in outputs.items():
        got = F.linear(x, merged[f"{name}.weight"], merged.get(f"{name}.bias"))
        assert (want - base).abs().max() > 1e-2 * want.abs().max(), name  # the adapter changes this layer
        assert ((got - want).abs().max() / want.abs().max()).item() < TOL, name


@pytest.mark.parametrize("family,fixture", FAMILIES)
def test_every_type_in_every_layout_merges_to_the_adapted_layers(family, fixture, request, tmp_path):
    """Each type, written in each layout (DoRA and fused LoKr layers as .diff), read back and merged,
    equals PEFT's adapted forward on every adapted layer."""
    spec, model = get_spec(family), request.getfixturevalue(fixture)
    shapes = spec.linear_shapes(str(model))
    base = base_weights_of(spec, str(model))
    probe = spec.load_transformer(LoadOptions(str(model)))
    targets = resolve_targets(spec, probe, "all-linear")
    for kind, cfg in configs(targets).items():
        transformer, state = adapted(spec, model, cfg)
        outputs = layer_outputs(transformer)
        modules = peft_modules(state, cfg)
        files = []
        for layout in LAYOUTS:
            notes: list[str] = []
            f = write_lora(spec, modules, tmp_path / f"{kind}-{layout}.safetensors", layout, shapes, base=base,
                           notes=notes)
            if layout != "diffusers" and kind == "dora":
                assert notes and ".diff" in notes[0]  # said so, not silent
            files.append((str(f), 1 / len(LAYOUTS)))
        # one merge of the four files at 1/4 each (linear in the scale, DoRA too): a layout that lost or
        # changed any part of the update would not add up to the adapted layers
        merged = merge_loras(spec, model, files, tmp_path / f"m-{kind}", allow_repeat=True).out
        assert_merged_equals_adapted(merged_state(spec, merged), outputs)


def test_mixed_types_with_scales_merge_at_once(spec, tiny_model, tmp_path):
    """A LoKr at 0.7, a LoHa (kohya layout) at -0.5 and a DoRA at 1 (ComfyUI's strength semantics) in one merge:
    base + sum of each adapter's update from PEFT's own ``get_delta_weight`` / adapted weights."""
    targets = resolve_targets(spec, spec.load_transformer(LoadOptions(str(tiny_model))), "attn")
    shapes = spec.linear_shapes(str(tiny_model))
    cfgs = configs(targets)
    files, want = [], {}
    for i, (kind, scale, layout) in enumerate([("lokr", 0.7, "diffusers"), ("loha", -0.5, "kohya"),
                                               ("dora", 1.0, "diffusers")]):
        transformer, state = adapted(spec, tiny_model, cfgs[kind], seed=i)
        f = write_lora(spec, peft_modules(state, cfgs[kind]), tmp_path / f"{kind}.safetensors", layout, shapes)
        files.append((str(f), scale))
        for name, mod in transformer.named_modules():
            if isinstance(mod, BaseTunerLayer):
                w = mod.get_base_layer().weight.detach()
                if kind == "dora":
                    mod.merge()
                    delta = mod.get_base_layer().weight.detach() - w
                else:
                    delta = mod.get_delta_weight("default")
                want[name] = want.get(name, w) + scale * delta
    merged = merged_state(spec, merge_loras(spec, tiny_model, files, tmp_path / "merged").out)
    for name, w in want.items():
        torch.testing.assert_close(merged[f"{name}.weight"], w, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the tools' own formulas


def comfyui_delta(g: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight change ComfyUI applies at strength 1 for one module's keys, re-implemented from
    comfyanonymous/ComfyUI ``comfy/weight_adapter/lokr.py``, ``loha.py``, ``lora.py`` (commit 179c2d35):
    LoKr ``kron(w1, w2) * alpha / dim`` (dim: the last decomposed factor's ``_b`` rows; 1 without
    alpha or decomposition), LoHa ``(w1a @ w1b) * (w2a @ w2b) * alpha / w1b.shape[0]``, LoRA
    ``up @ down * alpha / rank`` (1 without alpha), ``diff`` added as is."""
    alpha = g["alpha"].item() if "alpha" in g else None
    if "diff" in g:
        return g["diff"].float()
    if any(k.startswith("lokr") for k in g):
        dim = None
        w1 = g.get("lokr_w1")
        if w1 is None:
            dim = g["lokr_w1_b"].shape[0]
            w1 = g["lokr_w1_a"].float() @ g["lokr_w1_b"].float()
        w2 = g.get("lokr_w2")
        if w2 is None:
            dim = g["lokr_w2_b"].shape[0]
            w2 = g["lokr_w2_a"].float() @ g["lokr_w2_b"].float()
        scale = alpha / dim if alpha is not None and dim is not None else 1.0
        return torch.kron(w1.float(), w2.float()) * scale
    if "hada_w1_a" in g:
        scale = alpha / g["hada_w1_b"].shape[0] if alpha is not None else 1.0
        return (g["hada_w1_a"].float() @ g["hada_w1_b"].float()) * (g["hada_w2_a"].float() @ g["hada_w2_b"].float()) * scale
    up, down = g.get("lora_up.weight", g.get("lora_B.weight")), g.get("lora_down.weight", g.get("lora_A.weight"))
    return up.float() @ down.float() * (alpha / down.shape[0] if alpha is not None else 1.0)


def musubi_delta(g: dict[str, torch.Tensor]) -> torch.Tensor:
    """musubi-tuner's merge (kohya-ss/musubi-tuner ``src/musubi_tuner/networks/lokr.py`` and ``loha.py``,
    ``merge_weights_to_tensor``, commit 30c658c4): LoKr needs a full ``lokr_w1``; ``w2_a @ w2_b`` scaled by
    ``alpha / w2_a.shape[1]`` (alpha defaults to dim), a full ``w2`` by 1; LoHa ``alpha / w1b.shape[0]``.
    ``.diff`` (HunyuanVideo v1's fused layers) is LyCORIS's full module, applied by musubi's ``--lycoris``."""
    if "diff" in g:
        return g["diff"].float()
    if "lokr_w1" in g:
        assert "lokr_w1_a" not in g
        if "lokr_w2_a" in g:
            dim = g["lokr_w2_a"].shape[1]
            scale = (g["alpha"].item() if "alpha" in g else dim) / dim
            w2 = g["lokr_w2_a"].float() @ g["lokr_w2_b"].float()
        else:
            scale, w2 = 1.0, g["lokr_w2"].float()
        return torch.kron(g["lokr_w1"].float(), w2) * scale
    dim = g["hada_w1_b"].shape[0]
    scale = (g["alpha"].item() if "alpha" in g else dim) / dim
    return (g["hada_w1_a"].float() @ g["hada_w1_b"].float()) * (g["hada_w2_a"].float() @ g["hada_w2_b"].float()) * scale


def lycoris_delta(g: dict[str, torch.Tensor]) -> torch.Tensor:
    """The LyCORIS library's own functions (``lycoris.functional.lokr.diff_weight``, ``loha.diff_weight``)
    with the scale LyCORIS's modules use (``alpha / dim``; 1 for a full-full LoKr)."""
    from lycoris.functional import loha, lokr

    if "diff" in g:
        return g["diff"].float()
    f = {k: v.float() for k, v in g.items()}
    if "hada_w1_a" in g:
        return loha.diff_weight(f["hada_w1_b"], f["hada_w1_a"], f["hada_w2_b"], f["hada_w2_a"], None, None,
                                gamma=f["alpha"].item() / g["hada_w1_b"].shape[0], backend="torch")
    w = [f.get(k) for k in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")]
    # functional.lokr divides gamma by the decomposed rank itself (``rank_scale``; 1 when both are full)
    return lokr.diff_weight(*w, None, gamma=f["alpha"].item() if "alpha" in f else 1.0, backend="torch")


def deltas_by_formula(spec, path: Path, shapes, formula) -> dict[str, torch.Tensor]:
    """Each file module's delta by ``formula``, split into diffusers modules (fused rows)."""
    from hv_tune.export.adapter_io import rows_of

    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(path)).items():
        m = _SUFFIX.fullmatch(key)
        groups.setdefault(m[1], {})[m[2]] = t
    out = {}
    for module, g in groups.items():
        original = parse_key(spec, f"{module}.alpha").module
        delta = formula(g)
        for part, idx in rows_of(spec, original, shapes).items():
            out[part] = delta[idx]
    return out


@pytest.mark.parametrize("family,fixture", FAMILIES[:2])  # 1.5 image-to-video has 1.5's names and layers
def test_comfyui_musubi_and_lycoris_apply_what_we_merge(family, fixture, request, tmp_path):
    """Per layer, the delta ComfyUI's adapter code computes from our ComfyUI file, and musubi-tuner's merge (and
    the LyCORIS library) from our kohya file, equal the delta of our merge."""
    spec, model = get_spec(family), request.getfixturevalue(fixture)
    shapes = spec.linear_shapes(str(model))
    base = base_weights_of(spec, str(model))
    targets = resolve_targets(spec, spec.load_transformer(LoadOptions(str(model))), "all-linear")
    for kind, cfg in configs(targets).items():
        _, state = adapted(spec, model, cfg)
        modules = peft_modules(state, cfg)
        ours = {m: adapter_delta(a, base(m)) for m, a in modules.items()}
        checks = [("comfyui", comfyui_delta), ("kohya", musubi_delta), ("kohya", lycoris_delta)]
        for layout, formula in checks:
            f = write_lora(spec, modules, tmp_path / f"{kind}-{layout}.safetensors", layout, shapes, base=base)
            theirs = deltas_by_formula(spec, f, shapes, formula)
            assert set(ours) <= set(theirs)
            for m, d in ours.items():
                torch.testing.assert_close(theirs[m], d, rtol=1e-5, atol=1e-6, msg=f"{kind} {layout} {m}")


# ----------------------------------------------------------------------------- other tools' files


def test_musubi_lokr_and_loha_files_load_at_their_strength(hv15_tiny, tmp_path):
    """Files named as musubi-tuner's LoKr/LoHa networks name them (``lora_unet_`` + its module names with
    ``_``, a full ``lokr_w1``, ``lokr_w2_a/_b``, ``.alpha``; scale alpha / dim) read as the update musubi applies,
    and as a PEFT adapter with that update."""
    spec = get_spec("hunyuan-video-1.5")
    shapes = spec.linear_shapes(str(hv15_tiny))
    out_f, in_f = shapes["transformer_blocks.0.attn.to_k"]
    gen = torch.Generator().manual_seed(3)
    w1, w2a, w2b = (torch.randn(s, generator=gen) for s in [(2, 2), (out_f // 2, 4), (4, in_f // 2)])
    hada = [torch.randn(s, generator=gen) for s in [(out_f, 4), (4, in_f), (out_f, 4), (4, in_f)]]
    k, v = "lora_unet_double_blocks_0_img_attn_k", "lora_unet_double_blocks_0_img_attn_v"
    lokr = {f"{k}.lokr_w1": w1, f"{k}.lokr_w2_a": w2a, f"{k}.lokr_w2_b": w2b, f"{k}.alpha": torch.tensor(2.0)}
    loha = {f"{v}.hada_w{i // 2 + 1}_{'ab'[i % 2]}": t for i, t in enumerate(hada)}
    loha[f"{v}.alpha"] = torch.tensor(1.0)
    for name, tensors in (("lokr", lokr), ("loha", loha), ("both", {**lokr, **loha})):
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata={"ss_network_module": f"networks.{name}"})
    want_k = torch.kron(w1, w2a @ w2b) * 0.5  # alpha 2 / dim 4
    want_v = (hada[0] @ hada[1]) * (hada[2] @ hada[3]) * 0.25  # alpha 1 / dim 4
    lora = read_lora(spec, tmp_path / "both.safetensors", shapes)
    torch.testing.assert_close(adapter_delta(lora.modules["transformer_blocks.0.attn.to_k"]), want_k)
    torch.testing.assert_close(adapter_delta(lora.modules["transformer_blocks.0.attn.to_v"]), want_v)
    for name, module, want in (("lokr", "to_k", want_k), ("loha", "to_v", want_v)):
        peft = load_peft_adapter(spec, tmp_path / f"{name}.safetensors", shapes)
        again = peft_modules(peft.state, peft.config)[f"transformer_blocks.0.attn.{module}"]
        assert peft.adapter_type == name
        torch.testing.assert_close(adapter_delta(again), want)
    with pytest.raises(HvTuneError, match="several adapter types"):
        load_peft_adapter(spec, tmp_path / "both.safetensors", shapes)


def test_diffusion_pipe_lokr_folder_loads_at_peft_strength(spec, tiny_model, tmp_path):
    """diffusion-pipe's PEFT LoKr folder (``adapter_config.json`` + ``adapter_model.safetensors``, PEFT's
    ``LoKrConfig`` on Tencent's module names under ``transformer.``, fused ``img_attn_qkv`` included): read with
    PEFT's scale alpha / r (also for a full w2, where LyCORIS would use 1), merged, converted and loaded."""
    shapes = spec.linear_shapes(str(tiny_model))
    gen = torch.Generator().manual_seed(4)
    qkv_out = sum(shapes[f"transformer_blocks.0.attn.to_{p}"][0] for p in "qkv")
    in_f = shapes["transformer_blocks.0.attn.to_q"][1]
    proj_out, proj_in = shapes["transformer_blocks.0.attn.to_out.0"]
    folder = tmp_path / "epoch1"
    folder.mkdir()
    tensors = {"transformer.double_blocks.0.img_attn_qkv.lokr_w1": torch.randn(4, 4, generator=gen),
               "transformer.double_blocks.0.img_attn_qkv.lokr_w2": torch.randn(qkv_out // 4, in_f // 4, generator=gen),
               "transformer.double_blocks.0.img_attn_proj.lokr_w1": torch.randn(2, 2, generator=gen),
               "transformer.double_blocks.0.img_attn_proj.lokr_w2": torch.randn(proj_out // 2, proj_in // 2, generator=gen)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LOKR", "r": 8, "alpha": 2,
                                                            "target_modules": ["img_attn_qkv", "img_attn_proj"]}))
    lora = read_lora(spec, folder, shapes)
    proj = lora.modules["transformer_blocks.0.attn.to_out.0"]
    assert isinstance(proj, LokrModule) and proj.scale == 0.25  # PEFT: alpha / r, not LyCORIS's 1
    fused = torch.kron(tensors["transformer.double_blocks.0.img_attn_qkv.lokr_w1"],
                       tensors["transformer.double_blocks.0.img_attn_qkv.lokr_w2"]) * 0.25
    torch.testing.assert_close(lora.diffs["transformer_blocks.0.attn.to_k.weight"],
                               fused[shapes["transformer_blocks.0.attn.to_q"][0]:][:shapes["transformer_blocks.0.attn.to_k"][0]])
    # `merge --lora FOLDER:0.5` and convert to ComfyUI's layout: the same update
    assert main(["merge", "--model", str(tiny_model), "--lora", f"{folder}:0.5", "--out", str(tmp_path / "merged")]) == 0
    merged = merged_state(spec, tmp_path / "merged")
    w = base_weights_of(spec, str(tiny_model))("transformer_blocks.0.attn.to_out.0")
    torch.testing.assert_close(merged["transformer_blocks.0.attn.to_out.0.weight"], w + 0.5 * lokr_delta(proj))
    res = convert_lora(spec, folder / "adapter_model.safetensors", tmp_path / "c.safetensors", "comfyui", shapes,
                       check=True)
    assert res.check and all("relative difference" in x for x in res.check)
    peft = load_peft_adapter(spec, folder, shapes)
    assert peft.adapter_type == "lokr" and "transformer_blocks.0.attn.to_out.0.lokr_w1" in peft.state
    assert set(peft.diffs) == {f"transformer_blocks.0.attn.to_{p}.weight" for p in "qkv"}


# ----------------------------------------------------------------------------- PEFT form, SVD, refusals


def test_peft_form_of_a_lyco_file_rebuilds_the_adapted_layers(spec, tiny_model, tmp_path):
    """``load_peft_adapter`` of our ComfyUI LoHa file and PEFT LoKr and DoRA files gives a PEFT config and state dict that
    PEFT loads into the model (``set_peft_model_state_dict``) with the same adapted layers as trained."""
    from peft import set_peft_model_state_dict

    shapes = spec.linear_shapes(str(tiny_model))
    targets = resolve_targets(spec, spec.load_transformer(LoadOptions(str(tiny_model))), "attn")
    for kind in ("loha", "lokr", "dora"):
        cfg = configs(targets)[kind]
        transformer, state = adapted(spec, tiny_model, cfg)
        want = layer_outputs(transformer)
        layout = "comfyui" if kind == "loha" else "diffusers"
        f = write_lora(spec, peft_modules(state, cfg), tmp_path / f"{kind}.safetensors", layout, shapes)
        peft = load_peft_adapter(spec, f, shapes)
        fresh = spec.load_transformer(LoadOptions(str(tiny_model)))
        inject_adapter_in_model(peft.config, fresh)
        result = set_peft_model_state_dict(fresh, peft.state)
        assert not result.unexpected_keys
        got = layer_outputs(fresh)
        for name, (_, _, y) in want.items():
            torch.testing.assert_close(got[name][2], y, rtol=1e-5, atol=1e-6)


def test_convert_to_plain_lora_states_the_measured_svd_error(spec, tiny_model, tmp_path, capsys):
    targets = resolve_targets(spec, spec.load_transformer(LoadOptions(str(tiny_model))), "attn")
    cfg = configs(targets)["loha"]
    _, state = adapted(spec, tiny_model, cfg)
    shapes = spec.linear_shapes(str(tiny_model))
    f = write_lora(spec, peft_modules(state, cfg), tmp_path / "loha.safetensors", "diffusers", shapes)
    def stated_error(result) -> float:
        line = next(n for n in result.notes if "truncated SVD" in n)
        return float(line.split("up to ")[1].split()[0])

    res = convert_lora(spec, f, tmp_path / "exact.safetensors", "kohya", shapes, svd_rank=64)
    assert stated_error(res) < 1e-6  # rank 64 >= the layers' sizes: exact
    full = read_lora(spec, tmp_path / "exact.safetensors", shapes)
    low = convert_lora(spec, f, tmp_path / "r2.safetensors", "diffusers", shapes, svd_rank=2, check=True)
    assert 1e-3 < stated_error(low) < 1  # rank 2 of a rank-4 Hadamard product: an approximation, and said so
    measured = max((adapter_delta(m) - adapter_delta(read_lora(spec, f, shapes).modules[n])).norm()
                   / adapter_delta(read_lora(spec, f, shapes).modules[n]).norm()
                   for n, m in read_lora(spec, tmp_path / "r2.safetensors", shapes).modules.items())
    assert abs(measured.item() - stated_error(low)) < 1e-3  # the printed error is the real one
    loha = read_lora(spec, f, shapes).modules
    for m, lora in full.modules.items():  # rank 64 >= the layer size: exact
        torch.testing.assert_close(adapter_delta(lora), adapter_delta(loha[m]), rtol=1e-4, atol=1e-5)
    code = main(["convert", str(f), str(tmp_path / "cli.safetensors"), "--to", "comfyui", "--model", str(tiny_model),
                 "--svd-rank", "2"])
    assert code == 0 and "truncated SVD" in capsys.readouterr().out


@pytest.mark.parametrize("kind,keys", [
    ("GLoRA", ["lora_unet_double_blocks_0_img_attn_proj.a1.weight", "lora_unet_double_blocks_0_img_attn_proj.a2.weight"]),
    ("OFT", ["lora_unet_double_blocks_0_img_attn_proj.oft_blocks"]),
    ("BOFT", ["lora_unet_double_blocks_0_img_attn_proj.boft_R"]),
    ("Tucker", ["lora_unet_double_blocks_0_img_attn_proj.lokr_t2", "lora_unet_double_blocks_0_img_attn_proj.lokr_w1"]),
])
def test_unsupported_adapter_types_are_refused_by_name(spec, tiny_model, tmp_path, kind, keys):
    shapes = spec.linear_shapes(str(tiny_model))
    path = tmp_path / "x.safetensors"
    save_file({k: torch.ones(2, 2) for k in keys}, str(path))
    with pytest.raises(HvTuneError, match=kind) as e:
        read_lora(spec, path, shapes)
    assert keys[0] in str(e.value)


def test_dora_outside_diffusers_needs_the_base_weights(spec, tiny_model, tmp_path):
    targets = resolve_targets(spec, spec.load_transformer(LoadOptions(str(tiny_model))), "attn")
    cfg = configs(targets)["dora"]
    _, state = adapted(spec, tiny_model, cfg)
    shapes = spec.linear_shapes(str(tiny_model))
    f = write_lora(spec, peft_modules(state, cfg), tmp_path / "dora.safetensors", "diffusers", shapes)
    with pytest.raises(HvTuneError, match="--model"):
        convert_lora(spec, f, tmp_path / "c.safetensors", "comfyui", shapes)
    res = convert_lora(spec, f, tmp_path / "c.safetensors", "comfyui", shapes, check=True,
                       base=base_weights_of(spec, str(tiny_model)))
    assert any(".diff" in n for n in res.notes) and res.check


def test_another_tools_dora_on_a_fused_qkv_splits_exactly_by_rows(spec, tiny_model, tmp_path):
    """A LyCORIS-style DoRA on ComfyUI's fused ``img_attn_qkv`` (``lora_down/up``, ``alpha``, ``dora_scale``
    ``[out, 1]``: LyCORIS ``wd_on_out``, PEFT's formula) reads as q, k, v DoRAs whose merged weights are the
    fused layer's DoRA weight (row norms split with the rows); a ``[1, in]`` scale is refused by name."""
    shapes = spec.linear_shapes(str(tiny_model))
    base = base_weights_of(spec, str(tiny_model))
    parts = [f"transformer_blocks.0.attn.to_{p}" for p in "qkv"]
    w = torch.cat([base(p) for p in parts])  # the fused base weight [3h, in]
    gen = torch.Generator().manual_seed(6)
    down, up = torch.randn(4, w.shape[1], generator=gen) * 0.3, torch.randn(w.shape[0], 4, generator=gen) * 0.3
    magnitude = w.norm(dim=1) * (1 + 0.2 * torch.rand(w.shape[0], generator=gen))
    key = "diffusion_model.double_blocks.0.img_attn_qkv"
    tensors = {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0),
               f"{key}.dora_scale": magnitude[:, None]}
    save_file(tensors, str(tmp_path / "dora.safetensors"))
    v = w + 0.5 * up @ down  # alpha 2 / rank 4
    want = v * (magnitude / v.norm(dim=1))[:, None]  # PEFT's DoRA on the fused layer
    merged = merged_state(spec, merge_loras(spec, tiny_model, [(str(tmp_path / "dora.safetensors"), 1.0)],
                                            tmp_path / "merged").out)
    torch.testing.assert_close(torch.cat([merged[f"{p}.weight"] for p in parts]), want, rtol=1e-5, atol=1e-6)
    tensors[f"{key}.dora_scale"] = torch.ones(1, w.shape[1])
    save_file(tensors, str(tmp_path / "columns.safetensors"))
    with pytest.raises(HvTuneError, match="dora_scale has shape"):
        read_lora(spec, tmp_path / "columns.safetensors", shapes)


def test_training_save_writes_every_layout_for_every_type(spec, tiny_model, tmp_path):
    """``save_trained_lora`` (the end of training, each checkpoint) takes PEFT's state dict of any type and
    writes ``save.formats``; each file reads back as the same update (DoRA's ComfyUI file from the base weights)."""
    from hv_tune.export.convert import check_same_effect
    from hv_tune.export.save import save_trained_lora

    shapes = spec.linear_shapes(str(tiny_model))
    targets = resolve_targets(spec, spec.load_transformer(LoadOptions(str(tiny_model))), "attn")
    for kind in ("dora", "lokr", "loha"):
        cfg = configs(targets)[kind]
        _, state = adapted(spec, tiny_model, cfg)
        out = tmp_path / kind
        lines = save_trained_lora(spec, out, state, cfg, ["diffusers", "comfyui", "kohya"], str(tiny_model))
        assert sum("written to" in line for line in lines) == 2
        want = peft_modules(state, cfg)
        for name in ("pytorch_lora_weights.safetensors", "lora_comfyui.safetensors", "lora_kohya.safetensors"):
            back = read_lora(spec, out / name, shapes)
            assert check_same_effect((want, {}), (back.modules, back.diffs), shapes, base_weights_of(spec, str(tiny_model)))


def test_rslora_dora_keeps_peft_scale(spec, tiny_model, tmp_path):
    """A DoRA trained with ``use_rslora`` (scale alpha / sqrt(r)) merges at PEFT's strength."""
    targets = resolve_targets(spec, spec.load_transformer(LoadOptions(str(tiny_model))), "attn")
    cfg = LoraConfig(r=4, lora_alpha=3, target_modules=targets, use_dora=True, use_rslora=True)
    transformer, state = adapted(spec, tiny_model, cfg)
    f = write_lora(spec, peft_modules(state, cfg), tmp_path / "rs.safetensors", "diffusers",
                   spec.linear_shapes(str(tiny_model)))
    merged = merge_loras(spec, tiny_model, [(str(f), 1.0)], tmp_path / "merged").out
    assert_merged_equals_adapted(merged_state(spec, merged), layer_outputs(transformer))
