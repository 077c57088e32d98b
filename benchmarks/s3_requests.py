"""S3 requests of a plain sweep: what a sweep with ``--storage s3://...`` asks of the bucket.

    python benchmarks/s3_requests.py [--seconds 180] [--seeds 10] [--state-every 60]

Runs ``sweeps/ablation.py --factors dropout --seeds N --max-iters 100`` (the notebook
baseline, 3 levels x N seeds, 2 CPUs of an embedded Ray) with its checkpoints in moto's S3
server on 127.0.0.1 (testkit/sharenothing.py), stops it as Ctrl-C does after ``--seconds``
(or when it ends), and prints the requests the server answered: by operation, per minute,
and the most frequent kinds of request (ids shown as '*'). The rate is of the whole run,
Ray's start included. Print the load average with it: a loaded machine runs fewer trials
per minute, so fewer checkpoints.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweeps.schema import read_table  # noqa: E402
from testkit.sharenothing import MotoS3, rates_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="stop after (default 180)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per level (default 10)")
    parser.add_argument("--state-every", help="passed to the sweep (default: its own)")
    parser.add_argument("--work", type=Path, help="store, logs (default: a temp dir)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="charlm-s3-"))
    work.mkdir(parents=True, exist_ok=True)
    moto = MotoS3(log=work / "moto.log").start()
    command = [sys.executable, str(REPO / "sweeps" / "ablation.py"), "--factors", "dropout",
               "--seeds", str(args.seeds), "--max-iters", "100", "--set", "eval_iters=5",
               "--results", str(work / "results"), "--storage", moto.uri("bench"),
               "--num-cpus", "2"]  # fmt: skip
    if args.state_every is not None:
        command += ["--state-every", args.state_every]
    start = time.monotonic()
    with open(work / "sweep.log", "w") as log:
        sweep = subprocess.Popen(command, cwd=REPO, env={**os.environ, **moto.env},
                                 stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            sweep.wait(timeout=args.seconds)
        except subprocess.TimeoutExpired:
            sweep.send_signal(signal.SIGINT)
            sweep.wait(timeout=120)
    seconds = time.monotonic() - start
    moto.stop()
    requests = moto.requests()
    finished = len(read_table(work / "results", "trials", columns=["trial_id"]).table)
    print(f"load average {os.getloadavg()[0]:.1f}; sweep exit {sweep.returncode}; "
          f"{finished} trials finished; work dir {work}")  # fmt: skip
    print(f"S3 requests: {rates_line(requests, seconds)}")
    for (operation, path), count in requests.most_common(12):
        print(f"  {count:6d} {operation} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
