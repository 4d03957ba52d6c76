"""Command line: ``python -m curation VERB ...``. Each verb parses, then calls one function."""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
from pathlib import Path

from curation.errors import CurationError, out_of_space
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

    v = sub.add_parser("review", help="a local page to accept, reject and re-caption the clips of OUT_DIR")
    v.add_argument("out_dir", type=Path, help="output folder of an earlier `run`")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need --allow-remote)")
    v.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    v.add_argument("--no-browser", action="store_true", help="print the address only; do not open a browser")
    v.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than loopback (the token is then the only protection)")
    return p


def cmd_run(args: argparse.Namespace) -> None:
    from curation.config import load_config
    from curation.pipeline import run
    from curation.progress import format_stage_table
    from curation.summary import format_summary, summary

    cfg = load_config(args.config, args.overrides)
    result = run(cfg, args.input_dir, args.out)
    print(format_summary(summary(result.records, result.skipped, result.orphaned)))
    print(format_stage_table(result.stage_table))
    print(f"manifest: {args.out / 'manifest.jsonl'}\nreport:   {args.out / 'report.html'}")
    print(json.dumps({"clips_scored": result.clips_scored, "captions_generated": result.captions_generated,
                      **{k: round(v, 2) for k, v in result.timings.items()}}))


def cmd_filter(args: argparse.Namespace) -> None:
    from curation.pipeline import apply_thresholds
    from curation.summary import format_summary, summary

    result = apply_thresholds(args.out_dir, args.overrides)
    print(format_summary(summary(result.records, result.skipped, result.orphaned)))


def cmd_review(args: argparse.Namespace) -> None:
    from curation.review.app import serve

    serve(args.out_dir, args.host, args.port, open_browser=not args.no_browser, allow_remote=args.allow_remote)


def cmd_tiny_models(args: argparse.Namespace) -> None:
    from curation.tiny import build_tiny_models

    for name, path in build_tiny_models(args.out_dir, args.seed).items():
        print(f"{name:<10} {path}")


def cmd_samples(args: argparse.Namespace) -> None:
    from curation.samples import write_samples

    for path in write_samples(args.out_dir):
        print(path)


COMMANDS = {"run": cmd_run, "filter": cmd_filter, "tiny-models": cmd_tiny_models, "samples": cmd_samples,
            "review": cmd_review}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code.

    0 success; 2 an error the user can fix, a full output volume included (one line on stderr,
    no traceback); 130 Ctrl-C (what is stored is kept: the same command resumes).
    """
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
    except CurationError as e:  # hv_tune.errors.HvTuneError: every error a user can fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting changes nothing
        print(f"interrupted (Ctrl-C): {_resume_hint(args)}", file=sys.stderr)
        return 130
    except Exception as e:
        if not out_of_space(e):
            raise
        print(f"error: {_space_message(e, args)}", file=sys.stderr)
        return 2
    return 0


def _out_dir(args: argparse.Namespace) -> Path | None:
    return getattr(args, "out", None) or getattr(args, "out_dir", None)


def _resume_hint(args: argparse.Namespace) -> str:
    """What was kept and how to go on after a stop, for the verb that stopped."""
    if args.verb == "run":
        return (f"every finished result is stored in {args.out / 'state'}; run the same command again "
                "to continue where it stopped")
    if args.verb == "filter":
        return f"nothing is lost; run `python -m curation filter {args.out_dir}` again to finish rewriting the outputs"
    return "files already written are complete; run the same command again"


def _final_name(name: object) -> str | None:
    """The file meant, for a temporary one of ``hv_tune.io`` (``.tmp-NAME.XXXX`` -> ``NAME``)."""
    from hv_tune.io import TMP_PREFIX

    if not isinstance(name, (str, Path)) or not str(name):
        return None
    path = Path(name)
    if path.name.startswith(TMP_PREFIX):
        path = path.with_name(path.name[len(TMP_PREFIX):].rsplit(".", 1)[0])
    return str(path)


def _space_message(err: BaseException, args: argparse.Namespace) -> str:
    """One line: what could not be written, why, and the fix (files already written are complete)."""
    where = _final_name(getattr(err, "filename", None)) or _out_dir(args) or "the output folder"
    if isinstance(err, OSError) and err.errno == errno.EFBIG:
        why = "the file size limit (ulimit -f) was reached"
        fix = "raise the limit"
    else:
        why = "no space left on the device" if getattr(err, "errno", None) != errno.EDQUOT else "disk quota exceeded"
        fix = "free space there (or pass an --out on another volume)"
    return (f"cannot write {where}: {why}; {fix} and run the same command again "
            "(finished results are kept; nothing was left half-written)")
