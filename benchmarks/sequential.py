"""--seeds auto against fixed seed counts: seeds used and wrong verdicts.

Synthetic (default): thousands of sweeps simulated (no training) with the effects and
the spread of the paired differences (seed noise, pairing included) of a real store's
sweep, run with the ``--seeds auto`` design and with fixed 3, 5 and 10 seeds (one look
each, Bonferroni over the levels). Printed per design: trials per sweep, share of levels
resolved, share of sweeps with any wrong verdict, wrong verdicts per level; and the same
with every effect set to 0 (the null: every better/worse verdict is wrong).

    python benchmarks/sequential.py --store results/ [--sweep notebook] [--sweeps 4000]

Real (``--real DIR``): runs the notebook grid twice on this machine, ``--seeds auto`` into
DIR/auto and ``--seeds 5`` into DIR/fixed (separate stores, so neither reuses the other's
trials), prints both sweeps' verdicts, trials and wall time, then the synthetic comparison
with the noise of DIR/fixed (every config at 5 seeds). The issue's comparison is the full
grid at 400 steps (``--max-iters 400``); ``--factors`` and ``--set`` shorten it.

    python benchmarks/sequential.py --real runs/seq --max-iters 400
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.aggregate import _by_experiment, _seed_values  # noqa: E402
from analysis.load import load_store  # noqa: E402
from analysis.verdicts import level_verdicts, summary_lines  # noqa: E402
from sweeps.sequential import METRIC, Design, noise_model, simulate  # noqa: E402


def synthetic(store: Path, sweep: str | None, sweeps: int, max_seeds: int, min_effect: float,
              confidence: float, seed: int) -> None:  # fmt: skip
    trials = load_store(store).trials
    experiments = _by_experiment(_seed_values(trials, METRIC))
    if sweep is not None:
        experiments = {key: value for key, value in experiments.items() if key[0] == sweep}
    if not experiments:
        sys.exit(f"error: no ablation sweep {sweep or ''} with results in {store}")
    for (name, dataset), configs in experiments.items():
        base = next(v for (f, _), v in configs.items() if f == "baseline").to_dict()
        levels = {key: v.to_dict() for key, v in configs.items() if key[0] != "baseline"}
        model = noise_model(levels, base)
        if model is None:
            print(f"{name}/{dataset}: fewer than 2 shared seeds; skipped")
            continue
        deltas, noise = model
        base_sd = float(np.std(list(base.values()), ddof=1))
        print(f"\n{name}/{dataset}: {len(levels)} levels from {store}; baseline seed sd "
              f"{base_sd:.4f}; sd of paired differences {min(noise):.4f}-{max(noise):.4f}; "
              "|effects| "
              f"{min(map(abs, deltas)):.4f}-{max(map(abs, deltas)):.4f} "
              "(taken as the truth)")  # fmt: skip
        for (factor, level), delta, sd in zip(levels, deltas, noise, strict=True):
            print(f"  {factor}={level}: effect {delta:+.4f}, sd of paired differences {sd:.4f}")
        truth = np.array(deltas)
        designs = {"auto": Design(len(levels), min_effect, max_seeds, confidence)}
        for n in (3, 5, 10):
            designs[f"fixed {n}"] = Design(len(levels), min_effect, n, confidence, adaptive=False)
        print(f"{'design':<10} {'trials/sweep':>12} {'resolved':>9} {'any wrong':>10} "
              f"{'wrong/level':>12} | null: {'trials':>6} {'resolved':>9} {'any wrong':>10}"
              f"   ({sweeps} sweeps each, D={min_effect:g}, {confidence:.0%})")  # fmt: skip
        for label, design in designs.items():
            sim, null = (
                simulate(design, effects, np.array(noise), sweeps, np.random.default_rng(seed),
                         baseline_sd=0.0)
                for effects in (truth, np.zeros_like(truth))
            )  # fmt: skip
            print(f"{label:<10} {sim.trials_per_sweep:>12.1f} {sim.resolved:>9.1%} "
                  f"{sim.familywise_wrong:>10.2%} {sim.wrong.mean():>12.3%} | null: "
                  f"{null.trials_per_sweep:>6.1f} {null.resolved:>9.1%} "
                  f"{null.familywise_wrong:>10.2%}")  # fmt: skip


def real(directory: Path, max_iters: int, fixed: int, max_seeds: int, extra: list[str]) -> Path:
    results = {}
    auto = ["--seeds", "auto", "--max-seeds", str(max_seeds)]
    for label, seeds in (("auto", auto), ("fixed", ["--seeds", str(fixed)])):
        store = directory / label
        command = [sys.executable, str(REPO / "sweeps" / "ablation.py"), "--preset",
                   "notebook", "--max-iters", str(max_iters), "--results", str(store), *seeds,
                   *extra]  # fmt: skip
        print("$", " ".join(command[1:]), flush=True)
        start = time.monotonic()
        code = subprocess.call(command, cwd=REPO)
        results[label] = (store, time.monotonic() - start, code)
    for label, (store, wall, code) in results.items():
        trials = load_store(store).trials
        verdicts = level_verdicts(trials, store)
        print(f"\n{label}: exit {code}, {len(trials)} trials run, wall {wall / 60:.1f} min "
              f"(load {os.getloadavg()[0]:.1f})")  # fmt: skip
        print("\n".join(summary_lines(verdicts)))
        print(verdicts[["config", "verdict", "delta", "ci_low", "ci_high", "seeds"]]
              .to_string(index=False))  # fmt: skip
    return results["fixed"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="a result store to take noise and effects from")
    parser.add_argument("--sweep", help="the sweep in --store (default: every ablation sweep)")
    parser.add_argument("--sweeps", type=int, default=4000, help="synthetic sweeps per design")
    parser.add_argument("--max-seeds", type=int, default=10)
    parser.add_argument("--min-effect", type=float, default=0.02)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", type=Path, metavar="DIR", help="run the real comparison here")
    parser.add_argument("--max-iters", type=int, default=400, help="--real: steps per trial")
    parser.add_argument("--fixed-seeds", type=int, default=5, help="--real: the fixed run's seeds")
    parser.add_argument("--factors", help="--real: only these factors (comma-separated)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="--real: passed to ablation.py (e.g. batch_size=16)")  # fmt: skip
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    store = args.store
    if args.real:
        extra = [f"--set={item}" for item in args.set]
        extra += ["--factors", args.factors] if args.factors else []
        extra += ["--min-effect", str(args.min_effect), "--confidence", str(args.confidence)]
        store = real(args.real, args.max_iters, args.fixed_seeds, args.max_seeds, extra)
    if store is None:
        parser.error("give --store DIR (a result store) or --real DIR")
    synthetic(store, args.sweep, args.sweeps, args.max_seeds, args.min_effect,
              args.confidence, args.seed)  # fmt: skip


if __name__ == "__main__":
    main()
