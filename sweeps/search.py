"""CLI: an Optuna (TPE) search with ASHA early stopping over the same trainable and store.

    python sweeps/search.py --n-trials 50 --datasets shakespeare_char [--seeds K] [--dry-run]
        [--cluster cluster.yaml]

The study lives in a persistent Optuna storage (SQLite by default, ``RESULTS/optuna.db``)
that ``optuna-dashboard sqlite:///RESULTS/optuna.db`` opens; every trial also lands in the
result store with kind 'search', early-stopped ones marked ``early_stopped``. A study keeps
its settings (``sweeps.study``): another preset or length under the same name is refused.

Exit status: 0 when every trial finished, 1 if any failed, 2 for bad input, 130/143 when
stopped by SIGINT/SIGTERM (no winner is written from a partial search; the same command
again runs the trials the study lacks).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from charlm.cli import OneLineParser, deprecated_alias, fail
from charlm.config import (
    SEED_MAX,
    ConfigError,
    ModelConfig,
    TrainConfig,
    domains,
    split_config,
    to_dict,
)
from sweeps import interrupt
from sweeps.grid import (
    MACHINE_FIELDS,
    PRESETS,
    SEARCH_SPACE,
    TrialSpec,
    config_id,
    dataset_identity,
    dataset_sha256,
    expand,
    trial_columns,
    trial_id,
)
from sweeps.launch import (
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
from sweeps.options import (
    Resources,
    add_run_options,
    check_options,
    check_search_options,
    check_sweep_name,
)
from sweeps.storage import redact
from sweeps.store import ResultStore

if TYPE_CHECKING:
    import optuna

    from sweeps.estimate import Estimate
    from sweeps.runner import Connection, SweepOutcome

BASE_KEY = "base"
MIN_EVALUATIONS = 4
BEST_GRID_FILE = "best_grid.yaml"


@dataclass(frozen=True)
class SearchOptions(RunOptions):
    """The search CLI's options: the run options and what the study samples and stops."""

    name: str
    gpus_per_trial: float
    n_trials: int
    dataset: str
    preset: str
    max_iters: int | None
    seeds_per_trial: int
    seed: int
    optuna_storage: str | None
    grace_period: int | None
    reduction_factor: float | None

    @property
    def url(self) -> str:
        """The study's Optuna storage URL (default: ``RESULTS/optuna.db``)."""
        return self.optuna_storage or f"sqlite:///{(self.results / 'optuna.db').resolve()}"


def check_search_space(space: dict[str, tuple[Any, ...]] = SEARCH_SPACE) -> None:
    """Every value the search can sample lies in its field's domain (each choice, both ends
    of a range), and every n_embed choice is a multiple of every n_head choice."""
    fields = {**domains(ModelConfig), **domains(TrainConfig)}
    for name, (kind, *spec) in space.items():
        for value in _ends(kind, spec):
            fields[name].check(f"search space {name}", value)
    heads, embeds = space["n_head"][1], space["n_embed"][1]
    bad = [(e, h) for e in embeds for h in heads if e % h]
    if bad:
        raise ConfigError(
            f"search space: n_embed {bad[0][0]} is not a multiple of n_head "
            f"{bad[0][1]}; make every n_embed choice a multiple of every n_head."
        )


def _ends(kind: str, spec: list[Any]) -> list[Any]:
    """What a search-space entry can sample at its ends: each choice, or both ends of a
    range (randint's upper end is exclusive)."""
    return list(spec[0]) if kind == "choice" else [spec[0], spec[1] - (kind == "randint")]


def _largest(base: TrialSpec) -> TrialSpec:
    """The base trial at the search space's largest model: what memory must hold."""
    largest = {
        name: max(_ends(kind, spec))
        for name, (kind, *spec) in SEARCH_SPACE.items()
        if name != "learning_rate"
    }
    model = dataclasses.replace(base.model, **largest)
    return dataclasses.replace(base, model=model, factor="search", level="largest config")


