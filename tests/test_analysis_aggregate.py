"""Aggregation checked against values computed by hand (numpy formulas, t quantiles)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import aggregate, export, load_store
from analysis.verdicts import level_verdicts
from testkit.synthetic import init_store, trial_row, write_rows

BASE = [1.50, 1.60, 1.55]  # seeds 0, 1, 2
WIDE = [1.40, 1.52, 1.41]  # n_embed=128, same seeds: paired
DEEP = [1.45, 1.62, 1.49, 1.47]  # n_layer=8, seeds 10..13: no shared seed -> Welch


@pytest.fixture
def store(tmp_path):
    root = init_store(tmp_path / "store")
    rows = []
    for seed, value in enumerate(BASE):
        rows.append(
            trial_row(
                f"b{seed}",
                seed=seed,
                best_val_loss=value,
                n_params=1000,
                final_train_loss=value - 0.1,
                final_val_loss=value + 0.01,
            )
        )
    for seed, value in enumerate(WIDE):
        rows.append(
            trial_row(
                f"w{seed}",
                factor="n_embed",
                level="128",
                seed=seed,
                best_val_loss=value,
                n_params=4000,
            )
        )
    for seed, value in zip(range(10, 14), DEEP, strict=True):
        rows.append(
            trial_row(
                f"d{seed}",
                factor="n_layer",
                level="8",
                seed=seed,
                best_val_loss=value,
                n_params=2000,
            )
        )
    rows.append(
        trial_row(
            "w9",
            factor="n_embed",
            level="128",
            seed=9,
            status="failed",
            error="non-finite loss at step 300",
            last_step=300,
        )
    )
    for row in rows:
        write_rows(root, "trials", [row], row["trial_id"])
    return root


def test_config_summary_mean_stderr_n_and_failed_count(store):
    summary = aggregate.config_summary(load_store(store).trials).set_index("config")
    base = summary.loc["baseline"]
    assert base["best_val_loss_mean"] == pytest.approx(np.mean(BASE))
    assert base["best_val_loss_stderr"] == pytest.approx(np.std(BASE, ddof=1) / math.sqrt(3))
    assert base["best_val_loss_n"] == 3
    assert base["final_train_loss_mean"] == pytest.approx(np.mean(BASE) - 0.1)
    wide = summary.loc["n_embed=128"]
    assert (wide["n_ok"], wide["n_failed"], wide["best_val_loss_n"]) == (3, 1, 3)
    assert wide["best_val_loss_mean"] == pytest.approx(np.mean(WIDE))  # the failed seed is out
    assert wide["seeds"] == [0, 1, 2]
    assert list(summary.index) == ["baseline", "n_embed=128", "n_layer=8"]


def test_levels_without_shared_seeds_get_the_one_way_dunnett_interval(store):
    verdicts = level_verdicts(load_store(store).trials).set_index("config")
    deep = verdicts.loc["n_layer=8"]
    assert deep["n_pairs"] == 0 and np.isfinite(deep["ci_low"])
    assert deep["delta"] == pytest.approx(np.mean(DEEP) - np.mean(BASE))


def test_holm_correction_by_hand(store):
    assert aggregate.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = aggregate.holm([0.2, math.nan, 0.001])
    assert adjusted[1] != adjusted[1]  # NaN stays NaN and is not counted
    assert adjusted[[0, 2]] == pytest.approx([0.2, 0.002])


def test_rank_factors_on_seed_averaged_results(store):
    ranking = aggregate.rank_factors(load_store(store).trials, n_resamples=500)
    assert ranking["factor"].tolist() == ["n_embed", "n_layer"]  # |Δ| 0.094 > 0.035
    top = ranking.iloc[0]
    assert top["rank"] == 1
    assert top["effect"] == pytest.approx(abs(np.mean(WIDE) - np.mean(BASE)))
    assert top["best_level"] == "128"
    assert top["effect_ci_low"] <= top["effect"] <= top["effect_ci_high"]
    assert top["effect_stderr"] > 0


def test_final_info_format(store, tmp_path):
    info = export.final_info(load_store(store).trials)
    base = info[("sweep", "baseline", "baseline")]["shakespeare_char"]
    assert base["means"]["best_val_loss_mean"] == pytest.approx(np.mean(BASE))
    assert base["stderrs"]["best_val_loss_stderr"] == pytest.approx(stats.sem(BASE))
    assert base["final_info_dict"]["best_val_loss"] == pytest.approx(BASE)
    assert set(base["means"]) == {f"{m}_mean" for m in aggregate.METRICS}
    paths = export.write_final_info(load_store(store).trials, tmp_path / "fi")
    written = json.loads(
        (tmp_path / "fi" / "sweep" / "n_embed_128" / "final_info.json").read_text()
    )
    assert len(paths) == 3
    assert written["shakespeare_char"]["final_info_dict"]["best_val_loss"] == pytest.approx(WIDE)


def test_duplicates_keep_latest_finished_at(tmp_path):
    root = init_store(tmp_path / "store")
    early, late = (datetime(2025, 1, 1, h, tzinfo=timezone.utc) for h in (1, 2))
    write_rows(root, "trials", [trial_row("t", best_val_loss=2.0, finished_at=late)], "a")
    write_rows(root, "trials", [trial_row("t", best_val_loss=3.0, finished_at=early)], "b")
    curve = {"trial_id": ["t", "t"], "step": [10, 20], "val_loss": [2.5, 2.2]}
    write_rows(root, "curves", curve, "a")
    write_rows(root, "curves", {**curve, "val_loss": [2.5, 2.0]}, "b")
    store = load_store(root)
    assert store.trials["best_val_loss"].tolist() == [2.0]
    assert store.curves.sort_values("step")["val_loss"].tolist() == [2.5, 2.0]  # last file wins
    assert store.duplicates == {"trials": 1, "curves": 2, "attention": 0, "samples": 0}


def test_curve_and_attention_summaries_by_hand(tmp_path):
    root = init_store(tmp_path / "store")
    finals = {0: 1.0, 1: 1.2, 2: 1.7}
    for seed, final in finals.items():
        write_rows(
            root, "trials", [trial_row(f"s{seed}", seed=seed, best_val_loss=final)], f"s{seed}"
        )
        curve = {
            "trial_id": [f"s{seed}"] * 2,
            "step": [5, 10],
            "train_loss": [3.0, final],
            "val_loss": [3.1, final + 0.1],
        }
        write_rows(root, "curves", curve, f"s{seed}")
        attention = {
            "trial_id": [f"s{seed}"] * 4,
            "step": [5] * 4,
            "layer": [0, 0, 1, 1],
            "head": [0, 1, 0, 1],
            "entropy": [seed, seed + 2.0, 1.0, 1.0],
        }
        write_rows(root, "attention", attention, f"s{seed}")
    store = load_store(root)
    curves = aggregate.curve_summary(store.curves, store.trials)
    last = curves[curves["step"] == 10].iloc[0]
    values = list(finals.values())
    assert last["train_loss_mean"] == pytest.approx(np.mean(values))
    assert last["train_loss_stderr"] == pytest.approx(stats.sem(values))
    assert last["train_loss_n"] == 3
    attention = aggregate.attention_summary(store.attention, store.trials)
    layer0 = attention[attention["layer"] == 0].iloc[0]
    head_means = [seed + 1.0 for seed in finals]  # mean of (seed, seed + 2) over heads
    assert layer0["entropy_mean"] == pytest.approx(np.mean(head_means))
    assert layer0["entropy_stderr"] == pytest.approx(stats.sem(head_means))


def test_paper_table_markdown_and_latex(store):
    trials = load_store(store).trials
    summary = aggregate.config_summary(trials)
    effects = level_verdicts(trials)
    table = export.paper_table(summary, effects).set_index("Config")
    assert table.loc["baseline", "Best val loss"] == (
        f"{np.mean(BASE):.4f} ± {np.std(BASE, ddof=1) / math.sqrt(3):.4f}"
    )
    assert table.loc["n_embed=128", "n"] == "3 (+1 failed)"
    delta = effects.set_index("config").loc["n_embed=128"]
    change = table.loc["n_embed=128", "Δ Best val loss vs baseline [interval]"]
    assert table.loc["n_embed=128", "Verdict"] == delta["verdict"]
    assert change.startswith(f"{delta['delta']:+.4f} [{delta['ci_low']:+.4f}, ")
    latex = export.to_latex(export.paper_table(summary, effects), caption="A_B")
    assert r"$\pm$" in latex and r"\toprule" in latex and r"n\_embed=128" in latex
    assert r"\caption{A\_B}" in latex
    markdown = export.to_markdown(pd.DataFrame({"a": ["x|y"]}))
    assert markdown == "| a |\n| --- |\n| x\\|y |\n"
