"""The soak's run (``benchmarks/soak.py`` is its command line, the slow test its other
caller): a 200-trial grid on a share-nothing Ray cluster with S3 checkpoints, a worker
node SIGKILLed every 30 s (and replaced at once). Nothing may be lost.

    python benchmarks/soak.py                        # 200 trials, a kill every 30 s
    python benchmarks/soak.py --trials 10 --kill-every 30 --keep
    python benchmarks/soak.py --workers 1 --worker-cpus 2   # every kill takes the whole cluster

The cluster is testkit/sharenothing.py's: a ``ray start --head`` on this machine (no CPUs
for trials) and ``--workers`` worker nodes (2 of 1 CPU by default), each in its own mount
and PID namespace, which cannot read this machine's files. Checkpoints go to moto's S3
server on 127.0.0.1 (credentials in the nodes' environment only). Needs root (unshare,
mount). The sweep driver is ``python sweeps/ablation.py --address HEAD --storage s3://...``
in its own process; every ``--kill-every`` seconds this process SIGKILLs the oldest worker
node's namespace (every process of the node at once) and starts a fresh node, so with two
nodes each lives about twice that; a thread reads the whole store in a loop meanwhile.

Prints trials finished, retries, nodes killed, S3 objects written, S3 requests by
operation and per minute, the trials' median start-up (the store's ``import_s`` +
``setup_s``) and rows lost. A row is lost when a (config, seed) of the grid
has no ``trials`` row, has more than one, or its curve misses or repeats an eval step; a
failed trial (retries exhausted) is counted apart, not as lost: running the same command
again runs it. Exit status 0 when nothing was lost
and the store was readable at every moment, else 1.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ABLATION = REPO / "sweeps" / "ablation.py"
S3_PREFIX = "soak"

# Five configs (the baseline and one level of four factors); seeds make up the count.
FACTORS = {"n_head": [1], "dropout": [0.1], "learning_rate": [3e-3], "weight_decay": [0.0]}
BUCKET = "charlm-soak"


@dataclass
class SoakResult:
    """What the soak saw; ``rows_lost`` must be 0."""

    trials: int
    ok: int = 0
    failed: int = 0
    retries: int = 0
    trials_retried: int = 0
    kills: int = 0
    node_start_failures: int = 0
    s3_objects_written: int = 0
    s3_objects_left: int = 0
    s3_requests: str = ""  # by operation and per minute (testkit.sharenothing.rates_line)
    startup: str = ""  # median import_s and setup_s of the trials (each on a fresh process)
    rows_lost: int = 0
    not_run: int = 0  # trials without a row when the soak was stopped early
    store_reads: int = 0
    unreadable: list[str] = field(default_factory=list)
    exit_code: int | None = None
    wall_time_s: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"trials finished: {self.ok} ok, {self.failed} failed (of {self.trials})",
            f"retries: {self.retries} ({self.trials_retried} trials retried)",
            f"worker nodes killed: {self.kills} (failed node starts: {self.node_start_failures})",
            f"S3 objects written: {self.s3_objects_written} ({self.s3_objects_left} left "
            "under the prefix: the last checkpoint of each trial and Tune's state)",
            f"S3 requests: {self.s3_requests}",
            f"trial start-up on a fresh worker process: {self.startup}",
            f"rows lost: {self.rows_lost}",
            *(
                [f"not run (the soak was stopped before they finished): {self.not_run}"]
                if self.not_run
                else []
            ),
            f"store reads while running: {self.store_reads}, unreadable moments: "
            f"{len(self.unreadable)}",
            f"driver exit status: {self.exit_code}; wall time {self.wall_time_s:.0f}s",
        ]


def write_grid(path: Path, settings: SoakSettings) -> Path:
    configs = 1 + sum(len(levels) for levels in FACTORS.values())
    if settings.trials % configs:
        raise SystemExit(
            f"--trials {settings.trials}: give a multiple of {configs} (configs x seeds)"
        )
    from testkit.tiny import tiny_params  # testkit/tiny.py: the tests' tiny config

    grid = {"name": "soak", "datasets": ["shakespeare_char"], "seeds": settings.trials // configs,
            "baseline": tiny_params(max_iters=settings.max_iters,
                                    eval_interval=settings.eval_interval),
            "factors": FACTORS}  # fmt: skip
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


class _Watcher(threading.Thread):
    """Reads every table in a loop; notes any moment the store was not readable."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.reads, self.unreadable = root, 0, []
        self.done = threading.Event()

    def run(self) -> None:
        from sweeps.schema import MARKER, TABLES, read_table

        while not self.done.is_set():
            if (self.root / MARKER).is_file():
                for table in TABLES:
                    corrupt = read_table(self.root, table, columns=["trial_id"]).corrupt
                    self.unreadable.extend(f"{table}: {path}" for path, _ in corrupt)
                self.reads += 1
            time.sleep(0.2)


