"""Ray connection and Tuner construction: resources, failure and resume policy, callbacks.

``connect`` starts an embedded local Ray or joins the cluster that a cluster-launcher YAML
describes; ``run_trials`` runs trials with Ray Tune and streams every report into the
result store through a driver-side callback, with a concise live progress view.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from charlm.data import resolve_data_dir
from charlm.fsio import atomic_write
from charlm.text import format_clock
from charlm.train import MODEL_FILE
from sweeps import interrupt
from sweeps.options import DEFAULT_STATE_EVERY_S, ClusterError, Resources, load_cluster_config
from sweeps.schema import config_label, remove_dead_dirs
from sweeps.storage import (
    EXAMPLE,
    Storage,
    StorageError,
    probe_from_node,
    read_answers,
    redact,
    remove_probe,
    resolve_storage,
    write_probe,
)
from sweeps.store import ResultStore, TrialRecord
from sweeps.trainable import PREVIOUS_FAILURE, error_line, member_dir, run_trial

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

DEFAULT_MAX_FAILURES = 3
GCS_PORT = 6379
PROBE_TIMEOUT_S = 60.0
# A run's directory in the checkpoint storage: NAME-YYYYmmdd-HHMMSS-PID (see run_trials). A
# driver killed mid-run leaves it behind (checkpoints of unfinished trials, which a rerun
# starts afresh): the next run removes those of drivers gone from this host.
_RUN_DIR = re.compile(r".+-\d{8}-\d{6}-(\d+)")


@dataclass(frozen=True)
class Connection:
    """What ``connect`` joined, and what that means for running trials there.

    ``reuse_actors``: may Tune reuse trial actors? It saves a new process's start and imports
    per trial (benchmarks/sweep_overhead.py), but only on the embedded local Ray: on a cluster
    a cached actor can sit on a node that died or was scaled down, and Tune then fails the
    PENDING trial it hands that actor to for good, whatever FailureConfig says (seen in
    benchmarks/soak.py's runs, which kill worker nodes).
    ``storage``: where trial checkpoints go, proven reachable from every node.
    """

    description: str
    reuse_actors: bool
    storage: Storage
    nodes: int = 1


# ------------------------------------------------------------------ cluster


def head_address(config: dict[str, Any], path: str | Path) -> str:
    """The GCS address of the head that ``config`` describes.

    RAY_ADDRESS (set by Ray Jobs and `ray submit`) wins; a `provider: local` config names
    its head_ip; a cloud config does not know its head's IP until `ray up` ran, so the
    driver must run on the head (`ray submit` / Ray Jobs), where Ray is found locally.
    """
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    provider = config.get("provider", {})
    if provider.get("type") == "local" and provider.get("head_ip"):
        return f"{provider['head_ip']}:{GCS_PORT}"
    return f"127.0.0.1:{GCS_PORT}"


def check_reachable(address: str, path: str | Path, script: str) -> None:
    """ClusterError (what to run, naming ``script``) unless the head at ``address`` answers."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            pass
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ClusterError(
            f"cannot reach the Ray head at {address} ({reason}): start the cluster with "
            f"`ray up {path}` and run this on the head (`ray submit {path} {script} "
            "-- ...`), or open a tunnel to it first."
        ) from None


def _auth_for_existing_cluster() -> None:
    """Ray 2.59+: a head started by `ray start --head` wants its token; use it when we have it.

    An explicit RAY_AUTH_MODE wins. Token mode also works against a head without auth
    (measured), so sending the token we have is safe either way.
    """
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"
        # Ray caches its config (auth mode included) at import: without a reload the
        # variable is ignored and ray.init fails after ~20 s with InvalidAuthToken. This is
        # what Ray's own _enable_token_auth does (private API, pinned by test_reliability).
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")


def connect(
    cluster: str | Path | None = None,
    *,
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    verbose: bool = False,
    script: str = "sweeps/ablation.py",
    results: str | Path = "results",
    storage: str | None = None,
) -> Connection:
    """Connect this driver to Ray; return the Connection that ``run_trials`` runs on.

    No cluster: an embedded local Ray with this machine's CPUs and GPUs (or the counts
    given). With a cluster file (or address): that cluster's head; unreachable -> ClusterError,
    whose advice names ``script`` (the command being run). The checks of ``storage``
    (default ``RESULTS/_ray``) that need no Ray ran before (``sweeps.launch.check_placement``);
    on a cluster it is probed from every live node before anything runs; storage some node
    cannot read and write -> StorageError (Ray is shut down again, nothing is left behind).
    """
    config = load_cluster_config(cluster) if cluster is not None and address is None else {}
    embedded = cluster is None and address is None
    where = resolve_storage(storage, Path(results))  # checked before Ray: check_placement
    # On a cluster each node uses its own data cache.
    env_vars = {"CHARLM_DATA_DIR": str(resolve_data_dir())} if embedded else {}
    common: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
        "runtime_env": {"env_vars": env_vars},
    }
    if embedded:
        ray.init(
            address="local",
            num_cpus=num_cpus,  # type: ignore[arg-type]  # --num-cpus is a float; Ray's hint int
            num_gpus=num_gpus,  # type: ignore[arg-type]
            include_dashboard=False,
            object_store_memory=512 * 1024**2,
            **common,
        )
        return Connection(f"embedded local Ray: {_counts()}", reuse_actors=True, storage=where)
    if address is None:
        assert cluster is not None  # the embedded case (neither given) returned above
        address = head_address(config, cluster)
    check_reachable(address, cluster or "cluster.yaml", script)
    _auth_for_existing_cluster()
    ray.init(address=address, **common)
    try:
        nodes = _probe_storage(where)
    except BaseException:
        ray.shutdown()
        raise
    cluster_text = f"Ray cluster at {address}: {nodes} node{'s' * (nodes != 1)}, {_counts()}"
    # reuse_actors=False: see Connection
    return Connection(f"{cluster_text}; checkpoints in {where.shown}", False, where, nodes)


