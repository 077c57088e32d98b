"""The store's write side: atomic tables, corrupt files, results-dir checks, compaction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from charlm.config import ModelConfig, TrainConfig
from charlm.results import TrialResult, curve_types, metrics
from sweeps.schema import MARKER, SCHEMA_VERSION, SCHEMAS, StoreError, is_store, read_table
from sweeps.store import ResultStore, TrialRecord, check_results_dir, trial_statuses


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


def test_store_columns_are_the_declared_metrics_and_curve_keys():
    declared = [name for name, (_, spec) in metrics().items() if spec.column]
    trials = SCHEMAS["trials"].names
    metric_columns = trials[trials.index("n_params") : trials.index("attempts")]
    assert [c for c in metric_columns if c not in ("early_stopped", "import_s")] == declared
    assert SCHEMAS["curves"].names == ["trial_id", *curve_types()]
    summary = TrialResult(ModelConfig(), TrainConfig()).summary()
    assert list(summary) == list(metrics())


GROWN = """
import dataclasses, json, sys
import charlm.results as results

@dataclasses.dataclass
class Grown(results.TrialResult):
    grad_norm: float | None = results.metric(None)
    peak_mb: float = results.metric(0.0, stand_in="peak_mb")

results.TrialResult = Grown
from charlm.config import ModelConfig, TrainConfig
from sweeps.schema import SCHEMAS, read_table
from sweeps.store import ResultStore, TrialRecord

store = ResultStore(sys.argv[1])
done, stopped = TrialRecord("done", {"sweep": "s"}), TrialRecord("stopped", {"sweep": "s"})
done.add_report({"step": 0, "val_loss": 2.0, "grad_norm": 0.5, "peak_mb": 9.0, "final": True})
stopped.add_report({"step": 0, "val_loss": 2.0, "grad_norm": 0.5, "peak_mb": 7.0})
store.write_trial(done, "ok", None)
store.write_trial(stopped, "ok", None)
rows = read_table(sys.argv[1], "trials").table.to_pylist()
print(json.dumps({
    "summary": list(Grown(ModelConfig(), TrainConfig()).summary()),
    "types": {n: str(SCHEMAS["trials"].field(n).type) for n in ("grad_norm", "peak_mb")},
    "rows": {r["trial_id"]: [r["grad_norm"], r["peak_mb"], r["early_stopped"]] for r in rows},
}))
"""


def test_a_metric_declared_once_reaches_summary_schema_and_store_row(tmp_path: Path):
    """One field added to TrialResult (in a child process: the schema is built at import)."""
    done = subprocess.run([sys.executable, "-c", GROWN, str(tmp_path / "results")],
                          capture_output=True, text=True, check=True)  # fmt: skip
    out = json.loads(done.stdout)
    assert out["summary"][-2:] == ["grad_norm", "peak_mb"]
    assert out["types"] == {"grad_norm": "double", "peak_mb": "double"}
    # stopped early: a metric with a stand-in takes the last report's value, the others null
    assert out["rows"] == {"done": [0.5, 9.0, False], "stopped": [None, 7.0, True]}
