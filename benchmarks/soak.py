"""Soak: a 200-trial grid on a share-nothing Ray cluster with S3 checkpoints, a worker
node SIGKILLed every 30 s (and replaced at once). Nothing may be lost.

    python benchmarks/soak.py                        # 200 trials, a kill every 30 s
    python benchmarks/soak.py --trials 10 --kill-every 30 --keep
    python benchmarks/soak.py --workers 1 --worker-cpus 2   # every kill takes the whole cluster

What runs and what counts as lost: testkit/soak.py (the slow test runs the same soak).
Prints trials finished, retries, nodes killed, S3 objects written, S3 requests by
operation (and per minute), the trials' median start-up (import + set-up, from the store)
and rows lost. Exit status 0 when nothing was lost and the
store was readable at every moment, else 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.soak import SoakSettings, run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials (default 200)")
    parser.add_argument("--kill-every", type=float, default=30.0,
                        help="seconds between worker-node kills (default 30)")  # fmt: skip
    parser.add_argument("--max-iters", type=int, default=60, help="steps per trial (default 60)")
    parser.add_argument("--eval-interval", type=int, default=20, help="default 20")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    parser.add_argument("--worker-cpus", type=int, default=1, help="CPUs per worker node")
    parser.add_argument("--max-failures", type=int, default=10, help="retries per trial")
    parser.add_argument("--data-dir", help="dataset cache (default: $CHARLM_DATA_DIR)")
    parser.add_argument("--work", type=Path, help="directory for the store and logs "
                        "(default: a temp dir, removed unless --keep)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--minutes", type=float, default=240.0,
                        help="stop the sweep after this long and count (default 240)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.workers < 1 or args.worker_cpus < 1 or args.minutes <= 0:
        parser.error("--workers and --worker-cpus: give at least 1; --minutes: more than 0")
    # Ctrl-C or SIGTERM stops the sweep and counts what the store holds (twice: at once).
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    if args.data_dir:
        os.environ["CHARLM_DATA_DIR"] = str(Path(args.data_dir).resolve())
    work = args.work or Path(tempfile.mkdtemp(prefix="charlm-soak-"))
    print(f"soak: {args.trials} tiny trials on {args.workers} worker nodes, one killed every "
          f"{args.kill_every:g}s; "
          f"work dir {work}", flush=True)  # fmt: skip
    try:
        settings = SoakSettings(
            trials=args.trials, kill_every_s=args.kill_every, max_iters=args.max_iters,
            eval_interval=args.eval_interval, workers=args.workers, worker_cpus=args.worker_cpus,
            max_failures=args.max_failures, timeout_s=60 * args.minutes,
        )  # fmt: skip
        result = run_soak(work, settings, stop=stop, log=lambda line: print(line, flush=True))
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(result.lines()))
    return 0 if result.rows_lost == 0 and not result.unreadable else 1


if __name__ == "__main__":
    sys.exit(main())