def _counts() -> str:
    """The connected Ray's CPUs and GPUs, as the run's first line names them."""
    resources = ray.cluster_resources()
    return f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"


def _probe_storage(storage: Storage) -> int:
    """Prove every live node can read and write ``storage``; return the number of nodes.

    The driver writes a probe file; a zero-CPU task pinned to each node reads it and writes
    its answer beside it; the driver reads the answers back. All of it is removed after.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = {node["NodeID"]: node for node in ray.nodes() if node.get("Alive")}
    tags = {node_id: node_id[:16] for node_id in nodes}
    name, token, created = write_probe(storage)
    problems: list[str] = []
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(probe_from_node)
        pending = {
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
            ).remote(storage.location, name, token, tags[node_id]): node_id
            for node_id in nodes
        }
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=PROBE_TIMEOUT_S)
        answered = []
        alive = {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
        for ref, node_id in pending.items():
            if node_id not in alive:
                continue  # died meanwhile: a lost node, not a storage problem
            if ref not in ready:
                problems.append(f"{_node_label(nodes[node_id])}: no answer within "
                                f"{PROBE_TIMEOUT_S:.0f} s")  # fmt: skip
                continue
            try:
                error = ray.get(ref)
            except Exception as exc:
                error = redact(" ".join(str(exc).split())[:300])
            if error:
                problems.append(f"{_node_label(nodes[node_id])} cannot read it ({error})")
            else:
                answered.append(node_id)
        lost = set(read_answers(storage, name, token, [tags[n] for n in answered]))
        problems += [
            f"{_node_label(nodes[node_id])} wrote its answer where this machine cannot see it"
            for node_id in answered
            if tags[node_id] in lost
        ]
    finally:
        remove_probe(storage, name, list(tags.values()), created)
    if problems:
        what = (
            f"checkpoints go to {storage.shown} on this machine by default"
            if storage.default
            else f"--storage {storage.shown} is not reachable from every node"
        )
        raise StorageError(
            f"{what}, but node {'; node '.join(problems)} (of {len(nodes)} nodes): pass "
            f"--storage with a location every node can read and write, {EXAMPLE}."
        )
    return len(nodes)


def _node_label(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"


# ------------------------------------------------------------------ running


@dataclass
class SweepOutcome:
    """What happened to the trials this run launched."""

    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    early_stopped: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0


# (trial_id, store columns) of each store row a Tune trial writes: one for a grid trial,
# one per seed for a multi-seed search trial (in the order of its reports' ``members``).
Describe = Callable[[dict[str, Any], dict[str, Any] | None], list[tuple[str, dict[str, Any]]]]


def describe_grid_trial(
    config: dict[str, Any], result: dict[str, Any] | None
) -> list[tuple[str, dict[str, Any]]]:
    """[(trial_id, store columns)] of a grid trial: both travel in its config."""
    return [(config["trial"]["trial_id"], config["trial"]["columns"])]


@dataclass(frozen=True)
class RunSettings:
    """What ``run_trials`` runs and how (beyond the connection, store and param_space).

    ``total`` is the number of trials (for the progress view); ``max_iters`` maps trial
    ids to their length, ``default_max_iters`` is the length of the others; ``estimates``
    maps trial ids to their estimated seconds (``sweeps.estimate``), ``default_estimate_s``
    is the others' (for the ETA; without either it extrapolates the steps done so far);
    ``waiting`` (what only an autoscaler can provide) is shown while no trial runs. Tune's
    experiment state (trial statuses, for ``Tuner.restore``, which no CLI uses) is uploaded
    every ``state_every_s`` seconds.
    """

    name: str
    total: int
    resources: Resources = field(default_factory=Resources)
    describe: Describe = describe_grid_trial
    trainable: Callable[[dict[str, Any]], None] = run_trial
    tune_config: tune.TuneConfig | None = None
    max_iters: dict[str, int] = field(default_factory=dict)
    default_max_iters: int | None = None
    max_failures: int = DEFAULT_MAX_FAILURES
    progress: bool = True
    progress_period_s: float = 10.0
    waiting: str | None = None
    estimates: dict[str, float] = field(default_factory=dict)
    default_estimate_s: float | None = None
    state_every_s: float = DEFAULT_STATE_EVERY_S


def _members(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each store row's metrics in one report: its ``members`` (a multi-seed trial, each
    with the report's timestamps) or the report itself."""
    if "members" not in result:
        return [result]
    stamps: dict[str, Any] = {key: result[key] for key in ("started_at", "reported_at", "import_s")
              if key in result}  # fmt: skip
    return [{**stamps, **member} for member in result["members"]]


