"""The shape of the code: model knowledge lives in hv_tune/models/, imports have no cycles,
and a registered spec's facts (not constants elsewhere) decide buckets, checks and presets.

The scans read the source with ``ast`` (no imports of the scanned modules), so they fail with
the file and line of the offence.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from hv_tune.config import load_config
from hv_tune.data.buckets import choose_bucket, resolution_buckets
from hv_tune.data.plan import plan_items
from hv_tune.data.sources import scan_sources
from hv_tune.errors import ConfigError
from hv_tune.models import MODEL_SPECS, get_spec
from hv_tune.models.base import ModelSpec, VideoRules, condition_fields
from hv_tune.models.hunyuan_video import HunyuanVideoSpec
from tests.media_files import marked_frames, write_video

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("hv_tune", "curation")
#: what code outside hv_tune/models may import from it: the registry and the protocol
MODEL_IMPORTS_ALLOWED = {"hv_tune.models", "hv_tune.models.base"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, function-level ones included.

    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module (else ``pkg``).
    """
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out += [(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, node.lineno) for a in node.names]
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_models(name: str) -> bool:
    return name == "hv_tune.models" or name.startswith("hv_tune.models.")


def _strings(tree: ast.AST) -> list[tuple[str, int]]:
    """String constants with their lines, docstrings left out (they may name a family as an example)."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [(n.value, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def _bench() -> dict[str, Path]:
    return {f"bench.{p.stem}": p for p in sorted((REPO / "bench").glob("*.py"))}


def test_no_module_outside_models_names_a_family():
    """Family names, pipeline classes, family folders and the families' condition fields appear only
    under hv_tune/models/ (bench/ included: its defaults come from the registry)."""
    names = {s.name for s in MODEL_SPECS.values()} | {s.pipeline_class for s in MODEL_SPECS.values()}
    names |= {f for s in MODEL_SPECS.values() for f in condition_fields(s)}
    modules = _modules()
    offences = []
    for name, path in {**modules, **_bench()}.items():
        if _is_models(name):
            continue
        rel = path.relative_to(REPO)
        for imported, line in _imports(name, path, modules):
            if _is_models(imported) and imported not in MODEL_IMPORTS_ALLOWED:
                offences.append(f"{rel}:{line}: imports {imported} (ask the registry / the spec instead)")
        for text, line in _strings(ast.parse(path.read_text(encoding="utf-8"))):
            hits = names & set(re.findall(r"[\w.-]*\w", text))
            if hits:
                offences.append(f"{rel}:{line}: names {sorted(hits)} in {text[:60]!r}")
    assert not offences, "\n".join(offences)


def test_no_import_cycles():
    """hv_tune and curation import each other's modules without cycles (function-level imports too)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps = {_resolve(m, modules) for m, _ in _imports(name, path, modules)}
        graph[name] = {d for d in deps if d and d != name and d not in ancestors}
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:  # nxt is on the stack: the stack from nxt on is a cycle
                stack = [*path, node]
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "\n".join(cycles)


def _package(name: str) -> str:
    """The package a module counts for: ``hv_tune.data.cache`` -> ``hv_tune.data``; a top-level module is its own."""
    return ".".join(name.split(".")[:2])


def test_no_package_level_import_loop():
    """Packages import each other one way: no ``hv_tune.data`` -> ``hv_tune.memory`` -> ``hv_tune.data``
    even when no single module cycle closes it (each edge names one import that makes it)."""
    modules = _modules()
    edges: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        for imported, line in _imports(name, path, modules):
            dep = _resolve(imported, modules)
            if dep and _package(dep) != _package(name) and _package(name) != name.split(".")[0]:
                edges.setdefault(_package(name), {}).setdefault(_package(dep), f"{path.relative_to(REPO)}:{line}")
    loops = []
    for start in sorted(edges):  # a path from a package back to itself is a loop
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges.get(node, {})):
                if nxt == start:
                    hops = [*path, start]
                    loops.append(" -> ".join(f"{a} ({edges[a][b]})" for a, b in zip(hops, hops[1:])) + f" -> {start}")
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not loops, "\n".join(sorted(set(loops)))


