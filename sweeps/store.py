"""The write side of the result store (the driver's Tune callback in ``sweeps.runner`` calls it).

Every file is written atomically (a temp name starting with '.', then ``os.replace``), so a
crash never leaves a torn file and readers can open the store while a sweep runs. A trial's
``trials`` row is written last: a trial counts as finished only once that row exists.
Files the store cannot read are never overwritten; a rerun sets an unreadable trials file
aside (``set_aside_unreadable``) and runs its trials again.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from charlm.cli import check_writable_dir
from charlm.config import ConfigError
from charlm.fsio import atomic_write, atomic_write_bytes
from charlm.results import curve_types, metrics
from sweeps.schema import (
    LOCK_FILE,
    MARKER,
    RUNS_DIR,
    TABLES,
    StoreError,
    compact_table,
    conform,
    is_store,
    lock_note,
    mark_store,
    read_table,
    store_version,
    table_dir,
)

MODELS_DIR = "models"
RAY_DIR = "_ray"  # default checkpoint storage of the runs of this store


class ResultsDirError(StoreError, ConfigError):
    """A --results directory a sweep cannot use: bad input (the CLIs exit 2 on ConfigError)."""


def check_results_dir(root: Path) -> None:
    """Raise ResultsDirError unless ``root`` is a store, an empty or absent directory we may write.

    Nothing is written: this runs before a sweep starts.
    """
    if root.is_dir() and not is_store(root) and any(p.name != LOCK_FILE for p in root.iterdir()):
        raise ResultsDirError(
            f"results directory {root} is not a result store (no {MARKER}) and is not empty: "
            "pick a new or empty directory with --results."
        )
    if root.is_dir():
        store_version(root)  # a store of a newer charlm-sweeps: StoreVersionError
    try:
        check_writable_dir(root, "--results")
    except ConfigError as exc:
        raise ResultsDirError(str(exc)) from None
    if root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
        raise ResultsDirError(f"--results {root}: not writable; name a directory you can write to.")


class StoreBusyError(ConfigError):
    """Another driver holds the store's lock."""


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold RESULTS/.lock for the block: one driver per store.

    ``fcntl.flock`` is released by the kernel when its holder exits, however it dies (a
    SIGKILLed driver leaves no stale lock). A second driver gets StoreBusyError naming the
    holder's pid and host. Holding the lock, any RESULTS/_ray run left behind is a dead
    driver's, so it is removed: its checkpoints must not fill the disk of the next run.
    """
    root.mkdir(parents=True, exist_ok=True)
    # The lock file is written in place on purpose: replacing it (atomic_write) would
    # give it a new inode and another driver would lock that one.
    descriptor = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
            raise StoreBusyError(
                f"results directory {root} is in use by another sweep "
                f"({holder or 'holder unknown'}): wait for it to finish, or use another "
                "--results."
            ) from None
        with suppress(OSError):  # a full disk: the lock holds without the note
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, lock_note(os.getpid(), socket.gethostname(), _now()).encode(), 0)
        stale = root / RAY_DIR
        if stale.is_dir():
            for run in stale.iterdir():
                shutil.rmtree(run, ignore_errors=True)
        yield
    finally:
        os.close(descriptor)


def trial_statuses(root: str | Path) -> tuple[dict[str, str], list[tuple[Path, str]]]:
    """(trial_id -> status of every trial with a row, unreadable trials files); no writes.

    A trial whose trials file is unreadable is neither finished nor to be run again over
    that file: callers skip it (its id is the file's stem).
    """
    read = read_table(root, "trials", columns=["trial_id", "status"])
    columns = read.table.to_pydict()
    return dict(zip(columns["trial_id"], columns["status"], strict=True)), read.corrupt


def set_aside_unreadable(root: str | Path) -> list[tuple[Path, Path, str]]:
    """Rename every unreadable ``trials`` file to ``<name>.unreadable-<UTC time>`` (no
    longer read as part of the table, kept for the user); return (file, new name, reason).

    Its trials then have no row, so the sweep runs them again: a trials file is the
    trial's mark of completion, and a mark nobody can read marks nothing.
    """
    moved = []
    for path, reason in read_table(root, "trials", columns=["trial_id"]).corrupt:
        target = path.with_name(f"{path.name}.unreadable-{_now():%Y%m%dT%H%M%S%f}")
        with suppress(FileNotFoundError):  # replaced by a writer meanwhile: nothing to move
            os.replace(path, target)
            moved.append((path, target, reason))
    return moved


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class TrialRecord:
    """What the driver has seen of one trial so far: its spec columns and reported results."""

    trial_id: str
    columns: dict[str, Any]
    started_at: dt.datetime = field(default_factory=_now)
    curve: dict[int, dict[str, Any]] = field(default_factory=dict)
    attention: dict[tuple[int, int, int], dict[str, Any]] = field(default_factory=dict)
    final: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    attempts: int = 1

    def add_report(self, result: dict[str, Any]) -> None:
        """Take in one report of the trial: charlm.train's metrics at an evaluation (the
        curve point, the attention rows) or its last one (the final metrics)."""
        self.last = result
        if "val_loss" in result:
            self.curve[result["step"]] = {key: result.get(key) for key in curve_types()}
        for row in result.get("attention") or []:
            self.attention[(row["step"], row["layer"], row["head"])] = row
        if result.get("final"):
            self.final = result


class ResultStore:
    """A result store directory (created with its marker on first use)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        check_results_dir(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        mark_store(self.root)
        for table in TABLES:
            table_dir(self.root, table).mkdir(exist_ok=True)
        (self.root / MODELS_DIR).mkdir(exist_ok=True)

    def compact(self, min_files: int = 64) -> None:
        """Merge a table's per-trial files into one part once it has ``min_files`` or more,
        so readers open one file instead of thousands. Only while no trial is writing."""
        for table in TABLES:
            if len(list(table_dir(self.root, table).glob("*.parquet"))) >= min_files:
                compact_table(self.root, table)

    # ----------------------------------------------------------------- writing

    def write_run(self, info: dict[str, Any]) -> Path:
        """Record one sweep command run (its settings, code version and commit, host) as
        ``sweep_runs/<UTC time>-<pid>.json``; the report's set-up section reads these."""
        started = _now()
        record = {"started_at": started.isoformat(), **info}
        path = self.root / RUNS_DIR / f"{started:%Y%m%dT%H%M%S}-{os.getpid()}.json"
        path.parent.mkdir(exist_ok=True)
        atomic_write_bytes(path, (json.dumps(record, indent=2, default=str) + "\n").encode())
        return path

    def write_rows(
        self,
        table: str,
        trial_id: str,
        rows: pa.Table | Sequence[dict[str, Any]] | dict[str, Sequence[Any]],
    ) -> Path:
        """Write one trial's rows of ``table`` as ``<table>/<trial_id>.parquet``, atomically,
        with the table's schema and version (rows as in ``conform``; missing columns null)."""
        arrow = conform(table, rows)
        path = table_dir(self.root, table) / f"{trial_id}.parquet"
        if path.exists() and not _readable(path):
            return path  # never overwrite a file we cannot read: the user decides what to do
        with atomic_write(path) as file:
            pq.write_table(arrow, file)
        return path

    def write_progress(self, record: TrialRecord) -> None:
        """The curve (and attention rows) reported so far, so readers see running trials."""
        self.write_rows("curves", record.trial_id, _curve_rows(record))
        if record.attention:
            self.write_rows("attention", record.trial_id, _attention_rows(record))

    def write_trial(
        self,
        record: TrialRecord,
        status: str,
        error: str | None,
        model_source: Callable[[Path], object] | None = None,
    ) -> None:
        """Write every table of a trial that ended, ``trials`` last (it marks completion).

        ``model_source`` is a callable copying the final weights to a given path, or None.
        """
        self.write_progress(record)
        final = record.final or {}
        last = record.last or {}
        if final.get("sample"):
            self.write_rows("samples", record.trial_id, [{"trial_id": record.trial_id,
                                                          **final["sample"]}])  # fmt: skip
        if model_source is not None and status == "ok":
            model_source(self.root / MODELS_DIR / f"{record.trial_id}.pt")
        curve = list(record.curve.values())
        best = min((p["val_loss"] for p in curve), default=None)
        row = {
            **record.columns,
            **_reported(final, last),
            "trial_id": record.trial_id,
            "status": status,
            "error": error,
            "early_stopped": status == "ok" and not final,
            "best_val_loss": final.get("best_val_loss", best),
            "import_s": final.get("import_s"),
            "num_threads": final.get("num_threads", record.columns.get("num_threads")),
            "attempts": record.attempts,
            "started_at": record.started_at,
            "finished_at": (
                dt.datetime.fromtimestamp(last["reported_at"], dt.timezone.utc)
                if status == "ok" and last.get("reported_at")
                else _now()
            ),
        }
        self.write_rows("trials", record.trial_id, [row])


def _reported(final: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The run's metric columns (``charlm.results.TrialResult``) from its final report; a
    trial stopped before that (ASHA) has its last report's stand-ins, else nulls."""
    return {
        name: final.get(name, last.get(spec.stand_in)) if spec.stand_in else final.get(name)
        for name, (_, spec) in metrics().items()
        if spec.column
    }


def _readable(path: Path) -> bool:
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return False
    return True


def _curve_rows(record: TrialRecord) -> list[dict[str, Any]]:
    return [{"trial_id": record.trial_id, **record.curve[step]} for step in sorted(record.curve)]


def _attention_rows(record: TrialRecord) -> list[dict[str, Any]]:
    return [{"trial_id": record.trial_id, **record.attention[key]}
            for key in sorted(record.attention)]  # fmt: skip
