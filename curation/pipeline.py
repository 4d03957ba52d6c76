"""The curation run, as a table of contents: find -> probe + split -> score -> decide -> caption -> export.

Every result is stored in ``OUT_DIR/state`` as soon as it exists (append-only jsonl), keyed by
the source file's content hash (files) or a clip id made from it (clips), and by a fingerprint
of the settings that produced it. A re-run (after a crash, a SIGKILL, or with new thresholds)
reuses everything whose fingerprint matches; a source whose bytes changed is done again,
whatever its name, size or modification time say, and a renamed or moved one is reused.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from curation.config import CurationConfig, to_dict
from curation.content import UNREADABLE, relocate, with_content, with_content_ids
from curation.decisions import file_time, orphaned, page_caption_wins
from curation.errors import InputError
from curation.executors import make_executor
from curation.export import export_all
from curation.filters import decide
from curation.manifest import StateLog, fingerprint, public
from curation.review_log import Review, read_reviews
from curation.stages.caption import Captioner, CaptionFrames, caption_by_rule, edited_caption, source_caption
from curation.stages.clip_scores import ClipScores
from curation.stages.frames import SampleFrames
from curation.stages.motion import Motion
from curation.stages.probe import Probe, discover, output_marker
from curation.stages.scenes import SceneSplit
from hv_tune.data.manifest import ManifestVersionError, read_manifest
from hv_tune.errors import DataError
from hv_tune.io import atomic_write_text

# Bumped when hv_tune.media changes what a file contains (2: display rotation, EXIF, timestamps):
# results stored by an older version are recomputed.
MEDIA_VERSION = 2
SCORE_FIELDS = ("status", "reasons", "scores", "metrics", "embedding", "scored")


@dataclass
class RunResult:
    """What a run did: records, counts of model work, timings (never part of the manifest)."""

    records: list[dict[str, Any]]
    out_dir: Path
    clips_scored: int = 0
    clip_images_encoded: int = 0
    captions_generated: int = 0
    caption_calls: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)  # walked files not used, with the reason
    orphaned: list[dict[str, Any]] = field(default_factory=list)  # review decisions whose clip is gone
    stage_s: dict[str, float] = field(default_factory=dict)  # busy seconds per stage, summed over processes
    stage_table: dict[str, Any] = field(default_factory=dict)  # curation.progress.stage_table


@dataclass
class State:
    """The stored results of one OUT_DIR."""

    files: StateLog
    scores: StateLog
    captions: StateLog
    edits: StateLog  # the user's edits of clips/ID.txt, as written (the caption rule is applied on use)

    @classmethod
    def open(cls, out_dir: Path) -> State:
        d = Path(out_dir) / "state"
        return cls(StateLog(d / "files.jsonl", "content"), StateLog(d / "scores.jsonl"), StateLog(d / "captions.jsonl"),
                   StateLog(d / "caption_edits.jsonl"))


def fingerprints(cfg: CurationConfig) -> dict[str, str]:
    """Settings that decide each stored result; changing one recomputes only that result."""
    split = fingerprint(MEDIA_VERSION, cfg.probe, cfg.scenes)
    return {
        "split": split,
        "score": fingerprint(split, cfg.frames, cfg.motion, dataclasses.replace(cfg.clip, batch_size=0, device="")),
        "caption": fingerprint(dataclasses.replace(cfg.caption, enabled=True, batch_size=0, device="", overwrite=False)),
    }


def run(cfg: CurationConfig, input_dir: Path, out_dir: Path, stages: dict[str, Any] | None = None) -> RunResult:
    """Curate ``input_dir`` into ``out_dir`` (resumable).

    Args:
        cfg: the validated config.
        input_dir: folder walked recursively for videos and images.
        out_dir: manifest, clips, report and state go here.
        stages: optional pre-built stage objects by name (``clip``, ``caption``) so a caller can
            share loaded models across runs or read their call counters.
    """
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise InputError(f"input folder {input_dir} does not exist or is not a folder")
    check_folders(input_dir, out_dir)
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "state" / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    state, fps = State.open(out_dir), fingerprints(cfg)
    stages = stages or {}
    result = RunResult([], out_dir)
    skipped: list[dict[str, str]] = []
    walked = discover(input_dir, cfg.input, skipped, out_dir)
    if cfg.executor == "ray":
        files = split_files(cfg, walked, state, fps["split"], skipped)
        _write_inputs(out_dir, files, skipped)
        result.timings["split_s"] = time.perf_counter() - t0
        clips = [c for f in files for c in f["clips"]]
        clips = score_clips(cfg, clips, state, fps["score"], stages, result)
        result.timings["score_s"] = time.perf_counter() - t0 - result.timings["split_s"]
        return finish(cfg, clips, state, out_dir, stages, result, t0)
    clips = stream_files(cfg, walked, state, fps, stages, result, skipped)
    return finish(cfg, clips, state, out_dir, stages, result, t0)


def stream_files(cfg: CurationConfig, walked: list[dict[str, Any]], state: State, fps: dict[str, str],
                 stages: dict[str, Any], result: RunResult, skipped: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The local executor: split, score and cut as one stream over worker processes
    (``curation.stream``); returns every clip record with its stored scores."""
    from curation.stages.clip_scores import resolve_device
    from curation.stream import Stream
    from curation.workers import stream_threads

    t0 = time.perf_counter()
    clip_stage = stages.setdefault("clip", ClipScores(cfg.clip))
    images_before = getattr(clip_stage, "images_encoded", 0)
    reviews = read_reviews(result.out_dir)
    flow = Stream(cfg, state, fps, result.out_dir, clip_stage, reviews, result, skipped)
    try:
        with stream_threads(resolve_device(cfg.clip.device)):  # (a GPU's CLIP leaves the CPU to the workers)
            files = flow.run(walked)
        _write_inputs(result.out_dir, files, skipped)
        result.clip_images_encoded = getattr(clip_stage, "images_encoded", 0) - images_before
        clips = []
        for c in (c for f in files for c in f["clips"]):
            row = state.scores.get(c["id"], fps["score"]) if c["status"] == "pending" else None
            clips.append({**c, **{k: row[k] for k in SCORE_FIELDS}} if row else c)
        result.timings["stream_s"] = time.perf_counter() - t0
    except BaseException:
        flow.abort()
        raise
    try:
        flow.finish_cuts(decide(clips, cfg.filters, reviews))
    finally:
        result.stage_s.update(flow.times)
    result.timings["cut_s"] = time.perf_counter() - t0 - result.timings["stream_s"]
    return clips


