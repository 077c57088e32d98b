"""The library API: ``analyze`` (a store's aggregates as DataFrames), ``add_attention`` and
``build_report`` (``python -m analysis RESULTS_DIR --out REPORT_DIR``: a store's tables,
figures, factor ranking and samples as one self-contained HTML report, and Markdown).

build_report orchestrates the modules that do each job: aggregate (statistics), export
(table files), figures (figure jobs drawn in worker processes), heatmaps (the one place a
model runs, torch imported there only), render (the HTML and Markdown documents).

The report directory holds report.html, report.md, figures/, tables/ and final_info/;
every link in the report is relative and points inside it, so it can be copied or zipped.
It is built in a temporary sibling directory and moved into place at the end, so an error
leaves nothing behind and a reader never sees half a report.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

try:
    import resource
except ImportError:  # Windows: CPU time of this process only
    resource = None  # type: ignore[assignment]

from analysis import aggregate, export, predictor_report, settings, verdicts
from analysis.cli import FORMATS, REPORT_MARKER, check_out_dir
from analysis.figures import Rendering, attention_jobs, figure_jobs, heatmap_jobs
from analysis.heatmaps import capture_heatmaps
from analysis.load import Store, StoreError, check_store, load_store
from analysis.render import (
    Section,
    build_sections,
    missing_notes,
    render_html,
    render_markdown,
)
from charlm.fsio import fsync_dir, fsync_tree
from sweeps.schema import holder_alive


@dataclass
class Analysis:
    """Everything the report shows, as DataFrames (see aggregate.py for each contract)."""

    store: Store
    summary: pd.DataFrame
    ranking: pd.DataFrame
    failed: pd.DataFrame
    leaderboard: pd.DataFrame
    curves: pd.DataFrame
    attention: pd.DataFrame
    predictors: predictor_report.Predictors | None = None  # set by add_attention
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds per phase
    # one row per ablation level: its verdict, interval and adjusted p (analysis.verdicts)
    verdicts: pd.DataFrame = field(default_factory=pd.DataFrame)
    levels: pd.DataFrame = field(default_factory=pd.DataFrame)  # settings.level_states


class _Stopwatch:
    """Wall and CPU seconds per phase; CPU counts finished child processes (figure workers)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._last = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        cpu = time.process_time()
        if resource is not None:
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu += children.ru_utime + children.ru_stime
        return time.perf_counter(), cpu

    def lap(self, name: str) -> None:
        now = self._now()
        self.wall[name] = now[0] - self._last[0]
        self.cpu[name] = now[1] - self._last[1]
        self._last = now


def analyze(
    root: str | Path,
    *,
    sweeps: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    strict: bool = False,
    metric: str = "best_val_loss",
    n_resamples: int = 1000,
    attention: bool = True,
) -> Analysis:
    """Load the store at ``root`` and compute every aggregate: the library call behind the
    report. Attention is summarised for each sweep's baseline config (figures 4 and 5);
    ``attention=False`` leaves it out (add it later with ``add_attention``)."""
    watch = _Stopwatch()
    store = load_store(
        root, sweeps=sweeps, datasets=datasets, strict=strict, tables=("curves", "samples")
    )
    watch.lap("load")
    trials = store.trials
    ablation = trials[trials["kind"].ne("search")]
    result = Analysis(
        store=store,
        summary=aggregate.config_summary(trials),
        ranking=aggregate.rank_factors(trials, metric, n_resamples=n_resamples),
        failed=aggregate.failed_trials(trials),
        leaderboard=aggregate.search_leaderboard(trials, metric),
        curves=aggregate.curve_summary(store.curves, ablation),
        attention=aggregate.attention_summary(store.attention, ablation),  # empty for now
        timings=watch.wall,
        cpu_timings=watch.cpu,
        verdicts=verdicts.level_verdicts(trials, store.root, metric),
        levels=settings.level_states(
            store.planned, trials, store.in_progress, holder_alive(store.root)
        ),
    )
    watch.lap("aggregate")
    if attention:
        add_attention(result, sweeps=sweeps, datasets=datasets, strict=strict)
    return result


