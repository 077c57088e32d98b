"""Checks of a sweep's run options that need no Ray: what it asks of the nodes, its name, its
retry count, its search settings, its memory. Pure functions on plain values (a node is a
dict of Ray resource names to amounts), so the CLIs can answer before Ray starts and tests
can call them without a cluster. Every problem is a ConfigError: one line, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from charlm.cli import fail
from charlm.config import ConfigError, Domain, ModelConfig, TrainConfig, domains, is_regular_file
from charlm.text import short_repr
from sweeps.grid import MAX_TRIALS, safe_load_unique

# A sweep name becomes a directory name (Tune's run directory, the Optuna study): one path
# component made of these characters, not starting with '.' (no '..', no hidden names).
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,99}")
_NAME_LENGTH = 100
_EPSILON = 1e-9


_TRIALS = "a sweep plans at most that many trials"
_SEED = domains(TrainConfig)["seed"]
_ONE_MACHINE = 1e6  # the embedded Ray is this one machine: more CPUs or GPUs is a typo
# Seconds between uploads of Tune's experiment state (--state-every).
DEFAULT_STATE_EVERY_S = 300.0
# The domain of every numeric option of the sweep CLIs, by destination (the two CLIs spell
# some differently: the search's --seeds is seeds_per_trial): checked (``check_options``)
# before anything else, so a later check never sees a NaN or a 300-digit number.
OPTION_DOMAINS: dict[str, Domain] = {
    "seeds": Domain(int, low=1, high=MAX_TRIALS, optional=True, high_reason=_TRIALS,
                      fix="give a number of seeds >= 1"),
    "max_seeds": Domain(int, low=2, high=MAX_TRIALS, optional=True, high_reason=_TRIALS,
                          fix="a paired interval needs at least 2 seeds; give --max-seeds 2 "
                          "or more (e.g. 10)"),
    "min_effect": Domain(float, low=0, low_open=True, optional=True,
                           fix="give the smallest difference in best_val_loss you care "
                           "about, > 0 (e.g. 0.02)"),
    "confidence": Domain(float, low=0, high=1, low_open=True, high_open=True, optional=True,
                           fix="give a level between 0 and 1 (e.g. 0.95)"),
    "max_iters": Domain(int, low=1, optional=True, fix="give a number of steps >= 1"),
    "max_failures": Domain(int, low=0, high=1000, high_reason="a trial retried more often "
                             "fails for a reason retries do not fix",
                             fix="give a number of retries >= 0 (e.g. 3); a negative number "
                             "would retry a failing trial forever"),
    "cpus_per_trial": Domain(float, low=0, low_open=True, fix="give a number > 0, e.g. 1"),
    "gpus_per_trial": Domain(float, low=0, optional=True,
                               fix="give a number >= 0, e.g. 0.25 or 1"),
    "max_concurrent": Domain(int, low=1, optional=True, fix="give an integer >= 1"),
    "num_cpus": Domain(float, low=0, high=_ONE_MACHINE, optional=True,
                         fix=f"give a number in [0, {_ONE_MACHINE:g}] (default: all)"),
    "num_gpus": Domain(float, low=0, high=_ONE_MACHINE, optional=True,
                         fix=f"give a number in [0, {_ONE_MACHINE:g}] (default: all)"),
    "n_trials": Domain(int, low=1, high=MAX_TRIALS, high_reason=_TRIALS,
                         fix="give a number of trials >= 1"),
    "seeds_per_trial": Domain(int, low=1, high=100, high_reason="seeds trained in lockstep "
                                "in one trial", fix="give a number of seeds >= 1"),
    "seed": Domain(int, low=0, high=_SEED.high, high_reason=_SEED.high_reason,
                     fix="give a seed >= 0"),
    "grace_period": Domain(int, low=1, optional=True,
                             fix="give a number of evaluations >= 1 (default 2)"),
    "state_every": Domain(float, low=1, high=86400, high_reason="a day between uploads "
                          "of the experiment state", fix="give a number of seconds >= 1 "
                          f"(default {DEFAULT_STATE_EVERY_S:g})"),
    "reduction_factor": Domain(float, low=1, low_open=True, optional=True,
                                 fix="ASHA needs a factor > 1 (default 2 or 3, see "
                                 "docs/commands.md)"),
}  # fmt: skip


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The flag ``parser`` shows for each option OPTION_DOMAINS declares, by destination."""
    return {
        action.dest: action.option_strings[0]
        for action in parser._actions
        if action.dest in OPTION_DOMAINS and action.option_strings
        and action.help != argparse.SUPPRESS
    }  # fmt: skip


