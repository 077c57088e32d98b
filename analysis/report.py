"""``python -m analysis RESULTS_DIR --out REPORT_DIR``: a store's tables, figures, factor
ranking and samples as one self-contained HTML report (and Markdown).

The report directory holds report.html, report.md, figures/, tables/ and final_info/;
every link in the report is relative and points inside it, so it can be copied or zipped.
It is built in a temporary sibling directory and moved into place at the end, so an error
leaves nothing behind and a reader never sees half a report.
"""

from __future__ import annotations

import base64
import gc
import html
import multiprocessing
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

try:
    import resource
except ImportError:  # Windows: CPU time of this process only
    resource = None  # type: ignore[assignment]

from analysis import aggregate, export, plots, predictor_report, settings, verdicts
from analysis.aggregate import CONFIG_KEYS
from analysis.cli import FORMATS
from analysis.export import slug
from analysis.load import Store, StoreError, check_store, load_store
from analysis.search_report import search_section
from charlm.fsio import fsync_dir, fsync_tree
from sweeps.schema import read_runs

__all__ = ["Analysis", "Report", "analyze", "build_report", "main", "print_summary"]

REPORT_MARKER = ".charlm-report"
HEATMAP_CHARS = 32  # default heatmap text: 32 characters keep 8-pt labels on two panels a row


@dataclass
class Analysis:
    """Everything the report shows, as DataFrames (see aggregate.py for each contract)."""

    store: Store
    summary: pd.DataFrame
    effects: pd.DataFrame
    ranking: pd.DataFrame
    failed: pd.DataFrame
    leaderboard: pd.DataFrame
    curves: pd.DataFrame
    attention: pd.DataFrame
    predictors: predictor_report.Predictors | None = None  # set by add_attention
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds per phase
    verdicts: pd.DataFrame = field(default_factory=pd.DataFrame)  # analysis.verdicts


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
        effects=aggregate.compare_to_baseline(trials, metric),
        ranking=aggregate.rank_factors(trials, metric, n_resamples=n_resamples),
        failed=aggregate.failed_trials(trials),
        leaderboard=aggregate.search_leaderboard(trials, metric),
        curves=aggregate.curve_summary(store.curves, ablation),
        attention=aggregate.attention_summary(store.attention, ablation),  # empty for now
        timings=watch.wall,
        cpu_timings=watch.cpu,
        verdicts=verdicts.level_verdicts(trials, store.root),
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
class _FigureJob:
    stem: str  # path inside figures/, without suffix
    caption: str
    draw: Callable[[], Any]
    cost: int = 1  # rough number of panels, to schedule big figures first
    # Per-dataset versions cut from the drawing: (stem suffix, caption, "row"|"col", index).
    views: list[tuple[str, str, str, int]] = field(default_factory=list)


@dataclass
class _Heatmaps:
    dataset: str
    trial_id: str
    config: str
    layer: int
    maps: list
    chars: list[str]