def _write_inputs(out_dir: Path, files: list[dict[str, Any]], skipped: list[dict[str, str]]) -> None:
    write_json(out_dir / "state" / "skipped.json", sorted(skipped, key=lambda x: x["rel"]))
    write_json(out_dir / "state" / "inputs.json", [{k: f[k] for k in ("content", "rel", "source")} for f in files])


def finish(cfg: CurationConfig, clips: list[dict[str, Any]], state: State, out_dir: Path,
           stages: dict[str, Any], result: RunResult, t0: float) -> RunResult:
    """Decide (a person's decisions over the thresholds'), caption accepted clips, export.

    Shared by ``run``, ``refilter`` and ``apply_reviews``: every step that writes outputs reads
    ``OUT/review.jsonl`` afresh, so human decisions and captions hold in all of them.
    """
    reviews = read_reviews(out_dir)
    records = decide(clips, cfg.filters, reviews)
    t1 = time.perf_counter()
    records = caption_clips(cfg, records, state, out_dir, stages, result, reviews)
    result.timings["caption_s"] = time.perf_counter() - t1
    result.stage_s["caption"] = result.stage_s.get("caption", 0.0) + result.timings["caption_s"]
    skipped_path = out_dir / "state" / "skipped.json"
    skipped = json.loads(skipped_path.read_text(encoding="utf-8")) if skipped_path.is_file() else []
    # captions we wrote or stored (model, last manifest, the page's by the rule): to tell ours from the user's
    stored: dict[str, set[str]] = {k: {row["caption"]} for k, row in state.captions.rows.items() if row.get("caption")}
    for cid, text in _written_captions(out_dir).items():
        stored.setdefault(cid, set()).add(text)
    for cid, review in reviews.items():
        if review.caption:
            stored.setdefault(cid, set()).add(caption_by_rule(review.caption, cfg.caption.trigger_word)[0])
    result.orphaned = orphaned(records, reviews)
    result.records = export_all(cfg, records, out_dir, skipped, stored, result.orphaned)
    result.skipped = skipped
    result.timings["total_s"] = time.perf_counter() - t0
    record_stage_times(out_dir, result, time.perf_counter() - t1 - result.timings["caption_s"])
    return result