def check_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Check every option of ``args`` that OPTION_DOMAINS declares (--seeds auto aside),
    naming it as ``parser`` spells it; a bad value is ``fail``'s one line, exit 2."""
    for dest, flag in option_flags(parser).items():
        value = getattr(args, dest)
        if value != "auto":
            try:
                OPTION_DOMAINS[dest].check(flag, value)
            except ConfigError as exc:
                fail(str(exc))


def add_run_options(parser: argparse.ArgumentParser, *, gpus_help: str) -> None:
    """The options every sweep CLI shares: the result store, the dataset cache, where it
    runs (a cluster or an embedded Ray),
    what a trial gets, where checkpoints go, ``--set`` and ``--verbose``. ``gpus_help`` says
    what ``--gpus-per-trial`` defaults to (None: the CLI decides)."""
    add = parser.add_argument
    add("--results", type=Path, default=Path("results"), help="result store directory")
    add("--data-dir", help="dataset cache (default: $CHARLM_DATA_DIR, else the user cache)")
    add(
        "--cluster",
        metavar="YAML",
        help="Ray cluster-launcher file of the cluster to use (default: an embedded local Ray)",
    )
    add(
        "--address",
        help="Ray address to connect to instead of deriving it from --cluster "
        "(e.g. ray://127.0.0.1:10001 through an SSH tunnel)",
    )
    add(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        help="CPUs per trial, also its torch threads (default 1: one trial per core)",
    )
    add("--gpus-per-trial", type=float, default=None, help=gpus_help)
    add("--max-concurrent", type=int, help="at most K trials at once")
    add("--num-cpus", type=float, help="CPUs of the embedded local Ray (default: all)")
    add("--num-gpus", type=float, help="GPUs of the embedded local Ray (default: all)")
    add(
        "--storage",
        help="path or URI for checkpoints that every node can reach (multi-node: "
        "shared storage such as s3://bucket/path or NFS; default: RESULTS/_ray)",
    )
    add(
        "--set",
        dest="overrides",
        action="append",
        metavar="FIELD=VALUE",
        help="set a config field for every trial, e.g. --set eval_iters=20 (repeatable)",
    )
    add(
        "--state-every",
        type=float,
        default=DEFAULT_STATE_EVERY_S,
        metavar="SECONDS",
        help="seconds between uploads of Tune's experiment state to the checkpoint storage "
        f"(default {DEFAULT_STATE_EVERY_S:g}; each upload costs S3 requests in proportion to "
        "the trials queued; trial checkpoints go up as trials report them)",
    )
    add("--verbose", action="store_true", help="show Ray's own logs")


def check_sweep_name(name: str, option: str) -> None:
    """Raise ConfigError unless ``name`` is a safe single directory name."""
    if isinstance(name, str) and SAFE_NAME.fullmatch(name):
        return
    if isinstance(name, str) and len(name) > _NAME_LENGTH and SAFE_NAME.fullmatch(name[:100]):
        raise ConfigError(
            f"{option} {short_repr(name)}: is too long ({len(name):,} characters): a sweep name "
            f"becomes a directory name, at most {_NAME_LENGTH} characters; give a shorter one."
        )
    suggestion = re.sub(r"[^A-Za-z0-9_=+-]+", "_", str(name)).strip("_") or "sweep"
    raise ConfigError(
        f"{option} {short_repr(name)}: a sweep name becomes a directory name, so it must be "
        "letters, digits, '_', '.', '=', '+' or '-' (not starting with '.'): use e.g. "
        f"{suggestion[:100]!r}."
    )


