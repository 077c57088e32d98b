"""Seeds where they matter: the statistics behind ``--seeds auto`` and the report's verdicts.

Method: *repeated confidence intervals* with a Bonferroni (equal alpha-spending) bound over
the planned looks and the levels of a sweep (Jennison & Turnbull, "Group Sequential Methods
with Applications to Clinical Trials", 2000, ch. 9; Bonferroni over the levels). A design
fixes, before any trial runs, the seed counts at which each level is looked at
(``schedule``: 3, 5, 8, ... up to ``max_seeds``). At every look, each level still open gets
the paired t-interval (``scipy.stats.t``) of its difference from the baseline over the
seeds both share, at level ``1 - alpha / (looks * levels)``. With at most ``looks`` looks
at each of ``levels`` levels, the union bound makes every interval the design ever
computes cover its true difference simultaneously with probability >= ``confidence``
(for normal seed noise), whatever the stopping rule. A verdict is wrong only when its
interval misses the truth, so the chance of *any* wrong verdict in a sweep (better/worse
with the wrong sign or with no effect; 'equivalent' when the effect is D or more) is at
most ``1 - confidence``. A fixed-seed sweep is the one-look design.

Pure: numpy, scipy and statsmodels only, no Ray and no pandas, so both the driver
(``sweeps/ablation.py``) and the report (``analysis``) import it, as they import the store
format (``sweeps.schema``). The design a sweep ran with is recorded in the store
(``designs.json``) so the report judges it by the same rule.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from charlm.config import ConfigError
from charlm.fsio import atomic_write_bytes

DEFAULT_MIN_EFFECT = 0.02  # nats of best_val_loss
DEFAULT_MAX_SEEDS = 10
DEFAULT_CONFIDENCE = 0.95
FIRST_SEEDS = 3
GROWTH = 1.5  # seeds at the next look: ceil(1.5 x the last), capped at max_seeds
POWER = 0.8  # power of the seeds-needed calculation
DESIGNS_FILE = "designs.json"
DESIGNS_FORMAT = 1
METRIC = "best_val_loss"
VERDICTS = ("better", "worse", "equivalent", "unresolved")


class DesignError(ConfigError):
    """A design that cannot run or contradicts the recorded one (bad input: exit 2)."""


@dataclass(frozen=True)
class Design:
    """How many seeds a sweep may use and how its levels are judged against the baseline.

    ``levels``: levels compared with one baseline (per sweep and dataset), the size of the
    Bonferroni family. ``min_effect`` (D): differences inside (-D, +D) count as no effect.
    ``adaptive=False`` is a fixed-seed sweep: one look at ``max_seeds``.
    """

    levels: int
    min_effect: float = DEFAULT_MIN_EFFECT
    max_seeds: int = DEFAULT_MAX_SEEDS
    confidence: float = DEFAULT_CONFIDENCE
    first_seeds: int = FIRST_SEEDS
    adaptive: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.min_effect, int | float) and self.min_effect > 0):
            raise DesignError(
                f"--min-effect {self.min_effect}: give the smallest difference in "
                f"{METRIC} you care about, > 0 (e.g. 0.02)."
            )
        if not 0 < self.confidence < 1:
            raise DesignError(
                f"--confidence {self.confidence}: give a level between 0 and 1 (e.g. 0.95)."
            )
        if self.max_seeds < 2:
            raise DesignError(
                f"--max-seeds {self.max_seeds}: a paired interval needs at least 2 seeds; "
                "give --max-seeds 2 or more (e.g. 10)."
            )
        if self.levels < 1:
            raise DesignError(
                "the grid has no level to compare with the baseline: add a factor, or run "
                "it with a number of seeds (--seeds 3)."
            )
        if self.first_seeds < 2:
            raise DesignError(f"first_seeds={self.first_seeds}: give 2 or more.")

    @property
    def schedule(self) -> tuple[int, ...]:
        """Seeds per level at each look, fixed before anything runs."""
        if not self.adaptive:
            return (self.max_seeds,)
        seeds = [min(self.first_seeds, self.max_seeds)]
        while seeds[-1] < self.max_seeds:
            seeds.append(min(self.max_seeds, math.ceil(seeds[-1] * GROWTH)))
        return tuple(seeds)

    @property
    def looks(self) -> int:
        return len(self.schedule)

    @property
    def alpha(self) -> float:
        """Two-sided error rate of each interval: alpha spent evenly over looks x levels."""
        return (1 - self.confidence) / (self.looks * self.levels)

    def describe(self) -> str:
        """e.g. 'seeds 3, 5, 8, 10; ±0.02; 95% familywise (each interval at 99.875%)'."""
        seeds = ", ".join(str(n) for n in self.schedule)
        return (
            f"seeds {seeds}; equivalent within ±{self.min_effect:g}; "
            f"{self.confidence:.0%} familywise over {self.levels} level"
            f"{'s' if self.levels != 1 else ''} and {self.looks} look"
            f"{'s' if self.looks != 1 else ''} (each interval at {1 - self.alpha:.4%})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the statistics


def intervals(
    mean: np.ndarray, sem: np.ndarray, n: np.ndarray | int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided ``1 - alpha`` t-intervals (``scipy.stats.t``, df n-1) around ``mean``;
    a zero standard error gives the point itself, fewer than two values NaN."""
    from scipy import stats  # imported on use: the CLIs answer bad input without it

    mean, sem, n = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (mean, sem, n)))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = stats.t.interval(1 - alpha, n - 1, loc=mean, scale=np.where(sem > 0, sem, 1))
    low = np.where(sem > 0, low, mean)
    high = np.where(sem > 0, high, mean)
    invalid = ~(n >= 2) | ~np.isfinite(sem)
    return np.where(invalid, np.nan, low), np.where(invalid, np.nan, high)


