"""The store's write side and the cluster file checks (no Ray cluster started)."""

from __future__ import annotations

import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sweeps.runner import ClusterError, connect, head_address, load_cluster_config
from sweeps.schema import MARKER, SCHEMA_VERSION, StoreError, is_store, read_table
from sweeps.store import ResultStore, TrialRecord, check_results_dir, trial_statuses

REPO = Path(__file__).resolve().parents[1]


def curve_point(step: int) -> dict:
    return {"step": step, "tokens_seen": step * 10, "elapsed_s": step / 10, "lr": 1e-3,
            "train_loss": 2.0, "val_loss": 2.1 - step / 1000, "best_val_loss": 2.1,
            "tokens_per_s": 100.0}  # fmt: skip


def test_store_writes_each_table_atomically_with_schema_version(tmp_path: Path):
    store = ResultStore(tmp_path / "results")
    assert is_store(store.root) and (store.root / MARKER).is_file()
    record = TrialRecord("abc123", {"sweep": "s", "dataset": "d", "factor": "baseline",
                                    "level": "baseline", "seed": 0, "n_layer": 2})  # fmt: skip
    record.curve = {step: curve_point(step) for step in (20, 0, 10)}
    record.final = {"best_val_loss": 2.08, "final_val_loss": 2.08, "status": "ok",
                    "sample": {"prompt": "\n", "text": "abc", "n_chars": 3}}  # fmt: skip
    store.write_trial(record, "ok", None)
    trials = read_table(store.root, "trials").table.to_pylist()
    assert len(trials) == 1 and trials[0]["best_val_loss"] == 2.08
    assert trials[0]["n_layer"] == 2 and trials[0]["status"] == "ok"
    curve = read_table(store.root, "curves").table.column("step").to_pylist()
    assert curve == [0, 10, 20]
    metadata = pq.read_schema(store.root / "trials" / "abc123.parquet").metadata
    assert metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert not [p for p in store.root.rglob(".*") if p.is_file()]  # no temp files left
    assert trial_statuses(store.root) == ({"abc123": "ok"}, [])


def test_a_corrupt_file_is_named_skipped_and_never_overwritten(tmp_path: Path):
    store = ResultStore(tmp_path / "results")
    record = TrialRecord("t1", {"sweep": "s"})
    record.curve = {0: curve_point(0)}
    store.write_trial(record, "ok", None)
    path = store.root / "trials" / "t1.parquet"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    statuses, corrupt = trial_statuses(store.root)
    assert statuses == {} and [p for p, _ in corrupt] == [path]
    store.write_trial(record, "ok", None)
    assert path.read_bytes().__len__() == 40


def test_results_dir_checks_write_nothing(tmp_path: Path):
    not_a_store = tmp_path / "photos"
    not_a_store.mkdir()
    (not_a_store / "cat.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match=r"is not a result store .* pick a new or empty"):
        check_results_dir(not_a_store)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"not writable|not a directory"):
        check_results_dir(blocker / "results")
    check_results_dir(tmp_path / "new" / "results")
    assert not (tmp_path / "new").exists()


def test_shipped_cluster_yaml_passes_rays_launcher_schema():
    config = load_cluster_config(REPO / "cluster.yaml")
    assert config["provider"]["type"] == "aws"
    assert any(node.get("resources", {}).get("GPU") for node in
               config["available_node_types"].values())  # fmt: skip
    text = (REPO / "cluster.yaml").read_text()
    assert "0.0.0.0" not in text and "aws_secret" not in text.lower()


def test_rays_private_validator_still_rejects_bad_configs():
    # Pins the private API that load_cluster_config relies on.
    from ray.autoscaler._private.util import prepare_config, validate_config

    good = {"cluster_name": "x", "provider": {"type": "local", "head_ip": "127.0.0.1",
                                              "worker_ips": []}}  # fmt: skip
    validate_config(prepare_config(dict(good)))
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's ValidationError
        validate_config(prepare_config({**good, "no_such_key": 1}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cluster_name: [unclosed\n", "not valid YAML at line"),
        ("- just\n- a list\n", "not a cluster-launcher config"),
        ("cluster_name: x\nprovider: {head_ip: 1.2.3.4}\n", "rejected by Ray's cluster-launcher"),
        ("cluster_name: x\nbogus_key: 1\nprovider: {type: local, head_ip: 127.0.0.1, "
         "worker_ips: []}\n", "rejected by Ray's cluster-launcher"),
    ],
)  # fmt: skip
def test_malformed_cluster_yaml_is_a_clear_error(tmp_path: Path, text: str, message: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ClusterError, match=message):
        load_cluster_config(path)


def test_unreachable_head_names_the_address_and_what_to_run(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClusterError, match=rf"cannot reach the Ray head at 127.0.0.1:{port} "
                       r"\(Connection refused\): start the cluster with `ray up"):  # fmt: skip
        connect("cluster.yaml", address=f"127.0.0.1:{port}")


def test_head_address_from_a_local_provider(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = yaml.safe_load("provider: {type: local, head_ip: 10.0.0.5, worker_ips: []}")
    assert head_address(config, "c.yaml") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:10001")
    assert head_address(config, "c.yaml") == "ray://127.0.0.1:10001"


def test_compaction_keeps_every_trial_once_and_newer_rows_win(tmp_path: Path):
    store = ResultStore(tmp_path / "results")
    for index in range(70):
        record = TrialRecord(f"t{index:02d}", {"sweep": "s"})
        record.curve = {0: curve_point(0), 10: curve_point(10)}
        store.write_trial(record, "failed" if index == 0 else "ok", "boom" if index == 0 else None)
    store.compact()
    assert len(list((store.root / "trials").glob("*.parquet"))) == 1
    assert len(list((store.root / "curves").glob("*.parquet"))) == 1
    statuses, corrupt = trial_statuses(store.root)
    assert len(statuses) == 70 and statuses["t00"] == "failed" and corrupt == []
    # The failed trial runs again after compaction: its new row is the one that counts.
    rerun = TrialRecord("t00", {"sweep": "s"})
    rerun.curve = {0: curve_point(0)}
    store.write_trial(rerun, "ok", None)
    assert trial_statuses(store.root)[0]["t00"] == "ok"
