"""Statistics over the store's tidy tables: no drawing here (plots.py draws what this returns)
and no files written (export.py formats and writes the tables and final_info.json).

A *config* is the set of trials sharing (sweep, dataset, factor, level): all seeds of one
point of the grid. The baseline of a sweep has factor 'baseline'. Only trials with status
'ok' enter the statistics; failed ones (e.g. diverged: 'non-finite loss at step k') are
counted per config and listed by ``failed_trials``. All tests come from scipy.stats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from sweeps.schema import config_label

CONFIG_KEYS = ["sweep", "dataset", "factor", "level"]
METRICS = (
    "best_val_loss",
    "final_train_loss",
    "final_val_loss",
    "train_time_s",
    "train_tokens_per_s",
    "inference_tokens_per_s",
    "n_params",
)
ATTENTION_METRICS = ("entropy", "effective_span", "attention_js_next", "hidden_cosine_next")


def _level_key(level: Any) -> tuple[int, float, str]:
    try:
        return (0, float(level), str(level))
    except (TypeError, ValueError):
        return (1, math.nan, str(level))


def level_order(levels: Sequence[str]) -> list[str]:
    """Levels sorted numerically when they are numbers ('2' < '16'), else alphabetically."""
    return sorted(dict.fromkeys(levels), key=_level_key)


def _sort_configs(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in reading order: sweep, dataset, baseline first, factor, level (numeric)."""
    if frame.empty:
        return frame.reset_index(drop=True)
    levels = frame["level"].astype(str)
    number = pd.to_numeric(levels, errors="coerce")
    keys = pd.DataFrame(
        {
            "sweep": frame["sweep"].astype(str).to_numpy(),
            "dataset": frame["dataset"].astype(str).to_numpy(),
            "not_baseline": frame["factor"].ne("baseline").to_numpy(),
            "factor": frame["factor"].astype(str).to_numpy(),
            "not_number": number.isna().to_numpy(),
            "number": number.fillna(0.0).to_numpy(),
            "level": levels.to_numpy(),
        }
    )
    order = keys.sort_values(list(keys.columns), kind="stable").index.to_numpy()
    return frame.iloc[order].reset_index(drop=True)


def _ok(trials: pd.DataFrame, columns: Sequence[str] = ()) -> pd.DataFrame:
    """Finished trials, non-finite metric values as NaN."""
    ok = trials[trials["status"].eq("ok")].copy()
    for column in columns:
        values = pd.to_numeric(ok[column], errors="coerce").astype(float)
        ok[column] = values.where(np.isfinite(values))
    return ok