def _objects_written(moto_log: Path) -> int:
    """Objects the S3 server stored: single PUTs plus completed multipart uploads."""
    written = 0
    for line in moto_log.read_text(errors="replace").splitlines():
        request = re.search(r'"(PUT|POST) (/\S+) HTTP/[\d.]+" 200', line)
        if request and request.group(2).startswith(f"/{BUCKET}/"):
            method, target = request.groups()
            single = method == "PUT" and "partNumber=" not in target
            completed = method == "POST" and "uploadId=" in target
            written += single or completed
    return written


@dataclass(frozen=True)
class SoakSettings:
    """The soak's size: ``benchmarks/soak.py``'s flags."""

    trials: int = 200
    kill_every_s: float = 30.0
    max_iters: int = 60
    eval_interval: int = 20
    workers: int = 2
    worker_cpus: int = 1
    max_failures: int = 10
    timeout_s: float = 4 * 3600.0


def run_soak(
    work: Path,
    settings: SoakSettings,
    *,
    stop: threading.Event | None = None,
    log: Callable[[str], object] = print,
) -> SoakResult:
    """Run the soak in ``work`` (grid, store, driver logs) and return what it saw. After
    ``settings.timeout_s``, or once ``stop`` is set, the driver is stopped as Ctrl-C stops it
    and what the store holds is counted (trials it lacks are ``not_run``, not lost)."""
    from sweeps.grid import expand, load_grid
    from sweeps.schema import read_table
    from testkit.sharenothing import (
        MotoS3,
        ShareNothingCluster,
        namespaces_unavailable,
        rates_line,
    )

    work.mkdir(parents=True, exist_ok=True)
    unavailable = namespaces_unavailable()
    if unavailable:
        raise SystemExit(f"soak: {unavailable}")
    grid = write_grid(work / "grid.yaml", settings)
    results = work / "results"
    expected = {t.trial_id for t in expand(load_grid(grid))}
    result = SoakResult(trials=len(expected))
    stop = stop or threading.Event()
    start = time.monotonic()
    moto = MotoS3(log=work / "moto.log", bucket=BUCKET).start()
    cluster = ShareNothingCluster(root=work, hidden=[work], node_env=moto.env,
                                  worker_cpus=settings.worker_cpus)  # fmt: skip
    watcher = _Watcher(results)
    driver = None
    try:
        cluster.start(workers=settings.workers)
        log(f"share-nothing cluster up in {time.monotonic() - start:.0f}s at {cluster.address}; "
            f"S3 at {moto.endpoint}")  # fmt: skip
        command = [
            sys.executable, str(ABLATION), "--address", cluster.address, "--grid", str(grid),
            "--results", str(results), "--max-failures", str(settings.max_failures),
            "--storage", moto.uri(S3_PREFIX),
        ]  # fmt: skip
        env = cluster.driver_env(**moto.env)
        with open(work / "driver.out", "w") as out, open(work / "driver.err", "w") as err:
            driver = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=REPO)
        watcher.start()
        next_kill = math.inf  # the clock starts once the sweep runs (the probe is done)
        while driver.poll() is None:
            if next_kill == math.inf and "running on" in (work / "driver.out").read_text():
                next_kill = time.monotonic() + settings.kill_every_s
            if time.monotonic() - start > settings.timeout_s or stop.is_set():
                log(f"[{time.monotonic() - start:5.0f}s] stopping the driver (time limit or "
                    "signal); counting what the store holds")  # fmt: skip
                driver.send_signal(signal.SIGINT)
                driver.wait(60)
                break
            if time.monotonic() >= next_kill and cluster.workers:
                cluster.kill_worker(cluster.workers[0])  # the oldest node
                result.kills += 1
                done = len(read_table(results, "trials", columns=["trial_id"]).table)
                elapsed = time.monotonic() - start
                log(f"[{elapsed:5.0f}s] killed a worker node (kill {result.kills}); "
                    f"{done}/{len(expected)} trials in the store")  # fmt: skip
            if len(cluster.workers) < settings.workers:
                try:
                    cluster.add_worker()
                except RuntimeError:  # a loaded machine: Ray's 30 s registration window
                    result.node_start_failures += 1
                    log("a fresh worker node did not start (3 attempts); trying again")
                    continue
                next_kill = time.monotonic() + settings.kill_every_s
            time.sleep(0.5)
        result.exit_code = driver.returncode
    finally:
        watcher.done.set()
        if watcher.is_alive():
            watcher.join(timeout=30)
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        cluster.shutdown()
        with contextlib.suppress(Exception):
            result.s3_objects_left = len(moto.keys(S3_PREFIX))
        moto.stop()
        result.s3_objects_written = _objects_written(work / "moto.log")
        result.s3_requests = rates_line(moto.requests(), time.monotonic() - start)
    result.wall_time_s = time.monotonic() - start
    result.store_reads, result.unreadable = watcher.reads, watcher.unreadable
    steps = list(range(0, settings.max_iters + 1, settings.eval_interval))
    return tally(
        results,
        expected,
        steps,
        result,
        stopped=stop.is_set() or result.wall_time_s > settings.timeout_s,
    )


