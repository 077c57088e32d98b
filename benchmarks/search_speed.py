"""How long a small search takes, and how much of its trials' time is not training.

    python benchmarks/search_speed.py [--n-trials 4] [--max-iters 30] [--seeds 1]
        [--repo PATH] [-- extra search.py options]

Runs ``python sweeps/search.py`` (of this checkout, or ``--repo``'s, e.g. main's for a
before/after pair) into a temporary store, then reads the store: per trial, training
seconds are the sum over evaluation windows of tokens trained / the window's training
tokens/s; the rest of the trial's elapsed time (up to its last evaluation) is evaluation,
probes and checkpoints. Prints wall time, trial time, that share, and the load average
(the machine may be shared: say so with any number you quote).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def eval_share(results: Path) -> tuple[float, float, int, int]:
    """(sum of trial seconds, sum of training seconds, trials, early-stopped) in a store."""
    sys.path.insert(0, str(REPO))
    from sweeps.schema import read_table

    trials = read_table(results, "trials").table.to_pandas()
    curves = read_table(results, "curves").table.to_pandas().sort_values(["trial_id", "step"])
    # A multi-seed trial's seeds share one clock: its time is counted once, their
    # training seconds summed.
    config = dict(zip(trials["trial_id"], trials["config_id"].fillna(trials["trial_id"]),
                      strict=True))  # fmt: skip
    totals: dict[str, float] = {}
    training = 0.0
    for trial_id, curve in curves.groupby("trial_id"):
        tokens = curve["tokens_seen"].diff().iloc[1:]
        speed = curve["tokens_per_s"].iloc[1:]
        training += float((tokens / speed).sum())
        key = config.get(trial_id, trial_id)
        totals[key] = max(totals.get(key, 0.0), float(curve["elapsed_s"].iloc[-1]))
    return sum(totals.values()), training, len(trials), int(trials["early_stopped"].sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--max-iters", type=int, default=30)
    parser.add_argument("--seeds", dest="seeds_per_trial", type=int, default=1)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose search to time")
    parser.add_argument("extra", nargs="*", help="more search.py options (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="search-speed-") as temp:
        results = Path(temp) / "results"
        command = [
            sys.executable,
            "sweeps/search.py",
            "--n-trials",
            str(args.n_trials),
            "--max-iters",
            str(args.max_iters),
            "--results",
            str(results),
            *args.extra,
        ]
        if args.seeds_per_trial != 1:
            command += ["--seeds", str(args.seeds_per_trial)]
        env = {**os.environ, "PYTHONPATH": str(args.repo), "RAY_USAGE_STATS_ENABLED": "0"}
        load_before = os.getloadavg()
        start = time.perf_counter()
        done = subprocess.run(command, cwd=args.repo, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        print(done.stdout[-3000:])
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        total, training, n_rows, stopped = eval_share(results)
    print(f"command: {' '.join(command[1:])} (repo {args.repo})")
    print(f"wall time: {wall:.0f} s for {n_rows} store rows ({stopped} stopped early)")
    print(
        f"trial time: {total:.0f} s, of which training {training:.0f} s and evaluation, "
        f"probes and checkpoints {total - training:.0f} s = "
        f"{(total - training) / total:.0%} of trial time"
    )
    print(
        f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
        f"(1 min; {os.cpu_count()} CPUs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
