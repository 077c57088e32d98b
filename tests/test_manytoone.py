"""Fixed-seed verdicts (sweeps.manytoone): seed-blocked Dunnett intervals, checked against
scipy's own Dunnett and paired t-test, and by simulation (familywise error at or below
nominal under the null)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sweeps.manytoone import _critical_value, judge, many_to_one
from sweeps.sequential import Design, wrong_verdicts


def _sweep(rng: np.random.Generator, deltas, seeds: int, seed_sd: float, noise_sd: float):
    """One synthetic sweep: a shared per-seed offset plus each config's own noise."""
    offsets = rng.normal(0.0, seed_sd, seeds)
    baseline = dict(enumerate(2.9 + offsets + rng.normal(0.0, noise_sd, seeds)))
    levels = {
        i: dict(enumerate(2.9 + d + offsets + rng.normal(0.0, noise_sd, seeds)))
        for i, d in enumerate(deltas)
    }
    return levels, baseline


def test_one_level_is_the_paired_t_test():
    rng = np.random.default_rng(1)
    levels, baseline = _sweep(rng, [0.05], seeds=4, seed_sd=0.02, noise_sd=0.01)
    result = many_to_one(levels, baseline, 0.95, 0.02)[0]
    level, base = np.array(list(levels[0].values())), np.array(list(baseline.values()))
    reference = stats.ttest_rel(level, base)
    interval = reference.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high))
    assert result.p_adjusted == pytest.approx(reference.pvalue)
    assert result.df == 3


def test_critical_value_is_scipys_dunnett_for_equal_groups():
    """Balanced unblocked groups: scipy.stats.dunnett's interval half-width is c x se."""
    rng = np.random.default_rng(2)
    k, n = 4, 5
    samples = [rng.normal(0, 1, n) for _ in range(k)]
    control = rng.normal(0, 1, n)
    result = stats.dunnett(*samples, control=control, rng=np.random.default_rng(0))
    interval = result.confidence_interval(0.95)
    pooled = np.mean([np.var(s, ddof=1) for s in [*samples, control]])
    se = np.sqrt(pooled * 2 / n)
    scipy_c = (interval.high[0] - interval.low[0]) / 2 / se
    correlation = tuple(tuple(1.0 if i == j else 0.5 for j in range(k)) for i in range(k))
    ours = _critical_value(correlation, float((k + 1) * (n - 1)), 0.05)
    assert ours == pytest.approx(scipy_c, rel=2e-3)


def test_p_below_alpha_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(3)
    agree = 0
    for _ in range(40):
        deltas = rng.normal(0.0, 0.02, 5)
        levels, baseline = _sweep(rng, deltas, seeds=3, seed_sd=0.02, noise_sd=0.01)
        for result in many_to_one(levels, baseline, 0.95, 0.02).values():
            excludes = result.ci_low > 0 or result.ci_high < 0
            assert (result.p_adjusted < 0.05) == excludes
            agree += excludes
    assert 0 < agree < 200  # both sides of the line were checked


def test_a_baseline_only_grid_has_nothing_to_judge():
    assert many_to_one({}, {0: 2.9, 1: 2.8}, 0.95, 0.02) == {}


def test_too_few_observations_leave_the_level_unresolved_without_an_interval():
    levels = {("dropout", "0.0"): {0: 2.8}}
    result = many_to_one(levels, {0: 2.9}, 0.95, 0.02)[("dropout", "0.0")]
    assert result.verdict == "unresolved"
    assert result.delta == pytest.approx(-0.1)
    assert np.isnan(result.ci_low) and np.isnan(result.p_adjusted)


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_null_sweeps_stay_at_or_below_the_nominal_familywise_error(seeds):
    """6 levels without effect, a large shared seed effect: at most 5% of sweeps give any
    better/worse verdict (400 sweeps: allowance of 2.5 binomial standard errors)."""
    rng = np.random.default_rng(seeds)
    sweeps, wrong = 400, 0
    for _ in range(sweeps):
        levels, baseline = _sweep(rng, [0.0] * 6, seeds, seed_sd=0.03, noise_sd=0.005)
        results = many_to_one(levels, baseline, 0.95, 0.02, p_values=False)
        verdicts = np.array([r.verdict for r in results.values()])
        wrong += bool(wrong_verdicts(verdicts, np.zeros(6), 0.02).any())
    assert wrong / sweeps <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / sweeps)


def test_judge_keeps_the_sequential_rule_for_adaptive_designs():
    rng = np.random.default_rng(4)
    levels, baseline = _sweep(rng, [0.1, 0.0], seeds=3, seed_sd=0.02, noise_sd=0.005)
    adaptive = judge(Design(levels=2, max_seeds=3), levels, baseline)
    fixed = judge(Design(levels=2, max_seeds=3, adaptive=False), levels, baseline)
    bonferroni = stats.ttest_rel(list(levels[0].values()), list(baseline.values()))
    assert adaptive[0].ci_low == pytest.approx(bonferroni.confidence_interval(1 - 0.05 / 2).low)
    assert adaptive[0].p_adjusted == pytest.approx(min(1.0, bonferroni.pvalue * 2))
    assert fixed[0].df == 2 * (3 - 1)  # pooled over the levels: 4 df, not 2
