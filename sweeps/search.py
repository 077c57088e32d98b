"""CLI: an Optuna (TPE) search with ASHA early stopping over the same trainable and store.

    python sweeps/search.py --n-trials 50 --dataset shakespeare_char [--cluster cluster.yaml]

The study lives in a persistent Optuna storage (SQLite by default, ``RESULTS/optuna.db``)
that ``optuna-dashboard sqlite:///RESULTS/optuna.db`` opens; every trial also lands in the
result store with kind 'search', early-stopped ones marked ``early_stopped``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from charlm.cli import OneLineParser, fail
from charlm.config import ConfigError, split_config
from charlm.text import format_duration
from sweeps.ablation import prepare_datasets
from sweeps.grid import PRESETS, TrialSpec, expand, parse_overrides, trial_columns, trial_id
from sweeps.options import (
    check_search_options,
    check_sweep_name,
    check_trial_resources,
    local_node,
)
from sweeps.runner import Resources, load_cluster_config
from sweeps.storage import check_writable_here, redact, resolve_storage
from sweeps.store import (
    ResultStore,
    StoreBusyError,
    check_results_dir,
    locked,
)

__all__ = ["SEARCH_SPACE", "describe_search_trial", "main", "run_search_trial", "search_params"]

# Ranges of the five OFAT factors and the learning rate. Every n_embed choice is a
# multiple of every n_head choice, so each sampled config is valid.
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "n_head": ("choice", [1, 2, 4, 8]),
    "n_layer": ("randint", 1, 9),
    "n_embed": ("choice", [32, 64, 96, 128, 192, 256]),
    "dropout": ("uniform", 0.0, 0.3),
    "block_size": ("choice", [32, 64, 128, 256]),
    "learning_rate": ("loguniform", 1e-4, 3e-3),
}
BASE_KEY = "base"


def _tune_space() -> dict[str, Any]:
    from ray import tune

    return {name: getattr(tune, kind)(*args) for name, (kind, *args) in SEARCH_SPACE.items()}


def search_params(config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(trial_id, flat config params, store columns) of one sampled search trial."""
    sampled = {name: config[name] for name in SEARCH_SPACE}
    base = config[BASE_KEY]
    params = {**base["params"], **sampled}
    model, train = split_config(params)
    label = ",".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in sampled.items()
    )
    columns = {
        "dataset": train.dataset,
        "seed": train.seed,
        **trial_columns(
            sweep=base["columns"]["sweep"],
            kind="search",
            factor="search",
            level=label,
            model=model,
            train=train,
        ),
    }
    return trial_id(model, train), params, columns


def describe_search_trial(config: dict[str, Any], result: dict[str, Any] | None):
    """The runner's ``describe`` for search trials."""
    identifier, _, columns = search_params(config)
    return identifier, columns


def run_search_trial(config: dict[str, Any]) -> None:
    """The search's trainable: the ablation trainable on the sampled configuration."""
    from sweeps.trainable import run_trial

    identifier, params, _ = search_params(config)
    run_trial({"trial": {"trial_id": identifier, "params": params}})


def _parse(argv: list[str] | None):
    parser = OneLineParser(
        prog="python sweeps/search.py",
        description="Optuna TPE search with ASHA early stopping over n_head, n_layer, n_embed, "
        "dropout, block_size and the learning rate, on Ray Tune, into the result store.",
    )
    add = parser.add_argument
    add("--n-trials", type=int, default=50, help="number of trials (default 50)")
    add(
        "--dataset",
        default="shakespeare_char",
        help="shakespeare_char, enwik8, text8 or a text file path",
    )
    add(
        "--preset",
        default="notebook",
        choices=sorted(PRESETS),
        help="baseline that fixes the other settings (default notebook)",
    )
    add("--max-iters", type=int, help="training steps per trial (default: the preset's)")
    add("--seed", type=int, default=0, help="training seed of every trial and the TPE seed")
    add("--results", type=Path, default=Path("results"), help="result store (default results/)")
    add("--name", default="search", help="sweep name in the store and Optuna study name")
    add(
        "--optuna-storage",
        help="Optuna storage URL (default sqlite:///RESULTS/optuna.db; "
        "a .log path uses a journal file)",
    )
    add(
        "--set",
        dest="overrides",
        action="append",
        metavar="FIELD=VALUE",
        help="set a config field for every trial, e.g. --set eval_iters=20 (repeatable)",
    )
    add(
        "--grace-period",
        type=int,
        default=2,
        help="evaluations every trial gets before ASHA may stop it (default 2)",
    )
    add("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor (default 3)")
    add("--cluster", metavar="YAML", help="Ray cluster-launcher file (default: embedded Ray)")
    add("--address", help="Ray address to connect to instead of deriving it from --cluster")
    add("--cpus-per-trial", type=float, default=1.0)
    add("--gpus-per-trial", type=float, default=0.0)
    add("--max-concurrent", type=int)
    add("--num-cpus", type=float, help="CPUs of the embedded local Ray (default: all)")
    add("--num-gpus", type=float, help="GPUs of the embedded local Ray (default: all)")
    add("--storage", help="checkpoint path or URI every node can reach (multi-node)")
    add("--verbose", action="store_true", help="show Ray's own logs")
    return parser.parse_args(argv)  # fmt: skip


