"""``python -m analysis RESULTS_DIR --out REPORT_DIR``: the report's command line.

The arguments and the store's directory are checked before pandas, scipy and matplotlib
are imported, so bad input answers at once: one line on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from charlm.cli import OneLineParser
from sweeps.schema import StoreError, check_store

__all__ = ["FORMATS", "main", "parser"]

FORMATS = ("png", "svg", "pdf")
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
        default=None,
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
    try:
        check_store(args.results_dir)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from analysis.load import CorruptStoreError
    from analysis.report import build_report, print_summary

    try:
        report = build_report(
            args.results_dir,
            Path(args.out) if args.out is not None else None,
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
