"""The local run as a stream: split files -> sample frames + motion -> CLIP -> cut, all at once.

Worker processes (``curation.workers``) probe and split files, sample each clip's frames and
score its motion, and cut accepted clips; the calling process hashes files, runs the model
(CLIP) and stores every result the moment it exists (``state/*.jsonl``: a SIGKILL loses at
most the work in flight). So a file's clips are scored while later files are still being
split, and a clip that passes the thresholds is cut while others are scored.

Results do not depend on the number of workers or on timing: files are split in any order, but
clips reach CLIP in the order of a one-worker run (sorted by file, then span) and in the same
batches (``batch_size`` clips), so the model sees exactly the same inputs.

Memory is bounded: at most ``2 x workers`` jobs are in flight, and no new file or clip is
started while ``frames_in_flight`` scoring frames wait for CLIP (the next clips CLIP needs are
always started, so the stream cannot stall). A worker holds at most 64 detection frames
(scene split), a clip's sampled frames, or 8 full-size frames (cutting).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from curation.config import CurationConfig
from curation.content import relocate, with_content, with_content_ids
from curation.filters import decide
from curation.manifest import public
from curation.progress import Progress
from curation.report import strip_path, thumbs_dir
from curation.workers import cut_job, make_pool, sample_job, split_job, thumbs_job

SCORE_FIELDS = ("status", "reasons", "scores", "metrics", "embedding", "scored")


class Stream:
    """One local run's flow over a pool; ``run(files)`` returns the split file rows in walk order."""

    def __init__(self, cfg: CurationConfig, state: Any, fps: dict[str, str], out_dir: Path, clip_stage: Any,
                 reviews: dict[str, Any], result: Any, skipped: list[dict[str, str]]):
        self.cfg, self.state, self.fps, self.out_dir = cfg, state, fps, out_dir
        self.clip, self.reviews, self.result, self.skipped = clip_stage, reviews, result, skipped
        self.pool = make_pool(cfg)
        self.limit = 2 * max(1, self.pool.workers)
        self.pending: dict[Future, tuple] = {}
        self.rows: dict[int, dict[str, Any]] = {}  # walk index -> split file row
        self.samples: list[tuple] = []  # heap of ((file, chunk), clips) waiting for a worker
        self.chunks: dict[int, int] = {}  # walk index -> number of sample chunks (known once split)
        self.sampled: dict[tuple[int, int], list[dict[str, Any]]] = {}  # done, waiting for their turn
        self.next = (0, 0)  # the next (file, chunk) CLIP takes
        self.queue: deque[dict[str, Any]] = deque()  # clips in CLIP order
        self.cuts: deque[tuple] = deque()
        self.held = 0  # scoring frames held for CLIP
        self.times: Counter[str] = Counter()
        self.cut_ids: set[str] = set()
        self.files_left: Iterator | None = None

    # ------------------------------------------------------------------ main loop

    def run(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Split, score and (speculatively) cut ``files``; return their split rows."""
        self.progress = Progress(len(files), self.cfg.caption.enabled)
        self.files_left = enumerate(files)
        self.n_files = len(files)
        ok = False
        try:
            while True:
                self._submit()
                if len(self.queue) >= self.cfg.batch_size or (self.queue and self._upstream_done()):
                    self._score_batch()
                    continue
                if not self.pending:
                    if self.files_left is None and not self.samples:
                        break
                    continue
                done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    self._handle(fut)
            ok = True
        finally:
            if not ok:
                self.abort()
        return [self.rows[i] for i in sorted(self.rows)]

    def abort(self) -> None:
        """Stop the workers now (Ctrl-C, an error): what is stored stays stored."""
        self.progress.close()
        self.pool.close(cancel=True)

    def finish_cuts(self, records: list[dict[str, Any]]) -> None:
        """After the decisions: cut every accepted clip not cut yet and make the report's
        thumbnails, over the workers; then the pool is closed."""
        try:
            if self.cfg.export.copy_clips:
                for rec in records:
                    if rec["status"] == "accepted":
                        self._queue_cut(rec)
            cache = thumbs_dir(self.out_dir)
            by_file: dict[str, list[dict[str, Any]]] = {}
            for rec in records:
                if rec["status"] != "error" and rec["end_frame"] > rec["start_frame"]:
                    if not strip_path(cache, rec).is_file():
                        by_file.setdefault(rec["source"], []).append(rec)
            thumbs = [(thumbs_job, recs, self.cfg.frames.positions, self.cfg.export.thumb_height, str(cache))
                      for recs in by_file.values()]
            while self.cuts or thumbs or self.pending:
                while len(self.pending) < self.limit and (self.cuts or thumbs):
                    job = self.cuts.popleft() if self.cuts else thumbs.pop(0)
                    self._start(("cut" if job[0] is cut_job else "thumbs", 0), *job)
                if self.pending:
                    done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                    for fut in done:
                        self._handle(fut)
            self.progress.close()
            self.pool.close()
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ scheduling

    def _start(self, tag: tuple, fn: Any, *args: Any) -> None:
        self.pending[self.pool.submit(fn, *args)] = tag

    def _upstream_done(self) -> bool:
        return self.files_left is None and not self.samples and not any(
            t[0] in ("split", "sample") for t in self.pending.values())

    def _submit(self) -> None:
        """Start jobs while there is room: the next clips CLIP needs, then cuts, then more files."""
        cap = self.cfg.frames_in_flight
        while len(self.pending) < self.limit:
            if self.samples and (self.samples[0][0] == self.next or self.held < cap):
                key, clips = heapq.heappop(self.samples)
                self._start(("sample", key), sample_job, self.cfg, clips, str(thumbs_dir(self.out_dir)))
            elif self.cuts:
                self._start(("cut", 0), *self.cuts.popleft())
            elif self.files_left is not None and (self.held < cap or not self.pending):
                self._next_file()
            else:
                return

    def _next_file(self) -> None:
        """Hash the next file of the walk: stored (reuse its split) or started on a worker."""
        item = next(self.files_left, None)
        if item is None:
            self.files_left = None
            return
        i, f = item
        t0 = time.perf_counter()
        f = with_content(f)
        self.times["hash"] += time.perf_counter() - t0
        first = self.first = getattr(self, "first", {})
        if f["content"] in first:
            self.skipped.append({"rel": f["rel"], "reason": f"same content as {first[f['content']]} (curated once)"})
            self._split_done(i, None)
            return
        first[f["content"]] = f["rel"]
        row = self.state.files.get(f["content"], self.fps["split"])
        if row and not f.get("error"):
            self._split_done(i, relocate(row, f))
        else:
            self._start(("split", (i, -1)), split_job, self.cfg, f)

    def _split_done(self, i: int, row: dict[str, Any] | None) -> None:
        """A file's row is known: queue its clips without stored scores for sampling."""
        if row is not None:
            self.rows[i] = row
        fp, bs = self.fps["score"], self.cfg.batch_size
        todo = [c for c in (row or {}).get("clips", []) if c["status"] == "pending"
                and not self.state.scores.get(c["id"], fp)]
        chunks = [todo[k : k + bs] for k in range(0, len(todo), bs)]
        self.chunks[i] = len(chunks)
        for k, clips in enumerate(chunks):
            heapq.heappush(self.samples, ((i, k), clips))
        self.progress.file_done(len((row or {}).get("clips", [])), len(todo))
        self._feed()

    def _feed(self) -> None:
        """Move sampled clips to the CLIP queue in walk order."""
        while True:
            i, k = self.next
            if i >= self.n_files or i not in self.chunks:
                return
            if k >= self.chunks[i]:
                self.next = (i + 1, 0)
                continue
            if (i, k) not in self.sampled:
                return
            self.queue.extend(self.sampled.pop((i, k)))
            self.next = (i, k + 1)

    # ------------------------------------------------------------------ results

    def _handle(self, fut: Future) -> None:
        kind, key = self.pending.pop(fut)
        value, seconds = fut.result()  # a worker's error (a full volume) stops the run here
        self.times.update(seconds)
        if kind == "split":
            rec = with_content_ids({**public(value), "fingerprint": self.fps["split"]})
            self.state.files.append(rec)  # (a file that could not be read is tried again on every run)
            self._split_done(key[0], rec)
        elif kind == "sample":
            self.held += sum(len(c.get("_frames") if c.get("_frames") is not None else ()) for c in value)
            self.sampled[key] = value
            self._feed()
        elif kind == "cut":
            self.progress.cut_done()

    def _score_batch(self) -> None:
        """CLIP on the next ``batch_size`` clips; store each score row; queue the cuts."""
        batch = [self.queue.popleft() for _ in range(min(self.cfg.batch_size, len(self.queue)))]
        frames = sum(len(c.get("_frames") if c.get("_frames") is not None else ()) for c in batch)
        t0 = time.perf_counter()
        out = self.clip(batch)
        self.times["clip"] += time.perf_counter() - t0
        self.held -= frames
        fp = self.fps["score"]
        for rec in out:
            row = {k: rec.get(k) for k in SCORE_FIELDS}
            self.state.scores.append({"id": rec["id"], "fingerprint": fp, **row, "scored": rec["status"] == "pending"})
            self.result.clips_scored += 1
            if self.cfg.export.copy_clips and rec["status"] == "pending":
                if decide([{**rec, "scored": True}], self.cfg.filters, self.reviews)[0]["status"] == "accepted":
                    self._queue_cut(rec)  # before the near-duplicate check: a duplicate's file is removed later
        self.progress.scored(len(out))

    def _queue_cut(self, rec: dict[str, Any]) -> None:
        path = self.out_dir / "clips" / f"{rec['id']}{'.png' if rec['kind'] == 'image' else '.mp4'}"
        if rec["id"] in self.cut_ids or path.exists():
            return
        self.cut_ids.add(rec["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        self.cuts.append((cut_job, clean, str(path), self.cfg.export.crf))