def _optuna_storage(url: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.endswith(".log") and "://" not in url:
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    return optuna.storages.RDBStorage(url)


def _base_trial(args) -> TrialSpec:
    """The preset's baseline on the chosen dataset, seed and length: what is not searched."""
    overrides = parse_overrides(args.overrides)
    searched = [name for name in overrides if name in SEARCH_SPACE]
    if searched:
        raise ConfigError(
            f"--set {', '.join(searched)}: searched by the study, so the value would be "
            f"ignored; drop it (the searched fields are {', '.join(SEARCH_SPACE)})."
        )
    (trial,) = expand(PRESETS[args.preset], factors=[], datasets=[args.dataset],
                      seeds=[args.seed], max_iters=args.max_iters,
                      overrides=overrides or None)  # fmt: skip
    return dataclasses.replace(trial, sweep=args.name)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if args.n_trials < 1:
            raise ConfigError(f"--n-trials {args.n_trials}: give a number of trials >= 1.")
        check_sweep_name(args.name, "--name")
        check_search_options(
            grace_period=args.grace_period, reduction_factor=args.reduction_factor,
            seed=args.seed, optuna_storage=args.optuna_storage,
        )  # fmt: skip
        base = _base_trial(args)
        check_results_dir(args.results)
        storage = resolve_storage(args.storage, args.results)
        if args.cluster is None and args.address is None:  # one machine: a probe here is all
            check_writable_here(storage)
        resources = Resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent)
        if args.cluster:
            load_cluster_config(args.cluster)
        elif args.address is None:
            check_trial_resources(
                resources.cpus_per_trial, resources.gpus_per_trial,
                [local_node(args.num_cpus, args.num_gpus)], "this machine",
            )  # fmt: skip
        largest = dataclasses.replace(base, model=dataclasses.replace(
            base.model, block_size=max(SEARCH_SPACE["block_size"][1])))  # fmt: skip
        prepare_datasets([largest])
    except ConfigError as exc:
        fail(str(exc))
    try:
        with locked(args.results):  # one driver per store (sweeps.store.locked)
            return _run(args, base, resources)
    except StoreBusyError as exc:
        fail(str(exc))


def _run(args, base: TrialSpec, resources: Resources) -> int:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.runner import connect, run_trials

    try:
        connection = connect(args.cluster, address=args.address, num_cpus=args.num_cpus,
                             num_gpus=args.num_gpus, verbose=args.verbose,
                             script="sweeps/search.py", results=args.results,
                             storage=args.storage)  # fmt: skip
    except ConfigError as exc:
        fail(str(exc))
    try:
        store = ResultStore(args.results)
        url = args.optuna_storage or f"sqlite:///{(args.results / 'optuna.db').resolve()}"
        evaluations = base.train.max_iters // base.train.eval_interval + 1
        searcher = OptunaSearch(
            metric="val_loss", mode="min", study_name=args.name, seed=args.seed,
            storage=_optuna_storage(url),
        )  # fmt: skip
        scheduler = ASHAScheduler(
            metric="val_loss", mode="min", max_t=evaluations,
            grace_period=min(args.grace_period, evaluations),
            reduction_factor=args.reduction_factor,
        )  # fmt: skip
        base_values = base.params(kind="search")
        print(f"searching on {connection.description}: {args.n_trials} trials, study "
              f"{args.name!r} in {redact(url)}",
              flush=True)  # fmt: skip
        outcome = run_trials(
            connection,
            store,
            {**_tune_space(), BASE_KEY: base_values},
            name=args.name,
            total=args.n_trials,
            resources=resources,
            describe=describe_search_trial,
            default_max_iters=base.train.max_iters,
            trainable=run_search_trial,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=args.n_trials,
                reuse_actors=True,
            ),
        )
    finally:
        ray.shutdown()
    print(
        f"{len(outcome.ok)} trials finished ({len(outcome.early_stopped)} stopped early by "
        f"ASHA), {len(outcome.failed)} failed in {format_duration(outcome.wall_time_s)}; "
        f"results in {args.results}; study: optuna-dashboard {redact(url)}"
    )
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
