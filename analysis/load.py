"""The result store's tables as tidy pandas DataFrames (one row per trial, per eval step, ...).

Reads through ``sweeps.schema.read_table`` (never Ray): corrupt files are skipped and named,
duplicate rows (a trial written twice, e.g. by a crash during compaction or a retried
trial) are dropped keeping the newest, and the store may still be being written.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sweeps.schema import (
    SCHEMAS,
    TABLES,
    StoreError,
    check_store,
    planned_trials,
    read_runs,
    read_table,
)

# Attention columns the analysis uses (the rest are not read: the table is the largest).
ATTENTION_COLUMNS = (
    "trial_id", "step", "layer", "head", "entropy", "effective_span", "head_diversity",
    "attention_js_next", "hidden_cosine_next", "silhouette",
)  # fmt: skip

_KEYS = {
    "trials": ["trial_id"],
    "curves": ["trial_id", "step"],
    "attention": ["trial_id", "step", "layer", "head"],
    "samples": ["trial_id", "prompt"],
}


class CorruptStoreError(StoreError):
    """A store file could not be read and the caller asked for strictness."""


@dataclass
class Store:
    """A result store read into memory.

    ``trials``: one row per trial (deduplicated by trial_id, the latest ``finished_at``
    kept), every column of the trials table. ``curves``: one row per (trial, eval step).
    ``attention``: one row per (trial, eval step, layer, head), the columns in
    ATTENTION_COLUMNS. ``samples``: one row per (trial, prompt). ``trial_id`` is a
    categorical in the three per-trial tables. ``corrupt`` names the files that could not
    be read (path, reason); ``duplicates`` counts the rows dropped per table;
    ``in_progress`` lists trial ids that have curves but no trials row yet. ``planned``:
    one row per trial of each sweep's planned grid (its newest run record's, see
    ``sweeps.schema.PLAN_KEY``; none for stores older than those records), the trials
    table's identity and config columns and ``n_params``, finished or not.
    """

    root: Path
    trials: pd.DataFrame
    curves: pd.DataFrame
    attention: pd.DataFrame
    samples: pd.DataFrame
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    in_progress: list[str] = field(default_factory=list)
    file_counts: dict[str, int] = field(default_factory=dict)
    planned: pd.DataFrame = field(default_factory=pd.DataFrame)


def load_store(
    root: str | Path,
    *,
    sweeps: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    tables: Sequence[str] = TABLES,
    strict: bool = False,
    attention: str = "all",
    layer_trials: Sequence[str] = (),
) -> Store:
    """Read the store at ``root`` into a Store; optionally only some sweeps/datasets.

    ``tables`` limits which of the per-trial tables are read (trials is always read); the
    others come back empty. A corrupt file is named in ``Store.corrupt`` and with a
    warning, or raises CorruptStoreError when ``strict``. A missing or non-store
    directory raises StoreError. Unknown sweep or dataset names raise StoreError listing
    the ones the store has. ``attention='baselines'`` keeps only the attention rows of
    baseline-config trials (all the report draws; a tenth of the memory on a big store).
    ``attention='report'`` keeps those, every trial's rows at its last probed step (the
    final metrics the predictors section correlates) and, for the trials in
    ``layer_trials``, the first head's row of every layer and step (the per-layer metrics,
    such as the silhouette, repeat on each head's row).
    """
    if attention not in ("all", "baselines", "report"):
        raise StoreError(f"attention={attention!r}: use 'all', 'baselines' or 'report'.")
    path = check_store(root)
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise StoreError(f"unknown table(s) {', '.join(unknown)}: tables are {', '.join(TABLES)}")
    store = Store(path, **{table: _empty(table) for table in TABLES})
    for table in TABLES:
        if table == "trials" or table in tables:
            _read_into(store, table, strict, attention, layer_trials)
    trials = store.trials
    curve_ids = set(store.curves["trial_id"].astype(str).unique())
    store.in_progress = sorted(curve_ids - set(trials["trial_id"].astype(str)))
    trials["trial_id"] = trials["trial_id"].astype(str)
    trials["kind"] = trials["kind"].fillna("ablation")
    trials["factor"] = trials["factor"].fillna("baseline")
    trials["level"] = trials["level"].fillna("")
    store.planned = _planned(path)
    if sweeps is not None or datasets is not None:
        _select(store, sweeps, datasets)
    store.trials = store.trials.reset_index(drop=True)
    store.planned = store.planned.reset_index(drop=True)
    return store


def _read_into(
    store: Store, table: str, strict: bool, attention: str, layer_trials: Sequence[str]
) -> None:
    """Read one table of the store into ``store`` (corrupt files, duplicates, file count);
    attention rows as ``load_store``'s ``attention`` says."""
    columns = list(ATTENTION_COLUMNS) if table == "attention" else None
    read = read_table(store.root, table, columns, read_dictionary=["trial_id"])
    arrow_table = read.table
    if table == "attention" and attention == "baselines":
        trials = store.trials
        wanted = trials.loc[trials["factor"].fillna("baseline").eq("baseline"), "trial_id"]
        value_set = pa.array(wanted.astype(str).unique(), pa.string())
        arrow_table = arrow_table.filter(_is_in(arrow_table["trial_id"], value_set))
    elif table == "attention" and attention == "report":
        arrow_table = arrow_table.filter(_report_rows(arrow_table, store.trials, layer_trials))
    store.file_counts[table] = sum(1 for _ in (store.root / table).glob("*.parquet"))
    for bad_path, reason in read.corrupt:
        if strict:
            raise CorruptStoreError(
                f"corrupt store file {bad_path}: {reason} (remove it, or run without "
                "--strict to skip it)"
            )
        warnings.warn(f"skipped corrupt store file {bad_path}: {reason}", stacklevel=3)
    store.corrupt.extend(read.corrupt)
    frame = arrow_table.to_pandas(split_blocks=True)  # no block consolidation: faster
    frame, store.duplicates[table] = _deduplicate(table, frame)
    setattr(store, table, frame)


