"""The report's figures as files: ``save_figure`` (every format, and per-dataset views
cut from the one drawing), figure jobs, and the processes that draw them.

A ``FigureJob`` is a picklable drawing (a plots function and its frame) with the path
and caption it is saved under; ``figure_jobs``, ``heatmap_jobs`` and ``attention_jobs``
make them from an Analysis as its parts become ready. ``Rendering`` draws and saves them
in a process pool (forked: fast to start) while build_report goes on reading and writing,
with the garbage collector off during each job (see ``_draw_and_save``). The workers end
with their parent: a failure or a signal in build_report terminates them (``close``), and
on Linux the kernel sends them SIGTERM if the parent dies any other way (even SIGKILL).
"""

from __future__ import annotations

import ctypes
import gc
import io
import multiprocessing
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from PIL import Image

from analysis import plots
from analysis.export import slug
from analysis.heatmaps import Heatmaps

if TYPE_CHECKING:
    from analysis.report import Analysis


@dataclass
class FigureJob:
    """One figure to draw in a worker: ``draw()`` returns the Figure, saved as ``stem``."""

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
        jobs.append(dataset_job(rows, f"{s}/1_params_vs_loss", caption, draw_params))
        if len(curves) and curves["factor"].ne("baseline").any():
            caption, panels = f"{sweep}: loss curves per factor", curves["factor"].nunique()
            jobs.append(
                dataset_job(
                    curves, f"{s}/2_factor_curves", caption, plots.factor_curves, panels, "col"
                )
            )
        judged = analysis.verdicts[analysis.verdicts["sweep"] == sweep]
        if len(judged):
            caption = f"{sweep}: each level's difference from the baseline, with its verdict"
            jobs.append(dataset_job(judged, f"{s}/3_deltas", caption, plots.delta_forest))
    baseline_curves = analysis.curves[analysis.curves["factor"] == "baseline"]
    if baseline_curves["sweep"].nunique() > 1:
        draw_compared = partial(plots.sweeps_compared, colors=sweep_colors)
        caption = "sweeps compared: baseline configs"
        jobs.append(dataset_job(baseline_curves, "7_sweeps_compared", caption, draw_compared))
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
            dataset_job(attention, f"{s}/4_attention", caption, plots.attention_over_training)
        )
        if attention["attention_js_next_n"].gt(0).any():
            caption = f"{sweep}: adjacent-layer similarity (baseline)"
            jobs.append(
                dataset_job(attention, f"{s}/5_layer_similarity", caption, plots.layer_similarity)
            )
    return jobs


