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
import dataclasses
import errno
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from charlm.cli import OneLineParser, fail
from charlm.config import ConfigError
from charlm.data import check_block_size, load_dataset
from charlm.text import format_clock, text_table
from sweeps import interrupt
from sweeps.grid import PRESETS, GridSpec, TrialSpec, expand, load_grid, parse_overrides
from sweeps.manytoone import format_verdicts
from sweeps.options import (
    Resources,
    add_run_options,
    available_memory_bytes,
    check_memory,
    check_options,
    check_sweep_name,
    check_trial_resources,
    load_cluster_config,
    local_node,
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
from sweeps.storage import check_storage
from sweeps.store import (
    ResultStore,
    check_results_dir,
    locked,
    set_aside_unreadable,
    trial_statuses,
)

__all__ = [
    "main",
    "param_space",
    "parse_args",
    "plan_trials",
    "planned_grid",
    "prepare_datasets",
    "run_info",
    "summary_table",
]


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


def parse_args(argv: list[str] | None = None):
    parser = OneLineParser(
        prog="python sweeps/ablation.py",
        description="Run a one-factor-at-a-time ablation grid (baseline + one factor changed "
        "at a time) with seed replicates on Ray Tune; every trial lands in a Parquet result "
        "store. Re-running the same command runs only what the store lacks.",
    )
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
    add(
        "--max-iters",
        type=int,
        help="shorten every trial to N steps (each still evaluates at its end)",
    )
    add(
        "--results", default="results", type=Path, help="result store directory (default: results/)"
    )
    add("--name", help="sweep name in the store (default: the grid's name)")
    add("--data-dir", help="dataset cache (default: $CHARLM_DATA_DIR, else the user cache)")
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
    add_run_options(
        parser,
        gpus_help="GPUs per trial, fractions share a GPU (default: 1 when the cluster has GPUs)",
    )
    args = parser.parse_args(argv)
    check_options(args, parser)
    return args


def plan_trials(args) -> list[TrialSpec]:
    """The grid's trials after the CLI's filters and overrides; raises GridError/ConfigError."""
    spec: GridSpec = load_grid(args.grid) if args.grid else PRESETS[args.preset]
    if args.name:
        check_sweep_name(args.name, "--name")
    else:
        check_sweep_name(spec.name, f"grid file {spec.source}: name" if spec.source else "name")
    overrides = parse_overrides(args.overrides)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    trials = expand(
        spec,
        factors=args.factors,
        datasets=args.datasets,
        seeds=args.max_seeds or DEFAULT_MAX_SEEDS if args.seeds == "auto" else args.seeds,
        max_iters=args.max_iters,
        overrides=overrides or None,
    )
    if args.name:
        trials = [_renamed(trial, args.name) for trial in trials]
    return trials


def _renamed(trial: TrialSpec, name: str) -> TrialSpec:
    return dataclasses.replace(trial, sweep=name)


def prepare_datasets(trials: list[TrialSpec]) -> dict[str, int]:
    """Fetch and encode each dataset once on the driver; check every block size against it.

    Returns the vocabulary size per dataset. All block-size and vocab_size problems are
    reported together.
    """
    vocab_sizes: dict[str, int] = {}
    problems: list[str] = []
    checked: set[tuple[str, int]] = set()  # (dataset, block_size) seen
    vocab_checked: set[tuple[str, int]] = set()
    for trial in trials:
        data = load_dataset(trial.dataset, trial.train.data_dir)
        vocab_sizes[trial.dataset] = data.vocab_size
        vocab = trial.model.vocab_size
        if (
            vocab is not None
            and vocab != data.vocab_size
            and ((trial.dataset, vocab) not in vocab_checked)
        ):
            vocab_checked.add((trial.dataset, vocab))
            problems.append(
                f"{config_label(trial.factor, trial.level)}: vocab_size={vocab} does not match "
                f"{Path(trial.dataset).name}'s vocabulary of {data.vocab_size}: leave "
                "vocab_size unset to take it from the dataset."
            )
        key = (trial.dataset, trial.model.block_size)
        if key in checked:
            continue
        checked.add(key)
        try:
            check_block_size(data, trial.model.block_size)
        except ConfigError as exc:
            problems.append(f"{config_label(trial.factor, trial.level)}: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))
    return vocab_sizes


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


def param_space(trials: list[TrialSpec], cpus: dict[str, float] | None = None) -> dict[str, Any]:
    """Tune's param_space: one grid entry per trial (``TrialSpec.params()``), in the order
    given (Tune starts them in that order); ``cpus`` gives a trial's CPUs where it differs
    from the run's default."""
    from ray import tune

    cpus = cpus or {}
    return {
        "trial": tune.grid_search(
            [{**trial.params(), "cpus": cpus.get(trial.trial_id)} for trial in trials]
        )
    }


def _dry_run(
    trials: list[TrialSpec], vocab_sizes: dict[str, int], args, design: Design | None
) -> None:
    from sweeps.estimate import estimate, format_table

    cpus = args.num_cpus or os.cpu_count() or 1
    concurrent = max(1, math.floor(cpus / args.cpus_per_trial))
    if args.max_concurrent:
        concurrent = min(concurrent, args.max_concurrent)
    result = estimate(trials, args.cpus_per_trial, concurrent, vocab_sizes)
    print(format_table(trials, result))
    if design is not None and design.adaptive:
        from sweeps.rounds import auto_compute

        print(auto_compute(trials, result, design, args.results))


def design_of(args, trials: list[TrialSpec]) -> Design | None:
    """The sweep's design: adaptive for --seeds auto, the one-look design of a fixed-seed
    sweep given --min-effect or --confidence, else None (nothing to record)."""
    auto = args.seeds == "auto"
    if args.max_seeds is not None and not auto:
        raise ConfigError(f"--max-seeds {args.max_seeds} needs --seeds auto: add it, or drop "
                          "--max-seeds and give --seeds N.")  # fmt: skip
    if not auto and args.min_effect is None and args.confidence is None:
        return None
    datasets = {t.dataset for t in trials}
    levels = len({(t.dataset, t.factor, t.level) for t in trials if t.factor != "baseline"})
    return Design(
        levels=levels // max(1, len(datasets)),
        min_effect=DEFAULT_MIN_EFFECT if args.min_effect is None else args.min_effect,
        max_seeds=max(2, max(t.seed for t in trials) + 1),
        confidence=DEFAULT_CONFIDENCE if args.confidence is None else args.confidence,
        adaptive=auto,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trials = plan_trials(args)
        check_results_dir(args.results)
        resources = Resources(args.cpus_per_trial, args.gpus_per_trial or 0.0, args.max_concurrent)
        cluster = load_cluster_config(args.cluster) if args.cluster else None
        embedded = args.cluster is None and args.address is None
        check_storage(args.storage, args.results, cluster_config=cluster, cluster=args.cluster,
                      embedded=embedded)  # fmt: skip
        if embedded:  # this machine is the whole cluster: check before Ray starts
            node = local_node(args.num_cpus, args.num_gpus)
            if args.gpus_per_trial is None and node["GPU"] > 0:
                resources = dataclasses.replace(resources, gpus_per_trial=1.0)
            check_trial_resources(
                resources.cpus_per_trial, resources.gpus_per_trial, [node], "this machine"
            )
        design = design_of(args, trials)
        vocab_sizes = prepare_datasets(trials)
        if embedded:
            check_memory(
                _memory_rows(trials, vocab_sizes),
                _per_node(node, resources, len(trials)),
                available_memory_bytes(),
                "this machine (MemAvailable)",
            )
        if design is not None and not args.dry_run:
            ResultStore(args.results)  # the design is recorded inside a store
            record_design(args.results, trials[0].sweep, design)
    except ConfigError as exc:
        fail(str(exc))
    if args.dry_run:
        _dry_run(trials, vocab_sizes, args, design)
        return 0
    with interrupt.handling():
        try:
            return _run(trials, args, resources, cluster, vocab_sizes, design)
        except StoreVersionError as exc:  # one file of a newer charlm-sweeps in the store
            fail(str(exc))
        except OSError as exc:
            return _disk_error(exc, args.results)


def _memory_rows(trials: list[TrialSpec], vocab_sizes: dict[str, int]):
    return [
        (config_label(t.factor, t.level), t.model, t.train, vocab_sizes[t.dataset]) for t in trials
    ]


def _per_node(node: dict[str, float], resources: Resources, n_trials: int) -> int:
    """How many trials Ray may run at once on ``node``."""
    fit = math.floor(node.get("CPU", 0) / resources.cpus_per_trial + 1e-9)
    if resources.gpus_per_trial > 0:
        fit = min(fit, math.floor(node.get("GPU", 0) / resources.gpus_per_trial + 1e-9))
    return max(1, min(fit, resources.max_concurrent or fit, n_trials))


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


def _disk_full_error(failed: dict[str, str]) -> str | None:
    """The error text when trials failed because the disk was full or read-only."""
    for error in failed.values():
        if any(text in error for text in ("No space left", "Read-only file system",
                                          "Disk quota exceeded")):  # fmt: skip
            return error
    return None


def _run(
    trials: list[TrialSpec],
    args,
    resources: Resources,
    cluster: dict[str, Any] | None,
    vocab_sizes: dict[str, int],
    design: Design | None,
) -> int:
    import contextlib

    import ray

    adaptive = design if design is not None and design.adaptive else None
    rounds = SeedRounds(trials, args.results, adaptive)
    todo = _todo(SeedRounds(trials, args.results, adaptive), trials, args.results, announce=True)
    if not todo:
        _print_verdicts(rounds, trials[0].sweep, design)
        return 0
    with contextlib.ExitStack() as stack:
        try:
            if args.cluster is None and args.address is None:
                stack.enter_context(locked(args.results))
        except ConfigError as exc:
            fail(str(exc))
        try:
            return _run_locked(trials, rounds, args, resources, cluster, vocab_sizes, stack, design)
        except KeyboardInterrupt:  # a signal before Tune ran, or a second one
            return _interrupted(trials, [], args)
        finally:
            ray.shutdown()


def _todo(
    rounds: SeedRounds, trials: list[TrialSpec], results: Path, announce: bool = False
) -> list[TrialSpec]:
    """The trials of ``rounds``' next round; with ``announce``, say what the store holds."""
    if announce:
        for path, target, reason in set_aside_unreadable(results):
            print(f"warning: store file {path} is unreadable ({reason}): moved to "
                  f"{target.name}, its trials run again", file=sys.stderr)  # fmt: skip
    todo = rounds.next_round()
    if announce:
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
) -> tuple[list[TrialSpec], dict[str, float], str, dict[str, float]]:
    """The trials in start order (longest first), the CPUs of the widened tail, a line
    saying so (``sweeps.schedule``), and each trial's estimated seconds (for the progress
    line's ETA); on the connected Ray."""
    import ray

    from sweeps.schedule import plan_grid

    cores = ray.cluster_resources().get("CPU", 1.0)
    node_cpus = max(
        (node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")),
        default=cores,
    )
    schedule = plan_grid(
        todo, cores, base_cpus=resources.cpus_per_trial, max_cpus=node_cpus,
        max_concurrent=resources.max_concurrent, vocab_sizes=vocab_sizes,
        widen=resources.gpus_per_trial == 0,
    )  # fmt: skip
    by_id = {trial.trial_id: trial for trial in todo}
    widened = {
        trial: cpus for trial, cpus in schedule.cpus.items() if cpus != resources.cpus_per_trial
    }
    order = [by_id[trial] for trial in schedule.order]
    return order, widened, schedule.describe(), schedule.seconds


def _run_locked(
    trials: list[TrialSpec],
    rounds: SeedRounds,
    args,
    resources: Resources,
    cluster: dict[str, Any] | None,
    vocab_sizes: dict[str, int],
    stack,
    design: Design | None,
) -> int:
    import ray

    from sweeps.runner import SweepOutcome, connect, run_trials

    try:
        connection = connect(
            args.cluster, address=args.address, num_cpus=args.num_cpus,
            num_gpus=args.num_gpus, verbose=args.verbose, results=args.results,
            storage=args.storage,
        )  # fmt: skip
    except ConfigError as exc:
        fail(str(exc))
    interrupt.install()  # ray.init replaced the SIGTERM handler
    waiting = None
    todo = rounds.next_round()  # under the store lock (embedded: taken before connecting)
    if args.cluster is not None or args.address is not None:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if args.gpus_per_trial is None and any(n.get("GPU", 0) > 0 for n in nodes):
            resources = dataclasses.replace(resources, gpus_per_trial=1.0)
        try:
            waiting = check_trial_resources(
                resources.cpus_per_trial, resources.gpus_per_trial, nodes, "the cluster",
                node_types(cluster),
            )  # fmt: skip
            fits = [n for n in nodes if n.get("CPU", 0) >= resources.cpus_per_trial]
            if fits and not waiting:
                largest = max(fits, key=lambda n: n.get("memory", 0))
                check_memory(
                    _memory_rows(todo or trials, vocab_sizes),
                    _per_node(largest, resources, len(todo)),
                    largest.get("memory", math.inf),
                    "the largest node (Ray's memory resource)",
                )
            stack.enter_context(locked(args.results))
        except ConfigError as exc:
            ray.shutdown()
            fail(str(exc))
        rounds.tried.clear()
        todo = rounds.next_round()  # what another driver finished before the lock
    elif args.gpus_per_trial is None and ray.cluster_resources().get("GPU", 0) > 0:
        resources = dataclasses.replace(resources, gpus_per_trial=1.0)
    print(f"running on {connection.description}; {resources.cpus_per_trial:g} CPU and "
          f"{resources.gpus_per_trial:g} GPU per trial", flush=True)  # fmt: skip
    store = ResultStore(args.results)
    info = run_info(todo[0].sweep, "ablation", connection.description, resources, len(todo))
    store.write_run({**info, **planned_grid(trials, vocab_sizes, adaptive=bool(rounds.design))})
    outcome = SweepOutcome()
    while todo:  # one round for fixed seeds; --seeds auto adds rounds until resolved
        todo, widened, line, seconds = schedule_trials(todo, resources, vocab_sizes)
        print(line, flush=True)
        result = run_trials(
            connection,
            store,
            param_space(todo, widened),
            name=todo[0].sweep,
            total=len(todo),
            resources=resources,
            max_iters={t.trial_id: t.train.max_iters for t in todo},
            max_failures=args.max_failures,
            waiting=waiting,
            estimates=seconds,
            state_every_s=args.state_every,
        )
        outcome.ok += result.ok
        outcome.failed.update(result.failed)
        outcome.wall_time_s += result.wall_time_s
        if interrupt.requested():
            break
        todo = rounds.next_round()
        if rounds.design:
            print(rounds.look_line() + (f"; next round: {len(todo)} trials" if todo else ""),
                  flush=True)  # fmt: skip
    ray.shutdown()
    if interrupt.requested():
        return _interrupted(trials, outcome.ok, args)
    ids = {t.trial_id for t in trials}
    rows = [r for r in _store_rows(args.results) if r["trial_id"] in ids]
    print(summary_table(rows))
    _print_verdicts(rounds, trials[0].sweep, design)
    print(
        f"{len(outcome.ok)} trials finished, {len(outcome.failed)} failed in "
        f"{format_clock(outcome.wall_time_s)}; results in {args.results} "
        f"(report: python -m analysis {args.results}, which writes "
        f"{args.results / 'report' / 'report.html'})"
    )
    for trial_id, error in outcome.failed.items():
        print(f"failed: {trial_id}: {error}", file=sys.stderr)
    full = _disk_full_error(outcome.failed)
    if full:
        print(
            f"error: trials failed because the disk is full or read-only ({full}); free space "
            "and run the same command again: finished trials are kept.",
            file=sys.stderr,
        )
    return 1 if outcome.failed else 0


def _interrupted(trials: list[TrialSpec], finished_now: list[str], args) -> int:
    """The summary of a sweep stopped by SIGINT/SIGTERM; exit 128 + the signal number."""
    statuses, _ = trial_statuses(args.results) if args.results.is_dir() else ({}, [])
    done = sum(1 for t in trials if statuses.get(t.trial_id) == "ok")
    failed = sum(1 for t in trials if statuses.get(t.trial_id) == "failed")
    print(
        f"interrupted by {interrupt.signal_name()}: {len(finished_now)} trials finished in this "
        f"run; {done} of {len(trials)} are in {args.results} ({failed} failed), "
        f"{len(trials) - done - failed} not finished. To continue, run the same command "
        "again: it runs only what the store lacks.",
        flush=True,
    )
    return interrupt.exit_code()


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


def planned_grid(
    trials: list[TrialSpec], vocab_sizes: dict[str, int], *, adaptive: bool = False
) -> dict[str, Any]:
    """The run record's planned grid (``sweeps.schema.PLAN_KEY``): every trial of the sweep,
    finished or not, as its trials row's identity and config columns with its ``n_params``,
    so a report taken mid-sweep shows what is still to come; ``adaptive`` (--seeds auto):
    the seeds beyond the first round run only where the design needs them."""
    from sweeps.estimate import n_params

    counts: dict[tuple[Any, str], int] = {}
    plan = []
    for trial in trials:
        key = (trial.model, trial.dataset)
        if key not in counts:
            counts[key] = n_params(trial.model, trial.dataset, vocab_sizes)
        plan.append({"trial_id": trial.trial_id, **trial.params()["columns"],
                     "n_params": counts[key]})  # fmt: skip
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