def classify(low: np.ndarray, high: np.ndarray, min_effect: float) -> np.ndarray:
    """Verdict per interval of (level - baseline) in a loss: 'better' (wholly below 0),
    'worse' (wholly above 0), 'equivalent' (inside (-D, +D)), else 'unresolved'."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.select(
            [high < 0, low > 0, (low > -min_effect) & (high < min_effect)],
            ["better", "worse", "equivalent"],
            "unresolved",
        )


def wrong_verdicts(verdicts: np.ndarray, true_delta: np.ndarray, min_effect: float) -> np.ndarray:
    """Which verdicts contradict the true difference (level - baseline)."""
    delta = np.broadcast_to(np.asarray(true_delta, dtype=float), np.shape(verdicts))
    return (
        ((verdicts == "better") & (delta >= 0))
        | ((verdicts == "worse") & (delta <= 0))
        | ((verdicts == "equivalent") & (np.abs(delta) >= min_effect))
    )


def seeds_needed(delta: float, sd: float, design: Design, n: int) -> int | None:
    """Seeds (pairs) the observed difference and spread say a level needs to be resolved
    with power POWER at the design's interval level (``statsmodels`` TTestPower): the fewer
    of showing ``delta`` differs from 0 and showing it lies inside (-D, +D); at least n + 1.
    None when no count up to a million would do (the difference sits at ±D)."""
    from statsmodels.stats.power import TTestPower

    if not (math.isfinite(delta) and math.isfinite(sd)) or sd <= 0:
        return None
    power = TTestPower()
    options: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for effect, alpha, alternative in (
            (abs(delta) / sd, design.alpha, "two-sided"),
            ((design.min_effect - abs(delta)) / sd, design.alpha / 2, "larger"),
        ):
            if effect <= 1e-9:
                continue
            nobs = _smallest_nobs(partial(power.power, effect_size=effect, alpha=alpha,
                                          alternative=alternative), n + 1)  # fmt: skip
            if nobs is not None:
                options.append(nobs)
    if not options:
        return None
    return max(n + 1, math.ceil(min(options)))


def _smallest_nobs(power_at: Callable[..., float], start: int) -> int | None:
    """The smallest whole count >= ``start`` whose power reaches POWER (power grows with the
    count), by doubling then bisection; None above a million. statsmodels' own solve_power
    fails to converge, with a warning, on the large effects few seeds leave unresolved."""
    if power_at(nobs=start) >= POWER:
        return start
    low, high = start, 2 * start
    while power_at(nobs=high) < POWER:
        if high > 1_000_000:
            return None
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        if power_at(nobs=middle) >= POWER:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class LevelResult:
    """A level against its baseline at one look (or in the report)."""

    verdict: str
    delta: float
    ci_low: float
    ci_high: float
    n_pairs: int
    seeds: int  # the level's seeds (ok trials) that entered
    needed: int | None = None  # for 'unresolved': seeds the power calculation asks for
    p_adjusted: float = math.nan  # the method's familywise-adjusted p (< alpha: excludes 0)
    df: float = math.nan  # degrees of freedom of the interval


def evaluate(
    design: Design,
    level: Mapping[int, float],
    baseline: Mapping[int, float],
    upto: int | None = None,
) -> LevelResult:
    """One level (seed -> metric) against the baseline (seed -> metric) over the seeds both
    have (below ``upto`` when given), judged at the design's interval level."""
    from scipy import stats

    seeds = sorted(s for s in level if s in baseline and (upto is None or s < upto))
    differences = np.array([level[s] - baseline[s] for s in seeds], dtype=float)
    differences = differences[np.isfinite(differences)]
    n = len(differences)
    delta = float(differences.mean()) if n else math.nan
    sem = float(stats.sem(differences)) if n >= 2 else math.nan
    low, high = intervals(np.array(delta), np.array(sem), np.array(n), design.alpha)
    verdict = str(classify(low, high, design.min_effect))
    needed, p = None, math.nan
    if n >= 2 and sem > 0:
        # Bonferroni over looks x levels: below 1 - confidence iff the interval excludes 0
        p = min(1.0, float(stats.ttest_1samp(differences, 0.0).pvalue) * design.looks
                * design.levels)  # fmt: skip
    if verdict == "unresolved" and n >= 2:
        needed = seeds_needed(delta, float(np.std(differences, ddof=1)), design, n)
    used = sum(1 for s in level if upto is None or s < upto)
    return LevelResult(verdict, delta, float(low), float(high), n, used, needed, p, n - 1.0)


