"""The search section of the report: searched configs with mean ± stderr over their seeds,
loss against each searched parameter, best-so-far against trial number, and parameter
importances on seed means.

A search config is the rows sharing a ``config_id`` (one per seed; stores written before
config ids group by the config's label). Its score is the mean final val loss over its
seeds: the value the search's TPE minimised (``sweeps/search.py`` reports that mean at
every evaluation). Only configs whose seeds all ran to the end are ranked: an ASHA-stopped
config's last loss is from an earlier step. Standard errors: ``scipy.stats.sem``;
importances: Optuna's fANOVA evaluator (``optuna.importance``) on the seed means.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.export import format_params, slug
from analysis.figures import figure_entries, save_figure
from analysis.plots import _label, as_figure
from charlm.config import ModelConfig, TrainConfig, config_fields
from charlm.text import mean_stderr

SEARCH_METRIC = "final_val_loss"
TOP_CONFIGS = 20
# Config columns that never count as searched: identity, or where the trial ran.
_NOT_SEARCHED = {"seed", "dataset", "data_dir", "device", "num_threads", "vocab_size"}


def format_param(name: str, value: Any) -> str:
    """A config value as the report prints it: learning rates in scientific notation with
    three significant digits, other floats with three, parameter counts as 201.34k."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if name in ("learning_rate", "min_lr"):
        return f"{value:.2e}"
    if name == "n_params":
        return format_params(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}"
    return str(value)


def searched_params(rows: pd.DataFrame) -> list[str]:
    """The config columns that vary between the ok rows of one search sweep, in config order."""
    ok = rows[rows["status"].eq("ok")]
    candidates = [
        "requested_device" if name == "device" else name
        for name in config_fields(ModelConfig) + config_fields(TrainConfig)
        if name not in _NOT_SEARCHED
    ]
    return [c for c in candidates if c in ok and ok[c].nunique(dropna=True) > 1]