# ------------------------------------------------------------------ resources


def local_node(num_cpus: float | None, num_gpus: float | None) -> dict[str, float]:
    """The resources the embedded local Ray will have: the counts given, else this machine's
    CPUs (those this process may run on) and NVIDIA GPUs (CUDA_VISIBLE_DEVICES, else the
    driver's list in /proc). The counts given are checked already (``OPTION_DOMAINS``)."""
    if num_cpus is None:
        num_cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else os.cpu_count() or 1)  # fmt: skip
    if num_gpus is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            num_gpus = float(len([d for d in visible.split(",") if d.strip() and d != "-1"]))
        else:
            gpus = Path("/proc/driver/nvidia/gpus")
            num_gpus = float(len(list(gpus.iterdir())) if gpus.is_dir() else 0)
    return {"CPU": num_cpus, "GPU": num_gpus}


def node_types(cluster_config: Mapping[str, Any] | None) -> dict[str, dict[str, float] | None]:
    """Node types an autoscaler may start, from a cluster-launcher config: name -> resources
    (None when the file leaves them to the cloud's instance type). Types with
    ``max_workers: 0`` are left out, except the head's."""
    if not cluster_config:
        return {}
    head = cluster_config.get("head_node_type")
    types: dict[str, dict[str, float] | None] = {}
    for name, spec in (cluster_config.get("available_node_types") or {}).items():
        spec = spec or {}
        if name != head and spec.get("max_workers", 1) == 0:
            continue
        resources = spec.get("resources")
        types[name] = {k: float(v) for k, v in resources.items()} if resources else None
    return types


def _fits(node: Mapping[str, float], cpus: float, gpus: float) -> bool:
    return node.get("CPU", 0.0) + _EPSILON >= cpus and node.get("GPU", 0.0) + _EPSILON >= gpus


def check_trial_resources(
    cpus_per_trial: float,
    gpus_per_trial: float,
    nodes: Sequence[Mapping[str, float]],
    where: str,
    types: Mapping[str, Mapping[str, float] | None] | None = None,
) -> str | None:
    """Can one trial ever run? ``nodes`` are the live nodes' total resources, ``types`` the
    node types an autoscaler may add (see ``node_types``).

    Returns None when a live node can hold a trial, or what the sweep waits for when only an
    autoscaler can provide such a node; raises ConfigError when nothing can (the sweep would
    wait forever). ``where`` names the nodes in the message ('this machine', 'the cluster').
    """
    if any(_fits(node, cpus_per_trial, gpus_per_trial) for node in nodes):
        return None
    request = f"{cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU per trial"
    for name, resources in (types or {}).items():
        if resources is not None and _fits(resources, cpus_per_trial, gpus_per_trial):
            return f"waiting for the autoscaler to add a {name} node ({request})"
    if types and any(resources is None for resources in types.values()):
        return f"waiting for the autoscaler to add a node with {request}"
    largest_cpu = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    largest_gpu = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    found = (
        f"{where} has {largest_cpu:g} CPUs"
        if len(nodes) == 1
        else f"{where}: {len(nodes)} nodes, the largest with {largest_cpu:g} CPUs"
    )
    if gpus_per_trial > largest_gpu:
        if largest_gpu == 0:
            raise ConfigError(
                f"--gpus-per-trial {gpus_per_trial:g}: no node has a GPU ({found} and no GPU): "
                "use --gpus-per-trial 0, or a machine or cluster with GPUs."
            )
        raise ConfigError(
            f"--gpus-per-trial {gpus_per_trial:g}: no node has that many GPUs ({found} and "
            f"{largest_gpu:g} GPUs): give --gpus-per-trial {largest_gpu:g} or less."
        )
    if largest_cpu < 1:
        raise ConfigError(
            f"no CPUs for trials ({found}): give --num-cpus 1 or more, or add nodes with CPUs."
        )
    raise ConfigError(
        f"--cpus-per-trial {cpus_per_trial:g}: no node has that many CPUs ({found}): give "
        f"--cpus-per-trial {largest_cpu:g} or less."
    )