def test_architecture_doc_lists_every_module():
    """docs/architecture.md names every module of hv_tune, curation and bench (a new file gets a line)."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    paths = [p for p in _modules().values() if p.name != "__init__.py"] + sorted((REPO / "bench").glob("*.py"))
    missing = [str(p.relative_to(REPO)) for p in paths if not re.search(rf"\b{re.escape(p.stem)}\b", doc)]
    assert not missing, f"add these to docs/architecture.md: {missing}"


def test_every_registered_spec_has_every_protocol_member():
    """The registry holds only complete specs (a family folder added without a fact fails here, not mid-run)."""
    members = {n for n in ModelSpec.__annotations__} | {
        n for n, v in vars(ModelSpec).items() if callable(v) and not n.startswith("_")}
    missing = {name: sorted(m for m in members if not hasattr(spec, m)) for name, spec in MODEL_SPECS.items()}
    assert not any(missing.values()), missing
    for spec in MODEL_SPECS.values():
        assert isinstance(spec.video, VideoRules) and spec.video.frames_ok(1) and spec.video.side_ok(512)


# ----------------------------------------------------------------------------- spec facts drive the data rules


class CoarseSpec(HunyuanVideoSpec):
    """A made-up family: 32-pixel sides, 8k+1 frames, 12 fps, its own presets."""

    name = "test-coarse-video"
    pipeline_class = "TestCoarsePipeline"
    video = VideoRules(pixel_multiple=32, frame_step=8, fps=12.0)
    memory_presets = {"24gb": {"model.base_dtype": "bf16", "memory.blocks_to_swap": 3}}
    lora_presets = {"qkv": HunyuanVideoSpec.lora_presets["attn"]}


@pytest.fixture
def coarse(monkeypatch):
    spec = CoarseSpec()
    monkeypatch.setitem(MODEL_SPECS, spec.name, spec)
    return spec


def _load(tmp_path: Path, *overrides: str):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    return load_config(None, [f"model.path={model}", f"output_dir={tmp_path / 'out'}", *overrides])


def test_spec_pixel_multiple_shapes_the_buckets():
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in resolution_buckets(256, 32))
    assert resolution_buckets(256, 32) != resolution_buckets(256, 16)
    assert choose_bucket(100, 70, resolution_buckets(256, 32), 32) == (96, 64)  # small source: floored to 32


def test_registered_spec_decides_config_checks(tmp_path, coarse):
    cfg = _load(tmp_path, f"model.name={coarse.name}", "data.resolution=256", "data.frame_buckets=[1,17]",
                "validation.height=64", "validation.width=96", "validation.frames=9", "lora.targets=qkv")
    assert cfg.data.fps == 12.0  # the spec's native rate
    for bad, key in (("data.resolution=240", "data.resolution"), ("data.frame_buckets=[1,13]", "data.frame_buckets[1]"),
                     ("validation.height=80", "validation.height"), ("lora.targets=attn", "lora.targets")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            _load(tmp_path, f"model.name={coarse.name}", "validation.height=64", "validation.width=96",
                  "validation.frames=9", "data.frame_buckets=[1,17]", "lora.targets=qkv", bad)
    # the same numbers are fine for the 16-pixel, 4k+1 family
    assert _load(tmp_path, "data.resolution=240", "data.frame_buckets=[1,13]").data.fps == get_spec("hunyuan-video").video.fps


def test_registered_spec_presets_fill_the_config(tmp_path, coarse):
    cfg = _load(tmp_path, f"model.name={coarse.name}", "memory.preset=24gb", "data.frame_buckets=[1,17]",
                "validation.height=64", "validation.frames=9", "lora.targets=qkv")
    assert (cfg.model.base_dtype, cfg.memory.blocks_to_swap) == ("bf16", 3)
    with pytest.raises(ConfigError, match="no 16gb preset for model 'test-coarse-video'"):
        _load(tmp_path, f"model.name={coarse.name}", "memory.preset=16gb")


def test_registered_spec_decides_planned_buckets(tmp_path, coarse):
    """A 24 fps clip planned for the coarse family: 32-pixel bucket, resampled to 12 fps, 8k+1 windows."""
    write_video(tmp_path / "clips" / "a.mp4", marked_frames(48, 200, 136, seed=1), fps=24)
    (tmp_path / "clips" / "a.txt").write_text("a clip")
    cfg = _load(tmp_path, f"model.name={coarse.name}", f"data.sources=[{{path: '{tmp_path / 'clips'}'}}]",
                "data.resolution=128", "data.frame_buckets=[1,17]", "validation.height=64", "validation.frames=9",
                "lora.targets=qkv")
    (item,) = plan_items(scan_sources(cfg.data), cfg.data, "m", coarse.video)
    assert item.height % 32 == 0 and item.width % 32 == 0 and item.frames == 17
    assert item.indices == list(range(0, 34, 2))  # every second frame of 24 fps = 12 fps
    (v1,) = plan_items(scan_sources(cfg.data), cfg.data, "m", get_spec("hunyuan-video").video)
    assert np.diff(v1.indices).tolist() == [2] * 16  # data.fps was resolved to 12 at load: it wins


def test_config_without_model_name_takes_the_family_of_the_folder(tmp_path):
    """No model.name: the family whose pipeline the folder's model_index.json names (presets included)."""
    for spec in MODEL_SPECS.values():
        folder = tmp_path / spec.name
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": spec.pipeline_class}))
        card = next(iter(spec.memory_presets))
        cfg = load_config(None, [f"model.path={folder}", f"output_dir={tmp_path / 'out'}", f"memory.preset={card}"])
        assert cfg.model.name == spec.name
        assert cfg.memory.blocks_to_swap == spec.memory_presets[card].get("memory.blocks_to_swap", 0)
    # a name that contradicts the folder stops at load (it used to run into a shape error at the first step)
    with pytest.raises(ConfigError, match=r"config key 'model.name': 'hunyuan-video', but .*hunyuan-video-1.5 holds a "
                                          r"HunyuanVideo15Pipeline model \('hunyuan-video-1.5'\); set model.name to"):
        load_config(None, [f"model.path={tmp_path / 'hunyuan-video-1.5'}", "model.name=hunyuan-video",
                           f"output_dir={tmp_path / 'out'}"])


