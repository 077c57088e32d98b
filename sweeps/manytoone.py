"""One verdict per level: the rule for fixed-seed sweeps, and the one entry point (``judge``)
both the ablation CLI and the report call.

A fixed-seed sweep is judged by many-to-one comparisons against its baseline (Dunnett,
"A multiple comparison procedure for comparing several treatments with a control", JASA
1955), on a *seed-blocked* model: ``metric ~ config + seed`` fitted by least squares
(``statsmodels`` OLS). The seed fixes data order and initialisation, so a seed that is
lucky for the baseline is lucky for most levels too; the seed term removes that shared
part, and the residual variance, pooled over all levels, gives every comparison
``levels x (seeds - 1)`` degrees of freedom (a 2-seed, 10-level sweep: 10, not 1). Each
level's difference from the baseline gets a simultaneous interval
``delta ± c x se``, where ``c`` is the two-sided quantile of the largest of the ``|t|``
statistics (a multivariate t with the contrasts' correlation, ``scipy.stats.multivariate_t``,
as ``scipy.stats.dunnett`` does for unblocked groups); the adjusted p-value of a level is
the chance that this largest ``|t|`` exceeds its own. So all intervals of a sweep hold
together with probability ``confidence`` (normal seed noise of equal size across levels),
and ``p_adjusted < 1 - confidence`` exactly when the interval excludes 0.

A ``--seeds auto`` sweep keeps its own rule (``sweeps.sequential``: repeated intervals
over its planned looks). Pure statistics: numpy, scipy, statsmodels; no Ray, no pandas API.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sweeps.sequential import Design, LevelResult, classify, evaluate, seeds_needed

METHODS = {
    "dunnett": "Dunnett many-to-one, seed-blocked (Dunnett 1955)",
    "sequential": "repeated intervals over planned looks (--seeds auto; Jennison & Turnbull 2000)",
}
Key = TypeVar("Key", bound=Hashable)
_QMC_SEED = 0  # the multivariate t's integration points: the same every call


def method_name(design: Design) -> str:
    """The short name of the rule that judges a sweep of ``design``."""
    return "sequential" if design.adaptive else "dunnett"


def judge(
    design: Design,
    levels: Mapping[Key, Mapping[int, float]],
    baseline: Mapping[int, float],
) -> dict[Key, LevelResult]:
    """Every level (key -> {seed: metric}) against the baseline ({seed: metric}): the
    sequential rule for an adaptive design, else the seed-blocked Dunnett intervals."""
    if design.adaptive:
        return {key: evaluate(design, values, baseline) for key, values in levels.items()}
    return many_to_one(levels, baseline, design.confidence, design.min_effect)


def _observations(
    levels: Mapping[Any, Mapping[int, float]], baseline: Mapping[int, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group, seed, value) of every finite value; group 0 is the baseline."""
    groups, seeds, values = [], [], []
    for group, by_seed in enumerate([baseline, *levels.values()]):
        for seed, value in by_seed.items():
            if value is not None and math.isfinite(value):
                groups.append(group)
                seeds.append(seed)
                values.append(value)
    return np.array(groups), np.array(seeds), np.array(values, dtype=float)


def _design_matrix(groups: np.ndarray, seeds: np.ndarray, n_levels: int) -> np.ndarray:
    """Intercept, one indicator per level (baseline: none) and per seed but the first."""
    level_columns = groups[:, None] == np.arange(1, n_levels + 1)[None, :]
    unique_seeds = np.unique(seeds)
    seed_columns = seeds[:, None] == unique_seeds[None, 1:]
    return np.column_stack([np.ones(len(groups)), level_columns, seed_columns]).astype(float)


