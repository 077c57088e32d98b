"""How the runs of a store were set up: one Setting/Value table per sweep.

Everything comes from the store: the trials table holds every config field of every trial
(the baseline's settings are read from its rows), and ``sweep_runs/`` holds what each
sweep command recorded when it started (code version, git commit, host, command line).
A setting that differs between the rows read shows every value, so a sweep that mixed
runs of different lengths says so instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from analysis.aggregate import level_order

__all__ = ["setup_table"]


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _distinct(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if isinstance(value, float) and pd.isna(value):
            value = None
        if hasattr(value, "item"):
            value = value.item()  # numpy scalar -> Python
        if value not in seen:
            seen.append(value)
    return seen


def _values(frame: pd.DataFrame, column: str) -> str:
    if column not in frame:
        return "–"
    return ", ".join(_text(v) for v in _distinct(frame[column]))


def _one(frame: pd.DataFrame, column: str) -> Any:
    """The column's value when all rows agree, else None."""
    if column not in frame:
        return None
    values = _distinct(frame[column])
    return values[0] if len(values) == 1 else None


def _schedule(frame: pd.DataFrame) -> str:
    """The learning-rate schedule in words, with the defaults (None) resolved."""
    lr, warmup, max_iters = (
        _one(frame, "learning_rate"),
        _one(frame, "warmup_iters"),
        _one(frame, "max_iters"),
    )
    if lr is None or warmup is None or max_iters is None:
        return (
            f"AdamW; peak {_values(frame, 'learning_rate')}, warm-up "
            f"{_values(frame, 'warmup_iters')} steps (differs between trials)"
        )
    min_lr = _one(frame, "min_lr")
    decay = _one(frame, "lr_decay_iters")
    min_lr = lr / 10 if min_lr is None else min_lr
    decay = max_iters if decay is None else decay
    return (
        f"AdamW; linear warm-up to {lr:g} over {warmup} steps, cosine decay to {min_lr:g} "
        f"at step {decay}"
    )


def _model(frame: pd.DataFrame) -> str:
    def field(column: str, unit: str) -> str:
        return f"{_values(frame, column)} {unit}"

    bias = _one(frame, "bias")
    vocab = _values(frame, "vocab_size")
    return (
        f"{field('n_layer', 'layers')}, {field('n_head', 'heads')}, "
        f"{field('n_embed', 'wide')}, block {_values(frame, 'block_size')}, dropout "
        f"{_values(frame, 'dropout')}, {'with' if bias else 'no'} bias, vocabulary "
        + ("the dataset's characters" if vocab == "–" else vocab)
    )


def _counts(series: pd.Series) -> str:
    counts = series.fillna("–").astype(str).value_counts()
    return ", ".join(f"{name} ({n} trials)" for name, n in counts.items())


def _seeds(rows: pd.DataFrame) -> str:
    seeds = sorted(int(seed) for seed in rows["seed"].dropna().unique())
    per_config = rows.groupby(["dataset", "factor", "level"])["seed"].nunique()
    if not seeds:
        return "–"
    low, high = int(per_config.min()), int(per_config.max())
    count = f"{low}" if low == high else f"{low}-{high}"
    return f"{', '.join(map(str, seeds))} ({count} per config)"


def _levels(rows: pd.DataFrame) -> str:
    factors = []
    for factor, frame in rows[rows["factor"].ne("baseline")].groupby("factor", sort=True):
        levels = level_order([str(level) for level in frame["level"].unique()])
        factors.append(f"{factor}: {', '.join(levels)}")
    return "; ".join(factors) or "none (baseline only)"


def _code(runs: Sequence[dict]) -> tuple[str, str, str]:
    """(code version and commit, hosts and clusters, command lines) of the sweep's runs."""
    if not runs:
        unknown = "not recorded (the store predates run records)"
        return unknown, unknown, unknown
    versions = _distinct(
        f"charlm-sweeps {run.get('project_version') or '(not installed)'}, "
        + (f"git commit {run['git_commit']}" if run.get("git_commit") else "commit unknown")
        for run in runs
    )
    libraries = _distinct(
        f"Python {run.get('python', '?')}, torch {run.get('torch', '?')}, Ray {run.get('ray', '?')}"
        for run in runs
    )
    hosts = _distinct(f"{run.get('host', '?')}: {run.get('ray_cluster', '?')}" for run in runs)
    commands = _distinct(str(run.get("command", "?")) for run in runs)
    return "; ".join([*versions, *libraries]), "; ".join(hosts), "; ".join(commands)