def _tune_space() -> dict[str, Any]:
    from ray import tune

    return {name: getattr(tune, kind)(*args) for name, (kind, *args) in SEARCH_SPACE.items()}


@dataclass(frozen=True)
class SeedTrial:
    """One seed of a sampled search config: its store id, flat params and store columns."""

    trial_id: str
    params: dict[str, Any]
    columns: dict[str, Any]


def format_value(name: str, value: Any) -> str:
    """A searched value as labels and the winner line print it: learning rates in
    scientific notation with three significant digits, other floats with three."""
    if name == "learning_rate":
        return f"{value:.2e}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def search_params(config: dict[str, Any]) -> list[SeedTrial]:
    """The seeds of one sampled search config (``seeds_per_trial`` of them, consecutive
    seeds from the base's), sharing one ``config_id``."""
    sampled = {name: config[name] for name in SEARCH_SPACE}
    base = config[BASE_KEY]
    label = ",".join(f"{name}={format_value(name, value)}" for name, value in sampled.items())
    trials = []
    for params in _seed_params(base["params"], sampled, base.get("seeds_per_trial", 1)):
        model, train = split_config(params)
        columns = {
            "dataset": train.dataset,
            "seed": train.seed,
            "config_id": config_id(model, train),
            **trial_columns(
                sweep=base["sweep"], kind="search", factor="search", level=label,
                model=model, train=train,
            ),
            "dataset_sha256": base.get("dataset_sha256"),  # the driver's, not this node's
        }  # fmt: skip
        trials.append(SeedTrial(trial_id(model, train), params, columns))
    return trials


def _seed_params(base: dict[str, Any], sampled: dict[str, Any], seeds: int) -> list[dict[str, Any]]:
    """The flat params of a sampled config's seeds: consecutive seeds from the base's."""
    return [{**base, **sampled, "seed": base["seed"] + offset} for offset in range(seeds)]


def describe_search_trial(
    config: dict[str, Any], result: dict[str, Any] | None
) -> list[tuple[str, dict[str, Any]]]:
    """The runner's ``describe`` for search trials: one store row per seed."""
    return [(seed.trial_id, seed.columns) for seed in search_params(config)]


def run_search_trial(config: dict[str, Any]) -> None:
    """The search's trainable: the sampled config's seeds in lockstep in one Tune trial,
    each report carrying the store ids (for the Optuna trial's user attributes)."""
    from sweeps.trainable import PREVIOUS_FAILURE, run_members

    seeds = search_params(config)
    tags = {"store_trial_ids": [seed.trial_id for seed in seeds],
            "config_id": seeds[0].columns["config_id"]}  # fmt: skip
    run_members([seed.params for seed in seeds], extra=tags,
                previous_failure=config.get(PREVIOUS_FAILURE),
                dataset_sha256=config[BASE_KEY].get("dataset_sha256"))  # fmt: skip


