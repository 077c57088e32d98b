"""Sweeps on a cluster whose nodes share nothing but the network (testkit/sharenothing.py).

A real Ray head on this machine and a worker node in its own mount and PID namespace that
cannot read the driver's files; checkpoints in a real S3-compatible server (moto) on
127.0.0.1. Checkpoint storage only the driver sees is refused before any trial runs; with
S3 a sweep survives its worker node being SIGKILLed mid-trial.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_reliability import (
    ABLATION,
    REPO,
    Driver,
    curve_steps,
    expected_steps,
    finished,
    read,
    watching,
    write_grid,
)

from sweeps.grid import expand, load_grid
from sweeps.schema import MARKER
from testkit.sharenothing import MotoS3, ShareNothingCluster, namespaces_unavailable

UNAVAILABLE = namespaces_unavailable()
pytestmark = [pytest.mark.ray, pytest.mark.skipif(UNAVAILABLE is not None,
                                                  reason=UNAVAILABLE or "")]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, moto: MotoS3
) -> Iterator[ShareNothingCluster]:
    """Head + two 1-CPU worker nodes; the workers cannot see pytest's temporary directories
    (every store and data cache of these tests). Their S3 credentials come from their
    environment, as a node's instance role or environment gives them."""
    root = tmp_path_factory.mktemp("cluster")
    nodes = ShareNothingCluster(root=root, hidden=[tmp_path_factory.getbasetemp()],
                                node_env=moto.env, worker_cpus=1)  # fmt: skip
    try:
        yield nodes.start(workers=2)
    finally:
        nodes.shutdown()


def test_a_worker_node_cannot_see_the_drivers_files(cluster: ShareNothingCluster, tmp_path: Path):
    secret = tmp_path / "driver-only.txt"
    secret.write_text("the driver's file\n")
    me = os.getpid()  # the driver's processes are invisible too (own PID namespace)
    seen = cluster.run_python(f"""
        import os, ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        ray.init(address=ADDRESS, logging_level="ERROR", log_to_driver=False)

        @ray.remote(num_cpus=0)
        def look():
            return (os.path.exists({str(secret)!r}), os.path.exists("/proc/{me}"))

        for node in ray.nodes():
            if node["Alive"]:
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                head = "node:__internal_head__" in node["Resources"]
                print("head" if head else "worker",
                      *ray.get(look.options(scheduling_strategy=strategy).remote()))
        """)
    assert sorted(seen.split("\n")[:-1]) == [
        "head True True",
        "worker False False",
        "worker False False",
    ], seen


def _tiny_grid(tmp_path: Path, **length: int) -> Path:
    return write_grid(tmp_path / "grid.yaml", name="sn", factors={"n_head": [1]}, seeds=2,
                      **length)  # fmt: skip


def _run_ablation(cluster: ShareNothingCluster, *args: str, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, str(ABLATION), "--address", cluster.address, *args],
        capture_output=True, text=True, cwd=REPO, timeout=timeout,
        env=env or cluster.driver_env(),
    )  # fmt: skip


@pytest.mark.parametrize("storage", ["default", "driver-only path"])
def test_storage_only_the_driver_sees_is_one_line_exit_2_before_any_trial(
    cluster: ShareNothingCluster, tmp_path: Path, storage: str
):
    grid = _tiny_grid(tmp_path, max_iters=20, eval_interval=10)
    results, local = tmp_path / "results", tmp_path / "checkpoints"
    extra = [] if storage == "default" else ["--storage", str(local)]
    process = _run_ablation(cluster, "--grid", str(grid), "--results", str(results), *extra)
    assert process.returncode == 2, process.stdout + process.stderr[-3000:]
    lines = process.stderr.splitlines()
    assert len(lines) == 1, process.stderr
    what = (
        rf"checkpoints go to {results}/_ray on this machine by default"
        if storage == "default"
        else rf"--storage {local} is not reachable from every node"
    )
    assert re.fullmatch(
        rf"error: {what}, but node [\d.]+ \([0-9a-f]{{8}}\) cannot read it \(.*\) \(of 3 "
        r"nodes\): pass --storage with a location every node can read and write, e\.g\. "
        r"--storage s3://your-bucket/charlm \(S3 credentials on every node\) or --storage "
        r"/mnt/nfs/charlm \(the same NFS mount on every node\)\.",
        lines[0],
    ), lines[0]
    assert "trials finished" not in process.stdout
    assert not results.exists() and not local.exists()  # nothing written