def add_attention(
    analysis: Analysis,
    *,
    sweeps: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    strict: bool = False,
) -> None:
    """Read the attention rows of baseline trials (and each trial's final ones, and those
    the cluster_quality figures show) and summarise them into ``analysis.attention`` (and
    ``analysis.store.attention``) and ``analysis.predictors``."""
    watch = _Stopwatch()
    store = analysis.store
    layer_trials = predictor_report.layer_trials(store.trials, analysis.ranking)
    read = load_store(
        store.root, sweeps=sweeps, datasets=datasets, strict=strict, tables=("attention",),
        attention="report", layer_trials=layer_trials,
    )  # fmt: skip
    store.attention = read.attention
    store.corrupt += [item for item in read.corrupt if item not in store.corrupt]
    store.duplicates["attention"] = read.duplicates.get("attention", 0)
    store.file_counts["attention"] = read.file_counts.get("attention", 0)
    ablation = store.trials[store.trials["kind"].ne("search")]
    baselines = aggregate.baseline_configs(ablation)
    analysis.attention = aggregate.attention_summary(store.attention, ablation, baselines)
    analysis.predictors = predictor_report.compute(
        store.trials, store.attention, store.samples, analysis.ranking
    )
    watch.lap("attention")
    analysis.timings.update(watch.wall)
    analysis.cpu_timings.update(watch.cpu)


@dataclass
class Report:
    """What build_report wrote (paths inside ``out_dir``) and what it could not show."""

    out_dir: Path
    html: Path
    markdown: Path
    figures: list[Path]
    tables: list[Path]
    missing: list[str]
    analysis: Analysis
    timings: dict[str, float]  # wall seconds per phase
    cpu_timings: dict[str, float]  # CPU seconds per phase, figure workers included


@dataclass
class ReportOptions:
    """What build_report reads, draws and writes (``python -m analysis``'s options)."""

    formats: Sequence[str] = ("png", "svg")
    strict: bool = False
    sweeps: Sequence[str] | None = None
    datasets: Sequence[str] | None = None
    heatmap_text: str | None = None
    heatmap_layer: int | None = None
    metric: str = "best_val_loss"
    jobs: int | None = None  # processes drawing figures (default: the CPU count, at most 4)
    template_names: bool = False  # also the research templates' figure files (PNG)


