"""The result store's format: the contract between ``sweeps`` (writes) and ``analysis`` (reads).

A store is a directory holding a marker file and one subdirectory per table, each a set of
Parquet files (one per trial, written atomically: temp name, then rename). Any Parquet
reader (pyarrow.dataset, pandas, polars, DuckDB) can open a table directory. Each file's
metadata and the marker carry ``schema_version``, checked on every read: a newer one is a
``StoreVersionError`` (one line; the CLIs exit 2), an older file goes through ``UPGRADES``,
one function per version step.

Bumping the version (e.g. adding columns): add the columns to the schemas below, raise
``SCHEMA_VERSION`` by one, and add ``UPGRADES[old]``: a function (table name, Arrow table as
version ``old`` wrote it) -> the table as the new version writes it (for added columns:
append them as nulls with ``add_null_columns``).

This module imports pyarrow and charlm's config and results declarations only (no torch):
analysis imports it without Ray. The trials table's metric columns and the curves table come
from ``charlm.results``; a column added there still needs a version step here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from charlm.config import ModelConfig, TrainConfig, field_types
from charlm.fsio import atomic_write, atomic_write_bytes
from charlm.results import curve_types, metrics
from charlm.versions import FormatVersionError, check_version, upgrade

SCHEMA_VERSION = 3
MARKER = "charlm-store.json"
TABLES = ("trials", "curves", "attention", "samples")
RUNS_DIR = "sweep_runs"  # one JSON per sweep command run: settings, version, commit, host
COMPACTED_PREFIX = "compacted-"  # part files written by compact_table; read before per-trial files
# A run record's planned grid: one entry per trial the command means to run (finished or
# not), each its trials row's identity and config columns plus ``n_params``.
PLAN_KEY = "planned_trials"
LOCK_FILE = ".lock"  # held (flock) by the sweep writing the store; its text names the holder


def config_label(factor: str, level: str) -> str:
    """A config's name in tables, legends, progress lines and messages: 'baseline' or
    'factor=level' ('width: n_embed=32,n_head=2' for a linked level)."""
    if factor == "baseline":
        return "baseline"
    return f"{factor}: {level}" if "=" in str(level) else f"{factor}={level}"


class StoreError(ValueError):
    """A results directory that cannot be used as a store; the message says what to do."""


class StoreVersionError(StoreError, FormatVersionError):
    """A store, or one of its files, written by a newer charlm-sweeps than this one."""


_ARROW_TYPES = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}


def _config_columns() -> list[pa.Field]:
    """Every ModelConfig and TrainConfig field as its own column (the requested device is
    ``requested_device``: ``device`` holds the one the trial really used)."""
    columns = []
    for name, kind in {**field_types(ModelConfig), **field_types(TrainConfig)}.items():
        if name in ("dataset", "seed"):
            continue  # identity columns, listed first
        column = "requested_device" if name == "device" else name
        columns.append(pa.field(column, _ARROW_TYPES[kind]))
    return columns


# Trials columns the sweep's driver fills (not the run's ``TrialResult``), each after the
# metric it follows in the file layout: whether ASHA stopped the trial, and the seconds of
# imports in the trial's process (0 when a reused Ray actor had them already).
_DRIVER_COLUMNS = {
    "error": pa.field("early_stopped", pa.bool_()),
    "sample_s": pa.field("import_s", pa.float64()),
}


def _metric_columns() -> list[pa.Field]:
    """The trials columns of the run's metrics (``charlm.results.TrialResult``, in its
    order), with the driver's columns among them."""
    columns = []
    for name, (kind, spec) in metrics().items():
        if spec.column:
            columns.append(pa.field(name, _ARROW_TYPES[kind]))
        if name in _DRIVER_COLUMNS:
            columns.append(_DRIVER_COLUMNS[name])
    return columns


_TS = pa.timestamp("us", tz="UTC")

TRIALS = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("sweep", pa.string()),
        pa.field("kind", pa.string()),  # 'ablation' | 'search' | 'single'
        pa.field("dataset", pa.string()),
        # sha256 of the text the trial trained on, checked when it started (v3)
        pa.field("dataset_sha256", pa.string()),
        pa.field("factor", pa.string()),  # 'baseline' for the baseline config
        pa.field("level", pa.string()),  # the level's label, e.g. '8' or 'n_embed=32,n_head=2'
        pa.field("seed", pa.int64()),
        pa.field("config_id", pa.string()),  # shared by the seeds of one search config
        *_config_columns(),
        *_metric_columns(),
        pa.field("attempts", pa.int64()),  # 1 + retries after failures (e.g. a lost node)
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
    ]
)

