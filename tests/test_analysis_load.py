"""Reading the store: corrupt files, compaction, duplicates, filters (sweeps.schema + load)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.load import CorruptStoreError, StoreError, load_store
from sweeps.schema import SCHEMAS, compact_store, compact_table, read_table
from testkit.synthetic import init_store, trial_row, write_rows
from testkit.tiny import tiny_store

SPEC = {"sweeps": ("a", "b"), "n_factors": 1, "n_levels": 1, "seeds": 2, "eval_steps": 3}


@pytest.fixture
def store(tmp_path):
    return tiny_store(tmp_path / "store", **SPEC)


def test_read_table_skips_and_names_corrupt_files(store):
    bad = store / "curves" / "a-enwik8-baseline-baseline-s0.parquet"
    bad.write_bytes(bad.read_bytes()[:-30])
    (store / "curves" / ".in-flight.parquet").write_bytes(b"temp file of a write")
    read = read_table(store, "curves")
    assert [path for path, _ in read.corrupt] == [bad]
    assert read.table.num_rows == (16 - 1) * 3
    assert read.table.schema.equals(SCHEMAS["curves"])
    with pytest.warns(UserWarning, match="skipped corrupt store file"):
        assert load_store(store).corrupt[0][0] == bad
    with pytest.raises(CorruptStoreError, match=r"corrupt store file .*--strict"):
        load_store(store, strict=True)


def test_read_table_columns_dictionary_and_missing_columns(tmp_path):
    root = init_store(tmp_path / "store")
    old = pa.table({"trial_id": ["t"], "step": [1], "val_loss": [2.0]})  # an older file
    pq.write_table(old, root / "curves" / "old.parquet")
    read = read_table(root, "curves", read_dictionary=["trial_id"])
    assert read.table.column("train_loss").to_pylist() == [None]
    assert pa.types.is_dictionary(read.table.schema.field("trial_id").type)
    assert read_table(root, "curves", ["step", "val_loss"]).table.column_names == [
        "step",
        "val_loss",
    ]
    empty = read_table(root, "attention", read_dictionary=["trial_id"]).table
    assert empty.num_rows == 0 and pa.types.is_dictionary(empty.schema.field("trial_id").type)


def test_compaction_keeps_every_row_and_readers_dedupe(store):
    before = {table: read_table(store, table).table for table in SCHEMAS}
    bad = store / "samples" / "a-enwik8-baseline-baseline-s1.parquet"
    bad.write_bytes(b"not parquet")
    results = {c.table: c for c in compact_store(store)}
    assert results["curves"].merged == results["curves"].removed == 16
    assert results["samples"].kept == [bad]  # a corrupt file stays for readers to name
    assert sorted(p.name for p in (store / "curves").iterdir())[0].startswith("compacted-")
    assert len(list((store / "curves").glob("*.parquet"))) == 1
    keys = {
        "trials": ["trial_id"],
        "curves": ["trial_id", "step"],
        "attention": ["trial_id", "step", "layer", "head"],
    }
    for table, by in keys.items():
        after = read_table(store, table).table.to_pandas().sort_values(by, ignore_index=True)
        expected = before[table].to_pandas().sort_values(by, ignore_index=True)
        pd.testing.assert_frame_equal(after, expected)
    # A crash between writing the part and removing a file leaves rows twice: readers dedupe.
    write_rows(
        store,
        "trials",
        [
            trial_row(
                "a-enwik8-baseline-baseline-s0", sweep="a", dataset="enwik8", best_val_loss=9.0
            )
        ],
        "late",
    )
    with pytest.warns(UserWarning, match="skipped corrupt"):
        loaded = load_store(store)
    assert len(loaded.trials) == 16 and loaded.duplicates["trials"] == 1
    assert compact_table(store, "curves").written is None  # one file: nothing to do


def test_filters_and_errors(store):
    loaded = load_store(store, sweeps=["b"], datasets=["enwik8"])
    assert set(loaded.trials["sweep"]) == {"b"} and set(loaded.trials["dataset"]) == {"enwik8"}
    assert set(loaded.curves["trial_id"].astype(str)) == set(loaded.trials["trial_id"])
    with pytest.raises(StoreError, match="--sweep c: not in the store; it has a, b"):
        load_store(store, sweeps=["c"])
    with pytest.raises(StoreError, match="does not exist"):
        load_store(store / "nope")
    with pytest.raises(StoreError, match="not a result store"):
        load_store(store / "curves")


def test_file_compacted_away_while_listing_is_read_again(store, monkeypatch):
    from sweeps import schema

    listed = schema._table_paths
    calls = []

    def stale_listing(directory):
        calls.append(directory)
        paths = listed(directory)
        return [*paths, directory / "gone.parquet"] if len(calls) == 1 else paths

    monkeypatch.setattr(schema, "_table_paths", stale_listing)
    read = read_table(store, "trials")
    assert len(calls) == 2 and read.corrupt == [] and read.table.num_rows == 16


def test_attention_of_baselines_only(store):
    full = load_store(store)
    compact_store(store)
    # A later file: its trial_id dictionary differs from the compacted part's.
    late = ["a-enwik8-n_layer-2-s1", "b-shakespeare_char-baseline-baseline-s1"]
    write_rows(store, "attention", {"trial_id": late, "step": [999, 999], "layer": [0, 0],
                                    "head": [0, 0]}, "late")  # fmt: skip
    baselines = load_store(store, attention="baselines").attention
    base_ids = set(full.trials.loc[full.trials["factor"].eq("baseline"), "trial_id"])
    expected = full.attention[full.attention["trial_id"].astype(str).isin(base_ids)]
    assert set(baselines["trial_id"].astype(str)) == base_ids
    added = baselines[baselines["step"].eq(999)]
    assert list(added["trial_id"].astype(str)) == [late[1]]
    keys = ["trial_id", "step", "layer", "head"]
    got = baselines[baselines["step"].ne(999)].astype({"trial_id": str})
    pd.testing.assert_frame_equal(
        got.sort_values(keys, ignore_index=True),
        expected.astype({"trial_id": str}).sort_values(keys, ignore_index=True),
    )