#: hv_tune code curation must never reach: models, training, LoRA export, the latent cache
CURATION_FORBIDDEN = ("hv_tune.models", "hv_tune.training", "hv_tune.export", "hv_tune.memory", "hv_tune.data.cache",
                      "hv_tune.data.encode", "hv_tune.data.plan", "hv_tune.data.sampler", "hv_tune.lora",
                      "hv_tune.diffusion", "hv_tune.sampling", "hv_tune.config", "hv_tune.cli", "hv_tune.demo")


def test_curation_imports_no_model_training_export_or_cache_code():
    """curation builds on hv_tune's foundation (errors, io, typed config, media, the manifest
    format) only: no import chain from a curation module, function-level imports included,
    reaches model, training, export or cache code."""
    modules = _modules()
    deps = {name: {d for d in (_resolve(m, modules) for m, _ in _imports(name, path, modules)) if d and d != name}
            for name, path in modules.items()}
    lines = {name: {_resolve(m, modules): line for m, line in _imports(name, path, modules)}
             for name, path in modules.items()}
    offences = []
    for start in sorted(n for n in modules if n.split(".")[0] == "curation"):
        seen, stack = {start: [start]}, [start]
        while stack:
            node = stack.pop()
            for nxt in sorted(deps[node]):
                if nxt in seen:
                    continue
                seen[nxt] = [*seen[node], nxt]
                if any(nxt == f or nxt.startswith(f + ".") for f in CURATION_FORBIDDEN):
                    first = seen[nxt][1]
                    rel = modules[start].relative_to(REPO)
                    offences.append(f"{rel}:{lines[start][first]}: {' -> '.join(seen[nxt])}")
                    continue
                stack.append(nxt)
    assert not offences, "\n".join(offences)


