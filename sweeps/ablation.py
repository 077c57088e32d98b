"""CLI: run a one-factor-at-a-time ablation grid with seed replicates on Ray Tune.

    python sweeps/ablation.py [--cluster cluster.yaml] [--preset notebook|nanogpt]
        [--grid FILE] [--factors n_head,dropout] [--datasets shakespeare_char,...]
        [--seeds 3|auto] [--min-effect D] [--max-seeds N] [--confidence 0.95]
        [--max-iters N] [--results DIR] [--name NAME] [--cpus-per-trial C]
        [--gpus-per-trial G] [--max-concurrent K] [--dry-run]

Exit status: 0 when every trial finished, 1 if any failed (or the results disk is full or
read-only), 2 for bad input (or another sweep holds the store), 130/143 when stopped by
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charlm.cli import OneLineParser, fail
from charlm.config import ConfigError
from charlm.text import text_table
from sweeps import interrupt
from sweeps.grid import PRESETS, GridSpec, TrialSpec, expand, load_grid
from sweeps.launch import (
    MemoryRow,
    Placement,
    RunOptions,
    check_local_memory,
    check_placement,
    connect_driver,
    finished_line,
    local_concurrency,
    lock_store,
    prepare_datasets,
    report_interrupt,
    run_info,
)
from sweeps.manytoone import format_verdicts
from sweeps.options import (
    Resources,
    add_run_options,
    check_memory,
    check_options,
    check_sweep_name,
    check_trial_resources,
    node_types,
)
from sweeps.rounds import SeedRounds
from sweeps.schema import PLAN_KEY, StoreVersionError, config_label, read_table
from sweeps.sequential import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_SEEDS,
    DEFAULT_MIN_EFFECT,
    Design,
    record_design,
)
from sweeps.store import ResultStore, set_aside_unreadable, trial_statuses

if TYPE_CHECKING:
    from sweeps.runner import Connection, SweepOutcome


@dataclass(frozen=True)
class AblationOptions(RunOptions):
    """The ablation CLI's options: the run options and what picks the grid and its seeds."""

    preset: str
    grid: str | None
    factors: list[str] | None
    datasets: list[str] | None
    seeds: int | str | None
    min_effect: float | None
    max_seeds: int | None
    confidence: float | None
    max_iters: int | None
    max_failures: int


@dataclass
class _Plan:
    """A checked sweep: its trials, where they run, its design and the datasets' vocabularies."""

    trials: list[TrialSpec]
    placement: Placement
    design: Design | None
    vocab_sizes: dict[str, int]

    @property
    def sweep(self) -> str:
        return self.trials[0].sweep


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _seeds_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seeds: give e.g. 3, or auto"
        ) from None


def parse_args(argv: list[str] | None = None) -> AblationOptions:
    """The command line's options, checked (a bad one is one line, exit 2)."""
    parser = OneLineParser(
        prog="python sweeps/ablation.py",
        description="Run a one-factor-at-a-time ablation grid (baseline + one factor changed "
        "at a time) with seed replicates on Ray Tune; every trial lands in a Parquet result "
        "store. Re-running the same command runs only what the store lacks.",
    )
    _add_grid_options(parser)
    _add_seed_options(parser)
    _add_store_options(parser)
    add_run_options(
        parser,
        gpus_help="GPUs per trial, fractions share a GPU (default: 1 when the cluster has GPUs)",
    )
    args = parser.parse_args(argv)
    check_options(args, parser)
    return AblationOptions.from_args(args)


def _add_grid_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--preset",
        default="notebook",
        choices=sorted(PRESETS),
        help="built-in grid (default: notebook)",
    )
    add("--grid", metavar="FILE", help="YAML grid file (overrides --preset); see examples/")
    add("--factors", type=_csv, help="run only these factors, comma-separated")
    add(
        "--datasets",
        type=_csv,
        help="comma-separated: shakespeare_char, enwik8, text8 or text file paths",
    )


