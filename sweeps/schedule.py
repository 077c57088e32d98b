"""Which trial starts when, on how many CPUs: the longest first, the tail on the free CPUs.

What a user waits for is the whole grid. Two rules shorten it:

- **Longest first (LPT).** Trials start in decreasing order of their estimated time (the dry
  run's estimate: a few timed training steps per configuration on this machine), so the
  shortest trials come last, where uneven ends cost least. List scheduling in this order
  ends within 4/3 of the best possible time on identical CPUs (Graham 1969); where the
  grid's own order simulates sooner (LPT is not optimal), the grid's order is kept.
- **The tail gets the free CPUs.** Near the end fewer trials remain than CPUs, and a 1-CPU
  trial would run while other cores idle. Walking back from the last trial, a trial gets
  more CPUs (a multiple of ``--cpus-per-trial``, at most one node's CPUs) whenever that
  brings the simulated end of the grid forward (or, where several tail trials end
  together, the sum of the trials' end times), until one trial gains nothing. The
  simulation starts trials in order, each as soon as its CPUs are free (Ray Tune's
  behaviour), runs a trial on ``c`` CPUs
  ``(c / base) ** alpha`` times faster, with ``alpha`` measured here by timing the last
  trial's configuration on both thread counts, and charges a new Ray actor's start-up to
  the first trial of each new shape. A machine too busy to gain from more threads gets
  ``alpha`` near 0, and then no trial is widened.

Pure Python (no Ray); ``plan_grid`` times steps with torch through ``sweeps.estimate``.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sweeps.grid import TrialSpec

__all__ = ["NEW_ACTOR_S", "Schedule", "makespan", "plan_grid", "plan_schedule"]

# What a trial on a new Ray actor pays before training, in seconds: the actor's start
# (RAY-NOTES), importing torch and charlm, and torch's first AdamW (it imports torch._dynamo);
# the sum as benchmarks/sweep_overhead.py measured it on 2 cores.
NEW_ACTOR_S = 6.0
_WIDEN_CANDIDATES = 4  # trials per slot, from the end, that may be widened


@dataclass(frozen=True)
class Schedule:
    """Start order and CPUs per trial, with the simulated wall time against grid order."""

    order: tuple[str, ...]
    cpus: dict[str, float]
    seconds: dict[str, float]  # estimated time of each trial on the base CPUs
    base_cpus: float
    alpha: float  # speed-up exponent: c CPUs run (c / base) ** alpha times faster
    makespan_s: float
    grid_order_makespan_s: float  # the same trials in grid order, none widened
    longest_first: bool = True  # False: the grid's order simulated sooner, so it is kept
    timed_at: str = ""  # how busy the machine was while the steps were timed

    def describe(self) -> str:
        """One line for the user: the order rule, the widened tail, the estimated gain."""
        widened = [trial for trial in self.order if self.cpus[trial] != self.base_cpus]
        tail = (
            f"the last {len(widened)} on {', '.join(f'{self.cpus[t]:g}' for t in widened)} CPUs"
            if widened
            else f"every trial on {self.base_cpus:g} CPU{'s' if self.base_cpus != 1 else ''}"
        )
        timed = f"; timed at {self.timed_at}" if self.timed_at else ""
        if not self.longest_first:
            return (
                f"schedule: grid order (longest first would end no sooner), {tail}; "
                f"estimated wall time {_minutes(self.makespan_s)}{timed}"
            )
        return (
            f"schedule: longest trials first, {tail}; estimated wall time "
            f"{_minutes(self.makespan_s)} (grid order: {_minutes(self.grid_order_makespan_s)})"
            f"{timed}"
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def makespan(
    order: Sequence[str],
    seconds: Mapping[str, float],
    cpus: Mapping[str, float],
    cores: float,
    *,
    base_cpus: float,
    alpha: float,
    max_concurrent: int | None = None,
    new_actor_s: float = NEW_ACTOR_S,
) -> float:
    """Simulated wall time: trials start in ``order``, each once its CPUs are free and never
    before the one ahead of it; ``seconds`` are on ``base_cpus``; see the module docstring."""
    fixed = _Fixed(seconds, cores, base_cpus, alpha, max_concurrent, new_actor_s)
    return _simulate(order, cpus, fixed)[0]


class _Fixed(NamedTuple):
    """What stays fixed while ``plan_schedule`` tries orders and CPUs (see ``makespan``)."""

    seconds: Mapping[str, float]
    cores: float
    base_cpus: float
    alpha: float
    max_concurrent: int | None
    new_actor_s: float


def _simulate(
    order: Sequence[str], cpus: Mapping[str, float], fixed: _Fixed
) -> tuple[float, float]:
    """(wall time, sum of the trials' end times) of ``makespan``'s simulation."""
    seconds, cores, base_cpus, alpha, max_concurrent, new_actor_s = fixed
    now, free, end_of_all, sum_of_ends = 0.0, float(cores), 0.0, 0.0
    running: list[tuple[float, float]] = []  # (end, cpus)
    shapes_started: set[float] = {base_cpus}
    for trial in order:
        need = min(cpus[trial], cores)
        while running and (
            free < need - 1e-9 or (max_concurrent is not None and len(running) >= max_concurrent)
        ):
            end, released = heapq.heappop(running)
            now, free = max(now, end), free + released
        duration = seconds[trial] / (need / base_cpus) ** alpha
        if need not in shapes_started:
            shapes_started.add(need)
            duration += new_actor_s
        heapq.heappush(running, (now + duration, need))
        free -= need
        end_of_all = max(end_of_all, now + duration)
        sum_of_ends += now + duration
    return end_of_all, sum_of_ends


def plan_schedule(
    trial_ids: Sequence[str],
    seconds: Mapping[str, float],
    cores: float,
    *,
    base_cpus: float = 1.0,
    max_cpus: float | None = None,
    alpha: float = 0.0,
    max_concurrent: int | None = None,
    new_actor_s: float = NEW_ACTOR_S,
) -> Schedule:
    """Longest first, then widen the tail (module docstring). ``trial_ids`` in grid order;
    ``seconds`` per trial on ``base_cpus``; ``max_cpus`` the most one trial may get (one
    node's CPUs; default ``cores``)."""
    index = {trial: position for position, trial in enumerate(trial_ids)}
    order = tuple(sorted(trial_ids, key=lambda trial: (-seconds[trial], index[trial])))
    cpus = {trial: base_cpus for trial in trial_ids}
    fixed = _Fixed(seconds, cores, base_cpus, alpha, max_concurrent, new_actor_s)
    grid_order = _simulate(trial_ids, cpus, fixed)
    best = _simulate(order, cpus, fixed)
    longest_first = best[0] <= grid_order[0]
    if not longest_first:
        order, best = tuple(trial_ids), grid_order
    widest = min(cores, max_cpus if max_cpus is not None else cores)
    choices = [base_cpus * k for k in range(2, math.floor(widest / base_cpus) + 1)]
    slots = max(1, math.floor(cores / base_cpus))
    for trial in reversed(order[-_WIDEN_CANDIDATES * slots :] if choices and alpha > 0 else ()):
        chosen = None
        for choice in choices:
            # Better: the grid ends sooner, or as soon with the trials ending sooner on
            # the whole (several tail trials may end together: each helps only with the others).
            candidate = _simulate(order, {**cpus, trial: choice}, fixed)
            sooner = candidate[0] < best[0] * (1 - 1e-3)
            if sooner or (candidate[0] <= best[0] and candidate[1] < best[1] * (1 - 1e-3)):
                best, chosen = candidate, choice
        if chosen is None:
            break
        cpus[trial] = chosen
    return Schedule(
        order=order, cpus=cpus, seconds=dict(seconds), base_cpus=base_cpus, alpha=alpha,
        makespan_s=best[0], grid_order_makespan_s=grid_order[0], longest_first=longest_first,
    )  # fmt: skip


def plan_grid(
    trials: Sequence[TrialSpec],
    cores: float,
    *,
    base_cpus: float = 1.0,
    max_cpus: float | None = None,
    max_concurrent: int | None = None,
    vocab_sizes: Mapping[str, int] | None = None,
    widen: bool = True,
) -> Schedule:
    """``plan_schedule`` for grid trials, with times from the dry run's estimate (timed here,
    a few seconds) and ``alpha`` measured on the shortest configuration. ``widen`` False
    (e.g. GPU trials) keeps every trial on ``base_cpus``."""
    from sweeps.estimate import estimate, load_text, time_train_step, with_vocab

    slots = max(1, math.floor(cores / base_cpus))
    if max_concurrent is not None:
        slots = min(slots, max_concurrent)
    result = estimate(trials, base_cpus, slots, vocab_sizes, budget_s=0.3, total_budget_s=3.0)
    seconds = {}
    for trial in trials:
        row = result.row_of(trial.trial_id)
        seconds[trial.trial_id] = row.seconds if row.seconds is not None else float(row.flops)
    widest = math.floor(min(cores, max_cpus if max_cpus is not None else cores))
    alpha = 0.0
    if widen and trials and widest >= 2 * base_cpus:
        # Both thread counts back to back on the same configuration: a fair ratio even
        # while the machine's speed drifts.
        shortest = min(trials, key=lambda trial: seconds[trial.trial_id])
        config = with_vocab(shortest.model, shortest.dataset, vocab_sizes or {})
        narrow, wide = (
            time_train_step(config, shortest.train.batch_size, threads=threads, budget_s=0.3)[0]
            for threads in (math.floor(base_cpus), widest)
        )
        speedup = narrow.seconds_per_step / wide.seconds_per_step
        alpha = min(1.0, max(0.0, math.log(speedup) / math.log(widest / base_cpus)))
    schedule = plan_schedule(
        [trial.trial_id for trial in trials], seconds, cores, base_cpus=base_cpus,
        max_cpus=max_cpus, alpha=alpha, max_concurrent=max_concurrent,
    )  # fmt: skip
    if result.load_average is None:
        return schedule
    return dataclasses.replace(schedule, timed_at=load_text(result.load_average))
