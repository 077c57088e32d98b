"""What the sweep service costs over a plain Python loop, and what packing trials buys.

    python benchmarks/sweep_overhead.py [--trials 4] [--max-iters 280] [--rounds 2]

The same work both ways, so the ratio is the service's own cost (``grid_wall.py`` answers the
other question: the whole grid against the loop a user would write, with its own evaluation).

1. The same trials through a plain loop (``charlm.train.train``, one at a time, all
   cores) and through the service (Ray Tune + store callback, one trial at a time with
   all cores): the wall-time ratio service / loop (target: under 1.10 for 30 s trials),
   and where the difference goes: starting and stopping Ray, the wait before the first
   trial starts, the gaps between trials, and the trials' own training speed (steps only).
2. Aggregate training tokens/s of the service packing one 1-CPU trial per core against one
   all-core trial at a time.

The service's wall time counts everything a user waits for: Ray's start and shutdown
included. The loop and the service run back to back in alternating order for ``--rounds``
rounds and the ratio is of the summed wall times: this machine's speed drifts by ~10% over
minutes even when idle, so one pair can read 0.98 or 1.10. Run it on an idle machine (the
load average is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from charlm.train import train
from sweeps.ablation import param_space
from sweeps.grid import PRESETS, TrialSpec, expand
from sweeps.runner import Resources, RunSettings, connect, run_trials
from sweeps.schema import read_table
from sweeps.store import ResultStore


@dataclass(frozen=True)
class Timing:
    """Wall time of one way of running the trials, and how it splits up."""

    wall_s: float
    tokens: int
    trial_s: list[float]  # each trial's own wall time, start to finish, in order
    train_tokens_per_s: float  # mean over trials of tokens per second of training steps
    start_s: float = 0.0  # Ray start (service only)
    first_wait_s: float = 0.0  # from the Tuner's start to the first trial's start
    gaps_s: tuple[float, ...] = ()  # between one trial's end and the next one's start
    stop_s: float = 0.0  # from the last trial's end to Ray being shut down


def trials(count: int, max_iters: int) -> list[TrialSpec]:
    """``count`` seeds of the notebook baseline, shortened, with a cheap evaluation."""
    return expand(
        PRESETS["notebook"], factors=[], seeds=count, max_iters=max_iters,
        overrides={"eval_iters": 20, "sample_tokens": 100},
    )  # fmt: skip


def _tokens(specs: list[TrialSpec]) -> int:
    return sum(s.train.max_iters * s.train.batch_size * s.model.block_size for s in specs)


def plain_loop(specs: list[TrialSpec], threads: int) -> Timing:
    """The notebook way: train() in a for-loop, one trial after the other."""
    start, trial_s, speeds = time.perf_counter(), [], []
    for spec in specs:
        trial_start = time.perf_counter()
        result = train(spec.model, dataclasses.replace(spec.train, num_threads=threads))
        trial_s.append(time.perf_counter() - trial_start)
        speeds.append(result.train_tokens_per_s)
    wall = time.perf_counter() - start
    return Timing(wall, _tokens(specs), trial_s, statistics.mean(speeds))


def service(specs: list[TrialSpec], cpus_per_trial: float) -> Timing:
    """The same trials through the service on an embedded Ray, timed from Ray's start."""
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "results")
        start = time.time()
        connection = connect(num_cpus=os.cpu_count(), results=store.root)
        fit_start = time.time()
        try:
            run_trials(
                connection, store, param_space(specs), RunSettings(
                    name="overhead", total=len(specs),
                    resources=Resources(cpus_per_trial=cpus_per_trial), progress=False),
            )  # fmt: skip
        finally:
            ray.shutdown()
        end = time.time()
        rows = read_table(store.root, "trials").table.to_pylist()
    rows.sort(key=lambda row: row["started_at"])
    started = [row["started_at"].timestamp() for row in rows]
    finished = [row["finished_at"].timestamp() for row in rows]
    return Timing(
        wall_s=end - start,
        tokens=_tokens(specs),
        trial_s=[f - s for s, f in zip(started, finished, strict=True)],
        train_tokens_per_s=statistics.mean(row["train_tokens_per_s"] for row in rows),
        start_s=fit_start - start,
        first_wait_s=started[0] - fit_start,
        gaps_s=tuple(s - f for f, s in zip(finished, started[1:], strict=False)),
        stop_s=end - max(finished),
    )


