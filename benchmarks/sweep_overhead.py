"""What the sweep service costs over a plain Python loop, and what packing trials buys.

    python benchmarks/sweep_overhead.py [--trials 4] [--max-iters 600]

1. The same trials through a plain loop (``charlm.train.train``, one at a time, all
   cores) and through the service (Ray Tune + store callback, one trial at a time with
   all cores): the wall-time ratio service / loop (target: under 1.10 for 30 s trials).
2. Aggregate training tokens/s of the service packing one 1-CPU trial per core against one
   all-core trial at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import ray

from charlm.train import train
from sweeps.ablation import param_space
from sweeps.grid import PRESETS, TrialSpec, expand
from sweeps.runner import Resources, connect, run_trials
from sweeps.store import ResultStore


def trials(count: int, max_iters: int) -> list[TrialSpec]:
    """``count`` seeds of the notebook baseline, shortened, with a cheap evaluation."""
    return expand(
        PRESETS["notebook"], factors=[], seeds=count, max_iters=max_iters,
        overrides={"eval_iters": 20, "sample_tokens": 100},
    )  # fmt: skip


def plain_loop(specs: list[TrialSpec], threads: int) -> tuple[float, int]:
    start, tokens = time.perf_counter(), 0
    for spec in specs:
        result = train(spec.model, dataclasses.replace(spec.train, num_threads=threads))
        tokens += result.tokens_seen
    return time.perf_counter() - start, tokens


def service(specs: list[TrialSpec], cpus_per_trial: float) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "results")
        start = time.perf_counter()
        connect(num_cpus=os.cpu_count())
        try:
            run_trials(
                store, param_space(specs), name="overhead", total=len(specs),
                resources=Resources(cpus_per_trial=cpus_per_trial), progress=False,
            )  # fmt: skip
        finally:
            ray.shutdown()
        wall = time.perf_counter() - start
    tokens = sum(spec.train.max_iters * spec.train.batch_size * spec.model.block_size
                 for spec in specs)  # fmt: skip
    return wall, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--max-iters", type=int, default=600,
                        help="steps per trial (600 is about 30 s at 2 threads here)")  # fmt: skip
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    specs = trials(args.trials, args.max_iters)

    loop_s, loop_tokens = plain_loop(specs, cores)
    one_s, one_tokens = service(specs, cpus_per_trial=cores)
    packed_s, packed_tokens = service(specs, cpus_per_trial=1)
    per_trial = loop_s / len(specs)
    print(f"{len(specs)} trials of {args.max_iters} steps (~{per_trial:.0f} s each), {cores} cores")
    print(
        f"plain loop, {cores} threads, one at a time : {loop_s:7.1f} s  "
        f"{loop_tokens / loop_s:9,.0f} tok/s"
    )
    print(
        f"service, {cores} CPUs per trial, one at a time: {one_s:7.1f} s  "
        f"{one_tokens / one_s:9,.0f} tok/s"
    )
    print(
        f"service, 1 CPU per trial, {cores} at a time    : {packed_s:7.1f} s  "
        f"{packed_tokens / packed_s:9,.0f} tok/s"
    )
    print(f"overhead ratio service / loop (same resources): {one_s / loop_s:.3f}  (target < 1.10)")
    print(f"packing gain (1-CPU trials x {cores} vs one {cores}-thread trial): "
          f"{(packed_tokens / packed_s) / (one_tokens / one_s):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