def build_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    *,
    formats: Sequence[str] = ("png", "svg"),
    strict: bool = False,
    sweeps: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    heatmap_text: str | None = None,
    heatmap_layer: int | None = None,
    metric: str = "best_val_loss",
    jobs: int | None = None,
    template_names: bool = False,
) -> Report:
    """Write the report of the store at ``root`` into ``out_dir`` (default
    ``<root>/report``, replaced if it holds an earlier report). Raises StoreError (a
    ValueError) for bad input before anything is written. ``jobs``: processes drawing
    figures (default: the CPU count, at most 4). ``template_names``: also write the
    research templates' figure files (PNG) at the top of ``out_dir``."""
    root = check_store(root)
    jobs_n = jobs if jobs is not None else min(4, os.cpu_count() or 1)
    out = Path(out_dir) if out_dir is not None else root / "report"
    _check_out_dir(out)
    bad = [fmt for fmt in formats if fmt not in FORMATS]
    if bad or not formats:
        raise StoreError(
            f"--format {','.join(formats)}: use a comma-separated subset of {','.join(FORMATS)}."
        )
    if template_names and "png" not in formats:
        raise StoreError(
            f"--template-names writes PNG files but --format is {','.join(formats)}: "
            "add png to --format."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # corrupt files are listed from store.corrupt
        analysis = analyze(
            root,
            sweeps=sweeps,
            datasets=datasets,
            strict=strict,
            metric=metric,
            attention=False,
        )
    watch = _Stopwatch()
    temp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    rendering = _Rendering(temp / "figures", formats, jobs_n)
    try:
        temp.mkdir(parents=True)
        (temp / REPORT_MARKER).write_text("written by python -m analysis\n")
        # Workers (forked before torch is imported) draw the first figures while this
        # process captures the heatmaps, reads the attention table (the largest) and
        # writes the tables and pages. A bad --heatmap-layer still leaves nothing behind.
        rendering.submit(_figure_jobs(analysis))
        watch.lap("figures started")
        heatmap_notes: list[str] = []
        heatmaps = _heatmaps(analysis, heatmap_text, heatmap_layer, heatmap_notes, strict)
        rendering.submit(_heatmap_jobs(heatmaps))
        watch.lap("heatmap capture")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            add_attention(analysis, sweeps=sweeps, datasets=datasets, strict=strict)
        rendering.submit(_attention_jobs(analysis))
        assert analysis.predictors is not None  # set by add_attention
        predictor_specs = predictor_report.figure_specs(
            analysis.predictors, analysis.store.curves, analysis.store.trials
        )
        rendering.submit([_FigureJob(*spec) for spec in predictor_specs])
        watch.lap("attention read")
        missing = _missing(analysis) + heatmap_notes
        tables = _write_tables(analysis, temp, metric)
        tables += predictor_report.write_tables(analysis.predictors, temp / "tables")
        watch.lap("tables")
        sections = _sections(
            analysis, rendering.jobs, formats, missing, heatmaps, tables, temp, metric
        )
        at = next(i for i, s in enumerate(sections) if s.title == "Attention heatmaps")
        predictors = predictor_report.section(analysis.predictors, predictor_specs, formats)
        sections.insert(at, _Section(**predictors))
        (temp / "report.md").write_text(_markdown(sections, analysis))
        watch.lap("report")
        figures = rendering.results()
        watch.lap("figures (wait)")
        if template_names:
            written, notes = predictor_report.write_template_figures(
                temp, temp / "figures", analysis.curves, analysis.attention, analysis.predictors
            )
            figures += written
            missing += notes
            watch.lap("template figures")
        # One file to mail: the figures are embedded (their files stay beside it).
        (temp / "report.html").write_text(_html(sections, analysis, temp))
        _move_into_place(temp, out)
    except BaseException:
        rendering.close()
        shutil.rmtree(temp, ignore_errors=True)
        raise
    moved = [out / path.relative_to(temp) for path in figures]
    moved_tables = [out / path.relative_to(temp) for path in tables]
    return Report(
        out,
        out / "report.html",
        out / "report.md",
        moved,
        moved_tables,
        missing,
        analysis,
        # "attention" is inside "attention read": not counted twice
        {**{k: v for k, v in analysis.timings.items() if k != "attention"}, **watch.wall},
        {**{k: v for k, v in analysis.cpu_timings.items() if k != "attention"}, **watch.cpu},
    )


def _write_tables(analysis: Analysis, temp: Path, metric: str) -> list[Path]:
    tables = export.write_tables(
        analysis.summary, analysis.effects, analysis.ranking, temp / "tables", metric
    )
    analysis.failed.to_csv(temp / "tables" / "failed_trials.csv", index=False)
    tables.append(temp / "tables" / "failed_trials.csv")
    tables.append(verdicts.write_csv(analysis.verdicts, temp / "tables"))
    if len(analysis.leaderboard):
        analysis.leaderboard.to_csv(temp / "tables" / "search_leaderboard.csv", index=False)
        tables.append(temp / "tables" / "search_leaderboard.csv")
    tables += export.write_final_info(analysis.store.trials, temp / "final_info", analysis.summary)
    return tables


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file: give a directory for the report.")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_MARKER).exists():
        raise StoreError(
            f"--out {out} exists and holds other files: give a new or empty directory "
            "(an earlier report there is replaced)."
        )


def _move_into_place(temp: Path, out: Path) -> None:
    """Swap the finished report in; an earlier report (or empty dir) goes away after."""
    trash = out.parent / f".{out.name}.old-{os.getpid()}"
    fsync_tree(temp)  # durable before it becomes the report
    if out.exists():
        os.replace(out, trash)
    os.replace(temp, out)
    fsync_dir(out.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _missing(analysis: Analysis) -> list[str]:
    """What the report cannot show, each as a sentence."""
    store, notes = analysis.store, []
    if store.trials.empty:
        notes.append("The store has no trials rows yet: no tables or figures of results.")
    if store.in_progress:
        notes.append(
            f"{len(store.in_progress)} trial(s) in progress (curves written, no trials row "
            "yet) are not in the statistics."
        )
    unfinished = int(analysis.summary["n_unfinished"].sum()) if len(analysis.summary) else 0
    if unfinished:
        notes.append(f"{unfinished} trial(s) with a status other than ok/failed are left out.")
    if store.corrupt:
        notes.append(f"{len(store.corrupt)} corrupt store file(s) were skipped (listed below).")
    if len(analysis.failed):
        diverged = int(analysis.failed["diverged"].sum())
        notes.append(
            f"{len(analysis.failed)} failed trial(s) ({diverged} diverged) are left out of "
            "the statistics (listed below)."
        )
    ablation = store.trials[store.trials["kind"].ne("search")]
    for sweep, rows in ablation.groupby("sweep"):
        for dataset, dataset_rows in rows.groupby("dataset"):
            if not dataset_rows["factor"].eq("baseline").any():
                notes.append(f"Sweep {sweep} ({dataset}) has no baseline trials: no comparisons.")
            elif not (
                dataset_rows["factor"].eq("baseline") & dataset_rows["status"].eq("ok")
            ).any():
                notes.append(
                    f"Sweep {sweep} ({dataset}): no baseline trial finished: no comparisons."
                )
    single = analysis.summary[analysis.summary["best_val_loss_n"].eq(1)]
    if len(single):
        notes.append(
            f"{len(single)} config(s) have a single finished seed: no standard error or test."
        )
    if store.attention.empty and not ablation.empty:  # attention is read for baselines only
        notes.append(
            "No attention rows for the sweeps' baselines: attention figures (4, 5) are skipped."
        )
    if store.samples.empty and not store.trials.empty:
        notes.append("No samples in the store: the samples section is empty.")
    dropped = {table: n for table, n in store.duplicates.items() if n}
    if dropped:
        notes.append(
            "Duplicate rows dropped (newest kept): "
            + ", ".join(f"{n} in {table}" for table, n in dropped.items())
            + "."
        )
    return notes + analysis.verdicts.attrs.get("notes", [])


def _heatmaps(
    analysis: Analysis,
    text: str | None,
    layer: int | None,
    missing: list[str],
    strict: bool = False,
) -> list[_Heatmaps]:
    """Capture attention of the best trial's model per dataset. A model file that cannot be
    loaded is named in ``missing`` and its heatmaps skipped (``strict``: StoreError). A bad
    --heatmap-layer raises StoreError (build_report then removes its unfinished output)."""
    trials = analysis.store.trials
    ok = trials[trials["status"].eq("ok") & trials["best_val_loss"].notna()]
    models = analysis.store.root / "models"
    saved = {p.stem for p in models.glob("*.pt")} if models.is_dir() else set()
    found = []
    for dataset, rows in ok[ok["trial_id"].isin(saved)].groupby("dataset", sort=True):
        found.append((dataset, rows.sort_values("best_val_loss")["trial_id"].iloc[0]))
    if not found:
        if not trials.empty:
            missing.append(
                f"No trained model under {models.name}/ (models/<trial_id>.pt): attention "
                "heatmaps (figure 6) are skipped."
            )
        return []
    result = []
    for dataset, trial_id in found:
        row = trials[trials["trial_id"].eq(trial_id)].iloc[0]
        sample = analysis.store.samples[analysis.store.samples["trial_id"].astype(str) == trial_id]
        first = sample["text"].iloc[0][:HEATMAP_CHARS] if len(sample) else None
        chosen = text if text is not None else first
        if not chosen:
            missing.append(f"No heatmap text for {dataset} (no sample): pass --heatmap-text.")
            continue
        try:
            maps, chars = plots.capture_attention(models / f"{trial_id}.pt", chosen)
        except ImportError as exc:
            missing.append(f"Attention heatmaps skipped: the model code is not importable ({exc}).")
            return []
        except ValueError as exc:
            missing.append(f"Heatmap for {dataset} skipped: {exc}")
            continue
        except Exception as exc:  # torn, not a model file, or a pickle weights_only refuses
            path = models / f"{trial_id}.pt"
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
            reason = re.split(r"(?<=\w)\. ", text.splitlines()[0] if text else "")[0][:200]
            reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            if strict:
                raise StoreError(
                    f"unreadable model file {path} ({reason}); move it away, or drop --strict "
                    "to skip its heatmaps."
                ) from None
            missing.append(
                f"Heatmap for {dataset} skipped: unreadable model file {path} ({reason})."
            )
            continue
        chosen_layer = len(maps) - 1 if layer is None else layer
        if not 0 <= chosen_layer < len(maps):
            raise StoreError(
                f"--heatmap-layer {layer}: the model of trial {trial_id} has {len(maps)} "
                f"layers; give a layer from 0 to {len(maps) - 1}."
            )
        label = aggregate.config_label(row["factor"], row["level"])
        result.append(
            _Heatmaps(dataset, trial_id, f"{row['sweep']} / {label}", chosen_layer, maps, chars)
        )
    return result


def _figure_jobs(analysis: Analysis) -> list[_FigureJob]:
    """The figures that need neither the attention table nor a model: per sweep 1-3,
    then 7. Each job is picklable (a plots function and its frame), so any worker can
    draw it."""
    jobs: list[_FigureJob] = []
    summary = analysis.summary[analysis.summary["kind"].ne("search")]
    summary = summary[summary["best_val_loss_n"].gt(0)]
    factor_colors = plots.color_mapping(summary["factor"])
    sweep_colors = plots.color_mapping(analysis.summary["sweep"], reserved={})
    for sweep, rows in summary.groupby("sweep", sort=True):
        s = slug(sweep)
        curves = analysis.curves[analysis.curves["sweep"] == sweep]
        draw_params = partial(plots.params_vs_loss, colors=factor_colors)
        caption = f"{sweep}: parameters vs best val loss"
        jobs.append(_versions(rows, f"{s}/1_params_vs_loss", caption, draw_params))
        if len(curves) and curves["factor"].ne("baseline").any():
            caption, panels = f"{sweep}: loss curves per factor", curves["factor"].nunique()
            jobs.append(
                _versions(
                    curves, f"{s}/2_factor_curves", caption, plots.factor_curves, panels, "col"
                )
            )
        caption = f"{sweep}: final train and val loss per config"
        jobs.append(_versions(rows, f"{s}/3_loss_bars", caption, plots.loss_bars))
    baseline_curves = analysis.curves[analysis.curves["factor"] == "baseline"]
    if baseline_curves["sweep"].nunique() > 1:
        draw_compared = partial(plots.sweeps_compared, colors=sweep_colors)
        caption = "sweeps compared: baseline configs"
        jobs.append(_versions(baseline_curves, "7_sweeps_compared", caption, draw_compared))
    return jobs


def _heatmap_jobs(heatmaps: list[_Heatmaps]) -> list[_FigureJob]:
    """Figure 6 per dataset: the chosen layer's heads, and every layer head-averaged."""
    jobs = []
    for heat in heatmaps:
        d, source = slug(heat.dataset), f"({heat.config}, trial {heat.trial_id})"
        shape = f"{len(heat.maps)} layers x {len(heat.maps[0])} heads"
        model = f"{heat.dataset}: {heat.config}, trial {heat.trial_id} ({shape})"
        jobs.append(
            _FigureJob(
                f"6_heatmaps/{d}_heads_layer{heat.layer}",
                f"{heat.dataset}: attention per head, layer {heat.layer} {source}",
                partial(plots.head_heatmaps, heat.maps[heat.layer], heat.chars, heat.layer, model),
            )
        )
        jobs.append(
            _FigureJob(
                f"6_heatmaps/{d}_layers",
                f"{heat.dataset}: head-averaged attention per layer {source}",
                partial(plots.layer_heatmaps, heat.maps, heat.chars, model),
            )
        )
    return jobs


def _attention_jobs(analysis: Analysis) -> list[_FigureJob]:
    """Figures 4 and 5 per sweep, from the baseline's attention summary."""
    jobs = []
    for sweep, attention in analysis.attention.groupby("sweep", sort=True):
        s = slug(sweep)
        caption = f"{sweep}: attention entropy and span per layer (baseline)"
        jobs.append(
            _versions(attention, f"{s}/4_attention", caption, plots.attention_over_training)
        )
        if attention["attention_js_next_n"].gt(0).any():
            caption = f"{sweep}: adjacent-layer similarity (baseline)"
            jobs.append(
                _versions(attention, f"{s}/5_layer_similarity", caption, plots.layer_similarity)
            )
    return jobs


def _versions(
    frame: pd.DataFrame,
    stem: str,
    caption: str,
    draw: Callable,
    panels: int = 1,
    axis: str = "row",
) -> _FigureJob:
    """The figure of all datasets (one row, or column, of panels each) and, with several
    datasets, each dataset's panels as its own version (cut from the same drawing)."""
    datasets = sorted(frame["dataset"].unique())
    views = []
    if len(datasets) > 1:
        views = [(slug(d), f"{caption} ({d})", axis, i) for i, d in enumerate(datasets)]
    return _FigureJob(stem, caption, partial(draw, frame), panels * len(datasets), views)


def _draw_and_save(job: _FigureJob, directory: Path, formats: Sequence[str]) -> list[Path]:
    # A figure is thousands of small objects in reference cycles: the garbage collector
    # ran over and over while one was built and drawn (5% of the figures' CPU time). It is
    # off during the job and collects the job's cycles once it is back on.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _draw_and_save_views(job, directory, formats)
    finally:
        if enabled:
            gc.enable()


def _draw_and_save_views(job: _FigureJob, directory: Path, formats: Sequence[str]) -> list[Path]:
    figure = job.draw()
    views = {}
    for suffix, _, axis, index in job.views:
        span = "rowspan" if axis == "row" else "colspan"
        views[suffix] = [
            ax
            for ax in figure.axes
            if ax.get_subplotspec() is not None
            and getattr(ax.get_subplotspec(), span).start == index
        ]
    return plots.save_figure(figure, directory / job.stem, formats, views=views)


class _Rendering:
    """Draws and saves figures: in ``workers`` processes (forked where the platform can:
    fast to start) as soon as jobs are submitted, so the caller can go on reading and
    writing meanwhile; serially in this process when workers <= 1. ``results()`` waits."""

    def __init__(self, directory: Path, formats: Sequence[str], workers: int) -> None:
        self.directory, self.formats = directory, formats
        self.jobs: list[_FigureJob] = []
        self.futures: list[Future] = []
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.pool = ProcessPoolExecutor(workers, mp_context=context)

    def submit(self, jobs: list[_FigureJob]) -> None:
        # The biggest figures first, so no worker is left with a big one at the end.
        for job in sorted(jobs, key=lambda job: -job.cost):
            self.jobs.append(job)
            if self.pool is not None:
                future = self.pool.submit(_draw_and_save, job, self.directory, self.formats)
                self.futures.append(future)

    def results(self) -> list[Path]:
        try:
            if self.pool is None:
                return [
                    path
                    for job in self.jobs
                    for path in _draw_and_save(job, self.directory, self.formats)
                ]
            return [path for future in self.futures for path in future.result()]
        finally:
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


# ---------------------------------------------------------------- report documents


@dataclass
class _Section:
    title: str
    level: int = 2
    anchor: str = ""  # the HTML section's id
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str, list[str]]] = field(default_factory=list)  # caption, img, links
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # title, text, note
    links: list[tuple[str, str]] = field(default_factory=list)  # label, relative path


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ranking_table(ranking: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Rank": ranking["rank"],
            "Factor": ranking["factor"],
            "Effect on val loss (max |Δ|)": [_fmt(v) for v in ranking["effect"]],
            "Bootstrap 95% CI": [
                "–" if pd.isna(lo) else f"[{lo:.4f}, {hi:.4f}]"
                for lo, hi in zip(ranking["effect_ci_low"], ranking["effect_ci_high"], strict=True)
            ],
            "Bootstrap stderr": [_fmt(v) for v in ranking["effect_stderr"]],
            "Best level": ranking["best_level"],
            "Δ of best level": [_fmt(v) for v in ranking["best_delta"]],
        }
    )