def _add_seed_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--seeds",
        type=_seeds_arg,
        help="number of seeds (0..N-1), default the grid's (3); or 'auto': 3 seeds first, "
        "then more seeds only for the levels not yet resolved against the baseline "
        "(see --min-effect, --max-seeds, --confidence)",
    )
    add(
        "--min-effect",
        type=float,
        metavar="D",
        help="smallest difference in best val loss that matters: a level whose interval lies "
        f"inside (-D, +D) is 'equivalent' (default {DEFAULT_MIN_EFFECT:g}; also recorded for "
        "the report of a fixed-seed sweep)",
    )
    add(
        "--max-seeds",
        type=int,
        metavar="N",
        help=f"--seeds auto: at most N seeds per config (default {DEFAULT_MAX_SEEDS})",
    )
    add(
        "--confidence",
        type=float,
        help="familywise confidence of the verdicts, over all levels and looks "
        f"(default {DEFAULT_CONFIDENCE:g})",
    )


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--max-iters",
        type=int,
        help="shorten every trial to N steps (each still evaluates at its end)",
    )
    add("--name", help="sweep name in the store (default: the grid's name)")
    add(
        "--max-failures",
        type=int,
        default=3,
        help="retries of a failed trial from its last checkpoint (default 3)",
    )
    add(
        "--dry-run",
        action="store_true",
        help="print the trials and a compute estimate, then exit without running",
    )


def plan_trials(opts: AblationOptions) -> list[TrialSpec]:
    """The grid's trials after the CLI's filters and overrides; raises GridError/ConfigError."""
    spec: GridSpec = load_grid(opts.grid) if opts.grid else PRESETS[opts.preset]
    if opts.name:
        check_sweep_name(opts.name, "--name")
    else:
        check_sweep_name(spec.name, f"grid file {spec.source}: name" if spec.source else "name")
    overrides = opts.overrides_dict()
    trials = expand(
        spec,
        factors=opts.factors,
        datasets=opts.datasets,
        seeds=(opts.max_seeds or DEFAULT_MAX_SEEDS) if isinstance(opts.seeds, str) else opts.seeds,
        max_iters=opts.max_iters,
        overrides=overrides or None,
    )
    if opts.name:
        trials = [dataclasses.replace(trial, sweep=opts.name) for trial in trials]
    return trials