def _error_line(trial: Trial) -> str:
    """The line of the trial's latest failure: from its local error file, written when the
    failure is handled (the copy in storage that ``get_error`` reads is synced later)."""
    local = Path(trial.error_file) if trial.error_file else None
    if local is not None and local.is_file():
        return error_line(local.read_text(errors="replace"))
    return error_line(str(trial.get_error() or ""))


class _StoreCallback(tune.Callback):
    """Driver side: every report and completion of every trial goes into the store."""

    def __init__(self, store: ResultStore, describe: Describe, outcome: SweepOutcome):
        self.store, self.describe, self.outcome = store, describe, outcome
        self.records: dict[str, list[TrialRecord]] = {}

    def _records(self, trial: Trial, result: dict[str, Any] | None = None) -> list[TrialRecord]:
        if trial.trial_id not in self.records:
            records = []
            for trial_id, columns in self.describe(trial.config, result):
                record = TrialRecord(trial_id, columns)
                if result is not None and result.get("started_at"):
                    record.started_at = dt.datetime.fromtimestamp(
                        result["started_at"], dt.timezone.utc
                    )
                records.append(record)
            self.records[trial.trial_id] = records
        return self.records[trial.trial_id]

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        records = self._records(trial, result)
        for record, metrics in zip(records, _members(result), strict=True):
            record.add_report(metrics)
            self.store.write_progress(record)

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        records = self._records(trial)
        for record in records:
            record.attempts += 1
        # The retry compares its own failure with this one (sweeps.trainable): the same
        # error at the same step ends the trial instead of another retry.
        last = records[0].last if records else None
        trial.config[PREVIOUS_FAILURE] = {"error": _error_line(trial),
                                          "step": (last or {}).get("step")}  # fmt: skip

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        records = self._records(trial)
        for index, record in enumerate(records):
            if self._interrupted(record):
                continue
            final = record.final or {}
            status, error = final.get("status", "ok"), final.get("error")
            error = redact(error) if error else error
            copy_model = None
            if trial.checkpoint is not None and status == "ok" and final:
                subdir = member_dir(index) if len(records) > 1 else ""
                copy_model = _model_copier(trial.checkpoint, subdir)
            self.store.write_trial(record, status, error, copy_model)
            self._count(record, status, error)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        records = [r for r in self._records(trial) if not self._interrupted(r)]
        error = _error_line(trial)
        for record in records:
            self.store.write_trial(record, "failed", error)
            self._count(record, "failed", error)

    def _interrupted(self, record: TrialRecord) -> bool:
        """A trial stopped by SIGINT/SIGTERM before its end gets no trials row: a rerun runs it."""
        if interrupt.requested() and not record.final:
            self.outcome.interrupted.append(record.trial_id)
            return True
        return False

    def _count(self, record: TrialRecord, status: str, error: str | None) -> None:
        if status == "ok":
            self.outcome.ok.append(record.trial_id)
            if not record.final:
                self.outcome.early_stopped.append(record.trial_id)
        else:
            self.outcome.failed[record.trial_id] = error or "failed"


