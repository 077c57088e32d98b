"""How the runs of a store were set up: one Setting/Value table per sweep, and its planned
grid with each level's state.

Everything comes from the store: ``sweep_runs/`` holds what each sweep command recorded
when it started (code version, git commit, host, command line, and its planned grid:
every trial it means to run, finished or not), and the trials table holds every config
field of every finished trial. The baseline's settings are read from the planned grid
(so a report taken mid-sweep names the baseline whether or not it has finished), else,
for stores older than planned grids, from the baseline's rows. A setting that differs
between the rows read shows every value, so a sweep that mixed runs of different lengths
says so instead of hiding it.

A planned level's state: **finished** when each of its planned trials has a trials row
(ok or failed); **running** when one has curve rows but no trials row yet (the store
cannot tell a trial in progress from one whose sweep was killed, except on the host of
the sweep that holds the store's lock: there a dead holder makes it **stopped**);
otherwise **pending** (none or some of its trials finished, none started). Under
``--seeds auto`` seeds past the first round run only for unresolved levels, so a level
with some finished and none running is **open** rather than pending.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from analysis.aggregate import level_order
from sweeps.grid import SEARCH_SPACE


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
    lr, warmup, max_iters = (_one(frame, c) for c in ("learning_rate", "warmup_iters", "max_iters"))
    if lr is None or warmup is None or max_iters is None:
        return (
            f"AdamW; peak {_values(frame, 'learning_rate')}, warm-up "
            f"{_values(frame, 'warmup_iters')} steps (differs between trials)"
        )
    min_lr, decay = _one(frame, "min_lr"), _one(frame, "lr_decay_iters")
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


def level_states(
    planned: pd.DataFrame, trials: pd.DataFrame, in_progress: Sequence[str], alive: bool | None
) -> pd.DataFrame:
    """One row per planned level (sweep, dataset, factor, level), in grid order: its seeds,
    ``n_params``, trials ``planned``, ``ok``, ``failed``, ``running``, its ``state`` (see
    the module docstring) and whether its seeds are ``adaptive`` (--seeds auto).
    ``planned``: ``Store.planned``; ``trials``: the store's trials rows; ``in_progress``:
    ids with curves and no trials row; ``alive``: whether the sweep holding the store still
    runs (``sweeps.schema.holder_alive``)."""
    columns = ["sweep", "dataset", "factor", "level", "seeds", "n_params", "planned", "ok",
               "failed", "running", "state", "adaptive"]  # fmt: skip
    if planned.empty:
        return pd.DataFrame(columns=columns)
    status = dict(zip(trials["trial_id"].astype(str), trials["status"], strict=True))
    started = set(in_progress)
    rows = []
    keys = ["sweep", "dataset", "factor", "level"]
    for key, group in planned.groupby(keys, sort=False):
        ids = group["trial_id"].astype(str)
        ok = sum(status.get(t) == "ok" for t in ids)
        failed = sum(status.get(t) == "failed" for t in ids)
        running = sum(t in started and t not in status for t in ids)
        adaptive = bool(group.get("adaptive_seeds", pd.Series([False])).any())
        if ok + failed == len(ids):
            state = "finished"
        elif running:
            state = "stopped" if alive is False else "running"
        else:
            state = "open" if adaptive and ok + failed else "pending"
        seeds = ", ".join(str(int(seed)) for seed in sorted(group["seed"].unique()))
        n_params = group["n_params"].iloc[0] if "n_params" in group else None
        rows.append((*key, seeds, n_params, len(ids), ok, failed, running, state, adaptive))
    return pd.DataFrame(rows, columns=columns)


def trial_counts(states: pd.DataFrame) -> str:
    """'7 of 22 planned trials finished (6 ok, 1 failed); 2 running, 13 not started' ('2
    stopped before the end' when their sweep is gone; no counts after a finished plan;
    'of up to N' under --seeds auto)."""
    done = int(states["ok"].sum() + states["failed"].sum())
    planned, running = int(states["planned"].sum()), int(states["running"].sum())
    stopped = states["state"].eq("stopped").any()
    text = (
        f"{done} of {'up to ' if states['adaptive'].any() else ''}{planned} planned trials "
        f"finished ({int(states['ok'].sum())} ok, "
        f"{int(states['failed'].sum())} failed)"
    )
    if done < planned:
        text += (
            f"; {running} {'stopped before the end' if stopped else 'running'}, "
            f"{planned - done - running} not started"
        )
    if stopped:
        text += " (no sweep writes this store now: run the same command to finish)"
    return text


def planned_grid_table(states: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """The report's table of one sweep's planned grid: each level with its state."""
    rows = states[states["sweep"].eq(sweep)]
    return pd.DataFrame(
        {
            "Dataset": rows["dataset"],
            "Factor": rows["factor"],
            "Level": rows["level"],
            "Seeds": rows["seeds"],
            "Params": [f"{int(v):,}" if pd.notna(v) else "–" for v in rows["n_params"]],
            "Finished": [
                f"{ok + failed} of {n}" + (f" ({failed} failed)" if failed else "")
                for ok, failed, n in zip(rows["ok"], rows["failed"], rows["planned"], strict=True)
            ],
            "State": rows["state"],
        }
    )


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


def setup_table(
    trials: pd.DataFrame,
    runs: Sequence[dict],
    sweep: str,
    planned: pd.DataFrame | None = None,
    states: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Setting/Value rows of one sweep: kind, datasets, seeds, trials, the baseline model,
    factors and levels (or the searched fields), training and evaluation settings, the
    learning-rate schedule, devices, code version and commit, hosts and command lines.

    ``trials``: the store's trials table (all sweeps); ``runs``: ``sweeps.schema.read_runs``;
    ``planned``: ``Store.planned`` and ``states``: ``level_states`` (all sweeps; None or
    empty for a store without planned grids: the finished rows then stand for the plan).
    """
    rows = trials[trials["sweep"] == sweep]
    plan = planned[planned["sweep"] == sweep] if planned is not None else rows.iloc[:0]
    if plan.empty:
        plan = rows
    kind = _one(rows, "kind") or "ablation"
    search = kind == "search"
    settings: list[tuple[str, str]] = [
        (
            "Kind",
            "Optuna search (each trial its own config)"
            if search
            else "one-factor-at-a-time ablation: the baseline, then one factor changed at a time",
        ),
        ("Datasets", _values(plan, "dataset")),
        ("Seeds", _seeds(plan)),
    ]
    sweep_states = states[states["sweep"] == sweep] if states is not None else None
    if sweep_states is not None and len(sweep_states):
        settings.append(("Trials", trial_counts(sweep_states)))
    else:
        ok = int(rows["status"].eq("ok").sum())
        settings.append(("Trials", f"{len(rows)} ({ok} ok, {len(rows) - ok} failed)"))
    base = _baseline(plan, search)
    if search:
        searched = [c for c in SEARCH_SPACE if c in rows and len(_distinct(rows[c])) > 1]
        settings.append(("Searched", ", ".join(searched) or "–"))
    elif base.empty:
        unknown = (
            "not known yet: no baseline trial has finished (this store predates planned grids)"
        )
        settings += [("Baseline model", unknown), ("Factors and levels", _levels(plan))]
    else:
        settings.append(("Baseline model", _model(base)))
        if "n_params" in base and base["n_params"].notna().any():
            settings.append(("Baseline parameters", f"{int(base['n_params'].dropna().iloc[0]):,}"))
        settings.append(("Factors and levels", _levels(plan)))
    finished_base = _baseline(rows, search)
    settings += _training(base if len(base) else plan, finished_base, rows)
    return pd.DataFrame(settings + _provenance(rows, runs, sweep), columns=["Setting", "Value"])