def test_s3_sweep_survives_its_worker_node_sigkilled_mid_trial(
    cluster: ShareNothingCluster, moto: MotoS3, tmp_path: Path, drivers: list[Driver]
):
    """The node-loss test: trials resume from their S3 checkpoints on a fresh node."""
    max_iters, interval = 300, 50
    grid = _tiny_grid(tmp_path, max_iters=max_iters, eval_interval=interval)
    results = tmp_path / "results"
    steps = expected_steps(max_iters, interval)
    prefix = f"nodeloss-{time.time_ns()}"
    driver = Driver(
        ["--address", cluster.address, "--grid", str(grid), "--results", str(results),
         "--max-failures", "3", "--storage", moto.uri(prefix)],
        tmp_path / "driver", env=cluster.driver_env(**moto.env),
    )  # fmt: skip
    drivers.append(driver)

    def both_midway() -> dict[str, list[int]] | None:
        """Two trials running (one per worker node), each with two or more points."""
        if not (results / MARKER).is_file():
            return None
        now, done = curve_steps(results), finished(results)
        running = {t: s for t, s in now.items() if t not in done and len(s) < len(steps)}
        return now if len(running) == 2 and all(len(s) >= 2 for s in running.values()) else None

    with watching(results) as watcher:
        driver.wait_until("two trials midway", both_midway, timeout=300)
        before = read(results, "curves")
        checkpoints_before = moto.keys(prefix)
        cluster.kill_worker(cluster.workers[0])  # SIGKILL: the whole node at once
        killed_at = time.monotonic()
        cluster.add_worker()  # the replacement; the survivor may resume the trial first
        code = driver.finish(timeout=600)
    print(f"node killed {killed_at - driver.started:.0f}s in; sweep done "
          f"{time.monotonic() - driver.started:.0f}s in; {watcher.reads} store reads")  # fmt: skip
    assert code == 0, driver.out + driver.err[-3000:]
    assert "4 trials finished, 0 failed" in driver.out
    assert watcher.problems == []
    assert any(key.endswith(".pt") for key in checkpoints_before), checkpoints_before[:5]

    trials = read(results, "trials")
    expected = {t.trial_id for t in expand(load_grid(grid))}
    assert sorted(trials.trial_id) == sorted(expected)  # every (config, seed) exactly once
    assert set(trials.status) == {"ok"}
    # No trial ran in a reused actor (never on a cluster: runner.Connection), so each one
    # paid its own imports (0 is what a reused actor's later trials record).
    assert (trials.import_s > 0).all(), trials.import_s.tolist()
    curves = read(results, "curves")
    assert curves.groupby("trial_id").step.apply(list).to_dict() == {t: steps for t in expected}
    assert not curves.duplicated(["trial_id", "step"]).any()
    # The driver's store holds everything: samples and final weights of every trial.
    assert sorted(read(results, "samples").trial_id) == sorted(expected)
    assert sorted(p.stem for p in (results / "models").glob("*.pt")) == sorted(expected)

    retried = set(trials[trials.attempts >= 2].trial_id)
    points = before.groupby("trial_id").size()
    assert retried & set(points[points >= 2].index), (retried, points.to_dict())
    for trial_id in points.index:
        old = before[before.trial_id == trial_id].set_index("step")
        new = curves[curves.trial_id == trial_id].set_index("step")
        # Resumed from its S3 checkpoint, not restarted: the points reported before the
        # node died are the very same measurements, and time keeps counting.
        assert new.loc[old.index, "elapsed_s"].tolist() == old.elapsed_s.tolist()
        assert new.elapsed_s.is_monotonic_increasing
        assert (new.tokens_seen == new.index * 8 * 16).all()

    # Credentials came from the environment and went nowhere else.
    for text in (driver.out, driver.err, *_store_texts(results)):
        assert moto.secret_key not in text and moto.access_key not in text
    # The node loss stayed off the user's terminal: no raylet state dump on stderr.
    assert "state dump" not in driver.err.lower() and "NodeManager:" not in driver.err


def _store_texts(root: Path) -> list[str]:
    return [path.read_bytes().decode("latin-1") for path in root.rglob("*") if path.is_file()]