def startup_line(rows: list[dict]) -> str:
    """Median import + set-up over the ok trials that paid their process's imports (the store's
    ``import_s`` is 0 on a reused actor; a cluster reuses none)."""
    fresh = [r for r in rows if r["status"] == "ok" and (r["import_s"] or 0) > 0]
    if not fresh:
        return "no ok trial on a fresh process"
    imports = statistics.median(r["import_s"] for r in fresh)
    setup = statistics.median(r["setup_s"] for r in fresh)
    both = statistics.median(r["import_s"] + r["setup_s"] for r in fresh)
    return (
        f"median import {imports:.2f} s + set-up {setup:.2f} s; import + set-up {both:.2f} s "
        f"({len(fresh)} trials)"
    )


def tally(
    results: Path, expected: set[str], steps: list[int], result: SoakResult, *, stopped: bool
) -> SoakResult:
    """Count the store's trials and curves into ``result``: a (config, seed) with no row
    (unless the soak was ``stopped`` early: then it is ``not_run``), more than one row, an ok
    row whose curve misses or repeats an eval step, or a curve that repeats a step, is lost."""
    from sweeps.schema import read_table

    rows = read_table(
        results, "trials", columns=["trial_id", "status", "attempts", "import_s", "setup_s"]
    )
    curves = read_table(results, "curves", columns=["trial_id", "step"])
    result.unreadable += [f"final read: {path}" for path, _ in rows.corrupt + curves.corrupt]
    trial_rows = rows.table.to_pylist()
    counts = Counter(row["trial_id"] for row in trial_rows)
    by_trial: dict[str, list[int]] = {}
    for row in curves.table.to_pylist():
        by_trial.setdefault(row["trial_id"], []).append(row["step"])
    result.startup = startup_line(trial_rows)
    for row in trial_rows:
        result.ok += row["status"] == "ok"
        result.failed += row["status"] == "failed"
        result.retries += (row["attempts"] or 1) - 1
        result.trials_retried += (row["attempts"] or 1) > 1
    for trial_id in expected:
        curve = by_trial.get(trial_id, [])
        status = next((r["status"] for r in trial_rows if r["trial_id"] == trial_id), None)
        if stopped and counts[trial_id] == 0:
            result.not_run += 1
            result.rows_lost += len(curve) != len(set(curve))
        elif counts[trial_id] != 1 or (status == "ok" and sorted(curve) != steps):
            result.rows_lost += 1
    result.rows_lost += sum(1 for trial_id in counts if trial_id not in expected)
    return result
