"""The figures' axes, series and labels (Figure objects, not pixels)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from analysis import aggregate, figures, load_store, plots
from analysis.verdicts import level_verdicts
from testkit.synthetic import init_store, trial_row, write_rows
from testkit.tiny import tiny_store


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tiny_store(tmp_path_factory.mktemp("plots") / "store", sweeps=("base", "change"),
                      n_factors=2, n_levels=2, seeds=3, eval_steps=5, n_layer=3)  # fmt: skip
    store = load_store(root)
    trials = store.trials
    baselines = aggregate.baseline_configs(trials)
    return {
        "verdicts": level_verdicts(trials),
        "summary": aggregate.config_summary(trials),
        "curves": aggregate.curve_summary(store.curves, trials),
        "attention": aggregate.attention_summary(store.attention, trials, baselines),
    }


def _one(frame, sweep="base", dataset=None):
    rows = frame[frame["sweep"] == sweep]
    return rows if dataset is None else rows[rows["dataset"] == dataset]


def _legend(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_params_vs_loss(tables):
    summary = _one(tables["summary"], dataset="enwik8")
    figure = plots.params_vs_loss(summary)
    (ax,) = figure.axes
    assert ax.get_xscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("parameters", "best val loss")
    assert _legend(ax) == ["baseline", "n_embed", "n_layer"]
    assert len(ax.containers) == 3  # one errorbar series per factor
    assert sorted(t.get_text() for t in ax.texts) == sorted(summary["config"])
    colors = plots.color_mapping(summary["factor"])
    assert colors["baseline"] == "black"
    assert matplotlib.colors.to_hex(ax.containers[1].lines[0].get_color()) == colors["n_embed"]


def test_params_vs_loss_facets_per_dataset_and_ax(tables):
    figure = plots.params_vs_loss(_one(tables["summary"]))
    assert len(figure.axes) == 2
    assert "enwik8" in figure.axes[0].get_title()
    assert "shakespeare_char" in figure.axes[1].get_title()
    own = Figure()
    ax = own.subplots()
    assert plots.params_vs_loss(_one(tables["summary"], dataset="enwik8"), ax=ax) is own
    with pytest.raises(ValueError, match="2 datasets"):
        plots.params_vs_loss(_one(tables["summary"]), ax=ax)


def test_factor_curves(tables):
    curves = _one(tables["curves"], dataset="shakespeare_char")
    figure = plots.factor_curves(curves)
    assert len(figure.axes) == 2  # one panel per factor
    ax = figure.axes[0]
    assert ax.get_title() == "n_embed (shakespeare_char)"
    assert "val solid, train dashed" in figure.get_suptitle()
    assert ax.get_ylabel() == "loss"
    assert figure.axes[-1].get_xlabel() == "step"
    lines = ax.get_lines()
    # val (solid, labelled) then train (dashed) per series: baseline and each level
    assert [line.get_label() for line in lines if line.get_linestyle() == "-"][:3] == [
        "baseline",
        "n_embed=2",
        "n_embed=4",
    ]
    assert sum(line.get_linestyle() == "--" for line in lines) == 3
    (bands,) = ax.collections
    assert len(bands.get_paths()) == 6  # a stderr band per line
    baseline = curves[curves["factor"] == "baseline"]
    np.testing.assert_allclose(lines[0].get_ydata(), baseline["val_loss_mean"])
    np.testing.assert_allclose(lines[1].get_ydata(), baseline["train_loss_mean"])
    assert _legend(ax) == ["baseline", "n_embed=2", "n_embed=4"]
    assert len(plots.factor_curves(_one(tables["curves"])).axes) == 4  # x 2 datasets


def test_delta_forest_shows_the_verdicts_numbers(tables):
    verdicts = _one(tables["verdicts"], dataset="enwik8")
    (ax,) = plots.delta_forest(verdicts).axes
    (intervals,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    ends = sorted((seg[0][0], seg[1][0]) for seg in intervals.get_segments())
    expected = zip(verdicts["ci_low"], verdicts["ci_high"], strict=True)
    np.testing.assert_allclose(ends, sorted(expected))
    assert [t.get_text() for t in ax.get_yticklabels()] == list(verdicts["config"])
    assert [t.get_text() for t in ax.texts] == list(verdicts["verdict"])
    assert "dunnett" in ax.get_xlabel() and "±0.02" in ax.get_xlabel()


def test_forest_title_and_labels_lie_inside_the_figure(tables):
    verdicts = _one(tables["verdicts"], dataset="enwik8").copy()
    verdicts["config"] = "learning_rate=0.000316"  # long labels
    figure = plots.delta_forest(verdicts)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    page = figure.bbox
    (ax,) = figure.axes
    for text in [ax.title, *ax.get_yticklabels(), *ax.texts]:
        box = text.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, text


def test_point_labels_never_overlap_when_many_configs_share_a_size(tmp_path):
    """Nine configs at the same parameter count and nearly the same loss (as the
    notebook's seven at ~200k): every label's box is clear of every other."""
    init_store(tmp_path)
    rows = [trial_row(f"t{i}-{s}", factor=f"f{i % 4}", level=str(i), seed=s,
                      best_val_loss=2.93 + 0.001 * i + 0.0005 * s, n_params=201_000)
            for i in range(9) for s in range(2)]  # fmt: skip
    rows += [trial_row(f"b{s}", seed=s, best_val_loss=2.931, n_params=201_000) for s in range(2)]
    write_rows(tmp_path, "trials", rows, "t")
    summary = aggregate.config_summary(load_store(tmp_path).trials)
    figure = plots.params_vs_loss(summary)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    (ax,) = figure.axes
    boxes = [t.get_window_extent(canvas.get_renderer()) for t in ax.texts]
    assert len(boxes) == 10
    for i, first in enumerate(boxes):
        assert figure.bbox.x0 <= first.x0 and first.x1 <= figure.bbox.x1
        for second in boxes[i + 1 :]:
            assert not first.overlaps(second), (first, second)
    _page_checks(figure)


def test_factor_curves_use_the_width_and_keep_legends_off_the_data(tables):
    curves = _one(tables["curves"], dataset="shakespeare_char")
    extra = curves[curves["factor"] != "baseline"].assign(factor="dropout")
    more = pd.concat([curves, extra, extra.assign(factor="n_head")])
    figure = plots.factor_curves(more)
    assert len(figure.axes) == 4
    assert len({round(ax.get_position().x0, 3) for ax in figure.axes}) == 2  # 2 x 2 panels
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in figure.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert all(not legend.overlaps(other.get_window_extent(renderer))
                   for other in figure.axes), ax.get_title()  # fmt: skip
    _page_checks(figure)


def test_panels_draw_into_a_figure_of_your_own(tables):
    """As in rliable: one-panel functions draw on the axes given and return them."""
    summary = _one(tables["summary"], dataset="shakespeare_char")
    own = Figure()
    left, right = own.subplots(1, 2)
    assert plots.params_vs_loss_panel(summary, ax=left) is left
    verdicts = _one(tables["verdicts"], dataset="shakespeare_char")
    assert plots.delta_forest_panel(verdicts, ax=right) is right
    assert own.axes == [left, right]  # nothing added to the figure, nothing drawn elsewhere
    assert (left.get_xlabel(), left.get_ylabel()) == ("parameters", "best val loss")
    assert _legend(left) == ["baseline", "n_embed", "n_layer"]
    errorbars = [c for c in left.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == 3 and all(c.has_yerr for c in errorbars)
    np.testing.assert_allclose(
        np.sort(np.concatenate([np.asarray(c.lines[0].get_ydata(), float) for c in errorbars])),
        np.sort(summary["best_val_loss_mean"].to_numpy(float)),
    )
    assert [t.get_text() for t in right.get_yticklabels()] == list(verdicts["config"])
    assert "shakespeare_char" in right.get_title()
    alone = plots.delta_forest_panel(verdicts)  # ax=None: the panel of a new figure
    assert alone.figure is not own and alone.figure.axes == [alone]
    with pytest.raises(ValueError, match="2 datasets"):
        plots.params_vs_loss_panel(_one(tables["summary"]), ax=left)


def test_attention_and_layer_similarity(tables):
    attention = _one(tables["attention"], dataset="enwik8")
    figure = plots.attention_over_training(attention)
    entropy, span = figure.axes
    assert entropy.get_ylabel().startswith("attention entropy")
    assert span.get_ylabel().startswith("effective span")
    assert [line.get_label() for line in entropy.get_lines()] == ["layer 0", "layer 1", "layer 2"]
    figure = plots.layer_similarity(attention)
    assert [line.get_label() for line in figure.axes[0].get_lines()] == [
        "layers 0–1",
        "layers 1–2",
    ]
    assert len(plots.attention_over_training(_one(tables["attention"])).axes) == 4


def test_sweeps_compared(tables):
    curves = tables["curves"][tables["curves"]["factor"] == "baseline"]
    figure = plots.sweeps_compared(curves)
    assert len(figure.axes) == 4  # 2 datasets x (train, val)
    ax = figure.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["base", "change"]
    colors = plots.color_mapping(["base", "change"], reserved={})
    assert [matplotlib.colors.to_hex(line.get_color()) for line in ax.get_lines()] == [
        colors["base"],
        colors["change"],
    ]


def test_heatmaps_from_constructed_maps():
    chars = list("to be\n")
    t = len(chars)
    causal = np.tril(np.ones((t, t)))
    maps = [np.stack([causal / causal.sum(1, keepdims=True)] * 2) for _ in range(3)]
    figure = plots.head_heatmaps(maps[1], chars, layer=1)
    assert len(figure.axes) == 3  # two heads and the colour bar
    assert figure.axes[-1].get_ylabel() == "attention weight"
    ax = figure.axes[0]
    assert ax.get_title() == "layer 1, head 0"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["t", "o", "␣", "b", "e", "⏎"]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), maps[1][0])
    figure = plots.layer_heatmaps(maps, chars)
    assert [ax.get_title() for ax in figure.axes[:3]] == [
        f"layer {i} (mean over heads)" for i in range(3)
    ]
    with pytest.raises(ValueError, match="expected"):
        plots.head_heatmaps(maps[0][:, :3], chars, 0)


def test_save_figure_writes_each_format(tmp_path, tables):
    figure = plots.params_vs_loss(_one(tables["summary"], dataset="enwik8"))
    paths = figures.save_figure(figure, tmp_path / "bars", ("png", "svg"))
    assert [p.name for p in paths] == ["bars.png", "bars.svg"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in paths[1].read_text()[:400]


def _texts(figure: Figure) -> list:
    from matplotlib.text import Text

    return [t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _page_checks(figure: Figure) -> None:
    """What a reader of the report page needs: the figure no wider than the page (so it is
    shown at its natural size), no text below 8 pt there, nothing cut off at the edges."""
    width, height = figure.get_size_inches()
    assert width <= plots.PAGE_WIDTH_IN + 1e-6, width
    small = [(t.get_text(), t.get_fontsize()) for t in _texts(figure)
             if t.get_fontsize() < plots.MIN_FONT_PT]  # fmt: skip
    assert not small, small
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    box = figure.get_tightbbox(canvas.get_renderer())  # inches
    assert box.x0 >= -0.01 and box.y0 >= -0.01, box
    assert box.x1 <= width + 0.01 and box.y1 <= height + 0.01, (box, width, height)


def test_every_figure_fits_the_page_with_readable_text(tables):
    curves = _one(tables["curves"])
    figures = [
        plots.params_vs_loss(_one(tables["summary"])),
        plots.factor_curves(curves),
        plots.delta_forest(_one(tables["verdicts"])),
        plots.attention_over_training(_one(tables["attention"])),
        plots.layer_similarity(_one(tables["attention"])),
        plots.sweeps_compared(tables["curves"][tables["curves"]["factor"] == "baseline"]),
    ]
    for figure in figures:
        _page_checks(figure)


def test_per_layer_figures_keep_the_legend_off_the_curves(tables):
    figure = plots.attention_over_training(_one(tables["attention"]))
    assert all(ax.get_legend() is None for ax in figure.axes)
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["layer 0", "layer 1", "layer 2"]
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    box = legend.get_window_extent(canvas.get_renderer())
    for ax in figure.axes:  # the legend lies right of every panel
        assert box.x0 >= ax.get_window_extent().x1


def test_a_flat_curve_is_drawn_flat_with_short_tick_labels(tables):
    attention = _one(tables["attention"], dataset="enwik8").copy()
    attention["entropy_mean"] = 3.87784 + np.linspace(0, 3e-4, len(attention))
    attention["entropy_stderr"] = 0.0
    figure = plots.attention_over_training(attention)
    low, high = figure.axes[0].get_ylim()
    assert high - low >= 0.01 * 3.878  # at least 1% of the value: visibly flat
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels() if t.get_text()]
    assert labels and all(len(label) <= 5 for label in labels), labels
    assert figure.axes[0].yaxis.get_offset_text().get_text() == ""


@pytest.mark.parametrize(("n_chars", "n_head"), [(32, 8), (48, 4), (128, 2)])
def test_heatmaps_fit_the_page_with_a_colour_bar_and_the_model_named(n_chars, n_head):
    chars = list(("to be, or not to be: that is the question. " * 4)[:n_chars])
    causal = np.tril(np.ones((n_chars, n_chars)))
    maps = [np.stack([causal / causal.sum(1, keepdims=True)] * n_head) for _ in range(2)]
    model = "shakespeare_char: notebook / n_head=8, trial 3f6ac0a2 (2 layers x 8 heads)"
    for figure in (plots.head_heatmaps(maps[1], chars, 1, model),
                   plots.layer_heatmaps(maps, chars, model)):  # fmt: skip
        _page_checks(figure)
        assert model in figure.get_suptitle()
        bar = figure.axes[-1]
        assert bar.get_ylabel() == "attention weight"
        heat = figure.axes[0]
        panels = [ax for ax in figure.axes[:-1] if ax.get_images()]
        assert len({ax.get_images()[0].get_clim() for ax in panels}) == 1  # one colour scale
        labels = [t.get_text() for t in heat.get_xticklabels()]
        # A label per character while 8-pt labels fit, else evenly thinned.
        assert len(labels) == n_chars if n_chars <= 48 else 0 < len(labels) < n_chars
