"""The figures: one function per figure, each takes aggregate outputs and returns a Figure.

No function here computes a statistic (aggregate.py does); they only draw. Figures are
``matplotlib.figure.Figure`` objects built with the object API (no pyplot state), so they
work under any backend and in threads. Colours come from one mapping per factor or sweep
(``color_mapping``). When the data hold several datasets, a figure gets one row of panels
per dataset; pass one dataset's rows to draw that dataset's version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.aggregate import config_label, level_order

__all__ = [
    "attention_over_training",
    "capture_attention",
    "color_mapping",
    "display_chars",
    "factor_curves",
    "head_heatmaps",
    "layer_heatmaps",
    "layer_similarity",
    "loss_bars",
    "params_vs_loss",
    "save_figure",
    "sweeps_compared",
]

_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
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
    from matplotlib import colormaps

    ordered = level_order(levels)
    cmap = colormaps["viridis"]
    positions = np.linspace(0.0, 0.85, max(len(ordered), 1))
    return {level: cmap(p) for level, p in zip(ordered, positions)}


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
    sharex: bool | str = False,
    sharey: bool | str = False,
) -> tuple[Figure, np.ndarray]:
    """A figure of n_rows x n_cols panels, each ``width`` x ``height`` inches.

    Margins are fixed in inches instead of a layout engine: constrained layout redraws
    every text several times and doubled the cost of the report's figures.
    """
    n_rows, n_cols = max(n_rows, 1), max(n_cols, 1)
    fig_width, fig_height = width * n_cols + right, height * n_rows + 0.8 + bottom
    figure = Figure(figsize=(fig_width, fig_height))
    axes = figure.subplots(n_rows, n_cols, squeeze=False, sharex=sharex, sharey=sharey)
    figure.subplots_adjust(
        left=0.75 / fig_width, right=1 - (0.2 + right) / fig_width, bottom=bottom / fig_height,
        top=1 - 0.8 / fig_height, wspace=0.85 / width, hspace=gap / height,
    )  # fmt: skip
    return figure, axes


def _one_dataset_axes(
    frame: pd.DataFrame,
    ax: Axes | None,
    width: float,
    height: float,
    bottom: float = 0.55,
    right: float = 0.0,
):
    """The axes to draw each dataset on: ``ax`` (one dataset only) or a new column of panels."""
    datasets = _datasets(frame)
    if ax is not None:
        if len(datasets) > 1:
            raise ValueError(
                f"ax given but the data hold {len(datasets)} datasets ({', '.join(datasets)}): "
                "pass one dataset's rows, or ax=None for one panel per dataset."
            )
        return ax.figure, [(datasets[0] if datasets else "", ax)]
    figure, axes = _grid(
        max(len(datasets), 1), 1, width, height, bottom, gap=bottom + 0.4, right=right
    )
    return figure, list(zip(datasets, axes[:, 0], strict=False))


def _band(ax: Axes, x, mean, stderr, color, label: str | None, **line) -> None:
    x, mean, stderr = np.asarray(x), np.asarray(mean, float), np.asarray(stderr, float)
    ax.plot(x, mean, color=color, label=label, **line)
    if np.isfinite(stderr).any():
        ax.fill_between(x, mean - stderr, mean + stderr, color=color, alpha=0.2, linewidth=0)


def params_vs_loss(
    summary: pd.DataFrame,
    *,
    metric: str = "best_val_loss",
    colors: Mapping[str, str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Figure 1: parameters (log x) vs ``metric``, mean with stderr bars, each point
    labelled with its config, one colour per factor. ``summary``: config_summary rows."""
    colors = colors or color_mapping(summary["factor"])
    figure, panels = _one_dataset_axes(summary, ax, 6.0, 4.0, right=1.6)
    for dataset, axes in panels:
        rows = summary[summary["dataset"] == dataset]
        for factor, factor_rows in rows.groupby("factor", sort=True):
            axes.errorbar(
                factor_rows["n_params_mean"], factor_rows[f"{metric}_mean"],
                yerr=factor_rows[f"{metric}_stderr"].fillna(0), fmt="o", capsize=3,
                color=colors[factor], label=factor,
            )  # fmt: skip
            for _, row in factor_rows.iterrows():
                axes.annotate(
                    config_label(row["factor"], row["level"]),
                    (row["n_params_mean"], row[f"{metric}_mean"]),
                    xytext=(4, 4), textcoords="offset points", fontsize=7,
                )  # fmt: skip
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _count_label(x)))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.margins(x=0.12)
        axes.set_xlabel("parameters")
        axes.set_ylabel(_LABELS.get(metric, metric.replace("_", " ")))
        axes.set_title(f"{_sweep_name(rows)}{dataset}: parameters vs {metric.replace('_', ' ')}")
        axes.legend(title="factor", fontsize=7, title_fontsize=8, loc="upper left",
                    bbox_to_anchor=(1.02, 1.0))  # fmt: skip
        axes.grid(True, alpha=0.3)
    return figure


