"""What predicts a good model: per-trial final probe and sample metrics, their Spearman
correlations with validation loss and generation quality, and the silhouette summary.

No drawing here (predictor_plots.py draws what this returns). The question, from the
research templates this tool serves: across the finished trials of a sweep, do the
attention and hidden-state metrics a model ends with go with a lower validation loss and
better generated text? Each trial is one observation (seeds included); a correlation is
computed per (sweep, dataset) over the ok trials that have both values.

- Final metrics: a trial's probe rows at its last probed step, averaged over layers and
  heads (the ``*_next`` metrics over its layer pairs); the sample's own attention
  (entropy, span while generating) averaged over layers.
- Spearman's rho and its p-value from ``scipy.stats.spearmanr`` (t approximation); p
  Holm-corrected over all predictor x outcome pairs of one (sweep, dataset).
- The confidence interval of rho: ``scipy.stats.bootstrap`` (BCa, paired resampling of
  trials, 999 resamples, fixed seed) for up to ``BOOTSTRAP_MAX_N`` trials; above that, where
  a bootstrap costs seconds and the normal approximation is accurate, the Fisher z interval
  of the Pearson correlation of the ranks (``scipy.stats.pearsonr(...).confidence_interval``).
  The ``ci_method`` column says which.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.aggregate import CONFIG_KEYS, attention_summary, config_labels, holm

# column -> label; probe metrics at the last probed step, then the sample's own attention
PREDICTORS: dict[str, str] = {
    "entropy": "attention entropy",
    "effective_span": "effective span",
    "head_diversity": "head diversity",
    "attention_js_next": "attention JS to next layer",
    "hidden_cosine_next": "hidden cosine to next layer",
    "silhouette": "hidden-state silhouette",
    "sample_entropy": "entropy while generating",
    "sample_span": "span while generating",
}
OUTCOMES: dict[str, str] = {
    "best_val_loss": "best val loss",
    "coherence": "coherence",
    "distinct_2": "distinct-2",
    "known_word_share": "known-word share",
}
PROBE_METRICS = tuple(name for name in PREDICTORS if not name.startswith("sample_"))
BOOTSTRAP_MAX_N = 500
MIN_N = 4  # fewer trials than this: no correlation


def final_attention(attention: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its last probed step and the mean of each probe metric over the
    rows at that step (layers and heads; the ``*_next`` metrics skip the last layer's NaN).

    ``attention``: rows of the attention table (any subset holding each trial's rows at its
    last probed step). Metrics missing from the frame (an older store) come back as NaN.
    """
    columns = ["trial_id", "final_step", *PROBE_METRICS]
    if attention.empty:
        return pd.DataFrame(columns=columns)
    trial = attention["trial_id"].astype(str)
    step = attention["step"].to_numpy()
    last = pd.Series(step).groupby(trial.to_numpy()).transform("max").to_numpy()
    rows = attention[step == last]
    frame = pd.DataFrame(
        {"trial_id": trial[step == last].to_numpy(), "final_step": step[step == last]}
    )
    for metric in PROBE_METRICS:
        values = rows.get(metric, np.nan)
        frame[metric] = pd.to_numeric(
            pd.Series(values, index=rows.index), errors="coerce"
        ).to_numpy(float)
    return frame.groupby("trial_id", sort=True).mean().reset_index()[columns]


def _layer_mean(values: object) -> float:
    """Mean of a per-layer list (a samples-table list cell); NaN when missing or empty."""
    if values is None or (isinstance(values, float) and np.isnan(values)):
        return np.nan
    array = np.asarray(values, dtype=float)
    return float(np.nanmean(array)) if array.size and np.isfinite(array).any() else np.nan