def summary_table(store_rows: list[dict[str, Any]]) -> str:
    """Per config (dataset, factor, level): trials ok/failed and best val loss over seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in store_rows:
        groups[(row["dataset"], row["factor"], row["level"])].append(row)
    header = ("dataset", "factor", "level", "ok", "failed", "best val loss (mean over seeds)")
    rows = []
    for (dataset, factor, level), group in sorted(groups.items()):
        ok = [r["best_val_loss"] for r in group if r["status"] == "ok" and r["best_val_loss"]]
        mean = f"{statistics.fmean(ok):.4f}" if ok else "-"
        rows.append((Path(dataset).name, factor, level, len(ok), len(group) - len(ok), mean))
    return "\n".join(text_table(header, rows, right={3, 4, 5}))


def param_space(trials: list[TrialSpec]) -> dict[str, Any]:
    """Tune's param_space: one grid entry per trial (``TrialSpec.params()``), in the order
    given (Tune starts them in that order)."""
    from ray import tune

    return {"trial": tune.grid_search([trial.params() for trial in trials])}


def _dry_run(opts: AblationOptions, plan: _Plan) -> None:
    from sweeps.estimate import estimate, format_table

    result = estimate(plan.trials, opts.cpus_per_trial, local_concurrency(opts), plan.vocab_sizes)
    print(format_table(plan.trials, result))
    if plan.design is not None and plan.design.adaptive:
        from sweeps.rounds import auto_compute

        print(auto_compute(plan.trials, result, plan.design, opts.results))


def design_of(opts: AblationOptions, trials: list[TrialSpec]) -> Design | None:
    """The sweep's design: adaptive for --seeds auto, the one-look design of a fixed-seed
    sweep given --min-effect or --confidence, else None (nothing to record)."""
    auto = opts.seeds == "auto"
    if opts.max_seeds is not None and not auto:
        raise ConfigError(f"--max-seeds {opts.max_seeds} needs --seeds auto: add it, or drop "
                          "--max-seeds and give --seeds N.")  # fmt: skip
    if not auto and opts.min_effect is None and opts.confidence is None:
        return None
    datasets = {t.dataset for t in trials}
    levels = len({(t.dataset, t.factor, t.level) for t in trials if t.factor != "baseline"})
    return Design(
        levels=levels // max(1, len(datasets)),
        min_effect=DEFAULT_MIN_EFFECT if opts.min_effect is None else opts.min_effect,
        max_seeds=max(2, max(t.seed for t in trials) + 1),
        confidence=DEFAULT_CONFIDENCE if opts.confidence is None else opts.confidence,
        adaptive=auto,
    )


def _check(opts: AblationOptions) -> _Plan:
    """Everything checked before a sweep runs (or a dry run prints); raises ConfigError."""
    trials = plan_trials(opts)
    placement = check_placement(opts)
    design = design_of(opts, trials)
    vocab_sizes = prepare_datasets(trials)
    if placement.node is not None:  # this machine is the whole cluster
        per_node = min(placement.resources.slots(placement.node), len(trials))
        check_local_memory(_memory_rows(trials, vocab_sizes), per_node)
    if design is not None and not opts.dry_run:
        ResultStore(opts.results)  # the design is recorded inside a store
        record_design(opts.results, trials[0].sweep, design)
    return _Plan(trials, placement, design, vocab_sizes)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        plan = _check(opts)
    except ConfigError as exc:
        fail(str(exc))
    if opts.dry_run:
        _dry_run(opts, plan)
        return 0
    with interrupt.handling():
        try:
            return _run(opts, plan)
        except StoreVersionError as exc:  # one file of a newer charlm-sweeps in the store
            fail(str(exc))
        except OSError as exc:
            return _disk_error(exc, opts.results)


def _memory_rows(trials: list[TrialSpec], vocab_sizes: dict[str, int]) -> list[MemoryRow]:
    return [
        (config_label(t.factor, t.level), t.model, t.train, vocab_sizes[t.dataset]) for t in trials
    ]


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _disk_error(exc: OSError, results: Path) -> int:
    """A full or read-only results disk: one line, exit 1 (the store's files are whole)."""
    inside = exc.filename is not None and Path(str(exc.filename)).resolve().is_relative_to(
        results.resolve()
    )
    if not (exc.errno in _DISK_FULL or (exc.errno in (errno.EACCES, errno.EPERM) and inside)):
        raise exc
    reason = os.strerror(exc.errno)  # pyarrow's own text wraps it in a longer sentence
    print(
        f"error: cannot write under {results} ({reason}: {exc.filename or results}); trials "
        "already in the store are kept: free space (or make it writable) and run the same "
        "command again to run the rest.",
        file=sys.stderr,
    )
    return 1


# How a trial's error says the disk was full or read-only.
_DISK_FULL_TEXT = ("No space left", "Read-only file system", "Disk quota exceeded")


def _run(opts: AblationOptions, plan: _Plan) -> int:
    import ray

    adaptive = plan.design if plan.design is not None and plan.design.adaptive else None
    rounds = SeedRounds(plan.trials, opts.results, adaptive)
    todo = _announce(SeedRounds(plan.trials, opts.results, adaptive), plan.trials, opts.results)
    if not todo:
        _print_verdicts(rounds, plan.sweep, plan.design)
        return 0
    with contextlib.ExitStack() as stack:
        lock_store(opts, stack, connected=False)
        try:
            return _run_locked(opts, plan, rounds, stack)
        except KeyboardInterrupt:  # a signal before Tune ran, or a second one
            return _interrupted(opts, plan.trials, [])
        finally:
            ray.shutdown()


def _announce(rounds: SeedRounds, trials: list[TrialSpec], results: Path) -> list[TrialSpec]:
    """The trials of ``rounds``' next round, after saying what the store holds."""
    for path, target, reason in set_aside_unreadable(results):
        print(f"warning: store file {path} is unreadable ({reason}): moved to "
              f"{target.name}, its trials run again", file=sys.stderr)  # fmt: skip
    todo = rounds.next_round()
    statuses, _ = trial_statuses(results)
    already = sum(1 for t in trials if statuses.get(t.trial_id) == "ok")
    if rounds.design:
        print(f"--seeds auto: {rounds.design.describe()}; up to {len(trials)} trials, "
              f"{already} already in {results}, {len(todo)} to run now")  # fmt: skip
    else:
        print(f"{len(trials)} trials in the grid: {already} already in {results}, "
              f"{len(todo)} to run")  # fmt: skip
    return todo


def schedule_trials(
    todo: list[TrialSpec], resources: Resources, vocab_sizes: dict[str, int]
) -> tuple[list[TrialSpec], str, dict[str, float]]:
    """The trials in start order (longest first), a line saying so (``sweeps.schedule``),
    and each trial's estimated seconds (for the progress line's ETA); on the connected Ray."""
    import ray

    from sweeps.schedule import plan_grid

    schedule = plan_grid(todo, resources.slots(ray.cluster_resources()),
                         base_cpus=resources.cpus_per_trial, vocab_sizes=vocab_sizes)  # fmt: skip
    by_id = {trial.trial_id: trial for trial in todo}
    return [by_id[trial] for trial in schedule.order], schedule.describe(), schedule.seconds


@dataclass
class _Launch:
    """A connected, locked sweep: where it runs, what each trial gets, the trials of its
    first round, and the line saying which trials wait for a node to scale up."""

    connection: Connection
    resources: Resources
    todo: list[TrialSpec]
    waiting: str | None = None


def _run_locked(
    opts: AblationOptions, plan: _Plan, rounds: SeedRounds, stack: contextlib.ExitStack
) -> int:
    import ray

    launch = _connect(opts, plan, rounds, stack)
    resources = launch.resources
    print(f"running on {launch.connection.description}; {resources.cpus_per_trial:g} CPU and "
          f"{resources.gpus_per_trial:g} GPU per trial", flush=True)  # fmt: skip
    store = ResultStore(opts.results)
    info = run_info(plan.sweep, "ablation", launch.connection.description, resources,
                    len(launch.todo))  # fmt: skip
    store.write_run(
        {**info, **planned_grid(plan.trials, plan.vocab_sizes, adaptive=bool(rounds.design))}
    )
    outcome = _run_rounds(opts, plan, rounds, launch, store)
    ray.shutdown()
    if interrupt.requested():
        return _interrupted(opts, plan.trials, outcome.ok)
    return _finish(opts, plan, rounds, outcome)


def _connect(
    opts: AblationOptions, plan: _Plan, rounds: SeedRounds, stack: contextlib.ExitStack
) -> _Launch:
    """Connect to Ray; on a cluster, check what a trial asks of its nodes, then take the
    store's lock (embedded: taken before connecting). The first round is read under it."""
    import ray

    connection = connect_driver(opts, "sweeps/ablation.py")
    resources = plan.placement.resources
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if opts.gpus_per_trial is None and any(n.get("GPU", 0) > 0 for n in nodes):
        resources = dataclasses.replace(resources, gpus_per_trial=1.0)
    todo = rounds.next_round()
    if opts.embedded:
        return _Launch(connection, resources, todo)
    try:
        waiting = _check_cluster(plan, resources, nodes, todo)
    except ConfigError as exc:
        ray.shutdown()
        fail(str(exc))
    lock_store(opts, stack, connected=True)
    rounds.tried.clear()
    todo = rounds.next_round()  # what another driver finished before the lock
    return _Launch(connection, resources, todo, waiting)


def _check_cluster(
    plan: _Plan, resources: Resources, nodes: list[dict[str, float]], todo: list[TrialSpec]
) -> str | None:
    """What a trial asks of the cluster's nodes, and its memory on the largest node that
    fits it; the line saying which trials wait for a node to scale up (None: none wait)."""
    waiting = check_trial_resources(
        resources.cpus_per_trial, resources.gpus_per_trial, nodes, "the cluster",
        node_types(plan.placement.cluster),
    )  # fmt: skip
    fits = [n for n in nodes if n.get("CPU", 0) >= resources.cpus_per_trial]
    if fits and not waiting:
        largest = max(fits, key=lambda n: n.get("memory", 0))
        check_memory(
            _memory_rows(todo or plan.trials, plan.vocab_sizes),
            min(resources.slots(largest), max(1, len(todo))),
            largest.get("memory", math.inf),
            "the largest node (Ray's memory resource)",
        )
    return waiting


def _run_rounds(
    opts: AblationOptions, plan: _Plan, rounds: SeedRounds, launch: _Launch, store: ResultStore
) -> SweepOutcome:
    """Run the rounds: one for fixed seeds; --seeds auto adds rounds until resolved."""
    from sweeps.runner import RunSettings, SweepOutcome, run_trials

    outcome = SweepOutcome()
    todo = launch.todo
    while todo:
        todo, line, seconds = schedule_trials(todo, launch.resources, plan.vocab_sizes)
        print(line, flush=True)
        settings = RunSettings(
            name=todo[0].sweep, total=len(todo), resources=launch.resources,
            max_iters={t.trial_id: t.train.max_iters for t in todo},
            max_failures=opts.max_failures, waiting=launch.waiting, estimates=seconds,
            state_every_s=opts.state_every,
        )  # fmt: skip
        result = run_trials(launch.connection, store, param_space(todo), settings)
        outcome.ok += result.ok
        outcome.failed.update(result.failed)
        outcome.wall_time_s += result.wall_time_s
        if interrupt.requested():
            break
        todo = rounds.next_round()
        if rounds.design:
            print(rounds.look_line() + (f"; next round: {len(todo)} trials" if todo else ""),
                  flush=True)  # fmt: skip
    return outcome


def _finish(opts: AblationOptions, plan: _Plan, rounds: SeedRounds, outcome: SweepOutcome) -> int:
    """The finished sweep's summary: its table, verdicts, last line and failures."""
    ids = {t.trial_id for t in plan.trials}
    rows = [r for r in _store_rows(opts.results) if r["trial_id"] in ids]
    print(summary_table(rows))
    _print_verdicts(rounds, plan.sweep, plan.design)
    line = finished_line(len(outcome.ok), len(outcome.failed), outcome.wall_time_s, opts.results)
    print(f"{line} (report: python -m analysis {opts.results}, which writes "
          f"{opts.results / 'report' / 'report.html'})")  # fmt: skip
    for trial_id, error in outcome.failed.items():
        print(f"failed: {trial_id}: {error}", file=sys.stderr)
    full = next((e for e in outcome.failed.values() if any(t in e for t in _DISK_FULL_TEXT)), "")
    if full:
        print(
            f"error: trials failed because the disk is full or read-only ({full}); free space "
            "and run the same command again: finished trials are kept.",
            file=sys.stderr,
        )
    return 1 if outcome.failed else 0


def _interrupted(opts: AblationOptions, trials: list[TrialSpec], finished_now: list[str]) -> int:
    """The summary of a sweep stopped by SIGINT/SIGTERM; exit 128 + the signal number."""
    statuses, _ = trial_statuses(opts.results) if opts.results.is_dir() else ({}, [])
    done = sum(1 for t in trials if statuses.get(t.trial_id) == "ok")
    failed = sum(1 for t in trials if statuses.get(t.trial_id) == "failed")
    return report_interrupt(
        f"{len(finished_now)} trials finished in this run; {done} of {len(trials)} are in "
        f"{opts.results} ({failed} failed), {len(trials) - done - failed} not finished. To "
        "continue, run the same command again: it runs only what the store lacks."
    )


def planned_grid(
    trials: list[TrialSpec], vocab_sizes: dict[str, int], *, adaptive: bool = False
) -> dict[str, Any]:
    """The run record's planned grid (``sweeps.schema.PLAN_KEY``): every trial of the sweep,
    finished or not, as its trials row's identity and config columns with its ``n_params``,
    so a report taken mid-sweep shows what is still to come; ``adaptive`` (--seeds auto):
    the seeds beyond the first round run only where the design needs them."""
    from sweeps.estimate import n_params

    configs = dict.fromkeys((trial.model, trial.dataset) for trial in trials)
    counts = {(model, dataset): n_params(model, dataset, vocab_sizes) for model, dataset in configs}
    plan = [
        {"trial_id": t.trial_id, **t.params()["columns"], "n_params": counts[(t.model, t.dataset)]}
        for t in trials
    ]
    return {PLAN_KEY: plan, "adaptive_seeds": adaptive}


def _print_verdicts(rounds: SeedRounds, sweep: str, design: Design | None) -> None:
    """Each level's verdict, as ``python -m analysis`` prints it (sweeps.manytoone.judge)."""
    levels = {(t.dataset, t.factor, t.level) for t in rounds.trials if t.factor != "baseline"}
    fixed = design or Design(levels=max(1, len(levels) // max(1, len(rounds.experiments))),
                             adaptive=False)  # fmt: skip
    shown = rounds.design if rounds.design is not None and rounds.design.adaptive else fixed
    progress = rounds.progress() if shown.adaptive else {}
    for dataset, results in rounds.verdicts(fixed).items():
        if not results:  # a baseline-only grid
            continue
        print("\n".join(format_verdicts(results, shown, dataset, sweep)))
        if dataset in progress and not progress[dataset].finished:
            print(f"{Path(dataset).name}: design not complete, "
                  f"{len(progress[dataset].targets)} level(s) still open (failed trials): run "
                  "the same command again")  # fmt: skip


def _store_rows(root: Path) -> list[dict[str, Any]]:
    columns = ["trial_id", "dataset", "factor", "level", "status", "best_val_loss"]
    return read_table(root, "trials", columns=columns).table.to_pylist()


if __name__ == "__main__":
    sys.exit(main())
