"""Figures of the predictors section and the research templates' figures: drawing only.

Single-panel functions take ``ax=None`` and return the axes they drew on (a new figure's
when ``ax`` is None); the multi-panel ones return a Figure. ``plots.as_figure`` turns a
single-panel call into a Figure for the report's figure workers (picklable with partial).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.aggregate import level_order
from analysis.plots import _bands, _label, _level_colors, color_mapping

_MAX_LEGEND = 12


def _new_axes(width: float, height: float, left: float = 0.8, bottom: float = 0.6) -> Axes:
    figure = Figure(figsize=(width, height))
    return figure.add_axes(
        (left / width, bottom / height, 1 - (left + 0.25) / width, 1 - (bottom + 0.55) / height)
    )


def cluster_quality_panel(rows: pd.DataFrame, ax: Axes | None = None, legend: bool = True) -> Axes:
    """Silhouette of each layer's hidden states over training, mean ± stderr over seeds, of
    one config. ``rows``: ``predictors.silhouette_summary`` rows of one config."""
    ax = ax if ax is not None else _new_axes(4.5, 3.2)
    layers = sorted(int(layer) for layer in rows["layer"].unique())
    colors = _level_colors([str(layer) for layer in layers])
    rows = rows.sort_values("step", kind="stable")
    series = [
        (rows[rows["layer"] == n], "silhouette", colors[str(n)], f"layer {n}", "-") for n in layers
    ]
    _bands(ax, series)
    _label(ax, "silhouette (k-means, k=8)")
    if legend:
        ax.legend(fontsize=7, loc="lower right")
    return ax


def cluster_quality(summary: pd.DataFrame, max_columns: int = 4) -> Figure:
    """Figure: one panel per (dataset, config) of the shown factor (baseline first), each
    ``cluster_quality_panel``; one y range for all panels. ``summary``:
    ``predictors.silhouette_summary`` rows of one sweep."""
    panels = []
    for dataset in sorted(summary["dataset"].unique()):
        rows = summary[summary["dataset"] == dataset]
        levels = level_order([lv for lv in rows["level"].astype(str).unique()])
        base = [
            lv
            for lv in levels
            if rows.loc[rows["level"].astype(str) == lv, "factor"].eq("baseline").any()
        ]
        for level in base + [lv for lv in levels if lv not in base]:
            panels.append((dataset, rows[rows["level"].astype(str) == level]))
    n_cols = max(1, min(max_columns, len(panels)))
    n_rows = max(1, math.ceil(len(panels) / n_cols))
    width, height = 3.6, 2.7
    figure = Figure(figsize=(n_cols * width + 0.4, n_rows * height + 1.0))
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    figure.subplots_adjust(
        left=0.75 / (n_cols * width + 0.4), right=0.98, top=1 - 0.8 / (n_rows * height + 1.0),
        bottom=0.5 / (n_rows * height + 1.0), wspace=0.35, hspace=0.55,
    )  # fmt: skip
    layer_counts = [rows["layer"].nunique() for _, rows in panels]
    for index, (ax, (dataset, rows)) in enumerate(zip(axes.flat, panels, strict=False)):
        # the layers' legend once, unless configs differ in their number of layers
        cluster_quality_panel(rows, ax, legend=index == 0 or len(set(layer_counts)) > 1)
        ax.set_title(f"{dataset}: {rows['config'].iloc[0]}", fontsize=9)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    used = list(axes.flat[: len(panels)])
    if used:
        low = min(ax.get_ylim()[0] for ax in used)
        high = max(ax.get_ylim()[1] for ax in used)
        for ax in used:
            ax.set_ylim(low, high)
    sweep = summary["sweep"].iloc[0] if len(summary) else ""
    factor = summary["shown_factor"].iloc[0] if "shown_factor" in summary and len(summary) else ""
    figure.suptitle(
        f"{sweep}: hidden-state cluster quality per layer, factor {factor}\n"
        "(mean ± stderr over seeds)",
        fontsize=10,
    )
    return figure


def training_dynamics(curves: pd.DataFrame, trials: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Train (dashed) and val (solid) loss of every ok run on one set of axes. Colours:
    one per config when the runs hold at most 12 configs, else one per dataset. The lines
    are rasterised (an SVG of thousands of runs stays small). ``curves``: the curves table
    (trial_id, step, train_loss, val_loss); ``trials``: the trials table."""
    ax = ax if ax is not None else _new_axes(7.5, 4.6)
    ok = trials[trials["status"].eq("ok")][["trial_id", "sweep", "dataset", "factor", "level"]]
    ok = ok.assign(trial_id=ok["trial_id"].astype(str))
    labels = ok["dataset"].astype(str)
    if ok["sweep"].nunique() > 1:
        labels = ok["sweep"].astype(str) + " / " + labels
    config = (
        labels
        + ": "
        + np.where(
            ok["factor"].eq("baseline"), "baseline", ok["factor"] + "=" + ok["level"].astype(str)
        )
    )
    group = config if config.nunique() <= _MAX_LEGEND else labels
    colors = color_mapping(group.unique(), reserved={})
    color_of = dict(zip(ok["trial_id"], group.map(colors), strict=True))
    frame = curves.assign(trial_id=curves["trial_id"].astype(str))
    frame = frame[frame["trial_id"].isin(color_of)].sort_values(["trial_id", "step"], kind="stable")
    runs = 0
    for column, style, width in (("train_loss", "--", 0.7), ("val_loss", "-", 1.0)):
        rows = frame[np.isfinite(frame[column].to_numpy(float))]
        ids = rows["trial_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
        points = rows[["step", column]].to_numpy(float)
        segments = np.split(points, starts[1:]) if len(ids) else []  # one run each
        segment_colors = [color_of[trial_id] for trial_id in ids[starts]] if len(ids) else []
        runs = max(runs, len(segments))
        alpha = 0.9 if len(segments) <= 50 else max(0.08, 0.9 * 50 / len(segments))
        # thousands of runs: no anti-aliasing (faster to draw, and the lines overlap anyway)
        lines = LineCollection(
            segments, colors=segment_colors, linestyles=style, linewidths=width, alpha=alpha,
            rasterized=True, antialiased=len(segments) <= 500,
        )  # fmt: skip
        ax.add_collection(lines, autolim=True)
    ax.autoscale_view()
    _label(ax, "loss")
    handles = [Line2D([], [], color=colors[name], label=name) for name in sorted(colors)]
    handles += [
        Line2D([], [], color="black", linestyle="-", label="val loss"),
        Line2D([], [], color="black", linestyle="--", label="train loss"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper right", ncols=2 if len(handles) > 8 else 1)
    ax.set_title(f"training dynamics: train and val loss of {runs} runs", fontsize=10)
    return ax


def loss_by_config(
    curves: pd.DataFrame, column: str = "train_loss", ax: Axes | None = None
) -> Axes:
    """One dataset's ``column`` over training, one line (mean ± stderr over seeds) per
    config of every sweep: the research templates' train_loss_{dataset} / val_loss_{dataset}.
    ``curves``: ``aggregate.curve_summary`` rows of one dataset."""
    ax = ax if ax is not None else _new_axes(7.5, 4.6)
    several = curves["sweep"].nunique() > 1
    names = (curves["sweep"].astype(str) + " / " if several else "") + curves["config"].astype(str)
    frame = curves.assign(name=names.to_numpy())
    colors = color_mapping(frame["name"].unique(), reserved={"baseline": "black"})
    groups = frame.sort_values("step", kind="stable").groupby("name", sort=True)
    _bands(ax, [(rows, column, colors[name], name, "-") for name, rows in groups])
    if frame["name"].nunique() <= 2 * _MAX_LEGEND:
        ax.legend(
            fontsize=6, loc="upper right", ncols=2 if frame["name"].nunique() > _MAX_LEGEND else 1
        )
    dataset = curves["dataset"].iloc[0] if len(curves) else ""
    label = column.replace("_", " ")
    ax.set_title(f"{dataset}: {label} per config (mean ± stderr over seeds)", fontsize=10)
    _label(ax, label)
    return ax


def correlation_heatmap(
    correlations: pd.DataFrame,
    predictors: Sequence[str] | None = None,
    outcomes: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Spearman's rho of each predictor (rows) with each outcome (columns) of one sweep and
    dataset, coloured from -1 (blue) to +1 (red), each cell with rho, its CI and * when
    the Holm-corrected p is below 0.05; grey: not computed. ``correlations``:
    ``predictors.correlations`` rows of one (sweep, dataset)."""
    if predictors is None:
        predictors = list(dict.fromkeys(correlations["predictor"]))
    if outcomes is None:
        outcomes = list(dict.fromkeys(correlations["outcome"]))
    if ax is None:
        height = 0.62 * len(predictors) + 1.6
        ax = _new_axes(1.6 * len(outcomes) + 2.4, height, left=2.3, bottom=0.9)
    matrix = np.full((len(predictors), len(outcomes)), np.nan)
    cells = {(r.predictor, r.outcome): r for r in correlations.itertuples()}
    labels_p = {r.predictor: r.predictor_label for r in correlations.itertuples()}
    labels_o = {r.outcome: r.outcome_label for r in correlations.itertuples()}
    cmap = colormaps["RdBu_r"].with_extremes(bad="#dddddd")
    for i, p in enumerate(predictors):
        for j, o in enumerate(outcomes):
            row = cells.get((p, o))
            if row is None:
                ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="#555555")
                continue
            matrix[i, j] = row.rho
            star = "*" if row.p_holm < 0.05 else ""
            ci = "" if not np.isfinite(row.ci_low) else f"\n[{row.ci_low:+.2f}, {row.ci_high:+.2f}]"
            color = "white" if abs(row.rho) > 0.6 else "black"
            ax.text(
                j, i, f"{row.rho:+.2f}{star}{ci}", ha="center", va="center", fontsize=7, color=color
            )
    image = ax.imshow(
        np.ma.masked_invalid(matrix), cmap=cmap, norm=TwoSlopeNorm(0.0, -1.0, 1.0), aspect="auto"
    )
    ax.set_xticks(
        range(len(outcomes)),
        [labels_o.get(o, o) for o in outcomes],
        fontsize=8,
        rotation=20,
        ha="right",
    )
    ax.set_yticks(range(len(predictors)), [labels_p.get(p, p) for p in predictors], fontsize=8)
    ax.tick_params(length=0)
    n = correlations["n"].max() if len(correlations) else 0
    dataset = correlations["dataset"].iloc[0] if len(correlations) else ""
    ax.set_title(f"{dataset}: Spearman's rho over {n} runs [95% CI]", fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02, label="Spearman's rho")
    return ax


def correlation_figure(correlations: pd.DataFrame) -> Figure:
    """Figure: ``correlation_heatmap`` of each dataset of one sweep, one row each."""
    datasets = sorted(correlations["dataset"].unique())
    predictors = list(dict.fromkeys(correlations["predictor"]))
    outcomes = list(dict.fromkeys(correlations["outcome"]))
    panel_height = 0.6 * len(predictors) + 1.3
    width = 1.6 * len(outcomes) + 4.4
    height = panel_height * len(datasets) + 1.1
    figure = Figure(figsize=(width, height))
    axes = figure.subplots(len(datasets), 1, squeeze=False)[:, 0]
    figure.subplots_adjust(left=2.3 / width, right=1 - 0.9 / width, top=1 - 0.95 / height,
                           bottom=0.8 / height, hspace=1.1 / panel_height)  # fmt: skip
    for ax, dataset in zip(axes, datasets, strict=True):
        correlation_heatmap(
            correlations[correlations["dataset"] == dataset], predictors, outcomes, ax
        )
    sweep = correlations["sweep"].iloc[0] if len(correlations) else ""
    figure.suptitle(
        f"{sweep}: final attention and representation metrics vs outcomes\n"
        "(* Holm-corrected p < 0.05)",
        fontsize=10,
    )
    return figure
