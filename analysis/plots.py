"""The figures: drawing only, from aggregate outputs (no function here computes a statistic).

As in rliable, a function that draws one panel takes ``ax=None`` and returns the Axes it
drew on (a new figure's when ``ax`` is None), so panels compose into a figure of your
own: ``params_vs_loss_panel``, ``delta_forest_panel``. A figure of several panels returns
the Figure: figures 1 and 3 (``params_vs_loss``, ``delta_forest``: one panel per dataset),
2, 4, 5, 6 and 7. ``as_figure`` turns a one-panel call into its Figure. Figures are
``matplotlib.figure.Figure`` objects built with the object API (no pyplot state), so they
work under any backend and in threads. Colours come from one mapping per factor or sweep
(``color_mapping``). When the data hold several datasets, a figure gets one row of panels
per dataset; pass one dataset's rows to draw that dataset's version. The attention maps
figure 6 draws come from analysis.heatmaps (which runs the model).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import offset_copy

from analysis.aggregate import config_label, level_order
from charlm.text import scaled

_TAB20 = colormaps["tab20"](np.arange(20))
# tab10, then its lighter shades: 20 distinct colours
_PALETTE = tuple(to_hex(c) for c in (*_TAB20[0::2], *_TAB20[1::2]))
# The report page shows a figure at its natural size (100 dpi) up to this width: figures
# are drawn no wider, so no text is scaled down below MIN_FONT_PT on the page.
PAGE_WIDTH_IN = 11.5
MIN_FONT_PT = 8
_LABELS = {
    "train_loss": "train loss",
    "val_loss": "val loss",
    "entropy": "attention entropy (nats)",
    "effective_span": "effective span (characters)",
    "attention_js_next": "JS divergence to next layer",
    "hidden_cosine_next": "hidden-state cosine to next layer",
}


def color_mapping(
    names: Sequence[str], reserved: Mapping[str, str] | None = None
) -> dict[str, str]:
    """One colour per name (sorted, so the same names always get the same colours);
    ``reserved`` fixes some (default: 'baseline' is black)."""
    reserved = {"baseline": "black"} if reserved is None else dict(reserved)
    others = [name for name in sorted(set(map(str, names))) if name not in reserved]
    mapping = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(others)}
    return {**mapping, **{k: v for k, v in reserved.items() if k in set(map(str, names))}}


def _level_colors(levels: Sequence[str]) -> dict[str, tuple]:
    ordered = level_order(levels)
    cmap = colormaps["viridis"]
    positions = np.linspace(0.0, 0.85, max(len(ordered), 1))
    return {level: cmap(p) for level, p in zip(ordered, positions, strict=True)}


def _datasets(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["dataset"].dropna().unique()) if len(frame) else []


def _grid(
    n_rows: int,
    n_cols: int,
    width: float,
    height: float,
    bottom: float = 0.55,
    gap: float = 0.95,
    right: float = 0.0,
    left: float = 0.95,
) -> tuple[Figure, np.ndarray]:
    """A figure of n_rows x n_cols panels of about ``width`` x ``height`` inches, with
    ``gap`` inches between rows, 1 inch between columns, ``left`` and ``right`` inches at
    the sides.

    Margins are fixed in inches instead of a layout engine: constrained layout redraws
    every text several times and doubled the cost of the report's figures; fixed gaps also
    let a row or column of panels be cut out cleanly (figures.save_figure's views).
    """
    n_rows, n_cols = max(n_rows, 1), max(n_cols, 1)
    top, column_gap = 0.8, 1.1
    width = min(width, (PAGE_WIDTH_IN - right) / n_cols)  # never wider than the page
    fig_width, fig_height = width * n_cols + right, height * n_rows + top + bottom
    axes_width = (fig_width - left - 0.2 - right - (n_cols - 1) * column_gap) / n_cols
    axes_height = (fig_height - top - bottom - (n_rows - 1) * gap) / n_rows
    figure = Figure(figsize=(fig_width, fig_height))
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    figure.subplots_adjust(
        left=left / fig_width,
        right=1 - (0.2 + right) / fig_width,
        bottom=bottom / fig_height,
        top=1 - top / fig_height,
        wspace=column_gap / axes_width,
        hspace=gap / axes_height,
    )
    return figure, axes


def _one_dataset_axes(
    frame: pd.DataFrame, ax: Axes | None, *size: float, **margins: float
) -> tuple[Figure, list[tuple[str, Axes]]]:
    """The axes to draw each dataset on: ``ax`` (one dataset only) or a new column of
    panels (``size``: width, height; ``margins``: bottom, right, left as _grid's)."""
    if ax is not None:
        dataset, ax = _panel_axes(frame, ax, *size, **margins)
        return cast(Figure, ax.figure), [(dataset, ax)]
    datasets = _datasets(frame)
    figure, axes = _dataset_column(len(datasets), *size, **margins)
    return figure, list(zip(datasets, axes[:, 0], strict=False))


def _dataset_column(
    n_rows: int, width: float, height: float, bottom: float = 0.55, **margins: float
) -> tuple[Figure, np.ndarray]:
    """_grid's one column of dataset panels, ``bottom`` + 0.4 inches between rows."""
    return _grid(n_rows, 1, width, height, bottom, gap=bottom + 0.4, **margins)


def _panel_axes(
    frame: pd.DataFrame, ax: Axes | None, *size: float, **margins: float
) -> tuple[str, Axes]:
    """The one dataset of ``frame`` and the axes to draw it on: ``ax``, or the single panel
    of a new figure laid out as that dataset's row of the faceted figure."""
    datasets = _datasets(frame)
    if len(datasets) > 1:
        raise ValueError(
            f"ax given but the data hold {len(datasets)} datasets ({', '.join(datasets)}): "
            "pass one dataset's rows, or ax=None for one panel per dataset."
        )
    if ax is None:
        ax = _dataset_column(1, *size, **margins)[1][0, 0]
    return (datasets[0] if datasets else ""), ax


def as_figure(plot: Callable[..., Axes], *args: Any, **kwargs: Any) -> Figure:
    """``plot(*args, **kwargs)`` (a single-panel function) and return its figure."""
    return cast(Figure, plot(*args, **kwargs).figure)


def _bands(ax: Axes, series: Sequence[tuple[pd.DataFrame, str, Any, str, str]]) -> None:
    """Per (rows, column, colour, label, linestyle) of ``series``: the mean line of
    ``column`` over the rows' steps and its mean ± stderr band; then the panel's bands
    (_add_bands)."""
    bands = []
    for rows, column, color, label, linestyle in series:
        x = rows["step"].to_numpy(float)
        mean = rows[f"{column}_mean"].to_numpy(float)
        stderr = rows[f"{column}_stderr"].to_numpy(float)
        ax.plot(x, mean, color=color, label=label, linestyle=linestyle)
        finite = np.isfinite(mean) & np.isfinite(stderr)
        if finite.any():
            xs, low, high = x[finite], (mean - stderr)[finite], (mean + stderr)[finite]
            bands.append((np.column_stack([np.r_[xs, xs[::-1]], np.r_[high, low[::-1]]]), color))
    _add_bands(ax, bands)


def _label(ax: Axes, ylabel: str, xlabel: str = "step") -> None:
    """Axis labels and the light grid every panel has."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _add_bands(ax: Axes, bands: list) -> None:
    """All stderr bands of a panel as one PolyCollection (a fill_between per band was most
    of figure 2's drawing time)."""
    if bands:
        polygons = PolyCollection(
            [vertices for vertices, _ in bands],
            facecolors=[color for _, color in bands],
            alpha=0.2,
            linewidths=0,
        )
        ax.add_collection(polygons, autolim=True)
        ax.autoscale_view()
    _min_span(ax)
    # At most ~5 ticks per axis: tick labels are most of a panel's drawing time.
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))


def _min_span(ax: Axes, relative: float = 0.01, absolute: float = 1e-3) -> None:
    """Widen a y range narrower than ``relative`` of its values (or ``absolute``): a curve
    that moves by 3e-4 nats is flat, and is drawn flat with short tick labels (instead of
    3.87784 ... 3.87808 in ticks no reader can tell apart)."""
    low, high = ax.get_ylim()
    span = max(relative * max(abs(low), abs(high)), absolute)
    if high - low < span:
        middle = (low + high) / 2
        bottom = middle - span / 2
        if low >= 0 > bottom:  # a non-negative quantity keeps a non-negative axis
            bottom = 0.0
        ax.set_ylim(bottom, bottom + span)


def _label_height_in(n_labels: int) -> float:
    """Panel height (inches) that stacks ``n_labels`` 8 pt labels without overlap."""
    return max(4.0, n_labels * _LABEL_STEP_IN + 0.6)


_LABEL_STEP_IN = 0.19  # vertical space per point label, inches (8 pt text and a gap)


def params_vs_loss(
    summary: pd.DataFrame,
    *,
    metric: str = "best_val_loss",
    colors: Mapping[str, str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Figure 1: one ``params_vs_loss_panel`` per dataset (one colour per factor across
    them). ``summary``: config_summary rows. ``ax``: draw one dataset's rows into it (the
    Figure returned is ``ax``'s)."""
    colors = colors or color_mapping(summary["factor"])
    most = int(summary.groupby("dataset").size().max()) if len(summary) else 1
    figure, panels = _one_dataset_axes(
        summary, ax, 6.0, _label_height_in(most), bottom=1.1, right=2.0
    )
    for dataset, axes in panels:
        rows = summary[summary["dataset"] == dataset]
        params_vs_loss_panel(rows, metric=metric, colors=colors, ax=axes)
    return figure


def params_vs_loss_panel(
    rows: pd.DataFrame,
    *,
    metric: str = "best_val_loss",
    colors: Mapping[str, str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """One dataset's parameters (log x) vs ``metric``: mean with stderr bars, one colour
    per factor, each point's config in a column right of the axes (stacked so no two
    overlap, a leader line to its point). ``rows``: config_summary rows of one dataset.
    Draws on ``ax`` (a new figure when None) and returns it."""
    colors = colors or color_mapping(rows["factor"])
    dataset, ax = _panel_axes(rows, ax, 6.0, _label_height_in(len(rows)), 1.1, right=2.0)
    for factor, factor_rows in rows.groupby("factor", sort=True):
        ax.errorbar(
            factor_rows["n_params_mean"],
            factor_rows[f"{metric}_mean"],
            yerr=factor_rows[f"{metric}_stderr"].fillna(0),
            fmt="o",
            capsize=3,
            color=colors[factor],
            label=factor,
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: scaled(x, sep="", counts=True)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.12, y=0.08)
    ax.autoscale_view()
    _point_labels(ax, rows, metric, colors)
    _label(ax, _LABELS.get(metric, metric.replace("_", " ")), "parameters")
    ax.set_title(f"{_sweep_name(rows)}{dataset}: parameters vs {metric.replace('_', ' ')}", y=1.0)
    ax.legend(
        title="factor",
        fontsize=MIN_FONT_PT,
        title_fontsize=MIN_FONT_PT + 1,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncols=min(4, rows["factor"].nunique()),
    )
    return ax


def _point_labels(ax: Axes, rows: pd.DataFrame, metric: str, colors: Mapping[str, str]) -> None:
    """Each point's config as a label right of the axes, in the points' vertical order,
    spread to at least one label height apart, with a leader line to its point."""
    finite = rows[np.isfinite(rows["n_params_mean"]) & np.isfinite(rows[f"{metric}_mean"])]
    if finite.empty:
        return
    points = finite[["n_params_mean", f"{metric}_mean"]].to_numpy(float)
    heights = ax.transAxes.inverted().transform(ax.transData.transform(points))[:, 1]
    order = np.lexsort((finite["config"].to_numpy(str), heights))
    step = _LABEL_STEP_IN * ax.figure.dpi / ax.get_window_extent().height
    placed = np.clip(heights[order], step / 2, 1 - step / 2)
    for i in range(1, len(placed)):  # push up past the label below
        placed[i] = max(placed[i], placed[i - 1] + step)
    placed[-1] = min(placed[-1], 1 - step / 2)
    for i in range(len(placed) - 2, -1, -1):  # then down below the label above
        placed[i] = min(placed[i], placed[i + 1] - step)
    for (_, row), y in zip(finite.iloc[order].iterrows(), placed, strict=True):
        ax.annotate(
            row["config"],
            (row["n_params_mean"], row[f"{metric}_mean"]),
            xytext=(1.04, y),
            textcoords="axes fraction",
            va="center",
            fontsize=MIN_FONT_PT,
            color=colors[row["factor"]] if row["factor"] != "baseline" else "black",
            annotation_clip=False,
            arrowprops={
                "arrowstyle": "-",
                "color": colors[row["factor"]],
                "lw": 0.6,
                "alpha": 0.6,
                "shrinkA": 0,
                "shrinkB": 3,
            },
        )


def _sweep_name(rows: pd.DataFrame) -> str:
    sweeps = rows["sweep"].dropna().unique() if "sweep" in rows else []
    return f"{sweeps[0]} / " if len(sweeps) == 1 else ""


def _curve_columns(n_factors: int, n_datasets: int) -> int:
    """Panels per row: one column per dataset; one dataset's factors wrap at 2-3 columns."""
    if n_datasets > 1:
        return n_datasets
    return 1 if n_factors == 1 else 2 if n_factors in (2, 4) else 3


def factor_curves(
    curves: pd.DataFrame, columns: Sequence[str] = ("train_loss", "val_loss")
) -> Figure:
    """Figure 2: one panel per factor and dataset (several datasets: a column each; one
    dataset: its factors in rows of 2-3 panels): for the baseline (black) and each level,
    the mean curve and stderr band of val loss (solid) and train loss (dashed) over eval
    steps, the legend below its panel. ``curves``: curve_summary rows of one sweep."""
    datasets = _datasets(curves)
    factors = sorted(f for f in curves["factor"].unique() if f != "baseline")
    n_cols = _curve_columns(len(factors), len(datasets))
    panels = [(f, d) for f in factors for d in datasets]
    n_rows = math.ceil(len(panels) / n_cols)
    entries = max((curves[curves["factor"] == f]["level"].nunique() for f in factors), default=1)
    legend_in = 0.17 * math.ceil((entries + 1) / 2) + 0.5
    figure, axes = _grid(n_rows, n_cols, 4.2, 2.6, bottom=0.15 + legend_in,
                         gap=0.4 + legend_in)  # fmt: skip
    styles = [(column, "-" if column == "val_loss" else "--") for column in reversed(columns)]
    for ax, (factor, dataset) in zip(axes.flat, panels, strict=False):
        rows = curves[(curves["factor"] == factor) & (curves["dataset"] == dataset)]
        colors = {"baseline": "black", **_level_colors(list(rows["level"].unique()))}
        base = curves[(curves["factor"] == "baseline") & (curves["dataset"] == dataset)]
        series = [("baseline", "baseline", base)] + [
            (level, config_label(factor, level), rows[rows["level"] == level])
            for level in level_order(list(rows["level"].unique()))
        ]
        lines = [
            (frame, column, colors[level], label if style == "-" else f"_{label} ({column})", style)
            for level, label, frame in series
            if len(frame)
            for column, style in styles
        ]
        _bands(ax, lines)
        ax.set_title(f"{factor} ({dataset})", fontsize=9, y=1.0)
        _label(ax, "loss")
        ax.legend(fontsize=MIN_FONT_PT, loc="upper center", ncols=2, frameon=False,
                  bbox_to_anchor=(0.5, 0.0), bbox_transform=offset_copy(
                      ax.transAxes, figure, y=-30, units="points"))  # fmt: skip
    for ax in axes.flat[len(panels) :]:
        figure.delaxes(ax)
    _same_limits(axes.flat[: len(panels)], by_column=len(datasets) > 1, n_cols=n_cols)
    figure.suptitle(
        f"{_sweep_name(curves)}loss curves per factor: val solid, train dashed\n"
        "(mean ± stderr over seeds)",
        fontsize=10,
        y=1 - 0.12 / figure.get_figheight(),
        va="top",
    )
    return figure


def _same_limits(axes: np.ndarray, by_column: bool, n_cols: int) -> None:
    """One x range for all panels and one y range per column (by_column: per dataset),
    else one for all. (Cheaper than sharex/sharey, whose autoscaling of every sibling on
    every added band made figure 2 several times slower.)"""
    x_low = min(ax.get_xlim()[0] for ax in axes)
    x_high = max(ax.get_xlim()[1] for ax in axes)
    groups = [axes[c::n_cols] for c in range(n_cols)] if by_column else [axes]
    for group in groups:
        y_low = min(ax.get_ylim()[0] for ax in group)
        y_high = max(ax.get_ylim()[1] for ax in group)
        for ax in group:
            ax.set_xlim(x_low, x_high)
            ax.set_ylim(y_low, y_high)


def _label_width_in(labels: pd.Series) -> float:
    """Left margin (inches) for 8 pt tick labels this long."""
    longest = int(labels.astype(str).str.len().max()) if len(labels) else 0
    return max(0.95, 0.3 + 0.065 * longest)


VERDICT_COLORS = {"better": "#1a9850", "worse": "#d73027", "equivalent": "#4575b4",
                  "unresolved": "#999999"}  # fmt: skip


def delta_forest(verdicts: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Figure 3: one ``delta_forest_panel`` per dataset. ``verdicts``: level_verdicts rows
    (in the order given). ``ax``: draw one dataset's rows into it (the Figure returned is
    ``ax``'s)."""
    most = int(verdicts.groupby("dataset").size().max()) if len(verdicts) else 1
    figure, panels = _one_dataset_axes(verdicts, ax, 6.5, 1.0 + 0.3 * most, right=1.2,
                                       left=_label_width_in(verdicts["config"]))  # fmt: skip
    for dataset, axes in panels:
        delta_forest_panel(verdicts[verdicts["dataset"] == dataset], ax=axes)
    return figure


def delta_forest_panel(rows: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """One dataset's levels as a forest plot: Δ = level − baseline with the verdict's
    simultaneous interval (the tables' numbers), 0 as a line, ±D shaded, each level's
    verdict right of the axes in its colour. ``rows``: level_verdicts rows of one dataset."""
    dataset, ax = _panel_axes(rows, ax, 6.5, 1.0 + 0.3 * len(rows), right=1.2,
                              left=_label_width_in(rows["config"]))  # fmt: skip
    y = np.arange(len(rows))[::-1]
    delta = rows["delta"].to_numpy(float)
    low, high = rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)
    colors = [VERDICT_COLORS.get(v, "black") for v in rows["verdict"]]
    if len(rows):
        margin = float(rows["min_effect"].iloc[0])
        ax.axvspan(-margin, margin, color="#dddddd", alpha=0.6, lw=0)
    ax.axvline(0.0, color="black", lw=0.8)
    finite = np.isfinite(low) & np.isfinite(high)
    line_colors = [c for c, keep in zip(colors, finite, strict=True) if keep]
    ax.hlines(y[finite], low[finite], high[finite], colors=line_colors, lw=1.6)
    for end in (low, high):  # the interval's caps
        ax.scatter(end[finite], y[finite], marker="|", c=line_colors, s=60)
    ax.scatter(delta, y, c=colors, zorder=3, s=22)
    ax.set_yticks(y, list(rows["config"]), fontsize=MIN_FONT_PT)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    for position, verdict, color in zip(y, rows["verdict"], colors, strict=True):
        ax.annotate(verdict, (1.02, position), xycoords=("axes fraction", "data"),
                    va="center", fontsize=MIN_FONT_PT, color=color)  # fmt: skip
    if len(rows):
        first = rows.iloc[0]
        ax.set_xlabel(
            f"Δ {str(first.metric).replace('_', ' ')} vs baseline, simultaneous "
            f"{first.confidence:.0%} interval ({first.method}); grey: ±{first.min_effect:g}"
        )
    ax.set_title(f"{_sweep_name(rows)}{dataset}: difference from the baseline", y=1.0)
    ax.grid(True, axis="x", alpha=0.3)
    return ax


def _per_layer(attention: pd.DataFrame, metrics: Sequence[str], title: str, pairs: bool) -> Figure:
    datasets = _datasets(attention)
    # One legend for the figure, right of the panels: in a panel it covered the curves' ends.
    figure, axes = _grid(max(len(datasets), 1), len(metrics), 4.3, 3.0, right=1.5)
    all_layers = sorted(int(layer) for layer in attention["layer"].unique())
    colors = _level_colors([str(layer) for layer in all_layers])
    legend: dict[str, Any] = {}
    for row, dataset in enumerate(datasets):
        rows = attention[attention["dataset"] == dataset]
        layers = sorted(int(layer) for layer in rows["layer"].unique())
        if pairs:
            layers = layers[:-1]
        configs = ", ".join(sorted(rows["config"].unique()))
        name = "layers {}–{}" if pairs else "layer {}"
        parts = [(rows[rows["layer"] == n], colors[str(n)], name.format(n, n + 1)) for n in layers]
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            _bands(ax, [(part, metric, color, label, "-") for part, color, label in parts])
            ax.set_title(f"{dataset} ({configs})", fontsize=9, y=1.0)
            _label(ax, _LABELS.get(metric, metric))
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
    if legend:
        ordered = sorted(legend, key=lambda label: [int(n) for n in re.findall(r"\d+", label)])
        top = 1 - 0.8 / figure.get_figheight()
        figure.legend(
            [legend[label] for label in ordered],
            ordered,
            loc="upper right",
            bbox_to_anchor=(1.0, top),
            fontsize=MIN_FONT_PT,
            title="mean ± stderr",
            title_fontsize=MIN_FONT_PT,
        )
    figure.suptitle(f"{_sweep_name(attention)}{title}")
    return figure


def attention_over_training(
    attention: pd.DataFrame, metrics: Sequence[str] = ("entropy", "effective_span")
) -> Figure:
    """Figure 4: attention entropy and effective span per layer over training (mean over
    heads, then mean ± stderr over seeds). ``attention``: attention_summary rows of one
    config per dataset."""
    return _per_layer(attention, metrics, "attention over training, per layer", pairs=False)


def layer_similarity(
    attention: pd.DataFrame, metrics: Sequence[str] = ("attention_js_next", "hidden_cosine_next")
) -> Figure:
    """Figure 5: similarity of adjacent layers over training, one line per layer pair
    (JS divergence of attention maps, cosine of hidden states). ``attention``:
    attention_summary rows of one config per dataset."""
    return _per_layer(attention, metrics, "adjacent-layer similarity over training", pairs=True)


def display_chars(chars: Sequence[str]) -> list[str]:
    """Characters as tick labels: newline, tab and space made visible."""
    visible = {"\n": "⏎", "\t": "⇥", " ": "␣"}
    return [visible.get(ch, ch if ch.isprintable() else repr(ch)[1:-1]) for ch in chars]


_CELL_IN = 0.125  # a heatmap cell holds one 8-pt character label (9 pt a row)


def _heatmap(
    ax: Axes, matrix: np.ndarray, labels: list[str], title: str, vmax: float, side: float
) -> AxesImage:
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax)
    # Every character while a cell can hold its label, else every k-th.
    every = max(1, math.ceil(len(labels) * _CELL_IN / side - 1e-9))
    ticks = np.arange(0, len(labels), every)
    shown = [labels[i] for i in ticks]
    ax.set_xticks(ticks, shown, fontsize=MIN_FONT_PT)
    ax.set_yticks(ticks, shown, fontsize=MIN_FONT_PT)
    # Characters label the cells; no tick marks (a fifth of the figure's drawing time).
    ax.tick_params(bottom=False, left=False)
    ax.set_xlabel("key (attended to)", fontsize=9)
    ax.set_ylabel("query", fontsize=9)
    ax.set_title(title, fontsize=9, y=1.0)
    return image


def _heatmap_grid(n_panels: int, n_chars: int) -> tuple[Figure, np.ndarray, float]:
    """Square panels of ``side`` inches, big enough for one 8-pt label per character up to
    what the page holds, as many a row as fit the page, and room right for the colour bar."""
    colorbar, left_right, gap, row_gap = 1.2, 1.15, 1.1, 0.95  # _grid's margins
    room = PAGE_WIDTH_IN - colorbar - left_right  # for panels and the gaps between them
    side = min(max(2.5, _CELL_IN * n_chars), room)
    n_cols = max(1, min(n_panels, int((room + gap) // (side + gap))))
    n_rows = max(-(-n_panels // n_cols), 1)
    width = side + (left_right + (n_cols - 1) * gap) / n_cols
    height = side + row_gap * (n_rows - 1) / n_rows
    figure, axes = _grid(n_rows, n_cols, width, height, bottom=0.9, gap=row_gap, right=colorbar)
    return figure, axes, side


def _heatmap_figure(
    matrices: Sequence[np.ndarray], titles: Sequence[str], chars: Sequence[str], heading: str
) -> Figure:
    figure, axes, side = _heatmap_grid(len(matrices), len(chars))
    labels = display_chars(chars)
    vmax = max(max(float(np.nanmax(m)) for m in matrices), 1e-9) if matrices else 1.0
    image = None
    for index, ax in enumerate(axes.flat):
        if index < len(matrices):
            image = _heatmap(ax, matrices[index], labels, titles[index], vmax, side)
        else:
            ax.set_axis_off()
    if image is not None:
        top, bottom = axes[0, -1].get_position().y1, axes[0, -1].get_position().y0
        left = 1 - 0.95 / figure.get_figwidth()
        bar = figure.add_axes((left, bottom, 0.18 / figure.get_figwidth(), top - bottom))
        figure.colorbar(image, cax=bar, label="attention weight")
        bar.tick_params(labelsize=MIN_FONT_PT)
    figure.suptitle(heading, fontsize=10)
    return figure


def head_heatmaps(
    layer_maps: np.ndarray, chars: Sequence[str], layer: int, model: str = ""
) -> Figure:
    """Figure 6a: one heatmap per head of one layer, characters on both axes, one colour
    scale and bar for all heads. ``layer_maps``: (n_head, T, T), rows are the causal
    attention distributions. ``model`` names the model in the title (which trial)."""
    maps = np.asarray(layer_maps)
    if maps.ndim != 3 or maps.shape[1:] != (len(chars), len(chars)):
        raise ValueError(
            f"layer_maps has shape {maps.shape}; expected (n_head, {len(chars)}, {len(chars)})"
        )
    titles = [f"layer {layer}, head {head}" for head in range(maps.shape[0])]
    heading = f"attention per head, layer {layer}" + (f"\n{model}" if model else "")
    return _heatmap_figure(list(maps), titles, chars, heading)


def layer_heatmaps(
    attention_maps: Sequence[np.ndarray], chars: Sequence[str], model: str = ""
) -> Figure:
    """Figure 6b: the head-averaged attention map of every layer, characters on the axes,
    one colour scale and bar. ``attention_maps``: one (n_head, T, T) array per layer (the
    plot averages heads). ``model`` names the model in the title (which trial)."""
    matrices = [np.asarray(maps).mean(axis=0) for maps in attention_maps]
    titles = [f"layer {layer} (mean over heads)" for layer in range(len(matrices))]
    heading = "head-averaged attention per layer" + (f"\n{model}" if model else "")
    return _heatmap_figure(matrices, titles, chars, heading)


def sweeps_compared(
    curves: pd.DataFrame,
    columns: Sequence[str] = ("train_loss", "val_loss"),
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Figure 7: per dataset, the train and val curves of each sweep's baseline config,
    mean line and stderr band, one colour per sweep. ``curves``: curve_summary rows of
    the baseline configs (aggregate.baseline_configs) of several sweeps."""
    colors = colors or color_mapping(curves["sweep"], reserved={})
    datasets = _datasets(curves)
    figure, axes = _grid(max(len(datasets), 1), len(columns), 4.5, 3.2)
    for row, dataset in enumerate(datasets):
        rows = curves[curves["dataset"] == dataset]
        for col, column in enumerate(columns):
            ax = axes[row, col]
            groups = rows.groupby("sweep", sort=True)
            _bands(ax, [(part, column, colors[sweep], sweep, "-") for sweep, part in groups])
            ax.set_title(f"{dataset}: {_LABELS.get(column, column)}", fontsize=9, y=1.0)
            _label(ax, _LABELS.get(column, column))
            ax.legend(
                title="sweep (baseline config)",
                fontsize=MIN_FONT_PT,
                title_fontsize=MIN_FONT_PT,
                loc="upper right",
            )
    figure.suptitle("sweeps compared: baseline configs\n(mean ± stderr over seeds)", fontsize=10)
    return figure
