"""The report's figures as jobs, and the processes that draw them.

A ``FigureJob`` is a picklable drawing (a plots function and its frame) with the path
and caption it is saved under; ``figure_jobs``, ``heatmap_jobs`` and ``attention_jobs``
make them from an Analysis as its parts become ready. ``Rendering`` draws and saves them
in a process pool (forked: fast to start) while build_report goes on reading and writing,
with the garbage collector off during each job (see ``_draw_and_save``).
"""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis import plots
from analysis.export import slug
from analysis.heatmaps import Heatmaps

if TYPE_CHECKING:
    from analysis.report import Analysis

__all__ = ["FigureJob", "Rendering", "attention_jobs", "figure_jobs", "heatmap_jobs"]


@dataclass
class FigureJob:
    stem: str  # path inside figures/, without suffix
    caption: str
    draw: Callable[[], Any]
    cost: int = 1  # rough number of panels, to schedule big figures first
    # Per-dataset versions cut from the drawing: (stem suffix, caption, "row"|"col", index).
    views: list[tuple[str, str, str, int]] = field(default_factory=list)


def figure_jobs(analysis: Analysis) -> list[FigureJob]:
    """The figures that need neither the attention table nor a model: per sweep 1-3,
    then 7. Each job is picklable (a plots function and its frame), so any worker can
    draw it."""
    jobs: list[FigureJob] = []
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


def heatmap_jobs(heatmaps: list[Heatmaps]) -> list[FigureJob]:
    """Figure 6 per dataset: the chosen layer's heads, and every layer head-averaged."""
    jobs = []
    for heat in heatmaps:
        d, source = slug(heat.dataset), f"({heat.config}, trial {heat.trial_id})"
        shape = f"{len(heat.maps)} layers x {len(heat.maps[0])} heads"
        model = f"{heat.dataset}: {heat.config}, trial {heat.trial_id} ({shape})"
        jobs.append(
            FigureJob(
                f"6_heatmaps/{d}_heads_layer{heat.layer}",
                f"{heat.dataset}: attention per head, layer {heat.layer} {source}",
                partial(plots.head_heatmaps, heat.maps[heat.layer], heat.chars, heat.layer, model),
            )
        )
        jobs.append(
            FigureJob(
                f"6_heatmaps/{d}_layers",
                f"{heat.dataset}: head-averaged attention per layer {source}",
                partial(plots.layer_heatmaps, heat.maps, heat.chars, model),
            )
        )
    return jobs


def attention_jobs(analysis: Analysis) -> list[FigureJob]:
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
) -> FigureJob:
    """The figure of all datasets (one row, or column, of panels each) and, with several
    datasets, each dataset's panels as its own version (cut from the same drawing)."""
    datasets = sorted(frame["dataset"].unique())
    views = []
    if len(datasets) > 1:
        views = [(slug(d), f"{caption} ({d})", axis, i) for i, d in enumerate(datasets)]
    return FigureJob(stem, caption, partial(draw, frame), panels * len(datasets), views)


def _draw_and_save(job: FigureJob, directory: Path, formats: Sequence[str]) -> list[Path]:
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


def _draw_and_save_views(job: FigureJob, directory: Path, formats: Sequence[str]) -> list[Path]:
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


class Rendering:
    """Draws and saves figures: in ``workers`` processes (forked where the platform can:
    fast to start) as soon as jobs are submitted, so the caller can go on reading and
    writing meanwhile; serially in this process when workers <= 1. ``results()`` waits."""

    def __init__(self, directory: Path, formats: Sequence[str], workers: int) -> None:
        self.directory, self.formats = directory, formats
        self.jobs: list[FigureJob] = []
        self.futures: list[Future] = []
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.pool = ProcessPoolExecutor(workers, mp_context=context)

    def submit(self, jobs: list[FigureJob]) -> None:
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
