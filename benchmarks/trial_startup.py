"""A trial's start-up on a fresh process, per phase: what a cluster pays for every trial.

    python benchmarks/trial_startup.py [--runs 5]

Each run is a fresh ``python`` process (as a trial on a cluster gets: actor reuse is off
there) that imports Ray Tune, then ``sweeps.trainable``, and trains the tests' tiny config
(testkit/tiny.py) for 20 steps, evaluating at steps 0, 10 and 20. Printed per phase, the
median over the runs:

- Ray Tune: a Ray worker has imported it (Tune's trainable class) before it loads ours, so
  the store's ``import_s`` does not hold it; shown apart, as the worker still pays it;
- import: ``sweeps.trainable`` and what it pulls in (torch, charlm): the store's ``import_s``;
- set-up: data, model, optimizer, evaluator: the store's ``setup_s`` (torch imports its
  compiler stack, torch._dynamo, the first time an optimizer is built);
- first evaluation: step 0's losses and probes (its silhouette imports scikit-learn).

The load average is printed before and after: on a loaded machine every phase is slower.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, tempfile, time
start = time.perf_counter()
import ray.tune
tune_s = time.perf_counter() - start
start = time.perf_counter()
import sweeps.trainable
import_s = time.perf_counter() - start
from charlm.train import train_steps
from testkit.tiny import tiny_model, tiny_train
marks = []
with tempfile.TemporaryDirectory() as work:
    steps = train_steps(tiny_model(), tiny_train(max_iters=20, eval_interval=10),
                        checkpoint_dir=work)
    begin = time.perf_counter()
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result = stop.value
            break
        marks.append(time.perf_counter() - begin)
print(json.dumps({"tune_s": tune_s, "import_s": import_s, "setup_s": result.setup_s,
                  "first_eval_s": marks[0] - result.setup_s}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes (default 5)")
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    load_before = os.getloadavg()[0]
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        runs.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.runs} fresh processes; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; median (min-max) seconds:")  # fmt: skip
    phases = (("tune_s", "Ray Tune (worker's)"), ("import_s", "import"), ("setup_s", "set-up"),
              ("first_eval_s", "first evaluation"))  # fmt: skip
    for key, label in phases:
        values = [run[key] for run in runs]
        print(f"  {label:20s} {statistics.median(values):6.2f} "
              f"({min(values):.2f}-{max(values):.2f})")  # fmt: skip
    both = [run["import_s"] + run["setup_s"] for run in runs]
    median = statistics.median(both)
    print(f"  {'import + set-up':20s} {median:6.2f}  (the store's import_s + setup_s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