def _baseline(rows: pd.DataFrame, search: bool) -> pd.DataFrame:
    """The rows whose settings describe the sweep: a search's all, an ablation's baseline
    rows (empty when it has none: another level's config is never shown as the baseline)."""
    return rows if search else rows[rows["factor"].eq("baseline")]


def _training(
    base: pd.DataFrame, finished: pd.DataFrame, rows: pd.DataFrame
) -> list[tuple[str, str]]:
    """The training, evaluation, probe and device settings of ``base``; how val loss was
    measured and the devices used come from the finished rows."""
    eval_mode = (
        _values(finished, "eval_mode") if len(finished) else "not known until a baseline finishes"
    )
    return [
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
        ("Device used", _counts(rows["device"]) if len(rows) and "device" in rows else "–"),
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


def _provenance(rows: pd.DataFrame, runs: Sequence[dict], sweep: str) -> list[tuple[str, str]]:
    """When the trials ran, the code, the machines and the command lines of the sweep."""
    settings = []
    sweep_runs = [run for run in runs if run.get("sweep") == sweep]
    code, hosts, commands = _code(sweep_runs)
    started = rows["started_at"].dropna() if "started_at" in rows else pd.Series([], dtype=object)
    finished = rows["finished_at"].dropna() if "finished_at" in rows else started
    if len(started):
        span = f"{started.min():%Y-%m-%d %H:%M} to {finished.max():%Y-%m-%d %H:%M} UTC"
        settings.append(("Trials ran", span))
    return [*settings, ("Code", code), ("Machines", hosts), ("Command", commands)]
