"""Format versions are read and checked: a newer store or checkpoint is refused in one line,
an older one goes through one upgrade function per version step."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import charlm.train as charlm_train
import sweeps.schema as schema
from charlm.model import GPT
from charlm.versions import FormatVersionError
from sweeps.schema import MARKER, SCHEMA_VERSION, UPGRADES, StoreVersionError, read_table
from sweeps.store import ResultStore
from testkit.synthetic import SyntheticSpec, build_store
from testkit.tiny import tiny_model

TINY = tiny_model(vocab_size=11)


def test_every_version_step_has_its_upgrade_function():
    assert set(UPGRADES) == set(range(1, SCHEMA_VERSION))
    assert set(charlm_train.CHECKPOINT_UPGRADES) == set(range(1, charlm_train.CHECKPOINT_FORMAT))


def _store(tmp_path: Path) -> Path:
    spec = SyntheticSpec(n_factors=1, n_levels=1, seeds=1, eval_steps=2, attention=False)
    return build_store(tmp_path / "store", spec)


def _set_marker_version(root: Path, version: int) -> None:
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps({**marker, "schema_version": version}))


def test_a_newer_store_is_refused_in_one_line_by_readers_writers_and_clis(tmp_path, capsys):
    from analysis.report import main as report_main
    from sweeps.ablation import main as ablation_main

    root = _store(tmp_path)
    newer = SCHEMA_VERSION + 1
    _set_marker_version(root, newer)
    expected = f"result store schema version {newer} is newer than this charlm-sweeps reads"
    with pytest.raises(StoreVersionError, match=expected):
        read_table(root, "trials")
    with pytest.raises(StoreVersionError, match=expected):
        ResultStore(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    out = tmp_path / "report"
    assert report_main([str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "pip install -U charlm-sweeps" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        ablation_main(["--results", str(root), "--max-iters", "2", "--seeds", "1", "--dry-run"])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written


def test_a_newer_file_in_an_older_store_is_refused_naming_the_file(tmp_path):
    root = _store(tmp_path)
    path = next((root / "curves").glob("*.parquet"))
    table = pq.read_table(path)
    newer = table.replace_schema_metadata({"schema_version": str(SCHEMA_VERSION + 1)})
    pq.write_table(newer, path)
    with pytest.raises(StoreVersionError, match=rf"{path}: result store file schema version"):
        read_table(root, "curves")
    pq.write_table(table.replace_schema_metadata({"schema_version": "x1"}), path)
    with pytest.raises(StoreVersionError, match="version 'x1' is not one charlm-sweeps wrote"):
        read_table(root, "curves")


def test_a_rerun_over_a_newer_file_is_one_line_exit_2_before_ray(tmp_path, capsys):
    from sweeps.ablation import main as ablation_main

    root = _store(tmp_path)
    path = next((root / "trials").glob("*.parquet"))
    pq.write_table(pq.read_table(path).replace_schema_metadata(
        {"schema_version": str(SCHEMA_VERSION + 1)}), path)  # fmt: skip
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        ablation_main(
            [
                "--results",
                str(root),
                "--max-iters",
                "2",
                "--seeds",
                "1",
                "--factors",
                "n_head",
                "--set",
                "n_layer=1",
                "--set",
                "n_embed=8",
            ]
        )
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {path}: result store file schema version ")
    assert "upgrade charlm-sweeps" in line
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert not (root / ".lock").exists()  # refused before the lock, before Ray


def test_an_older_store_is_upgraded_one_step_per_version(tmp_path, monkeypatch):
    """Files written by this version are read by a pretend next version that adds a column."""
    root = _store(tmp_path)  # written in today's format: the old format of the next version
    old_rows = read_table(root, "curves").table
    old_files = len(list((root / "curves").glob("*.parquet")))
    current = SCHEMA_VERSION + 1
    calls: list[tuple[str, int]] = []

    def add_grad_norm(table: str, part: pa.Table) -> pa.Table:
        calls.append((table, part.num_rows))
        return schema.add_null_columns(table, part, ["grad_norm"])

    curves = schema.SCHEMAS["curves"].append(pa.field("grad_norm", pa.float64()))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current)
    monkeypatch.setattr(schema, "SCHEMAS", {**schema.SCHEMAS, "curves": curves})
    monkeypatch.setattr(schema, "UPGRADES", {**UPGRADES, SCHEMA_VERSION: add_grad_norm})

    read = read_table(root, "curves")
    assert read.corrupt == []
    assert read.table.column("grad_norm").to_pylist() == [None] * old_rows.num_rows
    assert read.table.drop_columns(["grad_norm"]).equals(old_rows)
    assert len(calls) == old_files and {table for table, _ in calls} == {"curves"}

    # A writer of the new version leaves the old files alone and raises the marker's version.
    ResultStore(root)
    assert json.loads((root / MARKER).read_text())["schema_version"] == current
    calls.clear()
    assert read_table(root, "curves").table.num_rows == old_rows.num_rows
    assert len(calls) == old_files  # still upgraded on read, one call per old file


def _model_file(path: Path, format_version: object = None) -> Path:
    torch.manual_seed(0)
    charlm_train.save_model(path, GPT(TINY), [chr(97 + i) for i in range(11)], "tiny")
    if format_version is not None:
        state = torch.load(path, weights_only=True)
        state["format"] = format_version
        torch.save(state, path)
    return path


def test_a_newer_checkpoint_is_refused_in_one_line(tmp_path):
    path = _model_file(tmp_path / "model.pt", charlm_train.CHECKPOINT_FORMAT + 1)
    newer = rf"{path}: checkpoint format version \d+ is newer"
    with pytest.raises(FormatVersionError, match=newer):
        charlm_train.load_model(path)
    state = torch.load(path, weights_only=True)
    del state["format"]
    torch.save(state, path)
    with pytest.raises(FormatVersionError, match="version None is not one charlm-sweeps wrote"):
        charlm_train.load_model(path)


def test_the_train_cli_refuses_a_newer_checkpoint_with_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    _model_file(out / charlm_train.CHECKPOINT_FILE, charlm_train.CHECKPOINT_FORMAT + 1)
    argv = ["--n-layer", "1", "--n-head", "2", "--n-embed", "16", "--block-size", "16",
            "--max-iters", "2", "--device", "cpu", "--out", str(out), "--resume"]  # fmt: skip
    assert charlm_train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint format version" in err and "newer" in err
    assert len(err.splitlines()) == 1
    assert not (out / "result.json").exists()


def test_an_older_checkpoint_is_upgraded(tmp_path, monkeypatch):
    """A model file in today's format, read by a pretend next format that renamed a key."""
    path = _model_file(tmp_path / "model.pt")
    expected = torch.load(path, weights_only=True)["model"]

    def rename_weights(state: dict) -> dict:
        state = dict(state)
        state["weights"] = state.pop("model")
        return state

    current = charlm_train.CHECKPOINT_FORMAT
    monkeypatch.setattr(charlm_train, "CHECKPOINT_FORMAT", current + 1)
    upgrades = {**charlm_train.CHECKPOINT_UPGRADES, current: rename_weights}
    monkeypatch.setattr(charlm_train, "CHECKPOINT_UPGRADES", upgrades)
    state = charlm_train.read_checkpoint(path)
    assert "model" not in state
    assert all(torch.equal(state["weights"][k], v) for k, v in expected.items())