def _sections(
    analysis: Analysis,
    jobs: list[_FigureJob],
    formats: Sequence[str],
    missing: list[str],
    heatmaps: list[_Heatmaps],
    tables: list[Path],
    temp: Path,
    metric: str,
) -> list[_Section]:
    store = analysis.store
    trials = store.trials
    sections = [_setup_section(analysis)]
    overview = _Section("Overview", anchor="overview")
    counts = pd.DataFrame(
        {
            "Trials": [len(trials)],
            "Finished (ok)": [int(trials["status"].eq("ok").sum())],
            "Failed": [int(trials["status"].eq("failed").sum())],
            "Diverged": [int(analysis.failed["diverged"].sum()) if len(analysis.failed) else 0],
            "In progress": [len(store.in_progress)],
            "Corrupt files": [len(store.corrupt)],
            "Sweeps": [", ".join(sorted(trials["sweep"].dropna().unique())) or "–"],
            "Datasets": [", ".join(sorted(trials["dataset"].dropna().unique())) or "–"],
        }
    )
    overview.tables.append(("", counts))
    if missing:
        overview.paragraphs.append("What is missing or left out:")
        overview.paragraphs += [f"• {note}" for note in missing]
    sections.append(overview)

    figure_index: dict[str, list[_FigureJob]] = {}
    for job in sorted(jobs, key=lambda job: job.stem):
        figure_index.setdefault(job.stem.split("/")[0], []).append(job)
    image = "png" if "png" in formats else formats[0]

    def entry(stem: str, caption: str) -> tuple[str, str, list[str]]:
        return (caption, f"figures/{stem}.{image}", [f"figures/{stem}.{f}" for f in formats])

    def figure_entry(job: _FigureJob) -> list[tuple[str, str, list[str]]]:
        views = [entry(f"{job.stem}_{suffix}", caption) for suffix, caption, _, _ in job.views]
        return [entry(job.stem, job.caption), *views]

    summary = analysis.summary
    for sweep, rows in summary[summary["kind"].ne("search")].groupby("sweep", sort=True):
        section = _Section(f"Sweep {sweep}")
        section.paragraphs.append(
            f"Mean ± standard error over seeds; Δ = config − baseline in {metric} (paired "
            "t-test over shared seeds, else Welch). The 95% confidence interval is per "
            "comparison, not adjusted for multiple comparisons; the p-value is "
            "Holm-adjusted across the levels of the sweep (* below 0.05). So an interval "
            "that excludes 0 can sit next to an adjusted p above 0.05: read the p-value "
            "for significance, the interval for size."
        )
        section.tables.append(("", export.paper_table(rows, analysis.effects, metric)))
        section.tables += verdicts.report_tables(analysis.verdicts, sweep)
        ranking = analysis.ranking[analysis.ranking["sweep"] == sweep]
        for dataset, dataset_ranking in ranking.groupby("dataset", sort=True):
            section.tables.append(
                (
                    f"Factor ranking ({dataset}): how much each factor moves {metric}, "
                    "seed-averaged",
                    _ranking_table(dataset_ranking),
                )
            )
        section.figures += [
            e for job in figure_index.get(slug(sweep), []) for e in figure_entry(job)
        ]
        sections.append(section)

    if "7_sweeps_compared" in figure_index:
        compared = _Section("Sweeps compared")
        compared.figures += [
            e for job in figure_index["7_sweeps_compared"] for e in figure_entry(job)
        ]
        sections.append(compared)

    if len(analysis.leaderboard):
        sections.append(_Section(**vars(search_section(trials, temp / "figures", formats))))

    heat = _Section("Attention heatmaps")
    if heatmaps:
        heat.figures += [e for job in figure_index.get("6_heatmaps", []) for e in figure_entry(job)]
    else:
        heat.paragraphs.append("No heatmaps: see 'What is missing' in the overview.")
    sections.append(heat)

    sections.append(_samples_section(analysis))

    failed = _Section("Failed trials")
    if len(analysis.failed):
        shown = analysis.failed[["trial_id", "sweep", "dataset", "config", "seed", "error"]]
        failed.tables.append(("Left out of the statistics", shown.fillna("–")))
    else:
        failed.paragraphs.append("None.")
    sections.append(failed)

    corrupt = _Section("Corrupt store files")
    if store.corrupt:
        frame = pd.DataFrame(
            {"File": [str(p) for p, _ in store.corrupt], "Reason": [r for _, r in store.corrupt]}
        )
        corrupt.paragraphs.append("These files could not be read and were skipped:")
        corrupt.tables.append(("", frame))
    else:
        corrupt.paragraphs.append("None.")
    sections.append(corrupt)

    files = _Section("Exported files")
    files.paragraphs.append(
        "Tables as CSV, Markdown and LaTeX (paste into a paper), and final_info.json per "
        "config in the research templates' format."
    )
    files.links += [(str(p.relative_to(temp)), str(p.relative_to(temp))) for p in tables]
    sections.append(files)
    return sections


