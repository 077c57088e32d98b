"""The report's "What predicts a good model" section, its tables and figures, and the
figures under the research templates' file names (``--template-names``).

report.py calls four functions: ``compute`` (after the attention rows are read),
``figure_jobs`` (figures for its workers), ``write_tables`` and ``section``; and
``write_template_figures`` at the end when asked to.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import plots, predictor_plots, predictors
from analysis.export import slug
from analysis.figures import FigureJob, dataset_job, figure_entries, save_figure
from analysis.plots import as_figure

SECTION_TITLE = "What predicts a good model"


@dataclass
class Predictors:
    """What the section shows: per-trial final metrics, their correlations, the configs of
    each sweep's cluster_quality figure and their silhouette summary."""

    metrics: pd.DataFrame
    correlations: pd.DataFrame
    configs: pd.DataFrame
    silhouette: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def layer_trials(trials: pd.DataFrame, ranking: pd.DataFrame) -> list[str]:
    """Trial ids whose per-layer rows at every step the section needs (cluster_quality)."""
    configs = predictors.cluster_factors(trials, ranking)
    ok = trials[trials["status"].eq("ok")]
    chosen = ok.merge(
        configs[["sweep", "dataset", "factor", "level"]], on=["sweep", "dataset", "factor", "level"]
    )
    return sorted(chosen["trial_id"].astype(str))


def compute(
    trials: pd.DataFrame, attention: pd.DataFrame, samples: pd.DataFrame, ranking: pd.DataFrame
) -> Predictors:
    """Correlations and silhouette summary from the store's tables (attention: at least
    every trial's last probed step, and every step of ``layer_trials``)."""
    ablation = trials[trials["kind"].ne("search")]
    metrics = predictors.trial_metrics(ablation, attention, samples)
    correlations = predictors.correlations(metrics)
    configs = predictors.cluster_factors(ablation, ranking)
    silhouette = predictors.silhouette_summary(attention, ablation, configs)
    notes = []
    if not metrics.empty and metrics["silhouette"].isna().all():
        notes.append(
            "No silhouette values (a store written before schema version 2): no cluster "
            "quality figure, no silhouette correlations."
        )
    if not metrics.empty and metrics["coherence"].isna().all():
        notes.append("No coherence or sample attention values (schema version 1, or no samples).")
    return Predictors(metrics, correlations, configs, silhouette, notes)


def figure_jobs(result: Predictors, curves: pd.DataFrame, trials: pd.DataFrame) -> list[FigureJob]:
    """The section's figures: per sweep the correlation figure (a view per dataset) and
    the cluster_quality figure, and one training_dynamics figure of every ok run."""
    jobs = []
    for sweep, rows in result.correlations.groupby("sweep", sort=True):
        caption = f"{sweep}: Spearman correlation of final metrics with outcomes"
        stem = f"predictors/{slug(sweep)}_correlations"
        jobs.append(dataset_job(rows, stem, caption, predictor_plots.correlation_figure))
    for sweep, rows in result.silhouette.groupby("sweep", sort=True):
        caption = (
            f"{sweep}: cluster quality (silhouette per layer), baseline and each level of "
            f"{rows['shown_factor'].iloc[0]}"
        )
        draw = partial(predictor_plots.cluster_quality, rows)
        cost = rows[["dataset", "config"]].drop_duplicates().shape[0]
        jobs.append(FigureJob(f"predictors/{slug(sweep)}_cluster_quality", caption, draw, cost))
    ok = trials[trials["status"].eq("ok") & trials["kind"].ne("search")]
    frame = curves[curves["trial_id"].astype(str).isin(set(ok["trial_id"].astype(str)))]
    if len(frame):
        columns = ["trial_id", "sweep", "dataset", "factor", "level", "status"]
        draw = partial(
            as_figure, predictor_plots.training_dynamics,
            frame[["trial_id", "step", "train_loss", "val_loss"]], ok[columns],
        )  # fmt: skip
        caption = "training dynamics: train and val loss of every run"
        jobs.append(FigureJob("predictors/training_dynamics", caption, draw, 2))
    return jobs


