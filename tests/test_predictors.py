"""What predicts a good model: final metrics, correlations against scipy on a synthetic
store, the report section, --template-names, and a version-1 store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from matplotlib.figure import Figure
from scipy import stats

from analysis import predictor_plots, predictors
from analysis.aggregate import holm
from analysis.load import load_store
from analysis.report import ReportOptions, build_report, main
from sweeps.schema import ADDED_COLUMNS, MARKER, SCHEMAS
from testkit.tiny import tiny_store

SPEC = {"sweeps": ("base",), "n_factors": 2, "n_levels": 2, "seeds": 3, "eval_steps": 4}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_store(tmp_path_factory.mktemp("store") / "results", **SPEC)


@pytest.fixture(scope="module")
def metrics(store: Path) -> pd.DataFrame:
    loaded = load_store(store, attention="all")
    return predictors.trial_metrics(loaded.trials, loaded.attention, loaded.samples)


def test_final_metrics_are_the_last_probed_step_averaged(store: Path, metrics: pd.DataFrame):
    trial_id = "base-enwik8-n_layer-2-s1"
    rows = pq.read_table(store / "attention" / f"{trial_id}.parquet").to_pandas()
    last = rows[rows["step"] == rows["step"].max()]
    row = metrics.set_index("trial_id").loc[trial_id]
    assert row["final_step"] == 200
    assert row["entropy"] == pytest.approx(last["entropy"].mean())
    assert row["silhouette"] == pytest.approx(last["silhouette"].mean())
    assert row["attention_js_next"] == pytest.approx(last["attention_js_next"].dropna().mean())
    sample = pq.read_table(store / "samples" / f"{trial_id}.parquet").to_pylist()[0]
    assert row["sample_entropy"] == pytest.approx(np.mean(sample["attention_entropy"]))
    assert row["coherence"] == pytest.approx(sample["coherence"])
    assert len(metrics) == 2 * 5 * 3  # every ok trial once


def test_correlations_equal_scipys(metrics: pd.DataFrame):
    found = predictors.correlations(metrics, n_resamples=199)
    assert set(found["dataset"]) == {"shakespeare_char", "enwik8"}
    assert {"silhouette", "sample_entropy"} <= set(found["predictor"])
    for row in found.itertuples():
        group = metrics[metrics["dataset"] == row.dataset][[row.predictor, row.outcome]].dropna()
        expected = stats.spearmanr(group[row.predictor], group[row.outcome])
        assert row.n == len(group) == 15
        assert row.rho == pytest.approx(expected.statistic, abs=1e-12)
        assert row.p_value == pytest.approx(expected.pvalue, rel=1e-9)
        assert row.ci_method == "bootstrap BCa"
    # one CI against scipy.stats.bootstrap called directly (same seed: same resamples)
    row = found[(found["dataset"] == "enwik8") & (found["predictor"] == "silhouette")]
    row = row[row["outcome"] == "best_val_loss"].iloc[0]
    group = metrics[metrics["dataset"] == "enwik8"]
    direct = stats.bootstrap(
        (group["silhouette"].to_numpy(), group["best_val_loss"].to_numpy()),
        lambda x, y: stats.spearmanr(x, y).statistic,
        paired=True, vectorized=False, n_resamples=199, method="BCa", rng=0,
    )  # fmt: skip
    assert row.ci_low == pytest.approx(direct.confidence_interval.low, abs=1e-9)
    assert row.ci_high == pytest.approx(direct.confidence_interval.high, abs=1e-9)
    # the synthetic store makes silhouette rise where the loss is low
    assert row.rho < 0
    for _, rows in found.groupby("dataset"):
        assert rows["p_holm"].to_numpy() == pytest.approx(holm(rows["p_value"].to_numpy()))


def test_large_groups_use_the_fisher_z_interval(metrics, monkeypatch):
    monkeypatch.setattr(predictors, "BOOTSTRAP_MAX_N", 10)
    found = predictors.correlations(metrics, ["silhouette"], ["best_val_loss"])
    row = found[found["dataset"] == "shakespeare_char"].iloc[0]
    group = metrics[metrics["dataset"] == "shakespeare_char"]
    fit = stats.pearsonr(
        stats.rankdata(group["silhouette"]), stats.rankdata(group["best_val_loss"])
    )
    interval = fit.confidence_interval(0.95)
    assert row.ci_method == "Fisher z"
    assert (row.ci_low, row.ci_high) == pytest.approx((interval.low, interval.high))
    assert row.rho == pytest.approx(fit.statistic)


def test_too_few_or_constant_values_give_no_row():
    frame = pd.DataFrame(
        {
            "sweep": "s", "dataset": "d", "silhouette": [0.1, 0.2, 0.3, np.nan, np.nan],
            "entropy": [1.0] * 5, "best_val_loss": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )  # fmt: skip
    found = predictors.correlations(frame, ["silhouette", "entropy"], ["best_val_loss"])
    assert found.empty  # 3 complete pairs (< 4), and a constant predictor


def test_load_report_mode_keeps_baselines_final_steps_and_layer_trials(store: Path):
    layer_trial = "base-enwik8-n_layer-4-s0"
    loaded = load_store(store, attention="report", layer_trials=[layer_trial])
    rows = loaded.attention.assign(trial_id=loaded.attention["trial_id"].astype(str))
    base = rows[rows["trial_id"] == "base-enwik8-baseline-baseline-s0"]
    assert len(base) == 4 * 2 * 2  # every step, layer, head
    other = rows[rows["trial_id"] == "base-enwik8-n_embed-2-s0"]
    assert set(other["step"]) == {200} and len(other) == 4  # the last step only
    chosen = rows[rows["trial_id"] == layer_trial]
    assert len(chosen) == 4 * 2 + 2  # head 0 of every step and layer, + the last step's head 1
    assert chosen["silhouette"].notna().all()


def test_plots_take_an_axes_and_return_it(metrics: pd.DataFrame):
    found = predictors.correlations(metrics, n_resamples=99)
    figure = Figure()
    ax = figure.add_subplot()
    one = found[found["dataset"] == "enwik8"]
    assert predictor_plots.correlation_heatmap(one, ax=ax) is ax
    texts = [t.get_text() for t in ax.texts]
    first = one.iloc[0]
    assert any(t.startswith(f"{first.rho:+.2f}") for t in texts)
    assert predictor_plots.correlation_heatmap(one).figure is not figure  # ax=None: a new one
    assert isinstance(predictor_plots.correlation_figure(found), Figure)


def _report(store: Path, out: Path, *extra: str) -> int:
    return main([str(store), "--out", str(out), "--jobs", "1", "--quiet", *extra])


def test_report_section_tables_and_template_names(store: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    assert _report(store, out, "--template-names") == 0
    markdown = (out / "report.md").read_text()
    assert "## What predicts a good model" in markdown
    assert "Spearman" in markdown and "hidden-state silhouette" in markdown
    html = (out / "report.html").read_text()
    assert "What predicts a good model" in html
    for name in (
        "train_loss_enwik8.png", "val_loss_shakespeare_char.png",
        "attention_metrics_enwik8.png", "layer_similarity_shakespeare_char.png",
        "cluster_quality.png", "training_dynamics.png",
        "figures/predictors/base_correlations.png", "figures/predictors/base_cluster_quality.svg",
        "figures/predictors/base_correlations_enwik8.png",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "tables" / "predictor_correlations.csv")
    assert {"rho", "ci_low", "ci_high", "p_holm", "n"} <= set(table.columns)
    assert len(pd.read_csv(out / "tables" / "trial_metrics.csv")) == 30


def test_template_names_need_png(store: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    assert _report(store, out, "--template-names", "--format", "svg") == 2
    err = capsys.readouterr().err.strip().splitlines()
    (line,) = err
    assert line.startswith("error: --template-names") and "--format is svg" in line
    assert "add png to --format" in line  # the fix
    assert not out.exists()


def _as_version_1(root: Path) -> None:
    """Rewrite a store as schema version 1 wrote it: no version-2 columns, version 1 in
    every file's metadata and in the marker."""
    for table, columns in ADDED_COLUMNS[2].items():
        for path in (root / table).glob("*.parquet"):
            old = pq.read_table(path).drop_columns(list(columns))
            pq.write_table(old.replace_schema_metadata({"schema_version": "1"}), path)
    for table in ("trials", "curves"):
        for path in (root / table).glob("*.parquet"):
            data = pq.read_table(path)
            pq.write_table(data.replace_schema_metadata({"schema_version": "1"}), path)
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps({**marker, "schema_version": 1}))


def test_a_version_1_store_still_reads_and_reports(tmp_path: Path):
    root = tiny_store(tmp_path / "v1", **SPEC)
    _as_version_1(root)
    assert "silhouette" not in pq.read_schema(next((root / "attention").glob("*.parquet"))).names
    loaded = load_store(root)
    assert loaded.attention["silhouette"].isna().all()
    assert loaded.samples["coherence"].isna().all()
    assert loaded.samples["attention_entropy"].isna().all()
    assert set(SCHEMAS["samples"].names) <= set(loaded.samples.columns)
    report = build_report(root, tmp_path / "report", ReportOptions(jobs=1, template_names=True))
    markdown = report.markdown.read_text()
    assert "## What predicts a good model" in markdown
    assert "No silhouette values (a store written before schema version 2)" in markdown
    table = pd.read_csv(report.out_dir / "tables" / "predictor_correlations.csv")
    assert len(table) and not table["predictor"].isin(["silhouette", "sample_entropy"]).any()
    assert not table["outcome"].eq("coherence").any()
    assert (report.out_dir / "training_dynamics.png").is_file()
    assert not (report.out_dir / "cluster_quality.png").exists()
    assert "No silhouette values: no cluster_quality.png." in report.missing