def _model_copier(checkpoint: tune.Checkpoint, subdir: str) -> Callable[[Path], None]:
    """A function copying the model file in ``subdir`` of ``checkpoint`` to a destination."""

    def copy_model(destination: Path) -> None:
        with checkpoint.as_directory() as directory:
            source = Path(directory) / subdir / MODEL_FILE
            if source.is_file():
                with atomic_write(destination) as file, source.open("rb") as data:
                    shutil.copyfileobj(data, file)

    return copy_model


class _KeepLatestCheckpoint(tune.Callback):
    """Driver side: a trial's previous checkpoint is deleted once it reported a newer one.

    What ``CheckpointConfig(num_to_keep=1)`` does, without its cost: with it, Tune uploads
    the whole experiment directory (a directory per trial, pending ones too) after every
    trial checkpoint, so the S3 requests grew with the queue, not with the work
    (benchmarks/s3_requests.py). A retried trial resumes from its newest checkpoint, which
    is kept. Tune's experiment state may still name a deleted one until its next upload;
    nothing restores from it (every run is a fresh experiment).
    """

    def __init__(self) -> None:
        self.latest: dict[str, tune.Checkpoint] = {}

    def on_checkpoint(
        self,
        iteration: int,
        trials: list[Trial],
        trial: Trial,
        checkpoint: tune.Checkpoint,
        **info: Any,
    ) -> None:
        previous = self.latest.get(trial.trial_id)
        self.latest[trial.trial_id] = checkpoint
        if (
            previous is not None
            and previous.filesystem is not None
            and previous.path != checkpoint.path
        ):
            with contextlib.suppress(OSError):  # gone already: nothing to free
                previous.filesystem.delete_dir(previous.path)


