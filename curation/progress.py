"""One progress line for a run, and the table of where its time went.

The line (tqdm, on stderr) counts files split out of all files, with its ETA, and shows clips
scored out of clips known so far, clips cut, and the current rate of each stage (over the last
``WINDOW`` seconds).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from tqdm.auto import tqdm

WINDOW = 10.0  # seconds over which the current rates are measured

# Stages in the order they run; the time of each is summed over all workers (busy seconds).
STAGES = ("hash", "probe", "scenes", "frames", "motion", "clip", "cut", "caption", "report", "export")


class Progress:
    """The progress line of one run (files, clips, rates, ETA)."""

    def __init__(self, files: int, captions: bool = False):
        self.bar = tqdm(total=files, desc="curate", unit="file", dynamic_ncols=True)
        self.clips = self.todo = self.done = self.cut = 0
        self.events: deque[tuple[float, str, int]] = deque()
        self.start = time.monotonic()

    def _event(self, stage: str, n: int) -> None:
        now = time.monotonic()
        self.events.append((now, stage, n))
        while self.events and self.events[0][0] < now - WINDOW:
            self.events.popleft()
        span = max(1e-3, min(WINDOW, now - self.start))  # the window, or the run's age while it is younger
        rate = {s: sum(k for _, st, k in self.events if st == s) / span for s in ("split", "score", "cut")}
        self.bar.set_postfix_str(
            f"clips {self.done}/{self.todo} scored, {self.cut} cut | split {rate['split']:.1f} files/s, "
            f"score {rate['score']:.1f} clips/s, cut {rate['cut']:.1f} clips/s", refresh=False)

    def file_done(self, clips: int, todo: int) -> None:
        self.clips += clips
        self.todo += todo
        self._event("split", 1)
        self.bar.update(1)

    def scored(self, n: int) -> None:
        self.done += n
        self._event("score", n)
        self.bar.refresh()

    def cut_done(self) -> None:
        self.cut += 1
        self._event("cut", 1)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def stage_table(stages: dict[str, float], wall_s: float) -> dict[str, Any]:
    """``{"wall_s", "stages": {name: {"seconds", "share"}}}``: each stage's busy time, summed over
    the processes that ran it, and its share of the wall time (stages overlap and run on several
    cores, so shares may add up to more than 1)."""
    names = [s for s in STAGES if stages.get(s)] + sorted(set(stages) - set(STAGES))
    return {"wall_s": round(wall_s, 3),
            "stages": {s: {"seconds": round(stages[s], 3), "share": round(stages[s] / max(wall_s, 1e-9), 3)}
                       for s in names if stages.get(s)}}


def format_stage_table(t: dict[str, Any]) -> str:
    """The end-of-run table of stage times."""
    lines = [f"{'stage':<12}{'seconds':>10}{'share of wall':>16}"]
    lines += [f"{name:<12}{v['seconds']:>10.2f}{v['share']:>15.0%} " for name, v in t["stages"].items()]
    lines += [f"{'wall':<12}{t['wall_s']:>10.2f}"]
    return "\n".join(lines)