def trial_metrics(
    trials: pd.DataFrame, attention: pd.DataFrame, samples: pd.DataFrame
) -> pd.DataFrame:
    """One row per ok trial: CONFIG_KEYS, ``config``, ``seed``, ``trial_id``, every
    PREDICTORS and OUTCOMES column (NaN where the store has no value, e.g. a version-1
    store has no silhouette, coherence or sample attention)."""
    ok = trials[trials["status"].eq("ok")]
    frame = ok[["trial_id", *CONFIG_KEYS, "seed", "best_val_loss"]].copy()
    frame["trial_id"] = frame["trial_id"].astype(str)
    frame["config"] = config_labels(frame)
    frame = frame.merge(final_attention(attention), on="trial_id", how="left")
    sample = pd.DataFrame({"trial_id": samples["trial_id"].astype(str)})
    for column in ("coherence", "distinct_2", "known_word_share"):
        sample[column] = (
            pd.to_numeric(samples[column], errors="coerce").to_numpy(float)
            if column in samples
            else np.nan
        )
    for column, source in (
        ("sample_entropy", "attention_entropy"),
        ("sample_span", "effective_span"),
    ):
        sample[column] = [_layer_mean(v) for v in samples[source]] if source in samples else np.nan
    sample = sample.drop_duplicates("trial_id", keep="last")
    frame = frame.merge(sample, on="trial_id", how="left")
    for column in (*PREDICTORS, *OUTCOMES):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame.reset_index(drop=True)


def _rank_correlations(pairs: list[tuple[int, int]]) -> Callable[..., np.ndarray]:
    """A vectorised statistic for scipy.stats.bootstrap: Spearman's rho of each (i, j)
    variable pair, each variable ranked once per resample."""

    def statistic(*variables: np.ndarray, axis: int = -1) -> np.ndarray:
        ranks = [stats.rankdata(v, axis=axis) for v in variables]
        return np.stack([stats.pearsonr(ranks[i], ranks[j], axis=axis).statistic for i, j in pairs])

    return statistic