def report(
    specs: list[TrialSpec], cores: int, loops: list[Timing], ones: list[Timing], packed: Timing
) -> str:
    """The printed comparison; ``loops[i]`` and ``ones[i]`` ran back to back (round i)."""
    loop_s, one_s = sum(t.wall_s for t in loops), sum(t.wall_s for t in ones)
    n = len(ones)
    fixed = sum(t.start_s + t.first_wait_s + t.stop_s for t in ones) / n
    gaps = [gap for t in ones for gap in t.gaps_s]
    one_trials = sum(sum(t.trial_s) + sum(t.gaps_s) for t in ones)
    loop_trials = sum(sum(t.trial_s) for t in loops)
    one_speed = statistics.mean(t.train_tokens_per_s for t in ones)
    loop_speed = statistics.mean(t.train_tokens_per_s for t in loops)
    one_rate = sum(t.tokens for t in ones) / one_s
    rounds = ", ".join(f"{o.wall_s / lp.wall_s:.3f}" for lp, o in zip(loops, ones, strict=True))
    lines = [
        f"{len(specs)} trials of {specs[0].train.max_iters} steps "
        f"(~{loop_s / n / len(specs):.0f} s each in the loop), {cores} cores, {n} round(s), "
        f"load average {os.getloadavg()[0]:.2f}",
        f"plain loop, {cores} threads, one at a time   : {loop_s / n:7.1f} s  "
        f"{sum(t.tokens for t in loops) / loop_s:9,.0f} tok/s",
        f"service, {cores} CPUs per trial, one at a time: {one_s / n:7.1f} s  "
        f"{one_rate:9,.0f} tok/s",
        f"service, 1 CPU per trial, {cores} at a time    : {packed.wall_s:7.1f} s  "
        f"{packed.tokens / packed.wall_s:9,.0f} tok/s",
        f"overhead ratio service / loop (same resources): {one_s / loop_s:.3f}  (target < 1.10; "
        f"rounds {rounds})",
        f"  where the {(one_s - loop_s) / n:+.1f} s per round go: Ray start "
        f"{statistics.mean(t.start_s for t in ones):.1f} s, first trial starts after "
        f"{statistics.mean(t.first_wait_s for t in ones):.1f} s, "
        f"{statistics.mean(gaps) if gaps else 0.0:.2f} s between trials, Ray stop "
        f"{statistics.mean(t.stop_s for t in ones):.1f} s; trials {one_trials / n:.1f} s in the "
        f"service against {loop_trials / n:.1f} s in the loop",
        f"  per trial, without Ray's one-off start, first-trial wait and stop ({fixed:.1f} s per "
        f"sweep): {one_trials / loop_trials:.3f}",
        f"  training steps alone: {one_speed:,.0f} tok/s in the service, {loop_speed:,.0f} in the "
        f"loop ({one_speed / loop_speed:.3f}x)",
        f"packing gain (1-CPU trials x {cores} vs one {cores}-thread trial): "
        f"{(packed.tokens / packed.wall_s) / one_rate:.2f}x",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--max-iters", type=int, default=280,
                        help="steps per trial (280 is about 30 s at 2 threads here)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2,
                        help="loop/service pairs, run back to back in alternating order: "
                        "a 2-core machine's speed drifts by 10%% over minutes")  # fmt: skip
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    specs = trials(args.trials, args.max_iters)
    loops, ones = [], []
    for round_ in range(args.rounds):
        if round_ % 2 == 0:
            loops.append(plain_loop(specs, cores))
            ones.append(service(specs, cpus_per_trial=cores))
        else:
            ones.append(service(specs, cpus_per_trial=cores))
            loops.append(plain_loop(specs, cores))
    packed = service(specs, cpus_per_trial=1)
    print(report(specs, cores, loops, ones, packed))


if __name__ == "__main__":
    main()