# ---------------------------------------------------------------- the design's progress


@dataclass
class Progress:
    """Where a design stands, replayed from what the store holds.

    ``targets``: seeds each open level must have before the next look (``look``, 0-based);
    ``baseline_target``: seeds the baseline needs for the pairing; ``results``: the
    verdicts of the levels decided so far (and, once ``finished``, of all levels).
    """

    look: int
    targets: dict[Any, int]
    baseline_target: int
    results: dict[Any, LevelResult] = field(default_factory=dict)
    finished: bool = False


def advance(
    design: Design,
    levels: Mapping[Any, Mapping[int, float]],
    baseline: Mapping[int, float],
    done: Callable[[Any, int], bool],
) -> Progress:
    """Replay the design over the store: look after look while every trial a look needs is
    done (``done(level, seed)``; level None is the baseline), judging the open levels on
    the seeds below the look's count. Stops at the first look still missing trials (its
    ``targets`` say which) or when every level is decided or at ``max_seeds``. The same
    store always gives the same progress: a rerun continues where a killed driver was."""
    schedule = design.schedule
    open_levels = list(levels)
    results: dict[Any, LevelResult] = {}
    for look, n in enumerate(schedule):
        targets = dict.fromkeys(open_levels, n)
        progress = Progress(look, targets, n if targets else 0, results)
        missing = [(key, s) for key in open_levels for s in range(n) if not done(key, s)]
        if missing or any(not done(None, s) for s in range(n)):
            return progress
        for key in open_levels:
            results[key] = evaluate(design, levels[key], baseline, upto=n)
        open_levels = [key for key in open_levels if results[key].verdict == "unresolved"]
        if not open_levels or look == len(schedule) - 1:
            return Progress(look, {}, 0, results, finished=True)
    raise AssertionError("unreachable: the last look always finishes")


# ---------------------------------------------------------------- simulation


@dataclass(frozen=True)
class Simulation:
    """Synthetic sequential sweeps: per (sweep, level) the verdict and seeds used."""

    verdicts: np.ndarray  # (sweeps, levels) of VERDICTS
    seeds: np.ndarray  # (sweeps, levels): seeds the level ran
    baseline_seeds: np.ndarray  # (sweeps,)
    wrong: np.ndarray  # (sweeps, levels) bool

    @property
    def trials_per_sweep(self) -> float:
        return float((self.seeds.sum(axis=1) + self.baseline_seeds).mean())

    @property
    def familywise_wrong(self) -> float:
        """Share of sweeps with at least one wrong verdict."""
        return float(self.wrong.any(axis=1).mean())

    @property
    def resolved(self) -> float:
        return float((self.verdicts != "unresolved").mean())