def _count_label(value: float) -> str:
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:g}{suffix}"
    return f"{value:g}"


def _sweep_name(rows: pd.DataFrame) -> str:
    sweeps = rows["sweep"].dropna().unique() if "sweep" in rows else []
    return f"{sweeps[0]} / " if len(sweeps) == 1 else ""


def factor_curves(
    curves: pd.DataFrame, columns: Sequence[str] = ("train_loss", "val_loss")
) -> Figure:
    """Figure 2: one panel per factor (rows) and dataset (columns): for the baseline (black)
    and each level, the mean curve and stderr band of val loss (solid) and train loss
    (dashed) over eval steps. ``curves``: curve_summary rows of one sweep."""
    datasets = _datasets(curves)
    factors = sorted(f for f in curves["factor"].unique() if f != "baseline")
    figure, axes = _grid(len(factors), len(datasets), 4.2, 2.8, sharex=True, sharey="col")
    styles = [(column, "-" if column == "val_loss" else "--") for column in reversed(columns)]
    for row, factor in enumerate(factors):
        factor_rows = curves[curves["factor"] == factor]
        colors = {"baseline": "black", **_level_colors(list(factor_rows["level"].unique()))}
        for col, dataset in enumerate(datasets):
            ax = axes[row, col]
            rows = factor_rows[factor_rows["dataset"] == dataset]
            base = curves[(curves["factor"] == "baseline") & (curves["dataset"] == dataset)]
            series = [("baseline", "baseline", base)] + [
                (level, config_label(factor, level), rows[rows["level"] == level])
                for level in level_order(list(rows["level"].unique()))
            ]
            for level, label, frame in series:
                if frame.empty:
                    continue
                for column, linestyle in styles:
                    _band(ax, frame["step"], frame[f"{column}_mean"], frame[f"{column}_stderr"],
                          colors[level], label if linestyle == "-" else f"_{label} ({column})",
                          linestyle=linestyle)  # fmt: skip
            ax.set_title(f"{factor} ({dataset})", fontsize=9)
            ax.set_ylabel("loss")
            ax.grid(True, alpha=0.3)
            if col == len(datasets) - 1:
                ax.plot([], [], color="gray", linestyle="-", label="val (solid)")
                ax.plot([], [], color="gray", linestyle="--", label="train (dashed)")
                ax.legend(fontsize=7, loc="upper right")
        axes[row, 0].set_ylabel("loss")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    figure.suptitle(f"{_sweep_name(curves)}loss curves per factor (mean ± stderr over seeds)")
    return figure


