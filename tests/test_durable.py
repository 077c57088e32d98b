"""Durable writes: a writer SIGKILLed at any moment never leaves a torn file behind.

A helper process imports torch and pyarrow once, then forks one writer per round. Each
writer rewrites, in a loop, the project's real file kinds through the project's own
writers (a result-store Parquet file, a torch checkpoint, a JSON marker); the test kills it
at a random moment and reads every file back. Every file must be absent or whole (its
content says how long it must be). A control writer that writes in place, as the code did
before ``charlm.fsio``, leaves torn files under the same treatment: the test can fail.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]

HELPER = r"""
import json, os, sys, random
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq, torch
from charlm.fsio import atomic_write_bytes
from charlm.train import _atomic_torch_save
from sweeps.store import ResultStore

torch.set_num_threads(1)
root, mode = Path(sys.argv[1]), sys.argv[2]

def rows(n):
    return [{"trial_id": "t", "step": i, "tokens_seen": n, "elapsed_s": 0.0, "lr": 0.0,
             "train_loss": 1.0, "val_loss": 1.0, "tokens_per_s": 1.0} for i in range(n)]

def write_all(rng, base):
    store = ResultStore(base / "store")
    n = rng.randrange(1_000, 20_000)
    payload = {"n": n, "weights": torch.arange(n * 8, dtype=torch.float32)}
    text = json.dumps({"n": n, "items": list(range(n))}).encode()
    if mode == "atomic":
        store.write_rows("curves", "t", rows(n))
        _atomic_torch_save(payload, base / "checkpoint.pt")
        atomic_write_bytes(base / "marker.json", text)
    else:  # the control: in place, as before charlm.fsio
        from sweeps.schema import SCHEMAS
        table = pa.Table.from_pylist(rows(n), schema=SCHEMAS["curves"])
        pq.write_table(table, base / "store" / "curves" / "t.parquet")
        torch.save(payload, base / "checkpoint.pt")
        (base / "marker.json").write_bytes(text)

write_all(random.Random(0), root / "warm-up")  # lazy imports done before any fork
for line in sys.stdin:
    child = os.fork()
    if child == 0:
        rng = random.Random(int(line))
        while True:
            write_all(rng, root)
    print(child, flush=True)
    os.waitpid(child, 0)
    print("reaped", flush=True)
"""


def torn_files(root: Path) -> list[str]:
    """The files here that a reader must not accept: unreadable, zero-length or short."""
    return [*_torn_curves(root), *_torn_checkpoint(root), *_torn_marker(root)]


def _torn_curves(root: Path) -> list[str]:
    from sweeps.schema import read_table

    curves = root / "store" / "curves" / "t.parquet"
    if not curves.exists():
        return []
    try:
        table = pq.read_table(curves)
        if table.num_rows == 0 or table.num_rows != table.column("tokens_seen")[0].as_py():
            return [f"curves: {table.num_rows} rows"]
    except Exception as exc:
        return [f"curves: {type(exc).__name__}"]
    # The store's reader skips leftover temp files and sees the same one file.
    result = read_table(root / "store", "curves", columns=["step"])
    if result.corrupt or result.table.num_rows != table.num_rows:
        return [f"store reader: {result.corrupt}"]
    return []


def _torn_checkpoint(root: Path) -> list[str]:
    import torch

    checkpoint = root / "checkpoint.pt"
    if not checkpoint.exists():
        return []
    try:
        state = torch.load(checkpoint, weights_only=True)
        return [] if state["weights"].numel() == state["n"] * 8 else ["checkpoint: short tensor"]
    except Exception as exc:
        return [f"checkpoint: {type(exc).__name__}"]


def _torn_marker(root: Path) -> list[str]:
    marker = root / "marker.json"
    if not marker.exists():
        return []
    try:
        content = json.loads(marker.read_bytes())
        return [] if len(content["items"]) == content["n"] else ["marker: short list"]
    except Exception as exc:
        return [f"marker: {type(exc).__name__}"]


def kill_writers_at_random(
    root: Path, mode: str, rounds: int, seed: int, until_torn: bool = False
) -> tuple[list, int]:
    """(torn files seen after each round, files checked) over ``rounds`` SIGKILLed writers
    (or fewer: ``until_torn`` stops at the first torn file)."""
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(root), mode], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    rng = random.Random(seed)
    torn, checked = [], 0
    try:
        for index in range(rounds):
            helper.stdin.write(f"{seed * 1000 + index}\n")
            helper.stdin.flush()
            child = int(helper.stdout.readline())
            time.sleep(rng.uniform(0.02, 0.4))
            os.kill(child, signal.SIGKILL)
            assert helper.stdout.readline().strip() == "reaped"
            found = torn_files(root)
            torn.extend(f"round {index}: {item}" for item in found)
            if until_torn and torn:
                break
            checked += sum(
                (root / name).exists()
                for name in ("store/curves/t.parquet", "checkpoint.pt", "marker.json")
            )
    finally:
        helper.kill()
        helper.wait()
    return torn, checked


def test_writers_killed_at_random_moments_never_leave_a_torn_file(tmp_path: Path):
    torn, checked = kill_writers_at_random(tmp_path / "atomic", "atomic", rounds=40, seed=1)
    assert torn == []
    assert checked >= 80  # most rounds got their files written at least once
    # Killed writers leave only dot-named temporaries, which every reader skips.
    leftovers = [p.name for p in (tmp_path / "atomic").rglob("*") if p.is_file()]
    assert all(not name.startswith(".") or name.endswith(".tmp") for name in leftovers)


def test_the_control_writing_in_place_does_leave_torn_files(tmp_path: Path):
    """Proves the test above can fail: the same kills, writes in place."""
    torn, _ = kill_writers_at_random(tmp_path / "inplace", "inplace", rounds=60, seed=2,
                                     until_torn=True)  # fmt: skip
    assert torn, "no torn file in 60 killed in-place writers: the kill test is too weak"


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from charlm import fsio

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        target = os.readlink(f"/proc/self/fd/{descriptor}")
        calls.append("fsync dir" if os.path.isdir(target) else "fsync file")
        real_fsync(descriptor)

    def replace(source, destination) -> None:
        calls.append("rename")
        real_replace(source, destination)

    monkeypatch.setattr(fsio.os, "fsync", fsync)
    monkeypatch.setattr(fsio.os, "replace", replace)
    fsio.atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert calls == ["fsync file", "rename", "fsync dir"]
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left


def test_fsync_tree_syncs_every_file_and_directory(tmp_path: Path, monkeypatch):
    from charlm import fsio

    (tmp_path / "report" / "figures").mkdir(parents=True)
    for name in ("report/report.html", "report/figures/a.png"):
        (tmp_path / name).write_bytes(b"x")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(os.path.relpath(os.readlink(f"/proc/self/fd/{descriptor}"), tmp_path))
        real_fsync(descriptor)

    monkeypatch.setattr(fsio.os, "fsync", fsync)
    fsio.fsync_tree(tmp_path / "report")
    assert sorted(synced) == ["report", "report/figures", "report/figures/a.png",
                              "report/report.html"]  # fmt: skip