def _intervals(
    data: pd.DataFrame,
    pairs: list[tuple[str, str]],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> dict[tuple[str, str], tuple[float, float, str]]:
    """CI of rho for pairs sharing one set of complete rows ``data`` (n rows)."""
    n = len(data)
    if n <= BOOTSTRAP_MAX_N:
        names = sorted({name for pair in pairs for name in pair})
        index = {name: i for i, name in enumerate(names)}
        columns = tuple(data[name].to_numpy(float) for name in names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples: the interval is NaN
            result = stats.bootstrap(
                columns,
                _rank_correlations([(index[p], index[o]) for p, o in pairs]),
                paired=True,
                vectorized=True,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method="BCa",
                rng=seed,
            )
        low, high = map(np.atleast_1d, result.confidence_interval)
        return {
            pair: (float(low[k]), float(high[k]), "bootstrap BCa") for k, pair in enumerate(pairs)
        }
    out = {}
    for p, o in pairs:
        fit = stats.pearsonr(stats.rankdata(data[p]), stats.rankdata(data[o]))
        interval = fit.confidence_interval(confidence)
        out[(p, o)] = (float(interval.low), float(interval.high), "Fisher z")
    return out


def correlations(
    metrics: pd.DataFrame,
    predictors: Mapping[str, str] | Sequence[str] = PREDICTORS,
    outcomes: Mapping[str, str] | Sequence[str] = OUTCOMES,
    *,
    confidence: float = 0.95,
    n_resamples: int = 999,
    seed: int = 0,
) -> pd.DataFrame:
    """Spearman's rho between each predictor and each outcome, per (sweep, dataset).

    ``metrics``: ``trial_metrics`` rows. Returns one row per (sweep, dataset, predictor,
    outcome) with at least MIN_N trials holding both values and neither constant: ``n``,
    ``rho``, ``p_value`` (spearmanr), ``p_holm`` (Holm over the rows of the same sweep and
    dataset), ``ci_low``/``ci_high`` (the ``confidence`` interval) and ``ci_method``
    (see the module docstring), plus the metrics' labels.
    """
    labels = {**PREDICTORS, **OUTCOMES}
    for names in (predictors, outcomes):
        if isinstance(names, Mapping):
            labels.update(names)
    columns = [
        "sweep", "dataset", "predictor", "outcome", "predictor_label", "outcome_label", "n",
        "rho", "p_value", "p_holm", "ci_low", "ci_high", "ci_method",
    ]  # fmt: skip
    rows = []
    for (sweep, dataset), group in metrics.groupby(["sweep", "dataset"], sort=True):
        found = []
        for mask, pairs in _pairs_by_rows(group, list(predictors), list(outcomes)).items():
            data = group.loc[np.frombuffer(mask, dtype=bool)]
            intervals = _intervals(data, pairs, confidence, n_resamples, seed)
            for p, o in pairs:
                fit = stats.spearmanr(data[p], data[o])
                low, high, method = intervals[(p, o)]
                found.append(
                    {
                        "sweep": sweep, "dataset": dataset, "predictor": p, "outcome": o,
                        "predictor_label": labels.get(p, p), "outcome_label": labels.get(o, o),
                        "n": len(data), "rho": float(fit.statistic), "p_value": float(fit.pvalue),
                        "ci_low": low, "ci_high": high, "ci_method": method,
                    }
                )  # fmt: skip
        order = [(p, o) for p in predictors for o in outcomes]
        found.sort(key=lambda row: order.index((row["predictor"], row["outcome"])))
        adjusted = holm([row["p_value"] for row in found])
        for row, p_holm in zip(found, adjusted, strict=True):
            row["p_holm"] = float(p_holm)
        rows += found
    return pd.DataFrame(rows, columns=columns)


def _pairs_by_rows(
    group: pd.DataFrame, predictors: list[str], outcomes: list[str]
) -> dict[bytes, list[tuple[str, str]]]:
    """The (predictor, outcome) pairs worth a correlation (at least MIN_N rows with both
    values, neither constant), grouped by those rows (a boolean mask's bytes): one
    bootstrap serves the pairs of one set of rows."""
    by_mask: dict[bytes, list[tuple[str, str]]] = {}
    for p in predictors:
        for o in outcomes:
            if p not in group or o not in group:
                continue
            mask = group[p].notna().to_numpy() & group[o].notna().to_numpy()
            enough = mask.sum() >= MIN_N
            if enough and group.loc[mask, p].nunique() > 1 and group.loc[mask, o].nunique() > 1:
                by_mask.setdefault(mask.tobytes(), []).append((p, o))
    return by_mask


def cluster_factors(
    trials: pd.DataFrame, ranking: pd.DataFrame, factor: str | None = None
) -> pd.DataFrame:
    """The configs each sweep's cluster_quality figure shows: its baseline and every level
    of one factor, ``factor`` if given and in the sweep, else the factor ranked first
    (largest effect on the metric; ties and unranked sweeps: alphabetical). Returns
    CONFIG_KEYS rows plus ``shown_factor``; search sweeps are left out."""
    ok = trials[trials["status"].eq("ok") & trials["kind"].ne("search")]
    rows = []
    for sweep, sweep_trials in ok.groupby("sweep", sort=True):
        factors = sorted(set(sweep_trials["factor"]) - {"baseline"})
        if not factors:
            continue
        ranked = ranking[ranking["sweep"].eq(sweep)].sort_values(["rank", "dataset"], kind="stable")
        chosen = (
            factor
            if factor in factors
            else (ranked["factor"].iloc[0] if len(ranked) else factors[0])
        )
        shown = sweep_trials[sweep_trials["factor"].isin(["baseline", chosen])]
        configs = shown[CONFIG_KEYS].drop_duplicates().assign(shown_factor=chosen)
        rows.append(configs)
    if not rows:
        return pd.DataFrame(columns=[*CONFIG_KEYS, "shown_factor"])
    return pd.concat(rows, ignore_index=True)


def silhouette_summary(
    attention: pd.DataFrame, trials: pd.DataFrame, configs: pd.DataFrame
) -> pd.DataFrame:
    """Silhouette per (config, eval step, layer): mean, stderr and n over seeds, for the
    ``configs`` (CONFIG_KEYS rows, e.g. from ``cluster_factors``; their ``shown_factor``
    is carried over). Empty when the store has no silhouette values."""
    if "silhouette" not in attention or attention["silhouette"].notna().sum() == 0 or configs.empty:
        return pd.DataFrame(columns=[*CONFIG_KEYS, "config", "step", "layer", "shown_factor"])
    rows = attention[attention["silhouette"].notna()]
    summary = attention_summary(rows, trials, configs[CONFIG_KEYS], metrics=("silhouette",))
    shown = configs[["sweep", "shown_factor"]].drop_duplicates("sweep")
    return summary.merge(shown, on="sweep", how="left")