def search_configs(rows: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """One row per config of one search sweep and dataset (``rows``: its trials rows).

    Columns: ``config_id``, the ``params``, ``mean``/``stderr``/``n`` of SEARCH_METRIC
    over the ok seeds, ``n_seeds`` (rows), ``complete`` (every seed ok and run to the end),
    ``early_stopped`` (ASHA stopped it), ``failed``, ``n_params``, ``trial_ids`` (by seed),
    ``trial_number`` (1 = first started) and ``rank`` (1 = best complete config, else NaN).
    """
    from scipy import stats

    rows = rows.assign(config_key=rows["config_id"].fillna(rows["level"].astype(str)))
    records = []
    for key, group in rows.groupby("config_key", sort=False):
        group = group.sort_values("seed")
        ok = group[group["status"].eq("ok")]
        values = ok[SEARCH_METRIC].astype(float).dropna().to_numpy()
        complete = len(ok) == len(group) and not ok["early_stopped"].fillna(False).any()
        records.append(
            {
                "config_id": key,
                **{param: group[param].iloc[0] for param in params},
                "mean": values.mean() if len(values) else math.nan,
                "stderr": float(stats.sem(values)) if len(values) > 1 else math.nan,
                "n": len(values),
                "n_seeds": len(group),
                "complete": bool(complete and len(values) == len(group)),
                "early_stopped": bool(ok["early_stopped"].fillna(False).any()),
                "failed": bool(group["status"].eq("failed").any()),
                "n_params": next(iter(group["n_params"].dropna()), math.nan),
                "trial_ids": list(group["trial_id"].astype(str)),
                "started_at": group["started_at"].min(),
            }
        )
    configs = pd.DataFrame(records)
    if configs.empty:
        return configs
    configs = configs.sort_values("started_at", kind="stable").reset_index(drop=True)
    configs["trial_number"] = np.arange(1, len(configs) + 1)
    ranked = configs[configs["complete"]].sort_values("mean", kind="stable")
    configs["rank"] = math.nan
    configs.loc[ranked.index, "rank"] = np.arange(1, len(ranked) + 1)
    return configs


def param_importances(configs: pd.DataFrame, params: list[str]) -> pd.Series:
    """fANOVA importance (Optuna's evaluator, seed 0) of each searched parameter for the
    seed-mean loss of the complete configs; sums to 1, largest first. Empty when fewer
    than 3 complete configs or no parameter varies among them."""
    import optuna

    complete = configs[configs["complete"]]
    varying = [p for p in params if complete[p].nunique() > 1]
    if len(complete) < 3 or not varying:
        return pd.Series(dtype=float)
    distributions: dict[str, optuna.distributions.BaseDistribution] = {}
    for param in varying:
        values = complete[param]
        low, high = values.min(), values.max()
        if pd.api.types.is_integer_dtype(values):
            distributions[param] = optuna.distributions.IntDistribution(int(low), int(high))
        else:
            log = low > 0 and high / low >= 10
            distributions[param] = optuna.distributions.FloatDistribution(
                float(low), float(high), log=bool(log)
            )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for _, row in complete.iterrows():
        params_row = {
            p: int(row[p]) if isinstance(distributions[p], optuna.distributions.IntDistribution)
            else float(row[p])
            for p in varying
        }  # fmt: skip
        study.add_trial(
            optuna.trial.create_trial(
                params=params_row, distributions=distributions, value=float(row["mean"])
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning of the evaluator
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.Series(importances, dtype=float).sort_values(ascending=False)


# ---------------------------------------------------------------- figures


def loss_vs_params(rows: pd.DataFrame, configs: pd.DataFrame, params: list[str]) -> Figure:
    """One panel per searched parameter: each seed's final val loss (small dots) and each
    config's mean (large dots, with stderr bars), the winner circled. ``rows``: the
    sweep's ok trials rows; ``configs``: ``search_configs``."""
    n = len(params)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    figure = Figure(figsize=(4.0 * cols, 3.2 * nrows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(nrows, cols, squeeze=False)).ravel()
    ok = rows[rows["status"].eq("ok") & ~rows["early_stopped"].fillna(False)]
    complete = configs[configs["complete"]]
    best = complete.sort_values("mean").head(1)
    for ax, param in zip(axes, params, strict=False):
        ax.scatter(ok[param], ok[SEARCH_METRIC], s=10, alpha=0.45, color="#1f77b4",
                   label="seed")  # fmt: skip
        ax.errorbar(complete[param], complete["mean"], yerr=complete["stderr"].fillna(0),
                    fmt="o", color="#d62728", capsize=2, markersize=5,
                    label="config mean ± stderr")  # fmt: skip
        if len(best):
            ax.scatter(best[param], best["mean"], s=140, facecolors="none",
                       edgecolors="black", linewidths=1.5, label="winner")  # fmt: skip
        if param in ("learning_rate", "min_lr"):
            ax.set_xscale("log")
        _label(ax, "final val loss", param)
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return figure


def best_so_far(configs: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Each complete config's mean loss against its trial number (start order), and the
    best mean so far as a step line; early-stopped configs as crosses at their last loss.
    Draws on ``ax`` (a new figure when None) and returns it."""
    if ax is None:
        ax = Figure(figsize=(6.0, 3.6), layout="constrained").subplots()
    complete = configs[configs["complete"]]
    stopped = configs[configs["early_stopped"]]
    ax.scatter(complete["trial_number"], complete["mean"], s=18, color="#1f77b4",
               label="config (mean over seeds)")  # fmt: skip
    if len(stopped):
        ax.scatter(stopped["trial_number"], stopped["mean"], s=18, marker="x", color="#7f7f7f",
                   label="stopped early by ASHA")  # fmt: skip
    running = configs["mean"].where(configs["complete"]).cummin()
    ax.step(configs["trial_number"], running, where="post", color="#d62728", label="best so far")
    _label(ax, "final val loss", "trial number (start order)")
    ax.legend(fontsize=7)
    return ax


# ---------------------------------------------------------------- section


def _top_table(configs: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    top = configs[configs["complete"]].sort_values("rank").head(TOP_CONFIGS)
    return pd.DataFrame(
        {
            "Rank": top["rank"].astype(int),
            "Config": top["config_id"],
            **{param: [format_param(param, v) for v in top[param]] for param in params},
            "Final val loss (mean ± stderr)": [
                mean_stderr(m, s, int(n), explain=False)
                for m, s, n in zip(top["mean"], top["stderr"], top["n"], strict=True)
            ],
            "n": top["n"],
            "Params": [format_param("n_params", v) for v in top["n_params"]],
            "Store trials": [", ".join(ids) for ids in top["trial_ids"]],
        }
    )


def search_section(
    trials: pd.DataFrame, figures_dir: Path, formats: Sequence[str]
) -> dict[str, Any]:
    """The section (render.Section fields) for every search sweep and dataset in
    ``trials`` (the store's trials rows), its figures written under ``figures_dir``
    (``figures/`` of the report)."""
    paragraphs = [
        "Each searched config trained one or more seeds; its score is the mean final val "
        "loss over them (what TPE minimised), ± standard error (scipy.stats.sem). Only "
        "configs whose seeds all ran to the end are ranked."
    ]
    tables: list[tuple[str, pd.DataFrame]] = []
    figures: list[tuple[str, str, list[str]]] = []
    search = trials[trials["kind"].eq("search")]
    for (sweep, dataset), rows in search.groupby(["sweep", "dataset"], sort=True):
        params = searched_params(rows)
        configs = search_configs(rows, params)
        if configs.empty:
            continue
        ranked = configs[configs["complete"]].sort_values("rank")
        paragraphs.append(
            f"Sweep {sweep} ({dataset}): {len(configs)} configs, "
            f"{int(configs['n_seeds'].max())} seed(s) each; {len(ranked)} ran to the end, "
            f"{int(configs['early_stopped'].sum())} stopped early by ASHA, "
            f"{int(configs['failed'].sum())} failed."
        )
        if len(ranked):
            winner = ranked.iloc[0]
            values = ", ".join(f"{p}={format_param(p, winner[p])}" for p in params)
            loss = mean_stderr(winner["mean"], winner["stderr"], int(winner["n"]))
            paragraphs.append(
                f"Winner of {sweep} ({dataset}): config {winner['config_id']} ({values}): "
                f"final val loss {loss}; store trials "
                f"{', '.join(winner['trial_ids'])}."
            )
            tables.append((f"{sweep} ({dataset}): top configs", _top_table(configs, params)))
        importances = param_importances(configs, params)
        if len(importances):
            tables.append((
                f"{sweep} ({dataset}): parameter importances (fANOVA on seed means)",
                pd.DataFrame({"Parameter": importances.index,
                              "Importance": [f"{v:.3f}" for v in importances]}),
            ))  # fmt: skip
        else:
            paragraphs.append(
                f"{sweep} ({dataset}): parameter importances need 3 or more configs that ran "
                "to the end."
            )
        stem = f"search/{slug(sweep)}_{slug(dataset)}"
        drawn = [
            (f"{stem}_loss_vs_params",
             f"{sweep} ({dataset}): final val loss against each searched parameter",
             loss_vs_params(rows, configs, params) if params else None),
            (f"{stem}_best_so_far", f"{sweep} ({dataset}): best config so far by trial number",
             as_figure(best_so_far, configs)),
        ]  # fmt: skip
        for name, caption, figure in drawn:
            if figure is None:
                continue
            save_figure(figure, figures_dir / name, formats)
            figures += figure_entries(name, caption, formats)
    return dict(title="Search sweeps", paragraphs=paragraphs, tables=tables, figures=figures)