def simulate(
    design: Design,
    true_delta: np.ndarray,
    noise_sd: float | np.ndarray,
    sweeps: int,
    rng: np.random.Generator,
    *,
    baseline_sd: float | None = None,
    alpha: float | None = None,
) -> Simulation:
    """Run ``sweeps`` synthetic sweeps of ``design`` (no training): every config's metric
    at seed s is its true mean plus normal seed noise (``noise_sd`` per level, the
    baseline's ``baseline_sd``, default the mean of ``noise_sd``); the baseline is shared
    by all levels of a sweep, as in a real one. ``alpha`` replaces the design's interval
    level (e.g. a naive 0.05 at every look). Vectorised over sweeps and levels."""
    from scipy import stats

    true_delta = np.asarray(true_delta, dtype=float)
    levels = true_delta.shape[0]
    noise = np.broadcast_to(np.asarray(noise_sd, dtype=float), (levels,))
    base_sd = float(noise.mean()) if baseline_sd is None else baseline_sd
    seeds = design.max_seeds
    baseline = rng.normal(0.0, base_sd, size=(sweeps, 1, seeds))
    values = true_delta[None, :, None] + noise[None, :, None] * rng.standard_normal(
        (sweeps, levels, seeds)
    )
    differences = values - baseline  # (sweeps, levels, seeds)
    level_alpha = design.alpha if alpha is None else alpha
    verdicts = np.full((sweeps, levels), "unresolved", dtype=object)
    used = np.full((sweeps, levels), seeds)
    open_ = np.ones((sweeps, levels), dtype=bool)
    for n in design.schedule:
        part = differences[:, :, :n]
        low, high = intervals(part.mean(axis=-1), stats.sem(part, axis=-1), n, level_alpha)
        decided = open_ & (classify(low, high, design.min_effect) != "unresolved")
        verdicts[decided] = classify(low, high, design.min_effect)[decided]
        used[decided] = n
        open_ &= ~decided
    verdicts = verdicts.astype(str)
    return Simulation(
        verdicts=verdicts,
        seeds=used,
        baseline_seeds=used.max(axis=1),
        wrong=wrong_verdicts(verdicts, true_delta[None, :], design.min_effect),
    )


def noise_model(
    levels: Mapping[Any, Mapping[int, float]], baseline: Mapping[int, float]
) -> tuple[list[float], list[float]] | None:
    """Effects and noise to simulate a sweep like an observed one: per level the mean and
    the sd of its paired differences from the baseline (pass them to ``simulate`` with
    ``baseline_sd=0``: the pairing's correlation is in the observed spread, and each
    level's verdict depends on its own differences only). None unless the baseline and
    every level share at least two seeds."""
    deltas, spreads = [], []
    for level in levels.values():
        shared = sorted(set(level) & set(baseline))
        if len(shared) < 2:
            return None
        differences = np.array([level[s] - baseline[s] for s in shared])
        deltas.append(float(differences.mean()))
        spreads.append(float(differences.std(ddof=1)))
    return (deltas, spreads) if deltas else None


# ---------------------------------------------------------------- designs.json


def load_designs(root: str | Path) -> dict[str, Design]:
    """The designs recorded in a store, by sweep name ({} when none)."""
    path = Path(root) / DESIGNS_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != DESIGNS_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, this version reads {DESIGNS_FORMAT}")
        return {name: Design(**fields) for name, fields in raw["sweeps"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DesignError(
            f"{path} is unreadable ({exc}): restore it, or move it away to judge every "
            "sweep as a fixed-seed one."
        ) from None


def record_design(root: str | Path, sweep: str, design: Design) -> None:
    """Record ``design`` for ``sweep`` in the store (atomically). An adaptive design, once
    recorded, is the sweep's for good: a different one is refused (its guarantee holds
    only for the looks it planned), and so is a fixed-seed run of that sweep."""
    designs = load_designs(root)
    old = designs.get(sweep)
    if old is not None and old.adaptive and old != design:
        raise DesignError(
            f"sweep {sweep} runs with --seeds auto --min-effect {old.min_effect:g} "
            f"--max-seeds {old.max_seeds} --confidence {old.confidence:g} over {old.levels} "
            "level(s): continue it with exactly those options (and the same --factors), or "
            "start a new sweep with --name."
        )
    designs[sweep] = design
    content = {"format": DESIGNS_FORMAT, "sweeps": {k: v.to_dict() for k, v in designs.items()}}
    Path(root).mkdir(parents=True, exist_ok=True)
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(Path(root) / DESIGNS_FILE, text.encode())