class _ProgressCallback(tune.Callback):
    """A concise live view: pending/running/done/failed, best val loss so far, ETA.

    The ETA exists from the start: each trial's estimated seconds (``estimates`` by store
    trial id, else ``default_estimate_s``: the dry run's timed steps) times the ratio of
    observed to estimated time of the trials seen so far (1 until one has trained; a
    running trial past its estimate raises it to what it has taken so far), spread
    over ``slots`` trials at once, and never less than the longest remaining trial. "best
    val" waits for an evaluation after training started (step 0's loss ranks nothing).
    """

    def __init__(self, run: RunSettings, slots: int = 1):
        self.run, self.slots = run, max(1, slots)
        self.start = time.monotonic()
        self.last_print = 0.0
        self.last_stamp: int | None = None
        self.pending = False  # a line is due but waits for the next second
        self.progress: dict[str, float] = {}
        # Tune id -> (first report, estimate of the steps left then, share of steps done then)
        self.seen: dict[str, tuple[float, float | None, float]] = {}
        self.seen_own_ids: set[str | None] = set()
        self.observed: dict[str, tuple[float, float]] = {}  # Tune id -> (seconds, estimated)
        self.partial: dict[str, tuple[float, float]] = {}  # the same, of a running trial so far
        self.best: tuple[float, str] | None = None
        self.done = self.failed = 0

    def _eta_s(self, now: float) -> float:
        """Seconds left by the estimates, corrected by the trials seen so far; without
        estimates, the elapsed time scaled by the share of steps done (NaN before any)."""
        if not self.run.estimates and self.run.default_estimate_s is None:
            fraction = min(1.0, sum(self.progress.values()) / max(1, self.run.total))
            return (now - self.start) * (1 - fraction) / fraction if fraction > 0 else math.nan
        evidence = [*self.observed.values(), *self.partial.values()]
        estimated = sum(estimate for _, estimate in evidence)
        ratio = sum(seconds for seconds, _ in evidence) / estimated if estimated > 0 else 1.0
        seen = self.seen.items()
        running = [(now - t0, est) for t, (t0, est, _) in seen if est and t not in self.observed]
        # A running trial that has taken longer than its corrected estimate is evidence too:
        # the trials are at least that much slower than estimated.
        ratio = max([ratio] + [elapsed / estimate for elapsed, estimate in running])
        unseen = max(0, self.run.total - len(self.seen))
        unseen_ids = [t for t in self.run.estimates if t not in self.seen_own_ids]
        pending = sorted((self.run.estimates[t] for t in unseen_ids), reverse=True)[:unseen]
        pending += [self.run.default_estimate_s or 0.0] * (unseen - len(pending))
        left = [max(0.0, estimate * ratio - elapsed) for elapsed, estimate in running]
        left += [estimate * ratio for estimate in pending]
        return max(sum(left) / self.slots, max(left, default=0.0))

    def _line(self, trials: list[Trial]) -> str:
        finished = self.done + self.failed
        running = min(sum(1 for t in trials if t.status == "RUNNING"), self.run.total - finished)
        pending = self.run.total - finished - running
        now = time.monotonic()
        eta = self._eta_s(now)
        best = f"best val {self.best[0]:.4f} ({self.best[1]})" if self.best else "best val -"
        line = (
            f"[{format_clock(now - self.start)}] {self.done} done, {self.failed} failed, "
            f"{running} running, {pending} pending of {self.run.total} | {best} | "
            f"ETA {format_clock(eta) if math.isfinite(eta) else '?'}"
        )
        if self.run.waiting and pending and not running:
            line += f" | {self.run.waiting}"
        return line

    def _maybe_print(self, trials: list[Trial], force: bool = False) -> None:
        """Print a line every ``period_s``, and at once when a trial ends; at most one line
        per second of the elapsed-time stamp: a line due in the same second as the last
        one waits for the next second (on_step_end), the newest state replacing it."""
        now = time.monotonic()
        if not force and not self.pending and now - self.last_print < self.run.progress_period_s:
            return
        stamp = int(now - self.start)
        if stamp == self.last_stamp:
            self.pending = True
            return
        self.last_print, self.last_stamp, self.pending = now, stamp, False
        print(self._line(trials), flush=True)  # stdout at call time: Tune pickles callbacks

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        own_id = trial.config.get("trial", {}).get("trial_id")  # a grid trial's store id
        step = result.get("step")  # a failure before any evaluation has none
        if step is not None:
            limit = self.run.max_iters.get(own_id) or self.run.default_max_iters or step or 1
            self.progress[trial.trial_id] = min(1.0, step / limit)
        self._track(trial.trial_id, own_id)
        val = result.get("val_loss")
        trained = result.get("step", 1) > 0  # step 0's loss is every config's: it ranks nothing
        if val is not None and trained and (self.best is None or val < self.best[0]):
            self.best = (val, self._label(trial.config, result))
        self._maybe_print(trials)

    def _track(self, trial_id: str, own_id: str | None) -> None:
        """Time a trial from its first report (or its first since a retry resumed it, at the
        share of steps it had done: ``start``) against its estimate for the steps left."""
        now, done = time.monotonic(), self.progress.get(trial_id, 0.0)
        if trial_id not in self.seen:
            estimate = self.run.estimates.get(own_id or "", self.run.default_estimate_s)
            self.seen[trial_id] = (now, estimate * (1 - done) if estimate else estimate, done)
            self.seen_own_ids.add(own_id)
        first, estimate, start = self.seen[trial_id]
        if estimate and done > start and trial_id not in self.observed:
            self.partial[trial_id] = (now - first, estimate * (done - start) / (1 - start))

    def _ended(self, trials: list[Trial], trial: Trial) -> None:
        """A trial ended: its observed time against its estimate corrects the ETA; a line
        is printed at once."""
        first, estimate, _ = self.seen.get(trial.trial_id, (None, None, 0.0))
        if first is not None and estimate:
            self.observed[trial.trial_id] = (time.monotonic() - first, estimate)
        self.partial.pop(trial.trial_id, None)
        self.progress[trial.trial_id] = 1.0
        self._maybe_print(trials, force=True)

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """A trial to be retried (its node died): it is pending again, and its clock starts
        at its next report, so waiting for a node does not read as slow training."""
        self.seen.pop(trial.trial_id, None)
        self.partial.pop(trial.trial_id, None)
        self.seen_own_ids.discard(trial.config.get("trial", {}).get("trial_id"))

    def _label(self, config: dict[str, Any], result: dict[str, Any]) -> str:
        """A grid trial's factor=level; a search trial's store trial id(s)."""
        rows = self.run.describe(config, result)
        columns = rows[0][1]
        if columns.get("kind") == "search":
            return "trial " + "+".join(trial_id for trial_id, _ in rows)
        return config_label(columns.get("factor", "?"), columns.get("level", "?"))

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self._maybe_print(trials)  # also while nothing runs: the user sees it is waiting

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        if self.pending:  # printed unless its second is taken; the summary follows anyway
            self._maybe_print(trials, force=True)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.done += 1
        self._ended(trials, trial)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.failed += 1
        self._ended(trials, trial)


