#!/usr/bin/env python
"""`make demo` wall time of several checkouts, measured side by side (alternating runs).

Each checkout must have its `.venv` installed (`make install`), so only the demo itself is
timed: generated videos -> curation with the tiny models -> cache -> LoRA training -> sample.
Before each run the checkout's `runs/` is removed (the demo reuses what is there). Prints one
JSON object: each checkout's commit and its wall times, their medians, and each median's ratio
to the first checkout's.

    python bench/demo.py /path/to/old-clone /path/to/new-clone [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path


def demo_seconds(repo: Path) -> float:
    """Wall seconds of one `make demo` in ``repo`` from an empty `runs/`."""
    shutil.rmtree(repo / "runs", ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(["make", "-C", str(repo), "demo"], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repos", nargs="+", type=Path, help="checkouts with an installed .venv")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {str(r): [] for r in args.repos}
    for _ in range(args.repeats):
        for repo in args.repos:  # alternating, so load on the machine falls on both alike
            times[str(repo)].append(round(demo_seconds(repo), 1))
    medians = {r: statistics.median(t) for r, t in times.items()}
    first = medians[str(args.repos[0])]
    commits = {str(r): subprocess.run(["git", "-C", str(r), "rev-parse", "--short", "HEAD"], capture_output=True,
                                      text=True).stdout.strip() for r in args.repos}
    print(json.dumps({"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                      "runs": {r: {"commit": commits[r], "seconds": t, "median": medians[r],
                                   "ratio_to_first": round(medians[r] / first, 3)} for r, t in times.items()}},
                     indent=1))


if __name__ == "__main__":
    main()
