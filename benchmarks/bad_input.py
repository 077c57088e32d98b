"""How long each command takes to answer bad input (target: under 2 s on 2 cores).

    python benchmarks/bad_input.py [--repeats 3]

Runs every case as a fresh process (interpreter start and imports included, as a user
types it), checks it exits 2 with one line on stderr, and prints the median wall time and
what it would have cost to import Ray and torch first (the old behaviour).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 2.0

CASES = [
    ("ablation: misspelt option", ["sweeps/ablation.py", "--seed", "3"]),
    ("ablation: invalid level", ["sweeps/ablation.py", "--set", "n_embed=10"]),
    ("ablation: unknown dataset", ["sweeps/ablation.py", "--datasets", "shakespeare"]),
    ("ablation: block too long", ["sweeps/ablation.py", "--set", "block_size=200000"]),
    ("search: --n-trials 0", ["sweeps/search.py", "--n-trials", "0"]),
    ("search: searched field set", ["sweeps/search.py", "--set", "n_embed=10"]),
    ("train: n_embed % n_head", ["-m", "charlm.train", "--n-head", "3", "--out", "{tmp}/r"]),
    (
        "train: all warm-up",
        ["-m", "charlm.train", "--max-iters", "9", "--warmup-iters", "9", "--out", "{tmp}/r"],
    ),
    ("analysis: abbreviated option", ["-m", "analysis", "{tmp}", "--stric"]),
    ("analysis: no store", ["-m", "analysis", "{tmp}/none"]),
]


def _time(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO)
    return time.perf_counter() - start, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (default 3)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        results = os.path.join(tmp, "results")
        imports = statistics.median(
            _time(["-c", "import ray.tune, torch"])[0] for _ in range(args.repeats)
        )
        print(f"{'case':<32} {'median':>8} {'max':>8}  exit  stderr lines")
        for name, argv in CASES:
            argv = [arg.format(tmp=tmp) for arg in argv]
            if argv[0].startswith("sweeps/"):
                argv += ["--results", results]
            times, codes, lines = [], set(), set()
            for _ in range(args.repeats):
                seconds, done = _time(argv)
                times.append(seconds)
                codes.add(done.returncode)
                lines.add(done.stderr.count("\n"))
            worst = max(worst, max(times))
            exits, counts = ",".join(map(str, sorted(codes))), ",".join(map(str, sorted(lines)))
            print(f"{name:<32} {statistics.median(times):>7.2f}s {max(times):>7.2f}s  "
                  f"{exits:>4}  {counts}")  # fmt: skip
            if codes != {2} or lines != {1}:
                print(f"  unexpected: exit {codes}, stderr lines {lines}")
        print(f"importing Ray Tune and torch alone takes {imports:.2f} s (median)")
    verdict = "OK" if worst < TARGET_S else "over"
    print(f"slowest answer {worst:.2f} s, target < {TARGET_S:.0f} s: {verdict}; "
          f"load average {os.getloadavg()[0]:.2f} at the end")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
