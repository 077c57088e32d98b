"""``python -m analysis RESULTS_DIR --out REPORT_DIR``: the report's command line.

The arguments, the store's directory and ``--out`` are checked before pandas, scipy and
matplotlib are imported, so bad input answers at once: one line on stderr, exit 2, nothing
written. A full or read-only disk met while writing is one line too (exit 1, nothing
replaced); SIGINT/SIGTERM stop the figure workers, remove the unfinished report and exit
128 + the signal number.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from charlm.cli import OneLineParser, check_writable_dir
from charlm.config import ConfigError
from charlm.text import short_repr
from sweeps.schema import StoreError, check_store

FORMATS = ("png", "svg", "pdf")
REPORT_MARKER = ".charlm-report"  # in a directory python -m analysis wrote (replaceable)
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
METRICS = ("best_val_loss", "final_val_loss", "final_train_loss")


def parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m analysis",
        description=(
            "Turn a result store into a report: tables (mean ± stderr over seeds, Δ vs the "
            "baseline with each level's verdict, simultaneous 95% CI and adjusted p), "
            "figures (PNG/SVG), the "
            "factor ranking and generated samples, as REPORT_DIR/report.html (one file, "
            "figures embedded) and report.md. Works on a store that is still being written; "
            "failed and corrupt parts are named in the report."
        ),
    )
    add = parser.add_argument
    add("results_dir", metavar="RESULTS_DIR", help="the store a sweep wrote")
    add(
        "--out",
        metavar="REPORT_DIR",
        help="where to write the report (default: RESULTS_DIR/report; an earlier report "
        "there is replaced, a directory holding other files is refused)",
    )
    add(
        "--strict",
        action="store_true",
        help="fail (exit 2) on a corrupt store file instead of skipping it",
    )
    add(
        "--format",
        default="png,svg",
        help=f"figure formats, comma-separated, from {','.join(FORMATS)}",
    )
    add("--sweep", action="append", metavar="NAME",
        help="only this sweep (repeat for several; default: all)")  # fmt: skip
    add("--dataset", action="append", metavar="NAME",
        help="only this dataset (repeat for several; default: all)")  # fmt: skip
    add(
        "--heatmap-text",
        metavar="TEXT",
        help="text for the attention heatmaps (default: the start of the best "
        "trial's generated sample)",
    )
    add(
        "--heatmap-layer",
        type=int,
        metavar="N",
        help="layer whose heads get heatmaps (default: the last)",
    )
    add(
        "--metric",
        default="best_val_loss",
        choices=METRICS,
        help="metric compared against the baseline and ranked",
    )
    add(
        "--jobs",
        type=int,
        metavar="N",
        help="processes drawing figures (default: CPU count, at most 4)",
    )
    add(
        "--template-names",
        action="store_true",
        help="also write the figures under the research templates' file names at the top "
        "of REPORT_DIR: train_loss_{dataset}.png, val_loss_{dataset}.png, "
        "attention_metrics_{dataset}.png, layer_similarity_{dataset}.png, "
        "cluster_quality.png, training_dynamics.png",
    )
    add("--quiet", action="store_true", help="print only the report's path")
    return parser


def check_out_dir(root: Path, out_dir: str | Path | None) -> Path:
    """The report directory (``out_dir``, default ``root/report``) if a report can replace
    it, else StoreError in one line: a file, a directory holding other files, the current
    directory or one above it, the store or one above it, or a place nobody can write
    (the report is built in a sibling temp directory, so its parent must be writable)."""
    out = Path(out_dir) if out_dir is not None else root / "report"
    shown = f"--out {out}" if out_dir is not None else f"--out {out} (the default)"
    here, where = Path.cwd().resolve(), out.resolve()
    if here.is_relative_to(where):
        raise StoreError(f"{shown} is the current directory or holds it, which the report "
                         "cannot replace: give a new directory, e.g. --out report.")  # fmt: skip
    if root.resolve().is_relative_to(where):
        raise StoreError(f"{shown} holds the store {root}, which the report cannot replace: "
                         "give a new directory, e.g. --out report.")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file: give a directory for the report.")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_MARKER).exists():
        raise StoreError(
            f"--out {out} exists and holds other files: give a new or empty directory "
            "(an earlier report there is replaced)."
        )
    try:
        check_writable_dir(where.parent, shown)
    except ConfigError:
        raise StoreError(f"{shown}: {where.parent} is not writable; give --out a directory "
                         "you can write to.") from None  # fmt: skip
    return out


class _Interrupted(BaseException):
    """SIGINT or SIGTERM while the report is built (cleans up like any failure)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise _Interrupted(signum)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT/SIGTERM raise _Interrupted in this process for the block (the figure workers
    restore the default handlers: see analysis.figures)."""
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _disk_error(exc: OSError, out: Path) -> int:
    """A full or read-only disk while writing: one line, exit 1 (nothing was replaced)."""
    if exc.errno not in _DISK_ERRORS:
        raise exc
    print(
        f"error: cannot write the report under {out.parent} ({os.strerror(exc.errno)}: "
        f"{exc.filename or out}); nothing was replaced: free space (or give --out a "
        "writable directory) and run the same command again.",
        file=sys.stderr,
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit status (0 ok, 2 bad input, a missing store or --strict)."""
    cli = parser()
    args = cli.parse_args(argv)
    formats = [fmt.strip() for fmt in args.format.split(",") if fmt.strip()]
    bad = [fmt for fmt in formats if fmt not in FORMATS]
    if bad or not formats:
        cli.error(f"--format {args.format}: use a comma-separated subset of {','.join(FORMATS)}")
    if args.heatmap_layer is not None and args.heatmap_layer < 0:
        cli.error(f"--heatmap-layer {args.heatmap_layer}: give a layer index >= 0")
    if args.jobs is not None and args.jobs < 1:
        cli.error(f"--jobs {args.jobs}: give a number of processes >= 1")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.jobs is not None and args.jobs > (cpus or 1):
        cli.error(
            f"--jobs {short_repr(args.jobs)}: this machine has {cpus or 1} CPUs, and a process "
            f"per figure beyond them only costs memory; give --jobs {cpus or 1} or less"
        )
    try:
        out = check_out_dir(check_store(args.results_dir), args.out)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with _signals_interrupt():
        try:
            return _report(args, formats, out)
        except _Interrupted as stop:
            print(f"interrupted by {signal.Signals(stop.signum).name}: no report written "
                  f"({out} is as it was); run the same command again.")  # fmt: skip
            return 128 + stop.signum
        except OSError as exc:
            return _disk_error(exc, out)


def _report(args: argparse.Namespace, formats: list[str], out: Path) -> int:
    from analysis.load import CorruptStoreError
    from analysis.render import print_summary
    from analysis.report import ReportOptions, build_report

    options = ReportOptions(
        formats=formats,
        strict=args.strict,
        sweeps=args.sweep,
        datasets=args.dataset,
        heatmap_text=args.heatmap_text,
        heatmap_layer=args.heatmap_layer,
        metric=args.metric,
        jobs=args.jobs,
        template_names=args.template_names,
    )
    try:
        report = build_report(args.results_dir, out, options)
    except (CorruptStoreError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, reason in report.analysis.store.corrupt:
        print(f"warning: skipped corrupt store file {path}: {reason}", file=sys.stderr)
    for note in report.missing:
        if "unreadable model file" in note:
            print(f"warning: {note}", file=sys.stderr)
    if not args.quiet:
        print_summary(report, args.metric)
    print(f"report: {report.html}")
    return 0