def setup_table(trials: pd.DataFrame, runs: Sequence[dict], sweep: str) -> pd.DataFrame:
    """Setting/Value rows of one sweep: kind, datasets, seeds, trials, the baseline model,
    factors and levels (or the searched fields), training and evaluation settings, the
    learning-rate schedule, devices, code version and commit, hosts and command lines.

    ``trials``: the store's trials table (all sweeps); ``runs``: ``sweeps.schema.read_runs``.
    """
    rows = trials[trials["sweep"] == sweep]
    kind = _one(rows, "kind") or "ablation"
    search = kind == "search"
    base = (
        rows
        if search or not rows["factor"].eq("baseline").any()
        else rows[rows["factor"].eq("baseline")]
    )
    ok = int(rows["status"].eq("ok").sum())
    failed = int(rows["status"].eq("failed").sum())
    settings: list[tuple[str, str]] = [
        (
            "Kind",
            "Optuna search (each trial its own config)"
            if search
            else "one-factor-at-a-time ablation: the baseline, then one factor changed at a time",
        ),
        ("Datasets", _values(rows, "dataset")),
        ("Seeds", _seeds(rows)),
        ("Trials", f"{len(rows)} ({ok} ok, {failed} failed)"),
    ]
    if search:
        model_fields = ["n_layer", "n_head", "n_embed", "block_size", "dropout", "learning_rate"]
        searched = [c for c in model_fields if c in rows and len(_distinct(rows[c])) > 1]
        settings.append(("Searched", ", ".join(searched) or "–"))
    else:
        settings.append(("Baseline model", _model(base)))
        if "n_params" in base and base["n_params"].notna().any():
            settings.append(("Baseline parameters", f"{int(base['n_params'].dropna().iloc[0]):,}"))
        settings.append(("Factors and levels", _levels(rows)))
    eval_mode = _values(base, "eval_mode") if "eval_mode" in base else "–"
    settings += [
        ("Training steps (max_iters)", _values(base, "max_iters")),
        ("Batch size", _values(base, "batch_size")),
        ("Learning rate", _schedule(base)),
        (
            "Weight decay, betas, gradient clip",
            f"{_values(base, 'weight_decay')}; ({_values(base, 'beta1')}, "
            f"{_values(base, 'beta2')}); {_values(base, 'grad_clip')}",
        ),
        (
            "Evaluation",
            f"every {_values(base, 'eval_interval')} steps (eval_interval); "
            f"{_values(base, 'eval_iters')} batches per split when sampled (eval_iters); "
            f"val loss measured: {eval_mode}",
        ),
        (
            "Probes, sample",
            f"attention probes on {_values(base, 'probe_batch_size')} sequences "
            + (
                "at every evaluation"
                if _one(base, "probe_interval") is None
                and "probe_interval" in base
                and base["probe_interval"].isna().all()
                else f"every {_values(base, 'probe_interval')} steps"
            )
            + f"; {_values(base, 'sample_tokens')} "
            f"characters sampled at temperature {_values(base, 'temperature')}, "
            f"top-k {_values(base, 'top_k')}",
        ),
        ("Device used", _counts(rows["device"]) if "device" in rows else "–"),
        (
            "Device requested, torch threads",
            f"{_values(base, 'requested_device')}; "
            + (
                "torch's default"
                if "num_threads" not in base or base["num_threads"].isna().all()
                else _values(base, "num_threads")
            ),
        ),
    ]
    sweep_runs = [run for run in runs if run.get("sweep") == sweep]
    code, hosts, commands = _code(sweep_runs)
    started = rows["started_at"].dropna() if "started_at" in rows else pd.Series([], dtype=object)
    finished = rows["finished_at"].dropna() if "finished_at" in rows else started
    if len(started):
        span = f"{started.min():%Y-%m-%d %H:%M} to {finished.max():%Y-%m-%d %H:%M} UTC"
        settings.append(("Trials ran", span))
    settings += [("Code", code), ("Machines", hosts), ("Command", commands)]
    return pd.DataFrame(settings, columns=["Setting", "Value"])