# ------------------------------------------------------------------ memory

_TORCH_PROCESS_BYTES = 400 * 1024**2  # a training process with torch imported, idle


def trial_memory_bytes(model: ModelConfig, train: TrainConfig, vocab_size: int) -> int:
    """A rough peak memory of one CPU training process (fp32): what it holds all run (the
    process itself, weights, gradients and AdamW's two moments) plus the largest of what
    each phase of ``charlm.train.train_steps`` adds on top:

    - a training step: the activations kept for the backward pass (the attention weights
      only with dropout: without it SDPA's fused kernel keeps none), logits and their grad;
    - an evaluation batch (no graph): one layer's working set, the logits and the loss;
    - the probe batch: every layer's captured attention weights (probe_batch_size x n_head
      x T x T each) and hidden states, the logits, and the metrics' temporaries;
    - sampling: the KV cache, the prefill's working set and the logits.
    """
    n_embed, n_layer, n_head, block = model.n_embed, model.n_layer, model.n_head, model.block_size
    params = 12 * n_layer * n_embed**2 + (vocab_size + block) * n_embed
    rows = train.batch_size * block  # B * T
    attention = train.batch_size * n_head * block * block * 2 if model.dropout > 0 else 0
    step = n_layer * (rows * n_embed * 20 + attention) + rows * vocab_size * 3 + rows * n_embed * 4
    evaluation = rows * n_embed * 8 + rows * vocab_size * 3
    probe_rows = train.probe_batch_size * block
    probe_maps = train.probe_batch_size * n_head * block * block  # one layer's weights
    probe = n_layer * (probe_maps + probe_rows * n_embed) + probe_rows * vocab_size + 3 * probe_maps
    sampling = 2 * n_layer * block * n_embed + block * n_embed * 8 + block * vocab_size
    phase = max(step, evaluation, probe, sampling)
    return _TORCH_PROCESS_BYTES + 4 * (4 * params + phase)