CURVES = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        *(pa.field(name, _ARROW_TYPES[kind]) for name, kind in curve_types().items()),
    ]
)

# Per-layer metrics repeat on every head row of their layer; the *_next columns compare a
# layer with the one above it and are null for the last layer.
ATTENTION = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("step", pa.int64()),
        pa.field("layer", pa.int64()),
        pa.field("head", pa.int64()),
        pa.field("entropy", pa.float64()),  # nats
        pa.field("entropy_normalized", pa.float64()),  # / log(causal context length), in [0, 1]
        pa.field("effective_span", pa.float64()),  # characters back, attention-weighted
        pa.field("head_diversity", pa.float64()),  # mean pairwise JS divergence between heads
        pa.field("attention_js_next", pa.float64()),  # JS of mean attention maps, layer vs next
        pa.field("hidden_cosine_next", pa.float64()),  # cosine of hidden states, layer vs next
        pa.field("silhouette", pa.float64()),  # k-means cluster quality of hidden states (v2)
    ]
)

SAMPLES = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("text", pa.string()),
        pa.field("n_chars", pa.int64()),
        pa.field("distinct_1", pa.float64()),
        pa.field("distinct_2", pa.float64()),
        pa.field("distinct_3", pa.float64()),
        pa.field("repetition_rate", pa.float64()),
        pa.field("known_word_share", pa.float64()),
        pa.field("coherence", pa.float64()),  # char-trigram cosine of consecutive segments (v2)
        # the model's attention while generating the sample, one value per layer (v2)
        pa.field("attention_entropy", pa.list_(pa.float64())),  # nats
        pa.field("effective_span", pa.list_(pa.float64())),  # characters back
    ]
)

# Columns each version added (version 1: the first layout). Only columns were added, so a
# store of an older version reads as it is: its upgrade step appends the newer columns as
# nulls. Version 2 also takes in the trials and curves columns of the evaluation budget and
# the seeds per search trial, added while the store still said version 1.
ADDED_COLUMNS: dict[int, dict[str, tuple[str, ...]]] = {
    2: {
        "trials": (
            "config_id", "train_eval_mode", "val_eval_windows", "train_eval_windows",
            "train_loss_target_stderr", "final_train_loss_stderr", "final_val_loss_stderr",
            "setup_s", "steps_s", "eval_s", "probe_s", "checkpoint_s", "sample_s", "import_s",
        ),
        "curves": ("train_loss_stderr", "val_loss_stderr", "train_eval_windows",
                   "val_eval_windows"),
        "attention": ("silhouette",),
        "samples": ("coherence", "attention_entropy", "effective_span"),
    },
    3: {"trials": ("dataset_sha256",)},
}  # fmt: skip

SCHEMAS: dict[str, pa.Schema] = {
    "trials": TRIALS,
    "curves": CURVES,
    "attention": ATTENTION,
    "samples": SAMPLES,
}


def add_null_columns(table: str, part: pa.Table, names: Sequence[str]) -> pa.Table:
    """``part`` with the columns ``names`` of ``table``'s schema appended as nulls (the upgrade
    step of a version that only adds columns)."""
    for name in names:
        if name not in part.column_names:
            part = part.append_column(
                SCHEMAS[table].field(name), pa.nulls(part.num_rows, SCHEMAS[table].field(name).type)
            )
    return part


def _add_columns_of(version: int, table: str, part: pa.Table) -> pa.Table:
    """Version ``version - 1`` -> ``version``: its added columns (``ADDED_COLUMNS``), as nulls."""
    return add_null_columns(table, part, ADDED_COLUMNS[version].get(table, ()))


# version v -> the function (table name, table as version v wrote it) -> table as v + 1 writes it
UPGRADES: dict[int, Callable[[str, pa.Table], pa.Table]] = {
    version - 1: functools.partial(_add_columns_of, version) for version in ADDED_COLUMNS
}