def write_tables(result: Predictors, directory: Path) -> list[Path]:
    """tables/predictor_correlations.csv and tables/trial_metrics.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "predictor_correlations.csv", directory / "trial_metrics.csv"]
    result.correlations.to_csv(paths[0], index=False)
    result.metrics.to_csv(paths[1], index=False)
    return paths


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if pd.isna(value) else f"{value:+.{digits}f}"


def section(
    result: Predictors, jobs: Sequence[FigureJob], formats: Sequence[str]
) -> dict[str, Any]:
    """The section's title, paragraphs, tables and figure entries (render.Section
    fields). ``jobs``: what ``figure_jobs`` returned."""
    paragraphs = [
        "Across the finished trials of each sweep and dataset (every seed one observation): "
        "Spearman's rank correlation (scipy.stats.spearmanr) of each trial's final probe "
        "metrics (its last probed step, mean over layers and heads) and of the model's "
        "attention while generating its sample (mean over layers) with the best val loss and "
        "the sample's quality. 95% CI: scipy.stats.bootstrap (BCa, trials resampled in "
        f"pairs, 999 resamples) up to {predictors.BOOTSTRAP_MAX_N} trials, the Fisher z "
        "interval of the ranks' Pearson correlation above; p Holm-corrected over the pairs "
        "of one sweep and dataset (* below 0.05). A negative rho with best val loss: higher "
        "values go with a lower (better) loss. Correlation across configs and seeds, not "
        "cause.",
        "Silhouette: per layer, k-means (k=8, seed 0) of up to 512 evenly spaced tokens of "
        "the probe batch's hidden states, scored with sklearn's silhouette_score (1: tight, "
        "separate clusters; 0: one blob). Coherence: mean cosine similarity of the "
        "character-trigram counts of consecutive 64-character segments of the sample.",
    ]
    paragraphs += result.notes
    tables = []
    for (sweep, dataset), rows in result.correlations.groupby(["sweep", "dataset"], sort=True):
        shown = rows[rows["outcome"].isin(["best_val_loss", "coherence"])]
        if shown.empty:
            continue
        table = pd.DataFrame(
            {
                "Predictor (final)": shown["predictor_label"],
                "Outcome": shown["outcome_label"],
                "n": shown["n"],
                "Spearman rho [95% CI]": [
                    f"{_fmt(r.rho)} [{_fmt(r.ci_low, 2)}, {_fmt(r.ci_high, 2)}]"
                    for r in shown.itertuples()
                ],
                "p (Holm)": [f"{p:.2g}{'*' if p < 0.05 else ''}" for p in shown["p_holm"]],
                "CI method": shown["ci_method"],
            }
        )
        tables.append((f"{sweep} / {dataset}: final metrics vs best val loss and coherence "
                       "(every outcome: tables/predictor_correlations.csv)", table))  # fmt: skip
    if result.correlations.empty:
        paragraphs.append(
            f"No correlations: fewer than {predictors.MIN_N} finished trials with both values."
        )
    figures = [e for job in jobs for e in figure_entries(job.stem, job.caption, formats, job.views)]
    return {"title": SECTION_TITLE, "paragraphs": paragraphs, "tables": tables, "figures": figures}


def write_template_figures(
    out: Path, curves: pd.DataFrame, attention: pd.DataFrame, result: Predictors | None
) -> tuple[list[Path], list[str]]:
    """The research templates' figure files at the top of the report directory ``out``:
    per dataset train_loss_/val_loss_ (every config of every sweep), attention_metrics_
    and layer_similarity_ (the baseline of the first sweep, by name, that has the
    dataset), then cluster_quality.png (the first sweep's) and training_dynamics.png,
    copied from the report's figures (``out``/figures). Returns the files and notes on what
    is missing."""
    figures_dir = out / "figures"
    written, notes = [], []
    for dataset, rows in curves.groupby("dataset", sort=True):
        for column in ("train_loss", "val_loss"):
            figure = as_figure(predictor_plots.loss_by_config, rows, column)
            written += save_figure(figure, out / f"{column}_{dataset}", ("png",))
    for dataset in sorted(curves["dataset"].unique()):
        rows = attention[attention["dataset"] == dataset]
        if rows.empty:
            notes.append(f"No attention rows for {dataset}: no attention_metrics_{dataset}.png.")
            continue
        first = rows[rows["sweep"] == sorted(rows["sweep"].unique())[0]]
        written += save_figure(
            plots.attention_over_training(first), out / f"attention_metrics_{dataset}", ("png",)
        )
        if first["attention_js_next_n"].gt(0).any():
            written += save_figure(
                plots.layer_similarity(first), out / f"layer_similarity_{dataset}", ("png",)
            )
        else:
            notes.append(f"One layer only for {dataset}: no layer_similarity_{dataset}.png.")
    copies = {"training_dynamics.png": figures_dir / "predictors" / "training_dynamics.png"}
    if result is not None and len(result.silhouette):
        first_sweep = sorted(result.silhouette["sweep"].unique())[0]
        copies["cluster_quality.png"] = (
            figures_dir / "predictors" / f"{slug(first_sweep)}_cluster_quality.png"
        )
    else:
        notes.append("No silhouette values: no cluster_quality.png.")
    for name, source in copies.items():
        if source.is_file():
            shutil.copyfile(source, out / name)
            written.append(out / name)
    return written, notes