def _planned(root: Path) -> pd.DataFrame:
    """The planned grids of the store's run records as one frame (see ``Store.planned``)."""
    rows = [entry for plan in planned_trials(read_runs(root)).values() for entry in plan]
    if not rows:
        return pd.DataFrame(columns=["trial_id", "sweep", "dataset", "factor", "level", "seed"])
    return pd.DataFrame(rows).drop_duplicates(["sweep", "trial_id"], keep="last")


def _is_in(column: pa.ChunkedArray, value_set: pa.Array) -> pa.ChunkedArray:
    """``pc.is_in`` of a column, looked up once per distinct value of a dictionary-encoded
    one (each chunk's dictionary, then its indices): much faster on millions of rows
    (benchmarks/analysis_speed.py)."""
    if not pa.types.is_dictionary(column.type):
        return pc.is_in(column, value_set)
    masks = [
        pc.take(pc.is_in(chunk.dictionary, value_set), chunk.indices) for chunk in column.chunks
    ]
    return pa.chunked_array(masks, pa.bool_())


def _report_rows(
    attention: pa.Table, trials: pd.DataFrame, layer_trials: Sequence[str]
) -> np.ndarray:
    """Which attention rows ``attention='report'`` keeps (see load_store): a boolean mask."""
    column = attention["trial_id"]
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    combined = column.combine_chunks()  # one dictionary for all files
    if len(combined) == 0:
        return np.zeros(0, dtype=bool)
    ids = np.asarray(combined.dictionary.to_pylist(), dtype=object)
    codes = combined.indices.to_numpy(zero_copy_only=False)
    steps = attention["step"].to_numpy()
    last = np.full(len(ids), np.iinfo(np.int64).min)
    np.maximum.at(last, codes, steps)
    baseline = trials.loc[trials["factor"].fillna("baseline").eq("baseline"), "trial_id"]
    keep_all = np.isin(ids, baseline.astype(str).to_numpy())
    keep_layers = np.isin(ids, np.asarray(list(layer_trials), dtype=object))
    first_head = attention["head"].to_numpy() == attention["head"].to_numpy().min()
    return keep_all[codes] | (steps == last[codes]) | (keep_layers[codes] & first_head)


