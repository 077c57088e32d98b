"""The result store's format: the contract between ``sweeps`` (writes) and ``analysis`` (reads).

A store is a directory holding a marker file and one subdirectory per table, each a set of
Parquet files (one per trial, written atomically: temp name, then rename). Any Parquet
reader (pyarrow.dataset, pandas, polars, DuckDB) can open a table directory. Each file's
metadata carries ``schema_version``.

This module imports pyarrow and charlm's config only: analysis imports it without Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from charlm.config import ModelConfig, TrainConfig, config_fields

__all__ = [
    "MARKER",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "TABLES",
    "StoreError",
    "TableRead",
    "is_store",
    "read_table",
    "table_dir",
]

SCHEMA_VERSION = 1
MARKER = "charlm-store.json"
TABLES = ("trials", "curves", "attention", "samples")


class StoreError(ValueError):
    """A results directory that cannot be used as a store; the message says what to do."""


_ARROW_TYPES = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
_CONFIG_TYPES = {
    "n_layer": int, "n_head": int, "n_embed": int, "block_size": int, "dropout": float,
    "bias": bool, "vocab_size": int, "dataset": str, "data_dir": str, "seed": int,
    "batch_size": int, "max_iters": int, "eval_interval": int, "eval_iters": int,
    "learning_rate": float, "min_lr": float, "warmup_iters": int, "lr_decay_iters": int,
    "weight_decay": float, "beta1": float, "beta2": float, "grad_clip": float,
    "probe_interval": int, "probe_batch_size": int, "sample_tokens": int,
    "temperature": float, "top_k": int, "device": str, "num_threads": int,
}  # fmt: skip


def _config_columns() -> list[pa.Field]:
    """Every ModelConfig and TrainConfig field as its own column (the requested device is
    ``requested_device``: ``device`` holds the one the trial really used)."""
    columns = []
    for name in config_fields(ModelConfig) + config_fields(TrainConfig):
        if name in ("dataset", "seed"):
            continue  # identity columns, listed first
        column = "requested_device" if name == "device" else name
        columns.append(pa.field(column, _ARROW_TYPES[_CONFIG_TYPES[name]]))
    return columns


_TS = pa.timestamp("us", tz="UTC")

TRIALS = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("sweep", pa.string()),
        pa.field("kind", pa.string()),  # 'ablation' | 'search' | 'single'
        pa.field("dataset", pa.string()),
        pa.field("factor", pa.string()),  # 'baseline' for the baseline config
        pa.field("level", pa.string()),  # the level's label, e.g. '8' or 'n_embed=32,n_head=2'
        pa.field("seed", pa.int64()),
        *_config_columns(),
        pa.field("n_params", pa.int64()),
        pa.field("status", pa.string()),  # 'ok' | 'failed'
        pa.field("error", pa.string()),
        pa.field("early_stopped", pa.bool_()),
        pa.field("best_val_loss", pa.float64()),
        pa.field("final_train_loss", pa.float64()),
        pa.field("final_val_loss", pa.float64()),
        pa.field("last_step", pa.int64()),
        pa.field("train_time_s", pa.float64()),
        pa.field("train_tokens_per_s", pa.float64()),
        pa.field("inference_tokens_per_s", pa.float64()),
        pa.field("eval_mode", pa.string()),  # how val loss was measured: 'exact' | 'sampled'
        pa.field("device", pa.string()),
        pa.field("attempts", pa.int64()),  # 1 + retries after failures (e.g. a lost node)
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
    ]
)

CURVES = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("step", pa.int64()),
        pa.field("tokens_seen", pa.int64()),
        pa.field("elapsed_s", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("train_loss", pa.float64()),
        pa.field("val_loss", pa.float64()),
        pa.field("best_val_loss", pa.float64()),
        pa.field("tokens_per_s", pa.float64()),
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
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "trials": TRIALS,
    "curves": CURVES,
    "attention": ATTENTION,
    "samples": SAMPLES,
}


def table_dir(root: str | Path, table: str) -> Path:
    """The directory of one table in the store at ``root``."""
    if table not in SCHEMAS:
        raise KeyError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
    return Path(root) / table


def is_store(root: str | Path) -> bool:
    """True when ``root`` holds a store's marker file."""
    return (Path(root) / MARKER).is_file()


def read_marker(root: str | Path) -> dict:
    """The marker's content (schema_version, created_at)."""
    return json.loads((Path(root) / MARKER).read_text())


@dataclass
class TableRead:
    """One table as read from disk, and the files that could not be read (path, reason)."""

    table: pa.Table
    corrupt: list[tuple[Path, str]] = field(default_factory=list)


def read_table(root: str | Path, table: str, columns: list[str] | None = None) -> TableRead:
    """Read every Parquet file of ``table``, skipping (and naming) those that are corrupt.

    Files are read one by one so a truncated file costs only its own rows. Temp files of
    writes in progress (names starting with '.') are never read. The result has the
    table's full schema even when there are no files.
    """
    schema = SCHEMAS[table]
    if columns is not None:
        schema = pa.schema([schema.field(name) for name in columns])
    directory = table_dir(root, table)
    parts: list[pa.Table] = []
    corrupt: list[tuple[Path, str]] = []
    paths = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    for path in paths:
        try:
            part = pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            corrupt.append((path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        parts.append(part.select(schema.names).cast(schema))
    if not parts:
        return TableRead(schema.empty_table(), corrupt)
    return TableRead(pa.concat_tables(parts), corrupt)
