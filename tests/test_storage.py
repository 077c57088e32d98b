"""Checkpoint storage: S3 (moto's server on 127.0.0.1) for ablations and searches, secrets
kept out of everything printed or stored, leftover runs of killed drivers, Ray's node-loss
noise kept off the terminal. The share-nothing cluster tests are in test_sharenothing.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_reliability import ABLATION, REPO, read, write_grid

from sweeps.storage import Storage, StorageError, redact, resolve_storage
from testkit.sharenothing import MotoS3

SEARCH = REPO / "sweeps" / "search.py"


def _env(moto: MotoS3) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    return {**env, **moto.env, "PYTHONWARNINGS": "ignore"}


def _texts(*roots: Path) -> list[tuple[Path, str]]:
    return [(path, path.read_bytes().decode("latin-1")) for root in roots
            for path in root.rglob("*") if path.is_file()]  # fmt: skip


@pytest.mark.ray
def test_ablation_checkpoints_to_s3_and_no_secret_lands_anywhere(moto: MotoS3, tmp_path: Path):
    grid = write_grid(tmp_path / "grid.yaml", name="s3", factors={"n_head": [1]}, seeds=1,
                      max_iters=40, eval_interval=20)  # fmt: skip
    results = tmp_path / "results"
    storage = moto.uri("ablation")
    process = subprocess.run(
        [sys.executable, str(ABLATION), "--grid", str(grid), "--results", str(results),
         "--num-cpus", "2", "--storage", storage],
        capture_output=True, text=True, cwd=REPO, env=_env(moto), timeout=600,
    )  # fmt: skip
    assert process.returncode == 0, process.stdout + process.stderr[-3000:]
    assert "2 trials finished, 0 failed" in process.stdout
    trials = read(results, "trials")
    assert len(trials) == 2 and set(trials.status) == {"ok"}
    assert len(list((results / "models").glob("*.pt"))) == 2
    keys = moto.keys("ablation/")
    # Each trial's last checkpoint stays in the user's storage (the driver deletes the others).
    assert sum(key.endswith("/ckpt.pt") for key in keys) == 2, keys
    # Tune's experiment state goes up when the run starts and ends (--state-every 300 s),
    # not after each of the 6 trial checkpoints.
    state_uploads = sum(count for (operation, path), count in moto.requests().items()
                        if operation == "PUT" and path.startswith("/charlm/ablation/")
                        and "/experiment_state-" in path)  # fmt: skip
    assert 1 <= state_uploads <= 2, state_uploads
    assert not (results / "_ray").exists()  # nothing of the run on the driver's disk
    for secret in (moto.secret_key, moto.access_key):
        assert secret not in process.stdout and secret not in process.stderr
        for path, text in _texts(results):
            assert secret not in text, path


@pytest.mark.ray
def test_search_checkpoints_to_s3(moto: MotoS3, tmp_path: Path):
    results = tmp_path / "results"
    process = subprocess.run(
        [sys.executable, str(SEARCH), "--n-trials", "2", "--max-iters", "10", "--results",
         str(results), "--num-cpus", "2", "--storage", moto.uri("search"),
         "--set", "batch_size=4", "--set", "eval_iters=2", "--set", "eval_interval=5",
         "--set", "sample_tokens=10"],
        capture_output=True, text=True, cwd=REPO, env=_env(moto), timeout=600,
    )  # fmt: skip
    assert process.returncode == 0, process.stdout + process.stderr[-3000:]
    trials = read(results, "trials")
    assert len(trials) == 2 and set(trials.kind) == {"search"}
    assert sum(key.endswith("/ckpt.pt") for key in moto.keys("search/")) >= 2
    for path, text in _texts(results):
        assert moto.secret_key not in text, path
    assert moto.secret_key not in process.stdout + process.stderr


# ------------------------------------------------------------------ redaction, forms


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("s3://b/p?endpoint_override=h:9000&scheme=http", "s3://b/p?endpoint_override=h:9000&scheme=http"),
        ("s3://b/p?access_key=AKIA1&secret_key=abc/def+g&region=x",
         "s3://b/p?access_key=***&secret_key=***&region=x"),
        ("failed: s3://b/p?session_token=tok123 (denied)",
         "failed: s3://b/p?session_token=*** (denied)"),
        ("postgresql://alice:pa55@db:5432/optuna", "postgresql://alice:***@db:5432/optuna"),
        ("abfs://c@acct.dfs.core.windows.net/p?sig=XYZ",
         "abfs://c@acct.dfs.core.windows.net/p?sig=***"),
        ("/mnt/nfs/charlm", "/mnt/nfs/charlm"),
    ],
)  # fmt: skip
def test_redact_hides_every_secret_part_of_a_uri(text: str, shown: str):
    assert redact(text) == shown


def test_storage_forms(tmp_path: Path):
    assert resolve_storage(None, tmp_path / "r") == Storage(str(tmp_path / "r" / "_ray"), True)
    assert resolve_storage("s3://bucket/x", tmp_path).is_uri
    assert resolve_storage(f"file://{tmp_path}/c", tmp_path).location == f"{tmp_path}/c"
    assert resolve_storage("rel/dir", tmp_path).location == str(Path("rel/dir").resolve())
    with pytest.raises(StorageError, match=r"--storage s3://: not a URI"):
        resolve_storage("s3://", tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


# ------------------------------------------------------------------ leftovers, noise


def test_runs_of_drivers_that_are_gone_are_removed_live_ones_kept(tmp_path: Path):
    from sweeps.runner import _RUN_DIR
    from sweeps.schema import remove_dead_dirs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    storage = tmp_path / "_ray"
    dead = storage / f"sweep-20260101-000000-{gone.pid}"
    live = storage / f"sweep-20260101-000000-{os.getpid()}"
    other = storage / "notes-by-the-user"
    for directory in (dead / "trial", live, other):
        directory.mkdir(parents=True)
    assert remove_dead_dirs(storage, _RUN_DIR) == [dead]
    assert sorted(p.name for p in storage.iterdir()) == sorted([live.name, other.name])


def test_node_loss_noise_is_one_line_each_and_secrets_are_redacted():
    from sweeps.runner import _OutputFilter

    dump = [f"    [state-dump] \tNodeManager.Handler{i} - 2 total (0 active)\n" for i in range(20)]
    lines = [
        "[1m12s] 0 done, 0 failed, 2 running, 2 pending of 4 | best val 4.1870 | ETA ?\n",
        "\x1b[33m(raylet)\x1b[0m Raylet is terminated. Termination is unexpected. Possible "
        "reasons include: (1) SIGKILL. Last 20 lines of the Raylet logs:\n",
        *dump,
        "\n",
        "\x1b[33m(raylet)\x1b[0m The node with node id: 94ab and address: 10.0.0.2 has been "
        "marked dead because the detector has missed too many heartbeats from it. This can "
        "happen when a \t(1) raylet crashes unexpectedly (OOM, etc.) \n",
        "\t(2) raylet has lagging heartbeats due to slow network or busy workload.\n",
        "2026-12-03 09:42:41,947\tERROR tune_controller.py:1336 -- Trial task failed for "
        "trial run_trial_b3ee0_00000\n",
        "Traceback (most recent call last):\n",
        '  File "event_manager.py", line 110, in resolve_future\n',
        "    result = ray.get(future)\n",
        "ray.exceptions.ActorUnavailableError: The actor b8d4 is unavailable.\n",
        "checkpoint s3://b/p?secret_key=hunter2 failed\n",
    ]
    keep = _OutputFilter()
    shown = [line for line in map(keep, lines) if line is not None]
    assert shown == [
        lines[0],
        "(raylet) a node's raylet was terminated (its state dump is in Ray's logs)\n",
        "(raylet) The node with node id: 94ab and address: 10.0.0.2 has been marked dead "
        "because the detector has missed too many heartbeats from it.\n",
        "Trial task failed for trial run_trial_b3ee0_00000: ray.exceptions."
        "ActorUnavailableError: The actor b8d4 is unavailable.\n",
        "checkpoint s3://b/p?secret_key=*** failed\n",
    ]