def loss_bars(summary: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Figure 3: final train and val loss of every config, mean with stderr error bars.
    ``summary``: config_summary rows (in the order given)."""
    n_configs = summary.groupby("dataset").size().max() if len(summary) else 1
    figure, panels = _one_dataset_axes(summary, ax, max(6.0, 0.3 * n_configs), 3.2, bottom=1.5)
    for dataset, axes in panels:
        rows = summary[summary["dataset"] == dataset]
        x = np.arange(len(rows))
        for offset, column, color, name in (
            (-0.2, "final_train_loss", "#9ecae1", "train"),
            (0.2, "final_val_loss", "#3182bd", "val"),
        ):
            axes.bar(
                x + offset, rows[f"{column}_mean"], width=0.4, color=color, label=name,
                yerr=rows[f"{column}_stderr"].fillna(0), capsize=2,
            )  # fmt: skip
        axes.set_xticks(x, [config_label(f, lv) for f, lv in zip(rows.factor, rows.level)],
                        rotation=60, ha="right", fontsize=7)  # fmt: skip
        means = rows[["final_train_loss_mean", "final_val_loss_mean"]].to_numpy(float)
        if np.isfinite(means).any():
            low, high = np.nanmin(means), np.nanmax(means)
            axes.set_ylim(low - 0.5 * (high - low) - 0.01, high + 0.35 * (high - low) + 0.01)
        axes.set_ylabel("loss")
        axes.set_title(f"{_sweep_name(rows)}{dataset}: final train and val loss per config")
        axes.legend(loc="upper left", ncols=2)
        axes.grid(True, axis="y", alpha=0.3)
    return figure


def _per_layer(attention: pd.DataFrame, metrics: Sequence[str], title: str, pairs: bool) -> Figure:
    datasets = _datasets(attention)
    figure, axes = _grid(max(len(datasets), 1), len(metrics), 4.5, 3.0)
    for row, dataset in enumerate(datasets):
        rows = attention[attention["dataset"] == dataset]
        layers = sorted(int(layer) for layer in rows["layer"].unique())
        if pairs:
            layers = layers[:-1]
        colors = _level_colors([str(layer) for layer in layers])
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            for layer in layers:
                layer_rows = rows[rows["layer"] == layer]
                label = f"layers {layer}–{layer + 1}" if pairs else f"layer {layer}"
                _band(ax, layer_rows["step"], layer_rows[f"{metric}_mean"],
                      layer_rows[f"{metric}_stderr"], colors[str(layer)], label)  # fmt: skip
            configs = ", ".join(sorted(rows["config"].unique()))
            ax.set_title(f"{dataset} ({configs})", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(_LABELS.get(metric, metric))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
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


def _heatmap(ax: Axes, matrix: np.ndarray, labels: list[str], title: str) -> None:
    ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(float(np.nanmax(matrix)), 1e-9))
    ticks = np.arange(len(labels))
    size = 7 if len(labels) <= 40 else 5
    ax.set_xticks(ticks, labels, fontsize=size)
    ax.set_yticks(ticks, labels, fontsize=size)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9)


def head_heatmaps(layer_maps: np.ndarray, chars: Sequence[str], layer: int) -> Figure:
    """Figure 6a: one heatmap per head of one layer, characters on both axes.
    ``layer_maps``: (n_head, T, T), rows are the causal attention distributions."""
    maps = np.asarray(layer_maps)
    if maps.ndim != 3 or maps.shape[1:] != (len(chars), len(chars)):
        raise ValueError(
            f"layer_maps has shape {maps.shape}; expected (n_head, {len(chars)}, {len(chars)})"
        )
    n_cols = min(4, maps.shape[0])
    n_rows = -(-maps.shape[0] // n_cols)
    side = max(3.0, 0.16 * len(chars))
    figure, axes = _grid(n_rows, n_cols, side, side)
    labels = display_chars(chars)
    for head, ax in enumerate(axes.flat):
        if head < maps.shape[0]:
            _heatmap(ax, maps[head], labels, f"layer {layer}, head {head}")
        else:
            ax.set_axis_off()
    figure.suptitle(f"attention per head, layer {layer}")
    return figure


def layer_heatmaps(attention_maps: Sequence[np.ndarray], chars: Sequence[str]) -> Figure:
    """Figure 6b: the head-averaged attention map of every layer, characters on the axes.
    ``attention_maps``: one (n_head, T, T) array per layer (the plot averages heads)."""
    n_layers = len(attention_maps)
    n_cols = min(4, max(n_layers, 1))
    n_rows = max(-(-n_layers // n_cols), 1)
    side = max(3.0, 0.16 * len(chars))
    figure, axes = _grid(n_rows, n_cols, side, side)
    labels = display_chars(chars)
    for layer, ax in enumerate(axes.flat):
        if layer < n_layers:
            _heatmap(ax, np.asarray(attention_maps[layer]).mean(axis=0), labels,
                     f"layer {layer} (mean over heads)")  # fmt: skip
        else:
            ax.set_axis_off()
    figure.suptitle("head-averaged attention per layer")
    return figure


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
            for sweep, sweep_rows in rows.groupby("sweep", sort=True):
                _band(ax, sweep_rows["step"], sweep_rows[f"{column}_mean"],
                      sweep_rows[f"{column}_stderr"], colors[sweep], sweep)  # fmt: skip
            ax.set_title(f"{dataset}: {_LABELS.get(column, column)}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(_LABELS.get(column, column))
            ax.grid(True, alpha=0.3)
            ax.legend(
                title="sweep (baseline config)", fontsize=7, title_fontsize=7, loc="upper right"
            )
    figure.suptitle("sweeps compared: baseline configs (mean ± stderr over seeds)")
    return figure


def save_figure(
    figure: Figure, stem: str | Path, formats: Sequence[str] = ("png", "svg"), dpi: int = 100
) -> list[Path]:
    """Write ``figure`` as ``<stem>.<format>`` for each format; return the paths."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with rc_context({"svg.fonttype": "none"}):  # text as text: smaller, 2x faster SVG
            figure.savefig(path, format=fmt, dpi=dpi)
        paths.append(path)
    return paths


def capture_attention(
    model_path: str | Path, text: str, device: str = "cpu"
) -> tuple[list[np.ndarray], list[str]]:
    """Attention maps of a trained checkpoint on ``text``: one (n_head, T, T) array per
    layer and the T characters (text cut to the model's block size).

    Loads ``RESULTS_DIR/models/<trial_id>.pt`` with ``charlm.train.load_model`` (torch is
    imported only here). Characters outside the model's vocabulary raise ValueError.
    """
    import torch

    from charlm.train import load_model

    model, vocab = load_model(model_path)
    stoi = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted(set(text) - set(stoi))
    if unknown:
        raise ValueError(
            f"heatmap text has characters {''.join(unknown)!r} that are not in the model's "
            "vocabulary: give text made of the dataset's characters."
        )
    config = getattr(model, "config", None) or getattr(model, "cfg", None)
    block_size = getattr(config, "block_size", len(text))
    text = text[:block_size]
    idx = torch.tensor([[stoi[ch] for ch in text]], dtype=torch.long, device=device)
    model.to(device).eval()
    with torch.no_grad():
        capture = model.capture(idx)
    return [att[0].float().cpu().numpy() for att in capture.attentions], list(text)