def config_summary(trials: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean, standard error and n over seeds per config.

    ``trials``: one row per trial (``Store.trials``). Returns one row per (sweep, dataset,
    factor, level) with ``kind``, ``config`` (label), ``n_ok``, ``n_failed``,
    ``n_unfinished`` (status neither 'ok' nor 'failed'), ``seeds`` (of the ok trials) and,
    per metric, ``<metric>_mean``, ``<metric>_stderr`` (sample sd / sqrt(n); NaN for n < 2)
    and ``<metric>_n`` (ok trials with a finite value).
    """
    status = trials["status"]
    counts = (
        trials.assign(
            n_ok=status.eq("ok"),
            n_failed=status.eq("failed"),
            n_unfinished=~status.isin(["ok", "failed"]),
        )
        .groupby(CONFIG_KEYS, sort=False)
        .agg(
            kind=("kind", "first"),
            n_ok=("n_ok", "sum"),
            n_failed=("n_failed", "sum"),
            n_unfinished=("n_unfinished", "sum"),
        )
    )
    grouped = _ok(trials, metrics).groupby(CONFIG_KEYS, sort=False)
    values = _mean_stderr_n(grouped, metrics)
    seeds = grouped["seed"].agg(lambda s: sorted(int(v) for v in s.dropna())).rename("seeds")
    summary = counts.join(seeds).join(values).reset_index()
    for metric in metrics:
        summary[f"{metric}_n"] = summary[f"{metric}_n"].fillna(0).astype(int)
    summary["seeds"] = summary["seeds"].apply(lambda s: s if isinstance(s, list) else [])
    summary.insert(4, "config", config_labels(summary))
    return _sort_configs(summary)


def _mean_stderr_n(grouped: Any, columns: Sequence[str]) -> pd.DataFrame:
    """Per group of a groupby: ``<column>_mean``, ``_stderr`` (sem) and ``_n`` (count)."""
    values = grouped[list(columns)].agg(["mean", "sem", "count"])
    names = {"sem": "stderr", "count": "n"}
    values.columns = [f"{column}_{names.get(stat, stat)}" for column, stat in values.columns]
    return values


def config_labels(frame: pd.DataFrame) -> list[str]:
    """Each row's config label (``config_label`` of its factor and level)."""
    return [config_label(f, lv) for f, lv in zip(frame["factor"], frame["level"], strict=True)]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (statsmodels' ``multipletests``, method 'holm');
    NaN entries stay NaN and are not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = ~np.isnan(p)
    if valid.any():
        adjusted[valid] = multipletests(p[valid], method="holm")[1]
    return adjusted


def _seed_values(trials: pd.DataFrame, metric: str) -> dict[tuple, pd.Series]:
    """Per (sweep, dataset, factor, level) of ok, non-search trials: ``metric`` indexed by
    seed (averaged if a seed repeats, NaN dropped). One groupby for all configs."""
    ok = _ok(trials, [metric])
    ok = ok[ok["kind"].ne("search")]
    means = ok.groupby([*CONFIG_KEYS, "seed"], sort=True)[metric].mean().dropna()
    return {
        key: values.droplevel([0, 1, 2, 3])
        for key, values in means.groupby(level=[0, 1, 2, 3], sort=False)
    }


def _by_experiment(values: dict[tuple, pd.Series]) -> dict[tuple, dict[tuple, pd.Series]]:
    """The configs of _seed_values grouped by (sweep, dataset), keyed by (factor, level)."""
    grouped: dict[tuple, dict[tuple, pd.Series]] = {}
    for (sweep, dataset, factor, level), seeds in sorted(values.items(), key=lambda kv: kv[0][:2]):
        grouped.setdefault((sweep, dataset), {})[(factor, level)] = seeds
    return grouped


_INTERVAL = ("effect_stderr", "effect_ci_low", "effect_ci_high")  # of rank_factors' effect


def rank_factors(
    trials: pd.DataFrame,
    metric: str = "best_val_loss",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Factors ranked by how much they move ``metric``, per (sweep, dataset) of ablations.

    A factor's ``effect`` is the largest |mean(level) - mean(baseline)| over its levels,
    computed on seed-averaged results; ``best_level`` and ``best_delta`` name the level that
    lowers the metric most. Its spread comes from ``scipy.stats.bootstrap`` (seeds resampled
    within each config, percentile method): ``effect_stderr``, ``effect_ci_low``,
    ``effect_ci_high`` (NaN when a config has fewer than two seeds). ``rank`` 1 moves it most.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for (sweep, dataset), configs in _by_experiment(_seed_values(trials, metric)).items():
        baselines = [seeds for (factor, _), seeds in configs.items() if factor == "baseline"]
        if not baselines:
            continue
        base = baselines[0].to_numpy()
        factors: dict[str, dict[str, np.ndarray]] = {}
        for (factor, level), seeds in configs.items():
            if factor != "baseline":
                factors.setdefault(factor, {})[level] = seeds.to_numpy()
        for factor, levels in sorted(factors.items()):
            deltas = {level: v.mean() - base.mean() for level, v in levels.items()}
            best_level = min(deltas, key=lambda level: deltas[level])
            samples = (base, *levels.values())
            row = {
                "sweep": sweep,
                "dataset": dataset,
                "factor": factor,
                "metric": metric,
                "effect": _max_shift(*samples, axis=-1),
                "best_level": best_level,
                "best_delta": deltas[best_level],
                "n_levels": len(levels),
                **dict.fromkeys(_INTERVAL, math.nan),
            }
            if min(len(s) for s in samples) >= 2 and n_resamples > 0:
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    boot = stats.bootstrap(
                        samples,
                        _max_shift,
                        n_resamples=n_resamples,
                        vectorized=True,
                        confidence_level=confidence,
                        method="percentile",
                        rng=rng,
                    )
                row["effect_stderr"] = float(boot.standard_error)
                row["effect_ci_low"] = float(boot.confidence_interval.low)
                row["effect_ci_high"] = float(boot.confidence_interval.high)
            rows.append(row)
    columns = ["sweep", "dataset", "rank", "factor", "metric", "effect", *_INTERVAL]
    columns += ["best_level", "best_delta", "n_levels"]
    ranking = pd.DataFrame(rows, columns=[c for c in columns if c != "rank"])
    ranking = ranking.sort_values(["sweep", "dataset", "effect"], ascending=[True, True, False])
    ranking.insert(2, "rank", ranking.groupby(["sweep", "dataset"]).cumcount() + 1)
    return ranking.reset_index(drop=True)[columns]


def _max_shift(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """Largest |mean(level) - mean(baseline)|; samples[0] is the baseline."""
    base = np.mean(samples[0], axis=axis)
    shifts = [np.abs(np.mean(level, axis=axis) - base) for level in samples[1:]]
    return np.max(np.stack(shifts), axis=0)


def baseline_configs(trials: pd.DataFrame) -> pd.DataFrame:
    """The (sweep, dataset, factor, level) of every sweep's baseline, one row each."""
    base = trials.loc[trials["factor"].eq("baseline"), CONFIG_KEYS].drop_duplicates()
    return _sort_configs(base)


def _config_codes(
    trials: pd.DataFrame, trial_ids: pd.Series, configs: pd.DataFrame | None
) -> tuple[np.ndarray, pd.DataFrame]:
    """Per row of a per-trial table: the index of its config in the returned frame of
    configs (ok trials only, limited to ``configs``), or -1."""
    ok = trials[trials["status"].eq("ok")]
    if configs is not None:
        ok = ok.merge(configs[CONFIG_KEYS].drop_duplicates(), on=CONFIG_KEYS)
    keys = ok[CONFIG_KEYS].drop_duplicates().reset_index(drop=True)
    keys["config_index"] = np.arange(len(keys))
    per_trial = ok[["trial_id", *CONFIG_KEYS]].merge(keys, on=CONFIG_KEYS)
    categorical = trial_ids.astype("category")
    lookup = (
        per_trial.set_index("trial_id")["config_index"]
        .reindex(categorical.cat.categories.astype(str))
        .fillna(-1)
        .to_numpy(np.int64)
    )
    codes = categorical.cat.codes.to_numpy()
    index = np.where(codes >= 0, lookup[codes] if len(lookup) else -1, -1)
    return index, keys


def _finish(aggregated: pd.DataFrame, keys: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    aggregated = aggregated.reset_index()
    out = keys.merge(aggregated, on="config_index").drop(columns="config_index")
    out.insert(4, "config", config_labels(out))
    return out.sort_values([*CONFIG_KEYS, *by[1:]], kind="stable").reset_index(drop=True)


def curve_summary(
    curves: pd.DataFrame,
    trials: pd.DataFrame,
    columns: Sequence[str] = ("train_loss", "val_loss"),
    configs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Mean, stderr and n over seeds per (config, eval step) of the curve ``columns``.

    ``curves``: one row per (trial, eval step); only ok trials count (a diverged trial's
    curve would end in NaN). ``configs`` (rows with CONFIG_KEYS) limits the configs.
    Returns CONFIG_KEYS, ``config``, ``step`` and ``<column>_mean|_stderr|_n``.
    """
    index, keys = _config_codes(trials, curves["trial_id"], configs)
    frame = curves[list(columns)].astype(float)
    frame = frame.where(np.isfinite(frame))
    frame["config_index"] = index
    frame["step"] = curves["step"].to_numpy()
    frame = frame[index >= 0]
    by = ["config_index", "step"]
    return _finish(_mean_stderr_n(frame.groupby(by, sort=True), columns), keys, by)


def attention_summary(
    attention: pd.DataFrame,
    trials: pd.DataFrame,
    configs: pd.DataFrame | None = None,
    metrics: Sequence[str] = ATTENTION_METRICS,
) -> pd.DataFrame:
    """Attention metrics per (config, eval step, layer): mean, stderr and n over seeds of
    each trial's head-averaged value.

    ``attention``: one row per (trial, step, layer, head). ``attention_js_next`` and
    ``hidden_cosine_next`` compare a layer with the next one (NaN for the last layer).
    """
    index, keys = _config_codes(trials, attention["trial_id"], configs)
    keep = index >= 0
    frame = attention.loc[keep, list(metrics)].astype(float)
    frame["config_index"] = index[keep]
    frame["trial"] = attention["trial_id"].cat.codes.to_numpy()[keep]
    frame["step"] = attention["step"].to_numpy()[keep]
    frame["layer"] = attention["layer"].to_numpy()[keep]
    per_trial = frame.groupby(["config_index", "trial", "step", "layer"], sort=False).mean()
    by = ["config_index", "step", "layer"]
    return _finish(_mean_stderr_n(per_trial.groupby(by, sort=True), metrics), keys, by)


def failed_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials with status 'failed', one row each: identity, config, seed, error, and
    ``diverged`` (error 'non-finite loss at step k') with ``diverged_at_step`` k."""
    failed = trials[trials["status"].eq("failed")].copy()
    errors = failed["error"].fillna("").astype(str)
    step = errors.str.extract(r"non-finite loss at step (\d+)", expand=False)
    failed["diverged"] = step.notna()
    failed["diverged_at_step"] = pd.to_numeric(step).astype("Int64")
    failed["config"] = config_labels(failed)
    columns = ["trial_id", *CONFIG_KEYS, "config", "seed", "error"]
    return _sort_configs(failed[[*columns, "diverged", "diverged_at_step", "last_step"]])


def search_leaderboard(trials: pd.DataFrame, metric: str = "best_val_loss") -> pd.DataFrame:
    """Ok trials of search sweeps (no seeds to average), best first, with the config
    columns that vary within their sweep."""
    search = _ok(trials, [metric])
    search = search[search["kind"].eq("search")]
    identity = ["sweep", "dataset", "trial_id", "seed", metric, "n_params", "last_step"]
    skip = {*identity, "level", "factor", "kind", "status", "error", "started_at", "finished_at"}
    varying = [
        column
        for column in search.columns
        if column not in skip
        and not column.startswith(("final_", "train_", "inference_"))
        and search.groupby("sweep")[column].nunique(dropna=False).gt(1).any()
    ]
    return search.sort_values(["sweep", "dataset", metric])[identity + varying].reset_index(
        drop=True
    )