def _fit(
    levels: Mapping[Any, Mapping[int, float]], baseline: Mapping[int, float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Seed-blocked OLS: the level - baseline contrasts, their covariance and residual df
    (NaN when the data leave no residual degree of freedom). When some level shares no
    seed with the others the blocks cannot be estimated: one-way (classic Dunnett)."""
    import statsmodels.api as sm

    k = len(levels)
    groups, seeds, values = _observations(levels, baseline)
    present = np.isin(np.arange(1, k + 1), groups)
    if not (groups == 0).any() or not present.all():
        return np.full(k, np.nan), np.full((k, k), np.nan), math.nan
    exog = _design_matrix(groups, seeds, k)
    if np.linalg.matrix_rank(exog) < exog.shape[1]:  # a level shares no seed: no blocks
        exog = exog[:, : k + 1]
    fit = sm.OLS(values, exog).fit()
    if fit.df_resid < 1:
        return np.full(k, np.nan), np.full((k, k), np.nan), math.nan
    contrasts = slice(1, k + 1)
    return fit.params[contrasts], fit.cov_params()[contrasts, contrasts], float(fit.df_resid)


def _max_abs_t_sf(bound: float, correlation: tuple[tuple[float, ...], ...], df: float) -> float:
    """P(max_i |T_i| > bound) for a multivariate t with this correlation and df."""
    from scipy import stats

    k = len(correlation)
    if k == 1:
        return float(2 * stats.t.sf(bound, df))
    mvt = stats.multivariate_t(shape=np.array(correlation), df=df)
    inside = mvt.cdf(
        np.full(k, bound),
        lower_limit=np.full(k, -bound),
        random_state=np.random.default_rng(_QMC_SEED),
    )
    return float(min(1.0, max(0.0, 1.0 - inside)))


@lru_cache(maxsize=256)
def _critical_value(correlation: tuple[tuple[float, ...], ...], df: float, alpha: float) -> float:
    """The c with P(max |T| > c) = alpha (between the unadjusted and Bonferroni quantiles)."""
    from scipy import optimize, stats

    k = len(correlation)
    if k == 1:
        return float(stats.t.isf(alpha / 2, df))
    low, high = stats.t.isf(alpha / 2, df), stats.t.isf(alpha / (2 * k), df)
    return float(
        optimize.brentq(
            lambda c: _max_abs_t_sf(c, correlation, df) - alpha, low, high + 1e-9, xtol=1e-10
        )
    )


def _key(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """A hashable correlation (rounded: the same design gives the same cache entry)."""
    return tuple(tuple(round(float(v), 12) for v in row) for row in matrix)


def many_to_one(
    levels: Mapping[Key, Mapping[int, float]],
    baseline: Mapping[int, float],
    confidence: float,
    min_effect: float,
    *,
    p_values: bool = True,
) -> dict[Key, LevelResult]:
    """Seed-blocked Dunnett verdicts of every level against the baseline (module doc).
    ``p_values=False`` skips the adjusted p-values (simulations need the intervals only).
    A level gets NaN intervals, and 'unresolved', when the fit has no residual df."""
    if not levels:  # a baseline-only grid: nothing to judge
        return {}
    alpha = 1 - confidence
    delta, covariance, df = _fit(levels, baseline)
    with np.errstate(all="ignore"):
        se = np.sqrt(np.diag(covariance))
        correlation = covariance / np.outer(se, se)
    valid = math.isfinite(df) and bool(np.all(np.isfinite(se) & (se > 0)))
    if not math.isfinite(df):  # no interval: the plain difference of means, for the tables
        base = np.nanmean(list(baseline.values())) if baseline else math.nan
        delta = np.array([np.nanmean(list(v.values())) - base if v else math.nan
                          for v in levels.values()])  # fmt: skip
    critical = _critical_value(_key(correlation), df, alpha) if valid else math.nan
    low, high = delta - critical * se, delta + critical * se
    verdicts = classify(low, high, min_effect)
    bonferroni = Design(levels=len(levels), min_effect=min_effect, confidence=confidence,
                        adaptive=False)  # fmt: skip
    results = {}
    for i, (key, values) in enumerate(levels.items()):
        shared = sorted(s for s in values if s in baseline)
        p = math.nan
        if valid and p_values:
            p = _max_abs_t_sf(abs(delta[i]) / se[i], _key(correlation), df)
        needed = None
        if verdicts[i] == "unresolved" and len(shared) >= 2:
            differences = np.array([values[s] - baseline[s] for s in shared], dtype=float)
            design = replace(bonferroni, max_seeds=max(2, len(shared)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                needed = seeds_needed(float(delta[i]), float(np.std(differences, ddof=1)),
                                      design, len(shared))  # fmt: skip
        results[key] = LevelResult(
            str(verdicts[i]), float(delta[i]), float(low[i]), float(high[i]), len(shared),
            len(values), needed, p_adjusted=p, df=df,
        )  # fmt: skip
    return results


def format_verdicts(
    results: Mapping[tuple[str, str], LevelResult], design: Design, dataset: str, sweep: str
) -> list[str]:
    """One line per level (verdict, Δ [interval], adjusted p, seeds, seeds needed) and the
    sweep's counts, in the order given: what the ablation CLI and ``python -m analysis``
    print (``sweeps.manytoone.judge``'s results)."""
    header = f"  {'level':<24} {'verdict':<11} {'delta [interval]':>30}  {'p (adj.)':<8} seeds"
    lines = [header]
    counts: dict[str, int] = defaultdict(int)
    alpha = 1 - design.confidence
    for (factor, level), result in results.items():
        counts[result.verdict] += 1
        interval = (
            f"{result.delta:+.4f} [{result.ci_low:+.4f}, {result.ci_high:+.4f}]"
            if math.isfinite(result.ci_low)
            else "-"
        )
        p = result.p_adjusted
        p_text = "-" if not math.isfinite(p) else "<0.001" if p < 0.001 else f"{p:.3f}"
        p_text += "*" if math.isfinite(p) and p < alpha else ""
        needs = f" (needs {result.needed})" if result.needed is not None else ""
        lines.append(
            f"  {f'{factor}={level}'[:24]:<24} {result.verdict:<11} {interval:>30}  "
            f"{p_text:<8} {result.seeds}{needs}"
        )
    lines.append(one_line(sweep, dataset, counts, design))
    return lines


def one_line(sweep: str, dataset: str, counts: Mapping[str, int], design: Design) -> str:
    """e.g. 'verdicts notebook/shakespeare_char (dunnett, 95% familywise over 10 levels):
    3 better, 2 worse, 4 equivalent (±0.02), 1 unresolved'."""
    parts = [f"{counts.get(v, 0)} {v}" for v in ("better", "worse")]
    parts.append(f"{counts.get('equivalent', 0)} equivalent (±{design.min_effect:g})")
    parts.append(f"{counts.get('unresolved', 0)} unresolved")
    return (
        f"verdicts {sweep}/{Path(dataset).name} ({method_name(design)}, "
        f"{design.confidence:.0%} familywise over {design.levels} level"
        f"{'s' if design.levels != 1 else ''}): {', '.join(parts)}"
    )