def record_stage_times(out_dir: Path, result: RunResult, export_s: float) -> None:
    """Add each stage's time and share of the wall time to ``summary.json`` (``stages``, ``wall_s``)."""
    from curation.progress import stage_table

    result.stage_s["export"] = result.stage_s.get("export", 0.0) + export_s
    result.stage_table = stage_table(result.stage_s, result.timings["total_s"])
    path = out_dir / "summary.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    write_json(path, {**data, **result.stage_table})


def check_folders(input_dir: Path, out_dir: Path) -> None:
    """Refuse an input folder that is an output (this run's or an earlier one's).

    Raises:
        InputError: naming the folder and what to pass instead.
    """
    if input_dir.resolve() == out_dir.resolve():
        raise InputError(f"--out {out_dir} is the input folder: give an output folder of its own "
                         "(outputs are never input; inside the input folder is fine)")
    marker = output_marker(input_dir)
    if marker:
        raise InputError(f"input folder {input_dir} is the output of a curation run (has {marker}); "
                         "curate the original videos, or re-filter this output with `python -m curation filter`")


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")


def split_files(cfg: CurationConfig, files: list[dict[str, Any]], state: State, fp: str,
                skipped: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Probe and scene-split files whose content is not stored with the same settings.

    Files are keyed by a hash of their bytes (``curation.content``): a stored split of the same
    bytes is reused wherever the file now is; a second file with the same bytes as one already
    in this walk is appended to ``skipped`` (it would give the same clips twice).
    """
    done, todo, first = [], [], {}
    for f in map(with_content, files):
        if f["content"] in first:
            skipped.append({"rel": f["rel"], "reason": f"same content as {first[f['content']]} (curated once)"})
            continue
        first[f["content"]] = f["rel"]
        row = state.files.get(f["content"], fp)
        if row and not f.get("error"):
            done.append(relocate(row, f))
        else:
            todo.append(f)
    probe = Probe(cfg.probe)
    try:
        for rec in make_executor(cfg).run([probe, SceneSplit(cfg.scenes)], todo, "split", unit="file"):
            rec = with_content_ids({**public(rec), "fingerprint": fp})
            state.files.append(rec)  # (a file that could not be read is tried again on every run)
            done.append(rec)
    finally:
        probe.close()
    return sorted(done, key=lambda r: r["rel"])


def score_clips(cfg: CurationConfig, clips: list[dict[str, Any]], state: State, fp: str,
                stages: dict[str, Any], result: RunResult) -> list[dict[str, Any]]:
    """Frames -> motion -> CLIP for every pending clip without stored scores; store each at once."""
    todo = [c for c in clips if c["status"] == "pending" and not state.scores.get(c["id"], fp)]
    clip_stage = stages.setdefault("clip", ClipScores(cfg.clip))
    chain = [SampleFrames(cfg.frames, cfg.motion), Motion(cfg.motion), clip_stage]
    images_before = getattr(clip_stage, "images_encoded", 0)
    for rec in make_executor(cfg).run(chain, todo, "score"):
        row = {k: rec.get(k) for k in SCORE_FIELDS}
        state.scores.append({"id": rec["id"], "fingerprint": fp, **row, "scored": rec["status"] == "pending"})
        result.clips_scored += 1
    result.clip_images_encoded = getattr(clip_stage, "images_encoded", 0) - images_before
    out = []
    for c in clips:
        row = state.scores.get(c["id"], fp) if c["status"] == "pending" else None
        out.append({**c, **{k: row[k] for k in SCORE_FIELDS}} if row else c)
    return out


def caption_clips(cfg: CurationConfig, records: list[dict[str, Any]], state: State, out_dir: Path,
                  stages: dict[str, Any], result: RunResult, reviews: dict[str, Review] | None = None,
                  ) -> list[dict[str, Any]]:
    """Captions for accepted clips: a person's (the page's or an edited ``clips/ID.txt``, the newest
    of the two), else the source's own ``.txt``, else stored, else the model's."""
    fp = fingerprints(cfg)["caption"]
    clips_dir = out_dir / "clips"
    written = _written_captions(out_dir)
    reviews = reviews or {}
    todo, out = [], []
    for rec in records:
        rec = dict(rec)
        if rec["status"] == "accepted":
            stored = state.captions.get(rec["id"], fp)
            review = reviews.get(rec["id"])
            page = caption_by_rule(review.caption, cfg.caption.trigger_word)[0] if review and review.caption else None
            ours = {c for c in (written.get(rec["id"]), (stored or {}).get("caption"), page) if c}
            user = user_caption(rec, clips_dir, ours, state.edits, review)
            if user is not None and user[2] == "user" and cfg.caption.overwrite:
                user = None  # caption.overwrite: the model's caption replaces the user's files (not the page's)
            if user is not None:  # the person's own text follows the caption rule too (trigger word included)
                caption, edits = caption_by_rule(user[0], cfg.caption.trigger_word)
                rec.update(caption=caption, caption_source=user[2], caption_edits=edits)
                if user[1]:
                    rec["probe_notes"] = [*rec.get("probe_notes", []), user[1]]
            elif stored is not None:
                caption, edits = caption_by_rule(stored["caption"], cfg.caption.trigger_word)
                rec.update(caption=caption, caption_source="model", caption_edits=sorted({*stored.get("edits", []), *edits}))
            elif cfg.caption.enabled:
                todo.append(rec)
        out.append(rec)
    if todo:
        captioner = stages.setdefault("caption", Captioner(cfg.caption))
        before = (captioner.clips_captioned, captioner.generate_calls)
        chain = [CaptionFrames(cfg.caption), captioner]
        done = {}
        for rec in make_executor(cfg).run(chain, todo, "caption"):
            if rec.get("caption_source") == "model":
                edits = rec.get("caption_edits", [])
                state.captions.append({"id": rec["id"], "fingerprint": fp, "caption": rec["caption"], "edits": edits})
                done[rec["id"]] = (rec["caption"], edits)
        result.captions_generated = captioner.clips_captioned - before[0]
        result.caption_calls = captioner.generate_calls - before[1]
        for rec in out:
            if rec["id"] in done:
                rec.update(caption=done[rec["id"]][0], caption_source="model", caption_edits=done[rec["id"]][1])
    return out


def user_caption(rec: dict[str, Any], clips_dir: Path, ours: set[str], edits: StateLog,
                 review: Review | None = None) -> tuple[str, str | None, str] | None:
    """A person's caption text, ``(text, note, caption_source)`` or None.

    The newest of the page's caption (``review``, ``human``) and an edit of ``clips/ID.txt``
    (a new one, stored in ``edits`` with the file's time, or an earlier stored one; ``user``)
    wins; without either, the source's own ``.txt`` (``user``).
    """
    edit = edited_caption(rec, clips_dir, ours)
    earlier = edits.get(rec["id"])
    if edit is not None:
        when = file_time(clips_dir / f"{rec['id']}.txt")
        if (earlier or {}).get("text") != edit[0]:
            edits.append({"id": rec["id"], "text": edit[0], "time": when})
        else:
            when = earlier.get("time") or when
        file_edit = (edit[0], edit[1], when)
    else:
        file_edit = (earlier["text"], None, earlier.get("time")) if earlier else None
    if page_caption_wins(review, file_edit[2] if file_edit else None):
        return review.caption, None, "human"
    if file_edit is not None:
        return file_edit[0], file_edit[1], "user"
    own = source_caption(rec)
    return (*own, "user") if own else None


def _written_captions(out_dir: Path) -> dict[str, str]:
    """Clip id -> the caption the last run wrote to ``clips/ID.txt`` (from its manifest): a file
    still holding it is ours, so a changed trigger word or source caption is applied, not kept."""
    try:
        rows = read_manifest(out_dir)
    except ManifestVersionError:  # written by a newer hv-tune: never overwritten by a guess
        raise
    except DataError:  # no earlier run, or a damaged manifest: every differing clips/ID.txt is an edit
        return {}
    return {r["id"]: r["caption"] for r in rows if isinstance(r, dict) and r.get("id") and r.get("caption")}


def refilter(cfg: CurationConfig, out_dir: Path, stages: dict[str, Any] | None = None) -> RunResult:
    """Re-apply ``cfg.filters`` to the stored scores of ``out_dir``: no decoding, no CLIP.

    Captions are generated only for clips that become accepted and have none yet.
    """
    out_dir, t0 = Path(out_dir), time.perf_counter()
    inputs_path = out_dir / "state" / "inputs.json"
    if not (out_dir / "state" / "files.jsonl").is_file():
        raise InputError(f"{out_dir} has no stored run (state/files.jsonl); run `python -m curation run` first")
    if not inputs_path.is_file():
        raise InputError(f"{out_dir} was made by an older version (no state/inputs.json); "
                         "run `python -m curation run` again (it recomputes what it must)")
    state, fps = State.open(out_dir), fingerprints(cfg)
    files = []
    for f in json.loads(inputs_path.read_text(encoding="utf-8")):
        row = state.files.get(f["content"], fps["split"])
        if row is None:
            raise InputError(f"{f['rel']} has no stored split; finish the run with `python -m curation run`")
        files.append(relocate(row, f))
    clips = []
    for f in files:
        for c in f["clips"]:
            row = state.scores.get(c["id"], fps["score"]) if c["status"] == "pending" else None
            if c["status"] == "pending" and row is None:
                raise InputError(f"clip {c['id']} has no stored scores; finish the run with `python -m curation run`")
            clips.append({**c, **{k: row[k] for k in SCORE_FIELDS}} if row else c)
    check_unchanged(files, out_dir)
    return finish(cfg, clips, state, out_dir, stages or {}, RunResult([], out_dir), t0)


def check_unchanged(files: list[dict[str, Any]], out_dir: Path) -> None:
    """Before ``filter`` may cut new clips from a source, its bytes must be those that were scored.

    Only sources with a scored clip that has no exported file yet are hashed (``filter`` stays
    quick); a source that is gone is left to the export, which records it as an error.

    Raises:
        InputError: naming the changed file and the command that redoes it.
    """
    clips_dir = out_dir / "clips"
    for f in files:
        if f["content"].startswith(UNREADABLE) or not Path(f["source"]).is_file():
            continue
        cut = {p.stem for p in clips_dir.glob("*") if p.suffix in (".mp4", ".png")} if clips_dir.is_dir() else set()
        if all(c["status"] != "pending" or c["id"] in cut for c in f["clips"]):
            continue
        if with_content(f)["content"] != f["content"]:
            raise InputError(f"{f['source']} changed since it was scored; run `python -m curation run` on its "
                             "folder again (it redoes only the changed files), then filter")


def apply_thresholds(out_dir: Path, overrides: list[str] = (), stages: dict[str, Any] | None = None) -> RunResult:
    """``curation filter``: the stored config of ``out_dir`` with ``overrides`` (``filters.*``,
    ``export.*``, ``caption.*``) re-applied to the stored scores; human decisions hold. The new
    config is stored on success. Also what the review page's "apply" calls.

    Raises:
        ConfigError: an override of another section (it needs a new ``curation run``) or a bad value.
        InputError: ``out_dir`` is not the output of ``curation run``.
    """
    from curation.config import FILTER_SECTIONS, load_config
    from curation.errors import ConfigError

    out_dir = Path(out_dir)
    for item in overrides:
        if item.split("=", 1)[0].split(".")[0] not in FILTER_SECTIONS:
            raise ConfigError(f"`filter` changes only {', '.join(s + '.*' for s in FILTER_SECTIONS)}; "
                              f"{item!r} needs a new `python -m curation run`")
    stored = out_dir / "state" / "config.yaml"
    if not stored.is_file():
        raise InputError(f"{stored} not found: {out_dir} is not the output of `python -m curation run`")
    cfg = load_config(stored, list(overrides))
    result = refilter(cfg, out_dir, stages)
    atomic_write_text(stored, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return result


def apply_reviews(out_dir: Path, stages: dict[str, Any] | None = None) -> RunResult:
    """Apply ``OUT/review.jsonl`` to ``out_dir`` now: the thresholds of its last run or filter, the
    person's decisions and captions over them; clips/, manifest, report and summary rewritten.
    What the review page calls after an action (no decoding or scoring; a clip a person accepted
    that has no caption yet is captioned)."""
    return apply_thresholds(out_dir, [], stages)