def check_memory(
    trials: Iterable[tuple[str, ModelConfig, TrainConfig, int]],
    per_node: int,
    memory_bytes: float,
    where: str,
) -> None:
    """Raise ConfigError when the largest trial cannot fit ``memory_bytes`` (the node's memory
    found: ``where`` says how), alone or ``per_node`` at a time. ``trials`` are (label,
    model, train, vocab size)."""
    label, need = max(
        ((label, trial_memory_bytes(model, train, vocab)) for label, model, train, vocab in trials),
        key=lambda item: item[1],
        default=("", 0),
    )
    if not need:
        return
    mib = 1024**2
    if need > memory_bytes:
        raise ConfigError(
            f"{label}: one trial needs about {need / mib:,.0f} MiB (estimate) but {where} "
            f"has {memory_bytes / mib:,.0f} MiB: use a smaller batch_size, probe_batch_size, "
            "block_size or model."
        )
    if per_node > 1 and need * per_node > memory_bytes:
        fit = max(1, int(memory_bytes // need))
        raise ConfigError(
            f"{label}: {per_node} trials at a time need about {need * per_node / mib:,.0f} MiB "
            f"(estimate {need / mib:,.0f} each) but {where} has {memory_bytes / mib:,.0f} MiB: "
            f"pass --max-concurrent {fit}."
        )


def available_memory_bytes() -> float:
    """MemAvailable of this machine (/proc/meminfo), or inf where that is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf


# ------------------------------------------------------------------ search

_OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def check_search_options(optuna_storage: str | None) -> None:
    """What Optuna would reject only after Ray started: a storage it cannot open (the
    search's numeric options are OPTION_DOMAINS')."""
    if optuna_storage is None:
        return
    if "://" not in optuna_storage:
        if not optuna_storage.endswith(".log"):
            raise ConfigError(
                f"--optuna-storage {optuna_storage!r}: give a database URL (e.g. "
                "sqlite:///study.db) or a journal file path ending in .log."
            )
        parent = Path(optuna_storage).expanduser().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(
                f"--optuna-storage {optuna_storage}: {parent} is not a writable directory; "
                "name a journal file in one."
            )
        return
    scheme = optuna_storage.split("://", 1)[0].split("+", 1)[0]
    if scheme not in _OPTUNA_SCHEMES:
        raise ConfigError(
            f"--optuna-storage {optuna_storage.split('://', 1)[0]}://...: not a database URL "
            f"Optuna can open; use one of {', '.join(s + '://' for s in _OPTUNA_SCHEMES)} "
            "or a journal file path ending in .log."
        )
    if scheme == "sqlite":
        path = optuna_storage.split("://", 1)[1].removeprefix("/")
        sqlite_dir = Path(path).expanduser().parent if path and path != ":memory:" else None
        if sqlite_dir is not None and not sqlite_dir.is_dir():
            raise ConfigError(
                f"--optuna-storage {optuna_storage}: the directory {sqlite_dir} does not exist; "
                "create it or name a database file in an existing directory."
            )


# ------------------------------------------------------------------ cluster file, resources


class ClusterError(ConfigError):
    """A cluster.yaml that is malformed or names a head we cannot reach."""


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """Read a Ray cluster-launcher YAML and check it against Ray's own launcher schema."""
    path = Path(path)
    try:
        found = is_regular_file(path, f"--cluster {path}", "a cluster.yaml")
    except ConfigError as error:
        raise ClusterError(str(error)) from None
    if not found:
        raise ClusterError(f"--cluster {path}: no such file; give the path of a cluster.yaml.")
    try:
        raw = safe_load_unique(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = str(getattr(exc, "problem", ""))
        if problem.startswith("duplicate key"):
            raise ClusterError(f"--cluster {path}: {problem}; keep one of them.") from None
        raise ClusterError(f"--cluster {path}: not valid YAML{at}; fix the file.") from None
    if not isinstance(raw, dict):
        raise ClusterError(f"--cluster {path}: not a cluster-launcher config (a YAML mapping).")
    # Private API, pinned by tests/test_cluster.py: the launcher's own offline validation.
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(dict(raw)))
    except Exception as exc:  # jsonschema.ValidationError, ValueError, KeyError...
        message = getattr(exc, "message", None) or str(exc)
        first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        raise ClusterError(
            f"--cluster {path}: rejected by Ray's cluster-launcher schema: {first}; "
            "see https://docs.ray.io/en/latest/cluster/vms/references/ray-cluster-configuration.html"
        ) from None
    return raw


@dataclass(frozen=True)
class Resources:
    """What each trial asks Ray for; fractional GPUs share one device between trials."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in ("cpus_per_trial", "max_concurrent"):  # for library callers; the CLIs'
            OPTION_DOMAINS[name].check(name, getattr(self, name))  # check_options ran already
        if self.gpus_per_trial < 0 or (
            self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial)
        ):
            raise ConfigError(
                f"gpus_per_trial={self.gpus_per_trial} is invalid: give a fraction in [0, 1] "
                "(e.g. 0.25 packs four trials on a GPU) or a whole number."
            )

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    def slots(self, node: Mapping[str, float]) -> int:
        """How many trials run at once on ``node`` (Ray resource names to amounts: a
        machine, or the whole cluster), at least one."""
        fit = math.floor(node.get("CPU", 0.0) / self.cpus_per_trial + _EPSILON)
        if self.gpus_per_trial > 0:
            fit = min(fit, math.floor(node.get("GPU", 0.0) / self.gpus_per_trial + _EPSILON))
        return max(1, min(fit, self.max_concurrent or fit))
