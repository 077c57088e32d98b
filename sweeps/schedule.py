"""Which trial starts when: the longest first.

What a user waits for is the whole grid. Trials start in decreasing order of their
estimated time (the dry run's estimate: a few timed training steps per configuration on
this machine), so the shortest trials come last, where uneven ends cost least. List
scheduling in this order ends within 4/3 of the best possible time on identical CPUs
(Graham 1969). Every trial gets ``--cpus-per-trial``: the grid benchmark
(docs/benchmarks.md) showed that giving the tail the free CPUs widened nothing and that the
grid's own order ended later, so neither is tried.

The plan's wall times come from a simulation that starts trials in order, each as soon as
one of the run's slots (trials at once) is free, as Ray Tune does.

Pure Python (no Ray); ``plan_grid`` times steps with torch through ``sweeps.estimate``.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sweeps.grid import TrialSpec


@dataclass(frozen=True)
class Schedule:
    """Start order, with the simulated wall time against grid order."""

    order: tuple[str, ...]
    seconds: dict[str, float]  # estimated time of each trial
    base_cpus: float
    makespan_s: float
    grid_order_makespan_s: float
    timed_at: str = ""  # how busy the machine was while the steps were timed

    def describe(self) -> str:
        """One line for the user: the order rule and the estimated wall time."""
        cpus = f"{self.base_cpus:g} CPU{'s' if self.base_cpus != 1 else ''}"
        timed = f"; timed at {self.timed_at}" if self.timed_at else ""
        return (
            f"schedule: longest trials first, every trial on {cpus}; estimated wall time "
            f"{_minutes(self.makespan_s)} (grid order: {_minutes(self.grid_order_makespan_s)})"
            f"{timed}"
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def makespan(order: Sequence[str], seconds: Mapping[str, float], slots: int) -> float:
    """Simulated wall time: trials start in ``order``, each once one of ``slots`` is free."""
    ends = [0.0] * max(1, slots)
    for trial in order:
        heapq.heappush(ends, heapq.heappop(ends) + seconds[trial])
    return max(ends)


def plan_schedule(
    trial_ids: Sequence[str], seconds: Mapping[str, float], slots: int, base_cpus: float = 1.0
) -> Schedule:
    """Longest first (ties in grid order); ``trial_ids`` in grid order, ``seconds`` per trial."""
    index = {trial: position for position, trial in enumerate(trial_ids)}
    order = tuple(sorted(trial_ids, key=lambda trial: (-seconds[trial], index[trial])))
    return Schedule(
        order=order, seconds=dict(seconds), base_cpus=base_cpus,
        makespan_s=makespan(order, seconds, slots),
        grid_order_makespan_s=makespan(trial_ids, seconds, slots),
    )  # fmt: skip


def plan_grid(
    trials: Sequence[TrialSpec],
    slots: int,
    *,
    base_cpus: float = 1.0,
    vocab_sizes: Mapping[str, int] | None = None,
) -> Schedule:
    """``plan_schedule`` for grid trials, ``slots`` at once, with times from the dry run's
    estimate (timed here, a few seconds)."""
    from sweeps.estimate import estimate, load_text

    result = estimate(trials, base_cpus, slots, vocab_sizes, budget_s=0.3, total_budget_s=3.0)
    rows = result.by_trial()
    seconds = {t: row.seconds if row.seconds is not None else row.flops for t, row in rows.items()}
    schedule = plan_schedule([trial.trial_id for trial in trials], seconds, slots, base_cpus)
    if result.load_average is None:
        return schedule
    return dataclasses.replace(schedule, timed_at=load_text(result.load_average))