def search_eval_interval(max_iters: int, eval_interval: int) -> int:
    """The search's evaluation interval: the preset's, shortened so a trial evaluates at
    least ``MIN_EVALUATIONS`` times after step 0 (ASHA can only stop trials at evaluations)."""
    return max(1, min(eval_interval, max_iters // MIN_EVALUATIONS))


def asha_settings(
    max_iters: int,
    eval_interval: int,
    grace_period: int | None = None,
    reduction_factor: float | None = None,
) -> tuple[int, int, float]:
    """(max_t, grace_period, reduction_factor) of ASHA, counted in reports (evaluations).

    A trial reports at step 0 and every ``eval_interval`` steps up to ``max_iters``:
    E = ceil(max_iters / eval_interval) evaluations after step 0, so max_t = E + 1 reports.
    Grace period: 2 reports (step 0's loss is the same for every config; the first
    evaluation after training is the earliest that ranks anything). Reduction factor: 3
    when its second rung (grace x 3) still falls before max_t, else 2 (rungs at 2 and 4
    reports). Explicit values win.
    """
    evaluations = -(-max_iters // eval_interval)
    max_t = evaluations + 1
    grace = grace_period if grace_period is not None else min(2, max_t)
    if reduction_factor is None:
        reduction_factor = 3.0 if grace * 3 < max_t else 2.0
    return max_t, min(grace, max_t), reduction_factor


def _one_dataset(text: str) -> str:
    """--datasets of a search: one dataset (a search compares configs on one corpus)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(names) != 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a search runs on one dataset; give one name, and search each "
            "dataset in its own run (--name to keep the studies apart)"
        )
    return names[0]


def _parse(argv: list[str] | None) -> SearchOptions:
    parser = OneLineParser(
        prog="python sweeps/search.py",
        description="Optuna TPE search with ASHA early stopping over n_head, n_layer, n_embed, "
        "dropout, block_size and the learning rate, on Ray Tune, into the result store.",
    )
    _add_trial_options(parser)
    deprecated_alias(parser, "--dataset", "--datasets")
    deprecated_alias(parser, "--seeds-per-trial", "--seeds", metavar="K")
    deprecated_alias(parser, "--seed", "--first-seed")
    _add_study_options(parser)
    add_run_options(parser, gpus_help="GPUs per trial, fractions share a GPU (default 0)")
    parser.set_defaults(gpus_per_trial=0.0)
    args = parser.parse_args(argv)
    check_options(args, parser)
    return SearchOptions.from_args(args)


def _add_trial_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--n-trials", type=int, default=50, help="number of trials (default 50)")
    add(
        "--datasets",
        dest="dataset",
        metavar="NAME",
        type=_one_dataset,
        default="shakespeare_char",
        help="the dataset searched on (one): shakespeare_char, enwik8, text8 or a text file path",
    )
    add(
        "--preset",
        default="notebook",
        choices=sorted(PRESETS),
        help="baseline that fixes the other settings (default notebook)",
    )
    add("--max-iters", type=int, help="training steps per trial (default: the preset's)")
    add(
        "--seeds",
        dest="seeds_per_trial",
        type=int,
        default=1,
        metavar="K",
        help="seeds each sampled config trains (seeds FIRST..FIRST+K-1), in lockstep in one "
        "trial; TPE and ASHA see their mean val loss (default 1)",
    )
    add(
        "--first-seed",
        dest="seed",
        type=int,
        default=0,
        metavar="FIRST",
        help="first training seed of every trial, and the TPE sampler's seed",
    )


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--name", default="search", help="sweep name in the store and Optuna study name")
    add(
        "--optuna-storage",
        help="Optuna storage URL (default sqlite:///RESULTS/optuna.db; "
        "a .log path uses a journal file)",
    )
    add(
        "--grace-period",
        type=int,
        help="reports (evaluations, step 0 included) every trial gets before ASHA may stop "
        "it (default 2: step 0 and the first evaluation after training)",
    )
    add(
        "--reduction-factor",
        type=float,
        help="ASHA reduction factor (default: 3 when a trial has room for two rungs at that "
        "factor, else 2; see docs/commands.md)",
    )
    add(
        "--dry-run",
        action="store_true",
        help="print the search's compute estimate (trials, tokens, FLOPs, wall time; every "
        "trial to its end, and as ASHA is expected to stop them), then exit without running",
    )


def quiet_optuna() -> None:
    """Optuna's own INFO lines ("[I ...] A new study created ...") stay out of our output;
    warnings still show (--verbose shows everything)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _base_trial(args: SearchOptions) -> TrialSpec:
    """The preset's baseline on the chosen dataset, seed and length: what is not searched."""
    overrides = args.overrides_dict()
    searched = [name for name in overrides if name in SEARCH_SPACE]
    if searched:
        raise ConfigError(
            f"--set {', '.join(searched)}: searched by the study, so the value would be "
            f"ignored; drop it (the searched fields are {', '.join(SEARCH_SPACE)})."
        )
    (trial,) = expand(PRESETS[args.preset], factors=[], datasets=[args.dataset],
                      seeds=[args.seed], max_iters=args.max_iters,
                      overrides=overrides or None)  # fmt: skip
    if "eval_interval" not in overrides:
        interval = search_eval_interval(trial.train.max_iters, trial.train.eval_interval)
        trial = dataclasses.replace(
            trial, train=dataclasses.replace(trial.train, eval_interval=interval)
        )
    return dataclasses.replace(trial, sweep=args.name)


def study_settings(
    base: TrialSpec, seeds_per_trial: int, asha: tuple[int, int, float]
) -> dict[str, Any]:
    """What every trial of a study shares, as recorded in the study: the fixed config
    fields (the dataset by its content), seeds per trial and ASHA's (max_t, grace period,
    reduction factor)."""
    fixed = {**to_dict(base.model), **to_dict(base.train)}
    settings = {name: value for name, value in fixed.items()
                if name not in SEARCH_SPACE and name not in MACHINE_FIELDS}  # fmt: skip
    settings["dataset"] = dataset_identity(base.train.dataset)
    max_t, grace, factor = asha
    return {**settings, "seeds_per_trial": seeds_per_trial, "asha_max_t": max_t,
            "asha_grace_period": grace, "asha_reduction_factor": factor}  # fmt: skip


def sampled_trials(base: TrialSpec, n_trials: int, seeds: int, seed: int) -> list[TrialSpec]:
    """``n_trials`` configs drawn at random from SEARCH_SPACE (as TPE draws its first
    trials), each with ``seeds`` seeds from the base's: what the dry run prices."""
    import math
    import random

    draw = random.Random(seed)
    sample: dict[str, Callable[..., Any]] = {
        "choice": lambda values: draw.choice(values),
        "randint": lambda low, high: draw.randrange(low, high),
        "uniform": lambda low, high: draw.uniform(low, high),
        "loguniform": lambda low, high: math.exp(draw.uniform(math.log(low), math.log(high))),
    }
    base_params = {**to_dict(base.model), **to_dict(base.train)}
    trials = []
    for _ in range(n_trials):
        values = {name: sample[kind](*args) for name, (kind, *args) in SEARCH_SPACE.items()}
        for model, train in map(split_config, _seed_params(base_params, values, seeds)):
            identity = trial_id(model, train)
            trials.append(
                dataclasses.replace(
                    base, trial_id=identity, seed=train.seed, model=model, train=train
                )
            )
    return trials


def _asha(args: SearchOptions, base: TrialSpec) -> tuple[int, int, float]:
    """This search's ASHA settings (``asha_settings`` of its base trial and options)."""
    return asha_settings(base.train.max_iters, base.train.eval_interval, args.grace_period,
                         args.reduction_factor)  # fmt: skip


def search_estimate(
    args: SearchOptions, base: TrialSpec, resources: Resources
) -> tuple[Estimate, float]:
    """(the ``sweeps.estimate`` Estimate of ``sampled_trials``, the share of steps ASHA is
    expected to train) for this search on this machine's CPUs (or --num-cpus)."""
    from sweeps.estimate import asha_fraction, estimate

    concurrent = local_concurrency(args)
    trials = sampled_trials(base, args.n_trials, args.seeds_per_trial, args.seed)
    vocab = prepare_datasets([base])
    result = estimate(trials, resources.cpus_per_trial, concurrent, vocab)
    max_t, grace, factor = _asha(args, base)
    fraction = asha_fraction(base.train.max_iters, base.train.eval_interval, max_t, grace, factor)
    return result, fraction


def _check(args: SearchOptions) -> tuple[TrialSpec, Placement, dict[str, Any]]:
    """Everything checked before a search runs (or a dry run prints): its base trial, where
    it runs, and the study's settings (those of an existing study must match). Raises
    ConfigError."""
    check_sweep_name(args.name, "--name")
    check_search_options(args.optuna_storage)
    last_seed = args.seed + args.seeds_per_trial - 1
    if last_seed > SEED_MAX:
        raise ConfigError(
            f"--first-seed {args.seed} with --seeds {args.seeds_per_trial}: the last "
            f"seed {last_seed:,} is above {SEED_MAX:,} (numpy's seed range); give --first-seed "
            f"{SEED_MAX - args.seeds_per_trial + 1:,} or less."
        )
    check_search_space()
    base = _base_trial(args)
    placement = check_placement(args)
    settings = study_settings(base, args.seeds_per_trial, _asha(args, base))
    largest = _largest(base)
    vocab_sizes = prepare_datasets([largest])
    if args.embedded:
        vocab = vocab_sizes[largest.dataset]
        check_local_memory([("search's largest config", largest.model, largest.train, vocab)], 1)
    else:  # before the lock writes
        from sweeps.runner import check_reachable, head_address  # Ray: only with a cluster

        cluster_file = args.cluster or "cluster.yaml"
        address = args.address or head_address(placement.cluster or {}, cluster_file)
        check_reachable(address, cluster_file, "sweeps/search.py")
    from sweeps.study import check_settings  # Optuna: once everything else is checked

    check_settings(args.url, redact(args.url), args.name, settings)
    return base, placement, settings


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        base, placement, settings = _check(args)
    except ConfigError as exc:
        fail(str(exc))
    if args.dry_run:
        from sweeps.estimate import format_search_estimate

        result, fraction = search_estimate(args, base, placement.resources)
        print(format_search_estimate(result, args.seeds_per_trial, fraction))
        return 0
    # One driver per store (sweeps.store.locked): on this machine before Ray starts, on a
    # cluster once connected (a cluster that refuses the run leaves no results directory).
    with contextlib.ExitStack() as held, interrupt.handling():
        lock_store(args, held, connected=False)
        return _run(args, base, placement.resources, held, settings)


def _run(
    args: SearchOptions,
    base: TrialSpec,
    resources: Resources,
    held: contextlib.ExitStack,
    settings: dict[str, Any],
) -> int:
    import ray

    from sweeps.study import open_study

    if not args.verbose:
        quiet_optuna()
    connection = connect_driver(args, "sweeps/search.py")
    lock_store(args, held, connected=True)
    study = None
    outcome: SweepOutcome | None = None
    try:
        store = ResultStore(args.results)  # the marker first: optuna.db lives in the store
        study, done, abandoned = open_study(args.url, args.name, settings)
        if abandoned:
            print(f"study {args.name!r}: {abandoned} trials left RUNNING by a driver that is "
                  "gone are now marked FAILED")  # fmt: skip
        if done >= args.n_trials:
            print(f"study {args.name!r} has {done} finished trials (--n-trials "
                  f"{args.n_trials}): nothing to run")  # fmt: skip
            _announce_winner(args)
            return 0
        outcome = _search(args, base, resources, connection, store, args.n_trials - done)
    except KeyboardInterrupt:  # a signal before Tune ran, or a second one
        pass
    finally:
        ray.shutdown()
    if outcome is None or interrupt.requested():
        return _interrupted(args, study, outcome)
    k = args.seeds_per_trial
    # Counts of store rows; every seed of a trial shares its fate, so / k counts trials.
    line = finished_line(len(outcome.ok) // k, len(outcome.failed) // k, outcome.wall_time_s,
                         args.results, early_stopped=len(outcome.early_stopped) // k)  # fmt: skip
    print(f"{line}; study: optuna-dashboard {redact(args.url)}")
    _announce_winner(args)
    return 1 if outcome.failed else 0


def _search(
    args: SearchOptions,
    base: TrialSpec,
    resources: Resources,
    connection: Connection,
    store: ResultStore,
    n_trials: int,
) -> SweepOutcome:
    """Run ``n_trials`` more trials of the study; the runner's SweepOutcome."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.estimate import format_search_estimate
    from sweeps.runner import RunSettings, run_trials
    from sweeps.search_study import StoreIdSearch
    from sweeps.study import optuna_storage

    store.write_run(run_info(args.name, "search", connection.description, resources, n_trials))
    max_t, grace, factor = _asha(args, base)
    searcher = StoreIdSearch(metric="val_loss", mode="min", study_name=args.name,
                             seed=args.seed, storage=optuna_storage(args.url))  # fmt: skip
    scheduler = ASHAScheduler(metric="val_loss", mode="min", max_t=max_t,
                              grace_period=grace, reduction_factor=factor)  # fmt: skip
    base_values = {"params": {**to_dict(base.model), **to_dict(base.train)},
                   "sweep": args.name, "seeds_per_trial": args.seeds_per_trial,
                   "dataset_sha256": dataset_sha256(base.dataset)}  # fmt: skip
    k = args.seeds_per_trial
    more = f" (the study lacks {n_trials} of --n-trials {args.n_trials})"
    print(
        f"searching on {connection.description}: {n_trials} trials x {k} "
        f"seed{'s' * (k != 1)}{more if n_trials != args.n_trials else ''}, study "
        f"{args.name!r} in {redact(args.url)}; ASHA: {max_t} reports per trial (step 0, then "
        f"every {base.train.eval_interval} steps), grace period {grace}, reduction "
        f"factor {factor:g}",
        flush=True,
    )
    per_trial_s = None  # on a cluster this machine's timings say nothing: the ETA learns
    if args.embedded:  # priced on this machine's CPUs
        estimated, fraction = search_estimate(args, base, resources)
        per_trial_s = (estimated.trial_seconds or 0.0) * fraction / args.n_trials
        print(format_search_estimate(estimated, k, fraction).split("\n", 1)[1], flush=True)
    settings = RunSettings(
        name=args.name, total=n_trials, resources=resources, describe=describe_search_trial,
        trainable=run_search_trial, default_max_iters=base.train.max_iters,
        default_estimate_s=per_trial_s, state_every_s=args.state_every,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=n_trials, reuse_actors=True
        ),
    )  # fmt: skip
    return run_trials(connection, store, {**_tune_space(), BASE_KEY: base_values}, settings)


def _interrupted(
    args: SearchOptions, study: optuna.Study | None, outcome: SweepOutcome | None
) -> int:
    """The summary of a search stopped by SIGINT/SIGTERM: its unfinished Optuna trials
    marked FAILED, no winner from a partial search; exit 128 + the signal number."""
    from sweeps.study import fail_abandoned, finished_trials

    k = args.seeds_per_trial
    now = len(outcome.ok) // k if outcome is not None else 0
    failed = fail_abandoned(study, own=True) if study is not None else 0
    done = finished_trials(study) if study is not None else 0
    return report_interrupt(
        f"{now} trials finished in this run; study {args.name!r} has {done} of "
        f"{args.n_trials} ({failed} unfinished trials marked FAILED); no winner and no "
        "best_grid.yaml from a partial search. To continue, run the same command again: it "
        f"runs the {max(0, args.n_trials - done)} trials the study lacks."
    )


def _announce_winner(args: SearchOptions) -> None:
    """Print the winner and write RESULTS/best_grid.yaml around it."""
    from sweeps.best_grid import best_grid, find_winner, write_best_grid

    winner = find_winner(args.results, args.name)
    if winner is None:
        print("no config ran all its seeds to the end: no winner, no best_grid.yaml")
        return
    line = winner.line(list(SEARCH_SPACE), format_value)
    path = args.results / BEST_GRID_FILE
    grid = best_grid(winner, SEARCH_SPACE, name=f"{args.name}-best", preset=args.preset,
                     n_seeds=max(3, args.seeds_per_trial))  # fmt: skip
    header = (
        f"Written by sweeps/search.py (study {args.name!r}): an OFAT grid around its {line}\n"
        "Seeds are fresh: the winner's search scores are biased low (it won on them)."
    )
    write_best_grid(path, grid, header)
    print(line)
    print(
        f"wrote {path}: explain the optimum with\n"
        f"  python sweeps/ablation.py --grid {path} --results {args.results}"
    )


if __name__ == "__main__":
    sys.exit(main())
