"""--seeds auto's statistics (sweeps.sequential): the design, its verdicts, its replay over a
store, and its error rate proved by simulation (thousands of synthetic sweeps, no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from sweeps.sequential import (
    DESIGNS_FILE,
    Design,
    DesignError,
    advance,
    classify,
    evaluate,
    intervals,
    load_designs,
    noise_model,
    record_design,
    seeds_needed,
    simulate,
    wrong_verdicts,
)

SWEEPS = 4000


def test_schedule_looks_and_alpha_are_fixed_before_anything_runs():
    design = Design(levels=10)
    assert design.schedule == (3, 5, 8, 10)
    assert design.looks == 4
    assert design.alpha == pytest.approx(0.05 / 40)
    assert Design(levels=2, max_seeds=20).schedule == (3, 5, 8, 12, 18, 20)
    assert Design(levels=2, max_seeds=2).schedule == (2,)
    fixed = Design(levels=4, max_seeds=5, adaptive=False)
    assert fixed.schedule == (5,) and fixed.alpha == pytest.approx(0.05 / 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_effect": 0.0}, "--min-effect 0.0: give the smallest difference"),
        ({"min_effect": -1.0}, "--min-effect -1.0"),
        ({"confidence": 1.0}, "--confidence 1.0: give a level between 0 and 1"),
        ({"max_seeds": 1}, "--max-seeds 1: a paired interval needs at least 2 seeds"),
        ({"levels": 0}, "the grid has no level to compare with the baseline"),
    ],
)
def test_bad_designs_are_one_line_errors(kwargs, message):
    with pytest.raises(DesignError, match=message.replace("(", r"\(")) as error:
        Design(**{"levels": 3, **kwargs})
    assert "\n" not in str(error.value)


def test_intervals_are_scipys_t_intervals():
    rng = np.random.default_rng(1)
    sample = rng.normal(0.1, 0.05, size=7)
    low, high = intervals(sample.mean(), stats.sem(sample), 7, 0.01)
    reference = stats.ttest_1samp(sample, 0.0).confidence_interval(0.99)
    assert (float(low), float(high)) == pytest.approx((reference.low, reference.high))
    # identical values: the point itself; one value: no interval
    assert intervals(0.3, 0.0, 4, 0.05) == (pytest.approx(0.3), pytest.approx(0.3))
    assert all(math.isnan(float(v)) for v in intervals(0.3, np.nan, 1, 0.05))


def test_classify_and_wrong_verdicts():
    low = np.array([-0.3, 0.01, -0.01, -0.05, np.nan])
    high = np.array([-0.1, 0.2, 0.015, 0.01, np.nan])
    verdicts = classify(low, high, 0.02)
    assert verdicts.tolist() == ["better", "worse", "equivalent", "unresolved", "unresolved"]
    truth = np.array([0.0, 0.1, 0.03, 0.0, 0.0])
    assert wrong_verdicts(verdicts, truth, 0.02).tolist() == [True, False, True, False, False]


def test_evaluate_pairs_by_seed_and_stops_at_upto():
    design = Design(levels=1, min_effect=0.02, max_seeds=10)
    baseline = {s: 1.0 + 0.01 * s for s in range(10)}
    level = {s: baseline[s] - 0.2 + 0.001 * (s % 2) for s in range(8)}  # clearly better
    result = evaluate(design, level, baseline)
    assert result.verdict == "better" and result.n_pairs == 8 and result.seeds == 8
    differences = np.array([level[s] - baseline[s] for s in range(8)])
    reference = stats.ttest_1samp(differences, 0.0).confidence_interval(1 - design.alpha)
    assert (result.ci_low, result.ci_high) == pytest.approx((reference.low, reference.high))
    assert evaluate(design, level, baseline, upto=3).n_pairs == 3
    noisy = {s: baseline[s] + (0.05 if s % 2 else -0.04) for s in range(3)}
    unresolved = evaluate(design, noisy, baseline)
    assert unresolved.verdict == "unresolved" and unresolved.needed is not None
    assert unresolved.needed > 3


def test_seeds_needed_is_statsmodels_power_at_the_designs_level():
    design = Design(levels=5, min_effect=0.02)
    delta, sd = 0.05, 0.04  # far outside ±D: showing it differs from 0 is cheaper
    expected = TTestPower().solve_power(
        effect_size=delta / sd, alpha=design.alpha, power=0.8, alternative="two-sided"
    )
    assert seeds_needed(delta, sd, design, n=3) == math.ceil(expected)
    # a difference at D is cheaper to show non-zero than equivalent
    at_d = TTestPower().solve_power(
        effect_size=0.02 / 0.5, alpha=design.alpha, power=0.8, alternative="two-sided"
    )
    assert seeds_needed(0.02, 0.5, design, n=3) == math.ceil(at_d)
    # a tiny difference under large noise: over a million seeds either way
    assert seeds_needed(1e-4, 10.0, design, n=3) is None
    assert seeds_needed(0.0, 0.0, design, n=3) is None
    # at least one more seed than the level has
    assert seeds_needed(1.0, 0.01, design, n=9) == 10


# ---------------------------------------------------------------- simulation proofs


def test_null_sweeps_stay_at_or_below_the_nominal_wrong_rate():
    """10 levels without effect, seed noise D/2: at most 5% of sweeps (familywise) give
    any wrong verdict; most levels are found equivalent."""
    design = Design(levels=10, min_effect=0.02, max_seeds=10)
    sim = simulate(design, np.zeros(10), 0.01, SWEEPS, np.random.default_rng(0))
    # Monte-Carlo margin: 4,000 sweeps give a standard error of ~0.35% around 5%.
    assert sim.familywise_wrong <= 0.05
    assert (sim.verdicts == "equivalent").mean() > 0.2
    assert sim.trials_per_sweep < 11 * 10  # fewer trials than 10 fixed seeds


def test_a_naive_interval_at_every_look_inflates_the_error_rate():
    """The same design with a plain 95% interval at every look and no correction across
    levels: the wrong-verdict rate is far above 5%. One level alone, looked at four
    times at 95% each, already exceeds 5% (the looks alone inflate it)."""
    rng = np.random.default_rng(1)
    design = Design(levels=10, min_effect=0.02, max_seeds=10)
    naive = simulate(design, np.zeros(10), 0.01, SWEEPS, rng, alpha=0.05)
    assert naive.familywise_wrong > 0.3
    one = Design(levels=1, min_effect=0.02, max_seeds=10)
    repeated = simulate(one, np.zeros(1), 0.01, 5 * SWEEPS, rng, alpha=0.05)
    single = simulate(Design(levels=1, max_seeds=10, adaptive=False), np.zeros(1), 0.01,
                      5 * SWEEPS, rng, alpha=0.05)  # fmt: skip
    assert single.familywise_wrong == pytest.approx(0.05, abs=0.01)
    assert repeated.familywise_wrong > 0.075
    corrected = simulate(one, np.zeros(1), 0.01, 5 * SWEEPS, rng)
    assert corrected.familywise_wrong <= 0.05


def test_known_effects_are_found_without_wrong_verdicts():
    """Large effects are resolved with their sign by the second look; effects of
    exactly D are never called equivalent more often than the nominal rate."""
    truth = np.array([0.1, -0.1, 0.05, -0.05, 0.02, -0.02, 0.0, 0.0])
    design = Design(levels=len(truth), min_effect=0.02, max_seeds=10)
    sim = simulate(design, truth, 0.01, SWEEPS, np.random.default_rng(2))
    assert sim.familywise_wrong <= 0.05
    signs = np.array(["worse", "better", "worse", "better"])
    assert (sim.verdicts[:, :4] == signs).mean() > 0.99
    assert (sim.seeds[:, :2] <= 5).mean() > 0.99 and sim.seeds[:, :2].mean() < 5
    assert (sim.verdicts[:, 4:6] == "equivalent").mean() <= 0.05


# ---------------------------------------------------------------- replay over a store


def _done_upto(counts: dict, base: int):
    return lambda key, seed: seed < (base if key is None else counts[key])


def test_advance_replays_rounds_from_what_the_store_holds():
    design = Design(levels=2, min_effect=0.02, max_seeds=5)  # looks at 3 and 5 seeds
    baseline = {s: 1.0 + 0.01 * ((-1) ** s) for s in range(5)}
    clear = {s: baseline[s] + 0.3 + 0.001 * s for s in range(5)}  # worse at once
    noisy = {s: baseline[s] + (0.06 if s % 2 else -0.05) for s in range(5)}
    levels = {"clear": clear, "noisy": noisy}

    empty = advance(design, levels, baseline, lambda key, seed: False)
    assert (empty.look, empty.targets, empty.baseline_target) == (0, {"clear": 3, "noisy": 3}, 3)
    first = advance(design, levels, baseline, _done_upto({"clear": 3, "noisy": 3}, 3))
    assert first.look == 1 and first.targets == {"noisy": 5} and first.baseline_target == 5
    assert first.results["clear"].verdict == "worse" and not first.finished
    # a half-done second round is still the second look
    half = advance(design, levels, baseline, _done_upto({"clear": 3, "noisy": 4}, 5))
    assert half.look == 1 and half.targets == {"noisy": 5}
    final = advance(design, levels, baseline, _done_upto({"clear": 3, "noisy": 5}, 5))
    assert final.finished and final.results["noisy"].verdict == "unresolved"
    assert final.results["noisy"].n_pairs == 5 and final.results["clear"].n_pairs == 3
    # the values a later look adds never change an earlier look's verdict
    assert final.results["clear"] == first.results["clear"]


def test_designs_are_recorded_and_an_adaptive_one_cannot_change(tmp_path: Path):
    auto = Design(levels=4, min_effect=0.02, max_seeds=10)
    record_design(tmp_path, "grid", auto)
    record_design(tmp_path, "grid", auto)  # the same command again
    record_design(tmp_path, "other", Design(levels=2, max_seeds=3, adaptive=False))
    assert load_designs(tmp_path) == {
        "grid": auto,
        "other": Design(levels=2, max_seeds=3, adaptive=False),
    }
    with pytest.raises(DesignError, match=r"runs with --seeds auto --min-effect 0\.02 --max-seeds"):
        record_design(tmp_path, "grid", Design(levels=4, min_effect=0.05, max_seeds=10))
    with pytest.raises(DesignError, match="start a new sweep with --name"):
        record_design(tmp_path, "grid", Design(levels=4, max_seeds=5, adaptive=False))
    assert load_designs(tmp_path)["grid"] == auto  # nothing was changed
    (tmp_path / DESIGNS_FILE).write_text(json.dumps({"format": 99, "sweeps": {}}))
    with pytest.raises(DesignError, match=r"unreadable .*format 99"):
        load_designs(tmp_path)


def test_noise_model_takes_effects_and_paired_spread_from_observed_values():
    baseline = {0: 1.0, 1: 1.1, 2: 0.9}
    shifted = {s: v + 0.2 for s, v in baseline.items()}  # same seed noise, +0.2
    noisy = {0: 1.3, 1: 1.0, 2: 1.2}
    deltas, spreads = noise_model({"shifted": shifted, "noisy": noisy}, baseline)
    differences = np.array([0.3, -0.1, 0.3])  # noisy - baseline, seed by seed
    assert deltas == pytest.approx([0.2, differences.mean()])
    assert spreads == pytest.approx([0.0, differences.std(ddof=1)], abs=1e-12)
    assert noise_model({"one": {0: 1.0}}, baseline) is None
    assert noise_model({}, {0: 1.0}) is None