def run_trials(
    connection: Connection, store: ResultStore, param_space: dict[str, Any], run: RunSettings
) -> SweepOutcome:
    """Run the trials of ``param_space`` on ``connection``'s Ray and store every result.

    Checkpoints go to ``connection.storage``, one fresh experiment per run so a zombie
    trial of a killed driver never writes where this run reads; in the default storage
    (``RESULTS/_ray``) the runs of drivers that are gone are removed first, and this run's
    own when it ends (the store holds the results). After SIGINT/SIGTERM (see
    ``sweeps.interrupt``) every trial is stopped, finished ones are stored, and the others
    are listed in ``outcome.interrupted``.
    """
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = f"{run.state_every_s:g}"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A failed trial's last report has no val_loss; schedulers must not reject it.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # sweeps.interrupt handles it
    outcome = SweepOutcome()
    callbacks: list[tune.Callback] = [_StoreCallback(store, run.describe, outcome),
                                      _KeepLatestCheckpoint()]  # fmt: skip
    if run.progress:
        callbacks.append(_ProgressCallback(run, run.resources.slots(ray.cluster_resources())))
    storage_path = connection.storage.location
    if connection.storage.default:
        remove_dead_dirs(Path(storage_path), _RUN_DIR)
    run_name = f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    tuner = tune.Tuner(
        tune.with_resources(run.trainable, run.resources.as_ray()),
        param_space=param_space,
        tune_config=_tune_config(run, connection),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=run.max_failures),
            callbacks=callbacks,
            stop=_InterruptStopper(),
            verbose=0,
        ),
    )
    start = time.monotonic()
    try:
        with interrupt.graceful(), filtered_output():
            tuner.fit()
    except OSError:
        raise  # a full or read-only disk: the CLI says so in one line
    except Exception:  # Tune raises after trials errored; they are recorded already
        if not outcome.failed:
            print(redact(traceback.format_exc()), file=sys.stderr, end="")
            raise
    finally:
        if connection.storage.default:  # this run's checkpoints; the store has the results
            shutil.rmtree(Path(storage_path) / run_name, ignore_errors=True)
    outcome.wall_time_s = time.monotonic() - start
    store.compact()
    return outcome


