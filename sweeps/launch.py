"""The run path both sweep CLIs share (``sweeps/ablation.py`` and ``sweeps/search.py``):
their typed run options, the checks before Ray starts, the store lock, the connection, the
interrupted and finished summaries, the datasets and the store's run record. Neither CLI
imports the other; both call this module.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from charlm.cli import fail
from charlm.config import ConfigError, ModelConfig, TrainConfig
from charlm.data import check_block_size, load_dataset
from charlm.text import format_clock
from sweeps import interrupt
from sweeps.grid import TrialSpec, parse_overrides
from sweeps.options import (
    Resources,
    available_memory_bytes,
    check_memory,
    check_trial_resources,
    load_cluster_config,
    local_node,
)
from sweeps.schema import config_label
from sweeps.storage import check_storage
from sweeps.store import check_results_dir, locked

if TYPE_CHECKING:
    from sweeps.runner import Connection

_Options = TypeVar("_Options", bound="RunOptions")
# (label, model, train, vocab size) of each config whose memory ``check_memory`` prices
MemoryRow = tuple[str, ModelConfig, TrainConfig, int]


@dataclass(frozen=True)
class RunOptions:
    """The options every sweep CLI has (``sweeps.options.add_run_options`` and the store's),
    built once from the parsed command line (``from_args``); each CLI's options extend it."""

    results: Path
    name: str | None
    data_dir: str | None
    dry_run: bool
    cluster: str | None
    address: str | None
    cpus_per_trial: float
    gpus_per_trial: float | None
    max_concurrent: int | None
    num_cpus: float | None
    num_gpus: float | None
    storage: str | None
    state_every: float
    overrides: list[str] | None
    verbose: bool

    @classmethod
    def from_args(cls: type[_Options], args: argparse.Namespace) -> _Options:
        """The options of ``args`` (already checked by ``sweeps.options.check_options``)."""
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def overrides_dict(self) -> dict[str, Any]:
        """The --set overrides (``sweeps.grid.parse_overrides``), with --data-dir's."""
        overrides = parse_overrides(self.overrides)
        if self.data_dir:
            overrides["data_dir"] = self.data_dir
        return overrides

    @property
    def embedded(self) -> bool:
        """Does this run start its own Ray on this machine (no --cluster, no --address)?"""
        return self.cluster is None and self.address is None


@dataclass(frozen=True)
class Placement:
    """Where a checked run goes: what each trial gets, the cluster file's contents (None
    without --cluster) and, on the embedded Ray, this machine as a node."""

    resources: Resources
    cluster: dict[str, Any] | None
    node: dict[str, float] | None


def check_placement(opts: RunOptions) -> Placement:
    """The checks before Ray starts: the results directory, the cluster file, the storage
    and, on the embedded Ray, what a trial asks of this machine (one GPU per trial when
    --gpus-per-trial is not given and the machine has GPUs). Raises ConfigError."""
    check_results_dir(opts.results)
    resources = Resources(opts.cpus_per_trial, opts.gpus_per_trial or 0.0, opts.max_concurrent)
    cluster = load_cluster_config(opts.cluster) if opts.cluster else None
    check_storage(opts.storage, opts.results, cluster_config=cluster, cluster=opts.cluster,
                  embedded=opts.embedded)  # fmt: skip
    if not opts.embedded:
        return Placement(resources, cluster, None)
    node = local_node(opts.num_cpus, opts.num_gpus)
    if opts.gpus_per_trial is None and node["GPU"] > 0:
        resources = dataclasses.replace(resources, gpus_per_trial=1.0)
    check_trial_resources(
        resources.cpus_per_trial, resources.gpus_per_trial, [node], "this machine"
    )
    return Placement(resources, cluster, node)


def check_local_memory(rows: list[MemoryRow], per_node: int) -> None:
    """``per_node`` trials of the largest of ``rows`` fit in this machine's free memory."""
    check_memory(rows, per_node, available_memory_bytes(), "this machine (MemAvailable)")


def local_concurrency(opts: RunOptions) -> int:
    """How many trials run at once on this machine's CPUs (or --num-cpus): what a dry run
    prices."""
    resources = Resources(opts.cpus_per_trial, max_concurrent=opts.max_concurrent)
    return resources.slots({"CPU": opts.num_cpus or os.cpu_count() or 1})


def lock_store(opts: RunOptions, stack: contextlib.ExitStack, *, connected: bool) -> None:
    """Take the store's lock (``sweeps.store.locked``) into ``stack`` when this run's Ray
    wants it: the embedded Ray's before it starts (``connected`` False), a cluster's once
    connected (a cluster that refuses the run leaves no results directory); at the other
    call, nothing. A store another driver holds: Ray shut down, ``fail``'s one line, exit 2."""
    if opts.embedded == connected:
        return
    try:
        stack.enter_context(locked(opts.results))
    except ConfigError as exc:
        if connected:
            import ray

            ray.shutdown()
        fail(str(exc))


def connect_driver(opts: RunOptions, script: str) -> Connection:
    """Connect to Ray as ``opts`` says (``sweeps.runner.connect``) and take SIGINT/SIGTERM
    back from ``ray.init``; a refused connection is ``fail``'s one line, exit 2."""
    from sweeps.runner import connect

    try:
        connection = connect(
            opts.cluster, address=opts.address, num_cpus=opts.num_cpus,
            num_gpus=opts.num_gpus, verbose=opts.verbose, script=script,
            results=opts.results, storage=opts.storage,
        )  # fmt: skip
    except ConfigError as exc:
        fail(str(exc))
    interrupt.install()  # ray.init replaced the SIGTERM handler
    return connection


def report_interrupt(summary: str) -> int:
    """Print the one line of a run stopped by SIGINT/SIGTERM; exit 128 + the signal number."""
    print(f"interrupted by {interrupt.signal_name()}: {summary}", flush=True)
    return interrupt.exit_code()


def finished_line(
    ok: int, failed: int, wall_time_s: float, results: Path, early_stopped: int | None = None
) -> str:
    """The start of a finished run's last line: trials finished (stopped early), failed,
    the wall time and where the results are."""
    early = "" if early_stopped is None else f" ({early_stopped} stopped early by ASHA)"
    return (
        f"{ok} trials finished{early}, {failed} failed in {format_clock(wall_time_s)}; "
        f"results in {results}"
    )


def prepare_datasets(trials: list[TrialSpec]) -> dict[str, int]:
    """Fetch and encode each dataset once on the driver; check every block size against it.

    Returns the vocabulary size per dataset. All block-size and vocab_size problems are
    reported together.
    """
    vocab_sizes: dict[str, int] = {}
    problems: list[str] = []
    checked: set[tuple[str, str, int]] = set()  # ("vocab" | "block", dataset, size) seen
    for trial in trials:
        data = load_dataset(trial.dataset, trial.train.data_dir)
        vocab_sizes[trial.dataset] = data.vocab_size
        label, vocab = config_label(trial.factor, trial.level), trial.model.vocab_size
        if vocab not in (None, data.vocab_size) and ("vocab", trial.dataset, vocab) not in checked:
            checked.add(("vocab", trial.dataset, vocab))
            problems.append(
                f"{label}: vocab_size={vocab} does not match {Path(trial.dataset).name}'s "
                f"vocabulary of {data.vocab_size}: leave vocab_size unset to take it from the "
                "dataset."
            )
        block = ("block", trial.dataset, trial.model.block_size)
        if block not in checked:
            checked.add(block)
            try:
                check_block_size(data, trial.model.block_size)
            except ConfigError as exc:
                problems.append(f"{label}: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))
    return vocab_sizes


def run_info(
    sweep: str, kind: str, where: str, resources: Resources, n_trials: int
) -> dict[str, Any]:
    """What the store records about this command run (the report's set-up section)."""
    from charlm.provenance import provenance

    return {
        "sweep": sweep,
        "kind": kind,
        "trials_to_run": n_trials,
        "ray_cluster": where,
        "cpus_per_trial": resources.cpus_per_trial,
        "gpus_per_trial": resources.gpus_per_trial,
        **provenance(),
    }