AUDIO_CODECS = {"aac", "mp3", "libopus", "opus"}


def test_one_video_writer():
    """Video files are encoded only by hv_tune/media/writer.py (curation clips, sampling previews
    and the tests' inputs alike); an audio stream a test adds is not a video writer."""
    offences = []
    for folder in ("hv_tune", "curation", "tests", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel.as_posix() == "hv_tune/media/writer.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_stream":
                    first = node.args[0] if node.args else None
                    if not (isinstance(first, ast.Constant) and first.value in AUDIO_CODECS):
                        offences.append(f"{rel}:{node.lineno}: encodes video itself (use hv_tune.media.write_h264)")
    assert not offences, "\n".join(offences)


# ----------------------------------------------------------------------------- a new family is one folder


@pytest.fixture
def made_up_family():
    """The made-up family, registered by the one line in its own folder (importing it); removed after."""
    from hv_tune.models import unregister
    from tests.made_up_family import SPEC

    assert MODEL_SPECS.get(SPEC.name) is SPEC, "importing the family's folder registers it"
    yield SPEC
    unregister(SPEC.name)


def test_a_made_up_family_in_its_own_folder_trains_one_step_and_round_trips_its_lora(tmp_path, made_up_family):
    """tests/made_up_family (one text encoder whose fields have their own names, its own key table with a
    fused row and its own prefixes, a reference-image condition) is registered by one line in its own
    folder and nothing else: the cache stores its groups, training feeds the batch to its
    ``transformer_inputs``, and its LoRA goes through its key table into the original layout and back
    unchanged."""
    import torch

    from hv_tune.data.demo import write_demo_folder
    from hv_tune.export.lora_io import read_lora, write_lora
    from hv_tune.export.lora_math import delta_weight
    from hv_tune.training.trainer import train
    from tests.conftest import train_overrides

    spec = made_up_family
    model = spec.build_tiny(tmp_path / "model")
    assert not (model / "text_encoder_2").exists()  # one text encoder
    write_demo_folder(tmp_path / "clips", 2, 8, 32, 32)
    overrides = train_overrides(model, tmp_path / "cache", tmp_path / "out", **{
        "training.max_steps": 1, "training.batch_size": 1, "lora.targets": "attn"})
    cfg = load_config(None, [*overrides, f"data.sources=[{{path: '{tmp_path / 'clips'}'}}]"])
    assert cfg.model.name == spec.name  # found from the folder's model_index.json
    result = train(cfg)
    assert result.steps == 1
    cond = list((tmp_path / "cache" / "cond").glob("*.safetensors"))
    assert cond, "the cache stores the family's reference-image condition"
    from hv_tune.data.cache import CachedDataset

    item = CachedDataset(tmp_path / "cache")[(0, 0)]  # the union of its groups, under its own field names
    assert {"made_up_tokens", "made_up_token_mask", "made_up_summary", "reference_latents"} <= set(item)
    assert not {"prompt_embeds", "pooled_prompt_embeds"} & set(item)

    shapes = spec.linear_shapes(str(model))
    ours = read_lora(spec, result.lora_path, shapes)
    assert ours.family == spec.name and len(ours.modules) == 8  # q, k, v, out of 2 double blocks
    for layout, prefix in (("comfyui", "made_up_model.dbl."), ("kohya", "lora_made_up_dbl_")):
        path = write_lora(spec, ours.modules, tmp_path / f"{layout}.safetensors", layout, shapes)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
        assert names and all(k.startswith(prefix) for k in names), names[:3]
        assert any(".qkv." in k or "_qkv." in k for k in names)  # the fused row of its table
        back = read_lora(spec, path, shapes)
        assert sorted(back.modules) == sorted(ours.modules)
        for name, m in ours.modules.items():  # fusing and splitting re-factor the update: compare it, with float32 rounding
            torch.testing.assert_close(delta_weight(back.modules[name]), delta_weight(m), rtol=1e-4, atol=1e-6)