def build_report(
    root: str | Path, out_dir: str | Path | None = None, options: ReportOptions | None = None
) -> Report:
    """Write the report of the store at ``root`` into ``out_dir`` (default
    ``<root>/report``, replaced if it holds an earlier report). Raises StoreError (a
    ValueError) for bad input before anything is written. ``options.template_names``: also
    write the research templates' figure files (PNG) at the top of ``out_dir``."""
    options = options or ReportOptions()
    root = check_store(root)
    out = check_out_dir(root, out_dir)
    formats = options.formats
    bad = [fmt for fmt in formats if fmt not in FORMATS]
    if bad or not formats:
        raise StoreError(
            f"--format {','.join(formats)}: use a comma-separated subset of {','.join(FORMATS)}."
        )
    if options.template_names and "png" not in formats:
        raise StoreError(
            f"--template-names writes PNG files but --format is {','.join(formats)}: "
            "add png to --format."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # corrupt files are listed from store.corrupt
        analysis = analyze(
            root,
            sweeps=options.sweeps,
            datasets=options.datasets,
            strict=options.strict,
            metric=options.metric,
            attention=False,
        )
    watch = _Stopwatch()
    temp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    jobs = options.jobs if options.jobs is not None else min(4, os.cpu_count() or 1)
    rendering = Rendering(temp / "figures", formats, jobs)
    try:
        figures, tables, missing = _write_report(analysis, temp, rendering, options, watch)
        _move_into_place(temp, out)
    except BaseException:
        rendering.close(terminate=True)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return Report(
        out,
        out / "report.html",
        out / "report.md",
        [out / path.relative_to(temp) for path in figures],
        [out / path.relative_to(temp) for path in tables],
        missing,
        analysis,
        _phases(analysis.timings, watch.wall),
        _phases(analysis.cpu_timings, watch.cpu),
    )


def _phases(analysis: dict[str, float], report: dict[str, float]) -> dict[str, float]:
    """The seconds of each phase, without analyze's "attention" (inside "attention read")."""
    return {**{k: v for k, v in analysis.items() if k != "attention"}, **report}


def _write_report(
    analysis: Analysis,
    temp: Path,
    rendering: Rendering,
    options: ReportOptions,
    watch: _Stopwatch,
) -> tuple[list[Path], list[Path], list[str]]:
    """The report's files in ``temp``: the figures (drawn by ``rendering``), tables and
    pages; returns the figure and table files and what the report cannot show."""
    temp.mkdir(parents=True)
    (temp / REPORT_MARKER).write_text("written by python -m analysis\n")
    # Workers (forked before torch is imported) draw the first figures while this
    # process captures the heatmaps, reads the attention table (the largest) and
    # writes the tables and pages. A bad --heatmap-layer still leaves nothing behind.
    rendering.submit(figure_jobs(analysis))
    watch.lap("figures started")
    heatmap_notes: list[str] = []
    heatmaps = capture_heatmaps(
        analysis, options.heatmap_text, options.heatmap_layer, heatmap_notes, options.strict
    )
    rendering.submit(heatmap_jobs(heatmaps))
    watch.lap("heatmap capture")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_attention(
            analysis, sweeps=options.sweeps, datasets=options.datasets, strict=options.strict
        )
    rendering.submit(attention_jobs(analysis))
    assert analysis.predictors is not None  # set by add_attention
    predictor_jobs = predictor_report.figure_jobs(
        analysis.predictors, analysis.store.curves, analysis.store.trials
    )
    rendering.submit(predictor_jobs)
    watch.lap("attention read")
    missing = missing_notes(analysis) + heatmap_notes
    tables = _write_tables(analysis, temp, options.metric)
    tables += predictor_report.write_tables(analysis.predictors, temp / "tables")
    watch.lap("tables")
    formats = options.formats
    sections = build_sections(
        analysis, rendering.jobs, formats, missing, tables, temp, options.metric
    )
    at = next(i for i, s in enumerate(sections) if s.title == "Attention heatmaps")
    predictors = predictor_report.section(analysis.predictors, predictor_jobs, formats)
    sections.insert(at, Section(**predictors))
    (temp / "report.md").write_text(render_markdown(sections, analysis))
    watch.lap("report")
    figures = rendering.results()
    watch.lap("figures (wait)")
    if options.template_names:
        written, notes = predictor_report.write_template_figures(
            temp, analysis.curves, analysis.attention, analysis.predictors
        )
        figures += written
        missing += notes
        watch.lap("template figures")
    # One file to mail: the figures are embedded (their files stay beside it).
    (temp / "report.html").write_text(render_html(sections, analysis, temp))
    return figures, tables, missing


def _write_tables(analysis: Analysis, temp: Path, metric: str) -> list[Path]:
    tables = export.write_tables(
        analysis.summary, analysis.verdicts, analysis.ranking, temp / "tables", metric
    )
    analysis.failed.to_csv(temp / "tables" / "failed_trials.csv", index=False)
    tables.append(temp / "tables" / "failed_trials.csv")
    if len(analysis.leaderboard):
        analysis.leaderboard.to_csv(temp / "tables" / "search_leaderboard.csv", index=False)
        tables.append(temp / "tables" / "search_leaderboard.csv")
    tables += export.write_final_info(
        analysis.store.trials, temp / "final_info", analysis.summary, analysis.verdicts
    )
    return tables


def _move_into_place(temp: Path, out: Path) -> None:
    """Swap the finished report in; an earlier report (or empty dir) goes away after."""
    trash = out.parent / f".{out.name}.old-{os.getpid()}"
    fsync_tree(temp)  # durable before it becomes the report
    if out.exists():
        os.replace(out, trash)
    os.replace(temp, out)
    fsync_dir(out.parent)
    shutil.rmtree(trash, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis``: see analysis.cli (arguments are checked before pandas,
    scipy and matplotlib are imported)."""
    from analysis.cli import main as cli_main

    return cli_main(argv)