def _setup_section(analysis: Analysis) -> _Section:
    """How the runs were set up, per sweep (analysis.settings): the report's first section."""
    section = _Section("How the runs were set up", anchor="setup")
    trials = analysis.store.trials
    if trials.empty:
        section.paragraphs.append("No trials in the store yet.")
        return section
    runs = read_runs(analysis.store.root)
    for sweep in sorted(trials["sweep"].dropna().unique()):
        section.tables.append((f"Sweep {sweep}", settings.setup_table(trials, runs, sweep)))
    return section


def _samples_section(analysis: Analysis) -> _Section:
    """One generated sample per config (its lowest seed), side by side."""
    section = _Section("Generated samples")
    samples = analysis.store.samples
    if samples.empty:
        section.paragraphs.append("No samples in the store.")
        return section
    trials = analysis.store.trials
    ok = trials[trials["status"].eq("ok")].sort_values("seed")
    first = ok.drop_duplicates(CONFIG_KEYS)[[*CONFIG_KEYS, "trial_id", "seed"]]
    texts = samples.assign(trial_id=samples["trial_id"].astype(str)).drop_duplicates("trial_id")
    merged = aggregate._sort_configs(first.merge(texts, on="trial_id"))
    for _, row in merged.head(200).iterrows():
        label = aggregate.config_label(row["factor"], row["level"])
        title = f"{row['sweep']} / {row['dataset']} / {label}"
        note = (
            f"seed {row['seed']}; distinct-2 {_fmt(row['distinct_2'], 2)}, repetition "
            f"{_fmt(row['repetition_rate'], 2)}, known words {_fmt(row['known_word_share'], 2)}"
        )
        section.samples.append((title, str(row["text"]), note))
    if len(merged) > 200:
        section.paragraphs.append(f"First 200 of {len(merged)} configs shown.")
    return section


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1240px;padding:0 1em;color:#222}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3} td:first-child,td:nth-child(2){text-align:left}
#setup td:nth-child(2){max-width:60em}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:.8em}
.sample{border:1px solid #ddd;padding:.5em;font-size:.8em}
.sample pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#fafafa;margin:.4em 0}
"""


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(False)
    )
    return (
        f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
        "</table></div>"
    )


def _embedded(path: Path) -> str:
    """A figure file as a data: URI, so the page shows it without the file beside it."""
    kind = {"png": "image/png", "svg": "image/svg+xml"}.get(path.suffix[1:])
    if kind is None or not path.is_file():
        return path.name
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _html(sections: list[_Section], analysis: Analysis, root: Path) -> str:
    """The page; figures are read from ``root`` (the report directory) and embedded."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>charlm sweeps report: {e(analysis.store.root.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Sweep report: {e(analysis.store.root.name)}</h1>",
        f"<p>Store {e(str(analysis.store.root))}, read {time.strftime('%Y-%m-%d %H:%M')}.</p>",
    ]
    for section in sections:
        parts.append(f"<section id='{e(section.anchor or slug(section.title))}'>")
        parts.append(f"<h{section.level}>{e(section.title)}</h{section.level}>")
        parts += [f"<p>{e(p)}</p>" for p in section.paragraphs]
        for caption, frame in section.tables:
            if caption:
                parts.append(f"<h4>{e(caption)}</h4>")
            parts.append(_html_table(frame))
        for caption, image, links in section.figures:
            others = " ".join(
                f"<a href='{e(link)}'>{e(link.rsplit('.', 1)[1])}</a>" for link in links
            )
            parts.append(
                f"<figure><img src='{e(_embedded(root / image))}' alt='{e(caption)}'>"
                f"<figcaption>{e(caption)} (files: {others})</figcaption></figure>"
            )
        if section.samples:
            parts.append("<div class='samples'>")
            for title, text, note in section.samples:
                parts.append(
                    f"<div class='sample'><b>{e(title)}</b><pre>{e(text)}</pre>{e(note)}</div>"
                )
            parts.append("</div>")
        if section.links:
            parts.append(
                "<ul>"
                + "".join(f"<li><a href='{e(p)}'>{e(label)}</a></li>" for label, p in section.links)
                + "</ul>"
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _markdown(sections: list[_Section], analysis: Analysis) -> str:
    parts = [f"# Sweep report: {analysis.store.root.name}", ""]
    for section in sections:
        parts += ["#" * section.level + f" {section.title}", ""]
        parts += [p + "\n" for p in section.paragraphs]
        for caption, frame in section.tables:
            if caption:
                parts += [f"**{caption}**", ""]
            parts.append(export.to_markdown(frame.astype(str)))
        for caption, image, links in section.figures:
            others = ", ".join(f"[{link.rsplit('.', 1)[1]}]({link})" for link in links)
            parts += [f"![{caption}]({image})", f"*{caption}* ({others})", ""]
        if section.samples:
            rows = pd.DataFrame(
                [(title, text.replace("\n", " ⏎ "), note) for title, text, note in section.samples],
                columns=["Config", "Sample", "Metrics"],
            )
            parts.append(export.to_markdown(rows))
        parts += [f"- [{label}]({p})" for label, p in section.links]
        parts.append("")
    return "\n".join(parts)


def print_summary(report: Report, metric: str) -> None:
    """What ``python -m analysis`` prints: trial counts, each sweep's table, notes, files."""
    analysis = report.analysis
    trials = analysis.store.trials
    print(
        f"{len(trials)} trials: {int(trials['status'].eq('ok').sum())} ok, "
        f"{int(trials['status'].eq('failed').sum())} failed, "
        f"{len(analysis.store.in_progress)} in progress, "
        f"{len(analysis.store.corrupt)} corrupt files"
    )
    summary = analysis.summary[analysis.summary["kind"].ne("search")]
    for sweep, rows in summary.groupby("sweep", sort=True):
        table = export.paper_table(rows, analysis.effects, metric)
        keep = [c for c in table.columns if c not in ("Final train loss", "Final val loss")]
        print(f"\nsweep {sweep}")
        print(export.to_markdown(table[keep]), end="")
        print(
            "Δ: 95% CI per comparison (not adjusted); p: Holm-adjusted across the sweep's "
            "levels (* below 0.05)."
        )
    print("", *verdicts.summary_lines(analysis.verdicts), sep="\n")
    for note in report.missing:
        print(f"note: {note}")
    figures = len(report.figures)
    print(f"\n{figures} figure files, {len(report.tables)} table files in {report.out_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis``: see analysis.cli (arguments are checked before pandas,
    scipy and matplotlib are imported)."""
    from analysis.cli import main as cli_main

    return cli_main(argv)