def conform(
    table: str, rows: pa.Table | Sequence[dict[str, Any]] | dict[str, Sequence[Any]]
) -> pa.Table:
    """``rows`` (row dicts, a dict of columns, or an Arrow table) as an Arrow table with
    ``table``'s schema and this version's metadata; columns it lacks are null, extra keys
    are dropped."""
    schema = SCHEMAS[table].with_metadata({"schema_version": str(SCHEMA_VERSION)})
    if isinstance(rows, dict):
        rows = pa.table({f.name: pa.array(rows[f.name], f.type) for f in schema if f.name in rows})
    if isinstance(rows, pa.Table):
        return _fit(rows, schema)
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
    )


def _fit(part: pa.Table, schema: pa.Schema) -> pa.Table:
    """``part`` with ``schema``'s columns, cast, in its order; those it lacks as nulls."""
    columns = [
        part.column(f.name).cast(f.type) if f.name in part.column_names
        else pa.nulls(part.num_rows, f.type)
        for f in schema
    ]  # fmt: skip
    return pa.Table.from_arrays(columns, schema=schema)


def table_dir(root: str | Path, table: str) -> Path:
    """The directory of one table in the store at ``root``."""
    if table not in SCHEMAS:
        raise KeyError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
    return Path(root) / table


def check_store(root: str | Path) -> Path:
    """``root`` as a Path if it is a store's directory, else StoreError with a one-line fix."""
    path = Path(root)
    if not path.exists():
        raise StoreError(
            f"results directory {path} does not exist: give the directory a sweep wrote "
            "(the --results directory of sweeps/ablation.py)."
        )
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a results directory: give the store's directory.")
    if not is_store(path):
        raise StoreError(
            f"{path} is not a result store (no {MARKER} in it): give the directory a sweep "
            "wrote, the one holding trials/ and curves/."
        )
    return path