def dataset_job(
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


def figure_entries(
    stem: str, caption: str, formats: Sequence[str], views: Sequence[tuple] = ()
) -> list[tuple[str, str, list[str]]]:
    """The report's entries of a figure and its views (FigureJob.views): caption, the image
    shown (PNG if written) and links to every format, paths inside the report."""
    image = "png" if "png" in formats else formats[0]
    entries = []
    for suffix, view_caption, *_ in [("", caption), *views]:
        name = f"{stem}_{suffix}" if suffix else stem
        links = [f"figures/{name}.{fmt}" for fmt in formats]
        entries.append((view_caption, f"figures/{name}.{image}", links))
    return entries


def _draw_and_save(job: FigureJob, directory: Path, formats: Sequence[str]) -> list[Path]:
    # A figure is thousands of small objects in reference cycles: the garbage collector
    # ran over and over while one was built and drawn (benchmarks/analysis_speed.py). It is
    # off during the job and collects the job's cycles once it is back on.
    enabled = gc.isenabled()
    gc.disable()
    try:
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
        return save_figure(figure, directory / job.stem, formats, views=views)
    finally:
        if enabled:
            gc.enable()


_PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def _worker_start() -> None:
    """In each figure worker: default signal handlers (the parent's raise in the parent
    only), and on Linux SIGTERM from the kernel when the parent dies."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
            self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start)

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

    def close(self, terminate: bool = False) -> None:
        """Shut the pool down once its jobs are done, or (``terminate``) at once, ending the
        workers' jobs where they are."""
        if self.pool is None:
            return
        if terminate and hasattr(self.pool, "terminate_workers"):  # Python 3.14+
            self.pool.terminate_workers()
        elif terminate:  # before 3.14 the pool's process table is the only handle on them
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.pool.shutdown(cancel_futures=True)
        self.pool = None


def save_figure(
    figure: Figure,
    stem: str | Path,
    formats: Sequence[str] = ("png", "svg"),
    dpi: int = 100,
    views: Mapping[str, Sequence[Axes]] | None = None,
) -> list[Path]:
    """Write ``figure`` as ``<stem>.<format>`` for each format; return the paths.

    ``views`` (name -> axes of the figure) also writes ``<stem>_<name>.<format>``: the
    part of the figure holding those axes, e.g. one dataset's row of panels. A PNG view is
    cut from the same drawing and an SVG view is the same drawing with a narrower viewBox
    (what ``savefig(bbox_inches=...)`` writes too), so views cost no second drawing.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    views = dict(views or {})
    paths: list[Path] = []
    boxes: dict[str, Bbox] = {}
    height_px = figure.get_figheight() * dpi
    if "png" in formats or views:
        figure.set_dpi(dpi)
        canvas = FigureCanvasAgg(figure)
        # Unhinted glyphs: FreeType's auto-hinter (matplotlib's default) cost a sixth of
        # the PNG's drawing time, for text that looks barely different at 100 dpi.
        with rc_context({"text.hinting": "no_hinting"}):
            canvas.draw()
        pixels = np.asarray(canvas.buffer_rgba())
        boxes = {name: _view_box(figure, axes) for name, axes in views.items()}
        if "png" in formats:
            Image.fromarray(pixels).save(stem.with_suffix(".png"), compress_level=1)
            paths.append(stem.with_suffix(".png"))
            for name, box in boxes.items():
                top, bottom = int(height_px - box.y1), int(np.ceil(height_px - box.y0))
                crop = pixels[max(top, 0) : bottom, int(box.x0) : int(np.ceil(box.x1))]
                path = stem.with_name(f"{stem.name}_{name}.png")
                Image.fromarray(np.ascontiguousarray(crop)).save(path, compress_level=1)
                paths.append(path)
    for fmt in (fmt for fmt in formats if fmt != "png"):
        path = stem.with_suffix(f".{fmt}")
        with rc_context({"svg.fonttype": "none"}):  # text as text: smaller, faster SVG
            if fmt == "svg":
                buffer = io.StringIO()
                figure.savefig(buffer, format="svg", dpi=dpi)
                svg = buffer.getvalue()
                path.write_text(svg)
            else:
                figure.savefig(path, format=fmt, dpi=dpi)
            paths.append(path)
            for name, box in boxes.items():
                view = stem.with_name(f"{stem.name}_{name}.{fmt}")
                if fmt == "svg":
                    view.write_text(_svg_view(svg, _inches(box, dpi), figure.get_figheight()))
                else:
                    figure.savefig(view, format=fmt, dpi=dpi, bbox_inches=_inches(box, dpi))
                paths.append(view)
    return paths


def _view_box(figure: Figure, axes: Sequence[Axes]) -> Bbox:
    """The part of the figure (display pixels) that holds ``axes``: out to halfway to the
    neighbouring panels, or to the figure's edge where there is none (above: room for the
    panel titles, not the figure's title). Geometry only: measuring every text's extent
    would cost as much as drawing the figure again."""
    box = Bbox.union([ax.get_position() for ax in axes])  # figure fractions
    others = [ax.get_position() for ax in figure.axes if ax not in axes]
    left = max((o.x1 for o in others if o.x1 <= box.x0), default=None)
    right = min((o.x0 for o in others if o.x0 >= box.x1), default=None)
    below = max((o.y1 for o in others if o.y1 <= box.y0), default=None)
    above = min((o.y0 for o in others if o.y0 >= box.y1), default=None)
    title_room = 0.4 / figure.get_figheight()
    extents = (
        0.0 if left is None else (left + box.x0) / 2,
        0.0 if below is None else (below + box.y0) / 2,
        1.0 if right is None else (right + box.x1) / 2,
        min(1.0, box.y1 + title_room) if above is None else (above + box.y1) / 2,
    )
    return Bbox.from_extents(*extents).transformed(figure.transFigure)


def _inches(box: Bbox, dpi: float) -> Bbox:
    return Bbox.from_extents(box.x0 / dpi, box.y0 / dpi, box.x1 / dpi, box.y1 / dpi)


def _svg_view(svg: str, box: Bbox, figure_height: float) -> str:
    """The SVG with its page narrowed to ``box`` (inches, origin bottom left)."""
    x, y = box.x0 * 72, (figure_height - box.y1) * 72  # SVG: points, origin top left
    width, height = box.width * 72, box.height * 72
    size = f'width="{width:.2f}pt" height="{height:.2f}pt"'
    root = f'{size} viewBox="{x:.2f} {y:.2f} {width:.2f} {height:.2f}"'
    return re.sub(r'width="[^"]*" height="[^"]*" viewBox="[^"]*"', root, svg, count=1)