def _tune_config(run: RunSettings, connection: Connection) -> tune.TuneConfig:
    """The caller's TuneConfig (default: reuse actors), without actor reuse where the
    connection forbids it, and with the run's concurrency limit."""
    config = run.tune_config or tune.TuneConfig(reuse_actors=True)
    if config.reuse_actors and not connection.reuse_actors:
        config = replace(config, reuse_actors=False)  # see Connection
    if run.resources.max_concurrent is not None:
        config.max_concurrent_trials = run.resources.max_concurrent
    return config


class _InterruptStopper(tune.Stopper):
    """Stops every trial once SIGINT/SIGTERM arrived (see ``sweeps.interrupt``)."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return interrupt.requested()


@contextlib.contextmanager
def filtered_output() -> Iterator[None]:
    """While the block runs, this process's stdout and stderr (fds 1 and 2, so Ray's own
    printing too) pass ``_OutputFilter``: node-loss dumps dropped, secrets redacted."""
    pumps = []
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.flush()
        saved = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        pump = threading.Thread(target=_pump, args=(read_end, saved), daemon=True)
        pump.start()
        pumps.append((stream, fd, saved, pump))
    try:
        yield
    finally:
        for stream, fd, saved, pump in pumps:
            stream.flush()
            os.dup2(saved, fd)  # the pipe's last write end closes: the pump reads EOF
            pump.join(timeout=5)
            os.close(saved)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TRIAL_FAILED = re.compile(r".*ERROR tune_controller\.py:\d+ -- (Trial task failed for trial \S+)")


class _OutputFilter:
    """Line by line: what of Ray's and Tune's output reaches the user's terminal.

    A lost node makes Ray print the dead raylet's last log lines (its ``[state-dump]``, ~20
    lines) per node, and Tune a full traceback per interrupted trial. The user gets one
    line for each instead; Ray's log files keep everything. Secrets in URIs are redacted.
    """

    def __init__(self) -> None:
        self.skipping = False  # inside a dropped block (indented continuation lines)
        self.trial_failed: str | None = None  # inside Tune's traceback of a failed trial

    def __call__(self, line: str) -> str | None:
        plain = _ANSI.sub("", line).rstrip("\n")
        continuation = not plain.strip() or plain[0] in " \t" or plain.startswith("[state-dump]")
        if self.skipping and continuation:
            return None
        self.skipping = False
        if self.trial_failed is not None:
            if continuation or plain.startswith(("Traceback", "ray.exceptions.RayTaskError(")):
                return None  # a task's error: the user's exception ends its remote traceback
            header, self.trial_failed = self.trial_failed, None
            return redact(f"{header}: {plain[:300]}\n")
        failed = _TRIAL_FAILED.match(plain)
        if failed:
            self.trial_failed = failed.group(1)
            return None
        if plain.startswith("(raylet") and "Raylet is terminated" in plain:
            self.skipping = True
            return "(raylet) a node's raylet was terminated (its state dump is in Ray's logs)\n"
        if plain.startswith("(raylet") and "has been marked dead" in plain:
            self.skipping = True
            return redact(plain.split(" This can happen")[0] + "\n")
        return redact(line)


def _pump(read_end: int, out: int) -> None:
    keep = _OutputFilter()
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            line = keep(raw.decode(errors="replace"))
            if line is not None:
                os.write(out, line.encode())
