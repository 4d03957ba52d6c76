"""Shared fixtures: a tiny random HunyuanVideo on disk and small caches built through our code."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from hv_tune.config import load_config  # noqa: E402
from hv_tune.data.cache import CacheEntry, Group, write_group, write_index  # noqa: E402
from hv_tune.data.demo import write_demo_folder  # noqa: E402
from hv_tune.data.encode import build_cache  # noqa: E402
from hv_tune.media.writer import thread_scheduling  # noqa: E402
from hv_tune.models import LoadOptions, get_spec  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# What tools write under the repository while tests run (interpreter caches, the venv), not the tests.
TOOL_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
_TREE = pytest.StashKey[dict]()


def working_tree_listing(root: Path = REPO) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` outside ``TOOL_DIRS``: relative path -> (size, mtime in ns)."""
    listing = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in TOOL_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder, name)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            listing[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return listing


def pytest_sessionstart(session):
    session.config.stash[_TREE] = working_tree_listing()


def pytest_sessionfinish(session, exitstatus):
    """No test may write the working tree (e.g. `runs/` through a config's relative `output_dir`)."""
    before = session.config.stash.get(_TREE, None)
    if before is None:
        return
    after = working_tree_listing()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        shown = "\n  ".join(changed[:20]) + (f"\n  ... and {len(changed) - 20} more" if len(changed) > 20 else "")
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"\nERROR: the tests changed {len(changed)} file(s) in the working tree {REPO}:\n  {shown}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _run_outside_the_working_tree(tmp_path_factory, monkeypatch):
    """Every test runs in a fresh temporary folder, so relative paths (the shipped configs' `runs/...`)
    never reach the repository; tests name repository files through ``REPO``."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def spec():
    return get_spec("hunyuan-video")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, spec) -> Path:
    """A tiny random model folder written by the same code as `finetune.py tiny-model`."""
    return spec.build_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory) -> Path:
    """6 generated clips (8 frames, 24 fps, 32x32) + one still image, with .txt captions."""
    folder = tmp_path_factory.mktemp("clips")
    write_demo_folder(folder, 6, 8, 32, 32)
    return folder


def cache_config(model: Path, folder: Path, cache: Path, *extra: str):
    return load_config(None, [f"model.path={model}", f"data.cache_dir={cache}", f"data.sources=[{{path: {folder}}}]",
                              "data.frame_buckets=[1,5]", "data.resolution=32", *extra])


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory, spec, tiny_model, demo_folder) -> Path:
    """The demo folder encoded by our cache stage (6 clips of 5 frames + 1 image)."""
    out = tmp_path_factory.mktemp("cache")
    summary = build_cache(spec, cache_config(tiny_model, demo_folder, out), "cpu")
    assert summary.items == 7 and not summary.skipped, summary.table()
    return out


def write_fixed_latent_cache(spec, model: Path, out: Path, latents: list[torch.Tensor], prompts: list[str],
                             text_fn=None) -> Path:
    """A cache whose posteriors are (almost) deterministic: mean = latent [C, F, H, W], logvar = -30;
    pixel frames and sizes from the spec's VAE factors (v1 4x/8x, 1.5 4x/16x). ``text_fn`` maps the
    encoded text fields before they are written (e.g. to drop padding)."""
    enc = spec.text.load(LoadOptions(str(model)))
    entries = []
    t, s = spec.vae_scale_factor_temporal, spec.vae_scale_factor_spatial
    for i, (lat, prompt) in enumerate(zip(latents, prompts)):
        frames = (lat.shape[1] - 1) * t + 1
        text = spec.text.encode(enc, [prompt], frames)
        text = text_fn(text) if text_fn else text
        t_rel = write_group(out, "text", f"t{i}", {k: v[0] for k, v in text.items()})
        l_rel = write_group(out, "latents", f"l{i}", {"latent_mean": lat, "latent_logvar": torch.full_like(lat, -30.0)})
        entries.append(CacheEntry(f"item{i}", frames, lat.shape[2] * s, lat.shape[3] * s, [prompt],
                                  files={"latents": l_rel}, caption_files={"text": [t_rel]}))
    groups = {g.name: Group(g.fields, g.role == "text") for g in spec.item_encoders if g.role != "condition"}
    write_index(out, entries, groups)
    return out


def train_overrides(model: Path, cache: Path, out: Path, **extra) -> list[str]:
    base = {
        "model.path": str(model),
        "data.cache_dir": str(cache),
        "output_dir": str(out),
        "lora.rank": 4,
        "lora.alpha": 2,
        "training.max_steps": 6,
        "training.learning_rate": 1e-3,
        "training.checkpoint_every": 0,
        "training.batch_size": 2,
        "training.lr_warmup_steps": 0,
        "data.frame_buckets": [5],
        "data.resolution": 32,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def hv15_tiny(tmp_path_factory) -> Path:
    """A tiny random HunyuanVideo 1.5 text-to-video folder (read only: copy it to change it)."""
    return get_spec("hunyuan-video-1.5").build_tiny(tmp_path_factory.mktemp("hv15") / "model")


@pytest.fixture(scope="session")
def hv15_i2v_tiny(tmp_path_factory) -> Path:
    """A tiny random HunyuanVideo 1.5 image-to-video folder (`tiny-model --model-name hunyuan-video-1.5-i2v`)."""
    return get_spec("hunyuan-video-1.5-i2v").build_tiny(tmp_path_factory.mktemp("hv15i2v") / "model", seed=0)


@pytest.fixture(scope="session")
def hv15_i2v_cache(tmp_path_factory, hv15_i2v_tiny, demo_folder) -> Path:
    """The 6 demo clips (5 frames, 32x32) cached through the I2V spec, first-frame conditions included."""
    out = tmp_path_factory.mktemp("hv15i2vcache")
    cfg = cache_config(hv15_i2v_tiny, demo_folder, out, "model.name=hunyuan-video-1.5-i2v", "data.frame_buckets=[5]",
                       "data.caption_dropout=0.5")
    summary = build_cache(get_spec("hunyuan-video-1.5-i2v"), cfg, "cpu")
    assert summary.items == 6 and summary.conditions_encoded == 6, summary.table()
    return out


@pytest.fixture(autouse=True)
def _thread_scheduling_unchanged():
    """No test may leave the test process's main thread with another scheduling policy: a library
    that makes it real-time (SVT-AV1 as root does) lets one spinning thread starve the others, and a
    later test hangs far from the cause. Restored here, and the test that changed it fails."""
    before = thread_scheduling()
    yield
    after = thread_scheduling()
    if after != before:
        os.sched_setscheduler(0, *before)
        pytest.fail(f"the test changed this thread's scheduling policy/priority {before} -> {after}")


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests are skipped where no CUDA device is (the marker's promise in pyproject.toml)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def memorisation_ratios(pipe, prompt: str, x0: torch.Tensor, seeds=(0, 1)) -> list[float]:
    """Per seed, ``|sample - x0| / |sample - noise|`` of a 30-step, 16x16, one-frame latent sample of
    ``pipe`` (HunyuanVideo, guidance 1): near 0 when the model learned to produce the memorised latent
    ``x0`` ``[1, 4, 1, 2, 2]``, near 1 or above when it did not."""
    out = []
    for seed in seeds:
        noise = torch.randn(1, 4, 1, 2, 2, generator=torch.Generator().manual_seed(seed))
        sample = pipe(prompt=prompt, height=16, width=16, num_frames=1, num_inference_steps=30, guidance_scale=1.0,
                      output_type="latent", generator=torch.Generator().manual_seed(seed)).frames
        out.append(((sample - x0).norm() / (sample - noise).norm()).item())
    return out
