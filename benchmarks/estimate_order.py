"""Does load skew the dry run's estimate of one configuration against another?

    python benchmarks/estimate_order.py [--repeats 3] [--load]

Times the notebook baseline, its dropout 0.0 and 0.3 levels (the same FLOPs and shapes)
and n_layer=8 two ways, several times: one configuration after the other (each timed in
its own block of steps, as the estimate did before) and round-robin (``sweeps.estimate``:
every configuration's steps interleaved, each keeping its fastest). Prints, per way and
repeat, the milliseconds per step and two spreads: max/min over the three equal-FLOP
configurations (1.00 when load treats them alike) and n_layer=8 over the baseline. With
``--load`` a child process burns one core for 0.7 s out of every 1.4 s meanwhile (load
that comes and goes, as other users' work does); the load average is printed either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import time

from charlm.config import ModelConfig
from sweeps.estimate import _time_round_robin, time_train_step

BASELINE = ModelConfig(n_layer=4, n_head=4, n_embed=64, block_size=128, dropout=0.1, vocab_size=65)
CONFIGS = {
    "baseline": BASELINE,
    "dropout=0.0": dataclasses.replace(BASELINE, dropout=0.0),
    "dropout=0.3": dataclasses.replace(BASELINE, dropout=0.3),
    "n_layer=8": dataclasses.replace(BASELINE, n_layer=8),
}
EQUAL_FLOPS = ("baseline", "dropout=0.0", "dropout=0.3")
BATCH = 32


def _burn(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        until = time.perf_counter() + 0.7
        while time.perf_counter() < until:
            pass
        time.sleep(0.7)


def one_after_the_other() -> dict[str, float]:
    return {
        name: time_train_step(model, BATCH, budget_s=0.5)[0].seconds_per_step
        for name, model in CONFIGS.items()
    }


def round_robin() -> dict[str, float]:
    timers = _time_round_robin(
        [(model, BATCH) for model in CONFIGS.values()],
        threads=1,
        budget_s=0.5,
        total_budget_s=2.0,
    )
    by_model = {key[0]: timer.timing(1).seconds_per_step for key, timer in timers.items()}
    return {name: by_model[model] for name, model in CONFIGS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", action="store_true", help="burn one core on and off meanwhile")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    stop = multiprocessing.Event()
    burner = multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
    if args.load:
        burner.start()
    spreads: dict[str, list[float]] = {"one after the other": [], "round-robin": []}
    try:
        time_train_step(BASELINE, 4, budget_s=0.0, warmup_steps=1, timed_steps=1)  # warm torch
        for repeat in range(args.repeats):
            for way, timing in (("one after the other", one_after_the_other),
                                ("round-robin", round_robin)):  # fmt: skip
                load = os.getloadavg()[0]
                ms = {name: seconds * 1000 for name, seconds in timing().items()}
                equal = [ms[name] for name in EQUAL_FLOPS]
                spreads[way].append(max(equal) / min(equal))
                print(
                    f"repeat {repeat} {way:19s} load {load:5.2f}: "
                    + ", ".join(f"{name} {value:6.1f}" for name, value in ms.items())
                    + f" ms/step; equal-FLOP max/min {max(equal) / min(equal):.2f}, "
                    f"n_layer=8 / baseline {ms['n_layer=8'] / ms['baseline']:.2f}"
                )
    finally:
        stop.set()
        if args.load:
            burner.join()
    for way, values in spreads.items():
        print(f"{way}: median equal-FLOP max/min {statistics.median(values):.2f} "
              f"over {len(values)} repeats")  # fmt: skip


if __name__ == "__main__":
    main()
