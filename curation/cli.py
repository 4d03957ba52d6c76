"""Command line: ``python -m curation VERB ...``. Each verb parses, then calls one function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from curation.errors import CurationError
from hv_tune.library_logs import drop_unactionable_library_logs

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "curation.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m curation",
                                description="Curate a folder of videos into scored, filtered, captioned clips.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    r = sub.add_parser("run", help="probe, split, score, filter, caption and export INPUT_DIR (resumable)")
    r.add_argument("input_dir", type=Path, help="folder walked recursively for videos and images")
    r.add_argument("--out", required=True, type=Path, help="output folder (manifest, clips, report, state)")
    r.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: configs/curation.yaml)")
    r.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. filters.aesthetic_min=5")

    f = sub.add_parser("filter", help="re-apply thresholds to stored scores (no rescoring); rewrite outputs")
    f.add_argument("out_dir", type=Path, help="output folder of an earlier `run`")
    f.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="changes to filters.*, export.* or caption.* (e.g. filters.motion_min=0.01)")

    t = sub.add_parser("tiny-models", help="write tiny random CLIP, aesthetic head and Qwen2.5-VL (tests, demo)")
    t.add_argument("out_dir", type=Path)
    t.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("samples", help="write generated sample videos (moving shapes, a static shot, a cut)")
    s.add_argument("out_dir", type=Path)
    return p


def cmd_run(args: argparse.Namespace) -> None:
    from curation.config import load_config
    from curation.pipeline import run
    from curation.summary import format_summary, summary

    cfg = load_config(args.config, args.overrides)
    result = run(cfg, args.input_dir, args.out)
    print(format_summary(summary(result.records, result.skipped)))
    print(f"manifest: {args.out / 'manifest.jsonl'}\nreport:   {args.out / 'report.html'}")
    print(json.dumps({"clips_scored": result.clips_scored, "captions_generated": result.captions_generated,
                      **{k: round(v, 2) for k, v in result.timings.items()}}))


def cmd_filter(args: argparse.Namespace) -> None:
    import yaml

    from curation.config import FILTER_SECTIONS, load_config, to_dict
    from curation.errors import ConfigError
    from curation.pipeline import refilter
    from curation.summary import format_summary, summary
    from hv_tune.io import atomic_write_text

    for item in args.overrides:
        if item.split("=", 1)[0].split(".")[0] not in FILTER_SECTIONS:
            raise ConfigError(f"`filter` changes only {', '.join(s + '.*' for s in FILTER_SECTIONS)}; "
                              f"{item!r} needs a new `python -m curation run`")
    stored = args.out_dir / "state" / "config.yaml"
    if not stored.is_file():
        raise CurationError(f"{stored} not found: {args.out_dir} is not the output of `python -m curation run`")
    cfg = load_config(stored, args.overrides)
    result = refilter(cfg, args.out_dir)
    atomic_write_text(stored, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    print(format_summary(summary(result.records, result.skipped)))


def cmd_tiny_models(args: argparse.Namespace) -> None:
    from curation.tiny import build_tiny_models

    for name, path in build_tiny_models(args.out_dir, args.seed).items():
        print(f"{name:<10} {path}")


def cmd_samples(args: argparse.Namespace) -> None:
    from curation.samples import write_samples

    for path in write_samples(args.out_dir):
        print(path)


COMMANDS = {"run": cmd_run, "filter": cmd_filter, "tiny-models": cmd_tiny_models, "samples": cmd_samples}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for errors the user can fix)."""
    parser = _parser()
    # overrides may follow options (`run IN --out O key=value`): argparse leaves those over
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    drop_unactionable_library_logs()
    try:
        COMMANDS[args.verb](args)
    except CurationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