def _empty(table: str) -> pd.DataFrame:
    schema = SCHEMAS[table]
    names = list(ATTENTION_COLUMNS) if table == "attention" else schema.names
    frame = schema.empty_table().select(names).to_pandas()
    frame["trial_id"] = frame["trial_id"].astype("category")
    return frame


def _select(store: Store, sweeps: Sequence[str] | None, datasets: Sequence[str] | None) -> None:
    """Keep only the named sweeps and datasets' rows (StoreError for a name not in the
    store's trials or planned grids)."""
    trials, planned = store.trials, store.planned
    for column, names in (("sweep", sweeps), ("dataset", datasets)):
        if names is None:
            continue
        present = sorted({*trials[column].dropna().unique(), *planned[column].dropna().unique()})
        missing = [name for name in names if name not in present]
        if missing:
            raise StoreError(
                f"--{column} {', '.join(missing)}: not in the store; it has "
                f"{', '.join(present) or 'no ' + column + 's'}."
            )
        trials = trials[trials[column].isin(names)]
    planned = planned[planned["sweep"].isin(sweeps or planned["sweep"])]
    store.planned = planned[planned["dataset"].isin(datasets or planned["dataset"])]
    store.trials, keep = trials, set(trials["trial_id"])
    for table in ("curves", "attention", "samples"):
        frame = getattr(store, table)
        frame = frame[frame["trial_id"].isin(keep)].reset_index(drop=True)
        frame["trial_id"] = frame["trial_id"].cat.remove_unused_categories()
        setattr(store, table, frame)
    store.in_progress = [t for t in store.in_progress if t in set(store.planned["trial_id"])]


def _deduplicate(table: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop repeated rows of one key, keeping the newest (rows come in write order)."""
    if frame.empty:
        return frame, 0
    keys = _KEYS[table]
    if table == "trials":
        # Latest finished_at wins; unfinished rows (null) count as oldest; ties: write order.
        order = frame["finished_at"].rank(method="first", na_option="top").to_numpy()
        frame = frame.iloc[np.argsort(order, kind="stable")]
        duplicated = frame.duplicated("trial_id", keep="last").to_numpy()
    else:
        duplicated = _duplicated_keys(frame, keys)
    dropped = int(duplicated.sum())
    if dropped:
        frame = frame[~duplicated]
    if table == "trials":
        frame = frame.sort_index(kind="stable")
    return frame.reset_index(drop=True), dropped


def _duplicated_keys(frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Boolean mask of rows whose key repeats later.

    Fast path for millions of attention rows: a writer writes a trial's rows in key order
    into one file, so a trial can hold duplicates only when its rows form more than one
    contiguous run (it is in several files) or its key fails to increase inside a run;
    only those trials' rows go through the hash-based check.
    """
    codes = frame["trial_id"].cat.codes.to_numpy(np.int64)
    packed = _packed_keys(frame, keys)
    if packed is None:
        return frame.duplicated(keys, keep="last").to_numpy()
    same_trial = codes[1:] == codes[:-1]
    not_increasing = same_trial & (packed[1:] <= packed[:-1])
    run_starts = np.concatenate([[True], ~same_trial])
    n_trials = len(frame["trial_id"].cat.categories)
    suspect = np.bincount(codes[run_starts], minlength=n_trials) > 1
    suspect[codes[1:][not_increasing]] = True
    duplicated = np.zeros(len(frame), dtype=bool)
    if suspect.any():
        rows = suspect[codes]
        duplicated[rows] = pd.Series(packed[rows]).duplicated(keep="last").to_numpy()
    return duplicated


def _packed_keys(frame: pd.DataFrame, keys: list[str]) -> np.ndarray | None:
    """The integer key columns (trial code first) packed into one int64, or None when a
    key is not a non-null integer or the packing would overflow."""
    packed = frame["trial_id"].cat.codes.to_numpy(np.int64)
    for key in keys[1:]:
        values = frame[key]
        if values.dtype.kind not in "iu" or values.isna().any():
            return None
        values = values.to_numpy(np.int64)
        low = int(values.min())
        span = int(values.max()) - low + 1
        if packed.max() >= (2**62) // span:
            return None
        packed = packed * span + (values - low)
    return packed