def read_runs(root: str | Path) -> list[dict]:
    """The run records of a store (``RUNS_DIR/*.json``, oldest first); unreadable ones are
    skipped (a record is documentation, never needed to read results)."""
    runs = []
    for path in sorted((Path(root) / RUNS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            runs.append(record)
    return sorted(runs, key=lambda record: str(record.get("started_at", "")))


def planned_trials(runs: Sequence[dict]) -> dict[str, list[dict]]:
    """Each sweep's planned grid (``PLAN_KEY``) from its newest run record that has one:
    sweep name -> one dict per planned trial, with the record's ``adaptive_seeds`` (True
    for --seeds auto: seeds past the first round run only where the design needs them).
    ``runs``: ``read_runs`` (oldest first)."""
    plans: dict[str, list[dict]] = {}
    for run in runs:
        plan = run.get(PLAN_KEY)
        if isinstance(plan, list) and isinstance(run.get("sweep"), str):
            adaptive = bool(run.get("adaptive_seeds"))
            plans[run["sweep"]] = [{**entry, "adaptive_seeds": adaptive} for entry in plan
                                   if isinstance(entry, dict)]  # fmt: skip
    return plans


def lock_note(pid: int, host: str, since: dt.datetime) -> str:
    """What the sweep holding the store writes in ``LOCK_FILE`` (``holder_alive`` reads it)."""
    return f"pid {pid} on host {host}, since {since:%Y-%m-%d %H:%M:%S} UTC"


def holder_alive(root: str | Path) -> bool | None:
    """Is the sweep that last held the store's lock still running? True or False when it
    ran on this host (its process exists or not), None when that cannot be told (no lock
    file, another host, an unreadable note)."""
    try:
        note = (Path(root) / LOCK_FILE).read_text()
    except OSError:
        return None
    match = re.match(r"pid (\d+) on host (\S+),", note)
    if match is None or match.group(2) != socket.gethostname():
        return None
    return pid_alive(int(match.group(1)))


def pid_alive(pid: int) -> bool:
    """Does process ``pid`` exist on this host (one we may not signal counts)?"""
    try:
        with contextlib.suppress(PermissionError):
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_dead_dirs(parent: Path, name: re.Pattern[str]) -> list[Path]:
    """Remove the directories in ``parent`` whose name matches ``name`` and whose owner (the
    pattern's first group: a pid on this host) is gone; return them."""
    removed: list[Path] = []
    for entry in parent.iterdir() if parent.is_dir() else ():
        match = name.fullmatch(entry.name)
        if match and entry.is_dir() and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def is_store(root: str | Path) -> bool:
    """True when ``root`` holds a store's marker file."""
    return (Path(root) / MARKER).is_file()


def store_version(root: str | Path) -> int | None:
    """The schema version in the store's marker (None when ``root`` holds no marker).

    A newer version than this code writes is a StoreVersionError: one line, nothing read.
    """
    path = Path(root) / MARKER
    try:
        marker = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable store marker ({exc}); restore it.") from None
    version = marker.get("schema_version") if isinstance(marker, dict) else None
    return check_version(
        version, current=SCHEMA_VERSION, where=str(root), what="result store schema",
        error=StoreVersionError,
    )  # fmt: skip


def mark_store(root: str | Path) -> None:
    """Write the marker of a store at ``root`` in this version (a newer store: StoreVersionError).

    An older store's files stay as they are (readers upgrade them); its marker, which names
    the newest version any of its files may have, is raised to this version.
    """
    version = store_version(root)
    if version == SCHEMA_VERSION:
        return
    path = Path(root) / MARKER
    created_at = dt.datetime.now(dt.timezone.utc).isoformat()
    if version is not None:
        created_at = json.loads(path.read_text()).get("created_at", created_at)
    marker = {"schema_version": SCHEMA_VERSION, "created_at": created_at}
    atomic_write_bytes(path, json.dumps(marker, indent=2).encode())


@dataclass
class TableRead:
    """One table as read from disk, and the files that could not be read (path, reason)."""

    table: pa.Table
    corrupt: list[tuple[Path, str]] = field(default_factory=list)


def _table_paths(directory: Path) -> list[Path]:
    """The table's readable Parquet files in write order: compacted parts (oldest first),
    then per-trial files. Temp files of writes in progress (names starting with '.') are
    never listed."""
    if not directory.is_dir():
        return []
    paths = [p for p in directory.glob("*.parquet") if not p.name.startswith(".")]
    return sorted(paths, key=lambda p: (not p.name.startswith(COMPACTED_PREFIX), p.name))


def _read_file(
    path: Path, table: str, schema: pa.Schema, read_dictionary: Sequence[str], full: bool
) -> pa.Table | tuple[Path, str] | None:
    """One file of ``table`` conformed to ``schema`` (missing columns as nulls, an older
    version upgraded), (path, reason) when it cannot be read, or None when it vanished
    since it was listed (compacted meanwhile). A newer version raises StoreVersionError.

    ``schema`` has the dictionary type for the ``read_dictionary`` columns; ``full`` says
    it holds every column of the table (then the file is read whole, the fast case).
    """
    try:
        parquet_file = pq.ParquetFile(path, read_dictionary=list(read_dictionary) or None)
        version = _file_version(parquet_file)
        if version == SCHEMA_VERSION:
            part = parquet_file.read(columns=None if full else _present(parquet_file, schema))
        else:  # read whole: an upgrade may need columns the current schema no longer has
            steps = {old: functools.partial(step, table) for old, step in UPGRADES.items()}
            part = upgrade(
                parquet_file.read(), version, current=SCHEMA_VERSION, upgrades=steps,
                where=str(path), what="result store file schema", error=StoreVersionError,
            )  # fmt: skip
        if part.schema.equals(schema, check_metadata=False):
            return part
        return _fit(part, schema)
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException) as exc:
        return path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _file_version(parquet_file: pq.ParquetFile) -> object:
    """The file's ``schema_version`` (1, the first, when it has none)."""
    raw = (parquet_file.schema_arrow.metadata or {}).get(b"schema_version")
    if raw is None:
        return 1
    text = raw.decode(errors="replace")
    return int(text) if text.isdigit() else text


def _present(parquet_file: pq.ParquetFile, schema: pa.Schema) -> list[str]:
    present = set(parquet_file.schema_arrow.names)
    return [name for name in schema.names if name in present]


def read_table(
    root: str | Path,
    table: str,
    columns: list[str] | None = None,
    *,
    read_dictionary: Sequence[str] = (),
) -> TableRead:
    """Read every Parquet file of ``table``, skipping (and naming) those that are corrupt.

    Files are read separately (in a small thread pool) so a truncated file costs only its
    own rows. Temp files of writes in progress (names starting with '.') are never read.
    Rows come in write order (compacted parts first, then per-trial files), so a reader
    that deduplicates keeping the last row keeps the newest. The result has the table's
    schema (or ``columns`` of it) even when there are no files; a column missing from an
    older file comes back as nulls. Columns named in ``read_dictionary`` come back
    dictionary-encoded (much faster for a repeated ``trial_id``; pandas turns them into
    categoricals).
    """
    store_version(root)
    schema = SCHEMAS[table]
    full = columns is None or list(columns) == schema.names
    if columns is not None:
        schema = pa.schema([schema.field(name) for name in columns])
    dictionary_columns = [name for name in read_dictionary if name in schema.names]
    for name in dictionary_columns:
        index = schema.get_field_index(name)
        dictionary_type = pa.dictionary(pa.int32(), schema.field(name).type)
        schema = schema.set(index, schema.field(name).with_type(dictionary_type))
    for _attempt in range(3):
        paths = _table_paths(table_dir(root, table))
        results = _read_files(paths, table, schema, dictionary_columns, full)
        if None not in results:
            break  # else a file vanished (compacted while we read): list and read again
    parts = [result for result in results if _is_part(result)]
    corrupt = [result for result in results if isinstance(result, tuple)]
    return TableRead(pa.concat_tables(parts) if parts else schema.empty_table(), corrupt)


def _read_files(
    paths: list[Path], table: str, schema: pa.Schema, read_dictionary: Sequence[str], full: bool
) -> list[pa.Table | tuple[Path, str] | None]:
    """``_read_file`` over ``paths`` in a small thread pool (Parquet decoding releases the
    GIL), results in the order of ``paths``."""
    if len(paths) <= 1:
        return [_read_file(path, table, schema, read_dictionary, full) for path in paths]
    with ThreadPoolExecutor(max_workers=min(4, len(paths))) as pool:
        return list(pool.map(lambda p: _read_file(p, table, schema, read_dictionary, full), paths))


def _is_part(result: pa.Table | tuple[Path, str] | None) -> bool:
    return isinstance(result, pa.Table)


@dataclass
class Compaction:
    """What ``compact_table`` did: the part it wrote, how many files it merged and removed,
    and the files it left alone because they are corrupt or changed while it ran."""

    table: str
    written: Path | None
    merged: int
    removed: int
    kept: list[Path] = field(default_factory=list)


def compact_table(root: str | Path, table: str) -> Compaction:
    """Merge the table's Parquet files into one compacted part, then remove the merged files.

    Readers of a store with thousands of trials spend most of their time opening
    per-trial files; one part file reads in a fraction of a second. The part is written
    atomically (temp name, then rename) before any file is removed, so a reader sees every
    row at all times, some twice for a moment (readers deduplicate). Corrupt files are left
    in place (readers keep naming them), and so is a file replaced while compaction ran.
    Meant for when no sweep writes to the store, e.g. at the end of a sweep.
    """
    store_version(root)
    directory = table_dir(root, table)
    paths = _table_paths(directory)
    if len(paths) <= 1:
        return Compaction(table, None, 0, 0)
    before = {path: _identity(path) for path in paths}
    schema = SCHEMAS[table]
    results = _read_files(paths, table, schema, (), full=True)
    merged = [path for path, result in zip(paths, results, strict=True) if _is_part(result)]
    parts = [result for result in results if _is_part(result)]
    kept = [result[0] for result in results if isinstance(result, tuple)]
    if len(parts) <= 1:
        return Compaction(table, None, 0, 0, kept)
    compacted = pa.concat_tables(parts).replace_schema_metadata(
        {"schema_version": str(SCHEMA_VERSION)}
    )
    name = f"{COMPACTED_PREFIX}{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_write(directory / name) as file:
        pq.write_table(compacted, file)
    removed = 0
    for path in merged:
        if _identity(path) == before[path]:
            path.unlink(missing_ok=True)
            removed += 1
        else:
            kept.append(path)
    return Compaction(table, directory / name, len(merged), removed, kept)


def compact_store(root: str | Path) -> list[Compaction]:
    """``compact_table`` for every table of the store at ``root``."""
    if not is_store(root):
        raise StoreError(f"{root} is not a result store (no {MARKER}): give a store's directory.")
    return [compact_table(root, table) for table in TABLES]


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of ``path``: a writer's rename-into-place changes it."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
