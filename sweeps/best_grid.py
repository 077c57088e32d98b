"""A search's winner, and the OFAT grid around it (``RESULTS/best_grid.yaml``).

The winner is read from the result store (the reliable record, whatever Tune or Optuna
kept): among the search's configs whose seeds all ran to the end, the one with the lowest
mean final val loss (the value TPE minimised). Its grid is what ``sweeps/ablation.py
--grid`` reads: the winner as the baseline, each searched field a step either side, on
fresh seeds (the winner's own scores are biased low: it won on them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from charlm.config import ModelConfig, TrainConfig, config_fields
from charlm.fsio import atomic_write_bytes
from charlm.text import mean_stderr
from sweeps.schema import read_table

# Not part of a grid's baseline: identity (the grid sets them) or where the trial runs.
_NOT_BASELINE = ("seed", "dataset", "vocab_size", "data_dir", "device", "num_threads")


@dataclass(frozen=True)
class Winner:
    """The best searched config: its id, store rows' ids, config values and its score."""

    config_id: str
    trial_ids: list[str]
    seeds: list[int]
    dataset: str
    values: dict[str, Any]  # every config field of the grid's baseline
    mean_val_loss: float
    stderr: float | None  # None with one seed
    n_configs: int  # configs that competed (all seeds ran to the end)

    def line(self, searched: list[str], format_value: Callable[[str, Any], str]) -> str:
        """One line: the config, mean ± stderr over seeds, the store trial ids."""
        config = ", ".join(f"{name}={format_value(name, self.values[name])}" for name in searched)
        loss = mean_stderr(self.mean_val_loss, self.stderr, len(self.seeds))
        return (
            f"best of {self.n_configs} configs: {self.config_id} ({config}): final val loss "
            f"{loss}; store trials {', '.join(self.trial_ids)}"
        )


def find_winner(root: str | Path, sweep: str) -> Winner | None:
    """The winner of search ``sweep`` in the store at ``root``; None when no config has all
    its seeds finished (early-stopped or failed seeds make a config ineligible)."""
    from scipy import stats

    rows = read_table(root, "trials").table.to_pylist()
    rows = [r for r in rows if r["sweep"] == sweep and r["kind"] == "search" and r["config_id"]]
    latest = {row["trial_id"]: row for row in rows}  # a rerun's row replaces the older one
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in latest.values():
        groups.setdefault(row["config_id"], []).append(row)
    size = max((len(group) for group in groups.values()), default=0)
    complete = {
        key: group
        for key, group in groups.items()
        if len(group) == size
        and all(r["status"] == "ok" and not r["early_stopped"] for r in group)
        and all(r["final_val_loss"] is not None for r in group)
    }
    if not complete:
        return None

    def mean(group: list[dict[str, Any]]) -> float:
        return math.fsum(r["final_val_loss"] for r in group) / len(group)

    key = min(complete, key=lambda k: mean(complete[k]))
    group = sorted(complete[key], key=lambda r: r["seed"])
    losses = [r["final_val_loss"] for r in group]
    names = [n for n in config_fields(ModelConfig) + config_fields(TrainConfig)
             if n not in _NOT_BASELINE]  # fmt: skip
    values = {name: group[0][name] for name in names if group[0][name] is not None}
    return Winner(
        config_id=key,
        trial_ids=[r["trial_id"] for r in group],
        seeds=[r["seed"] for r in group],
        dataset=group[0]["dataset"],
        values=values,
        mean_val_loss=mean(group),
        stderr=float(stats.sem(losses)) if len(losses) > 1 else None,
        n_configs=len(complete),
    )


def _valid(name: str, value: Any, values: dict[str, Any]) -> bool:
    """Whether ``value`` of ``name`` fits the winner's other fields (n_embed % n_head)."""
    if name == "n_head":
        return values["n_embed"] % value == 0
    if name == "n_embed":
        return value % values["n_head"] == 0
    return True


# How a float level is written: uniform ranges to 4 decimals, log-uniform ones to 3 digits.
_ROUNDED: dict[str, Callable[[float], float]] = {
    "uniform": lambda number: round(number, 4),
    "loguniform": lambda number: float(f"{number:.3g}"),
}


def neighbours(name: str, space: tuple, values: dict[str, Any]) -> list[Any]:
    """The levels a step either side of the winner's ``values[name]`` in its search range
    ``space`` (``SEARCH_SPACE[name]``): the adjacent valid choices; ±1 for integers; ±1/3 of
    the range for uniform floats; x/÷2 for log-uniform ones (3 significant digits); clipped
    to the range, the winner's own value left out."""
    kind, *args = space
    value = values[name]
    if kind == "choice":
        options = [option for option in args[0] if option == value or _valid(name, option, values)]
        index = options.index(value)
        return options[max(0, index - 1) : index] + options[index + 1 : index + 2]
    low, high = args
    if kind == "randint":  # high is exclusive, as in tune.randint
        candidates = [value - 1, value + 1]
        return [c for c in candidates if low <= c <= high - 1]
    if kind == "uniform":
        step = (high - low) / 3
        candidates = [max(low, value - step), min(high, value + step)]
    elif kind == "loguniform":
        candidates = [max(low, value / 2), min(high, value * 2)]
    else:
        raise ValueError(f"search space kind {kind!r} of {name} has no neighbours rule")
    rounded = _ROUNDED[kind]
    levels: list[Any] = []
    for level in map(rounded, candidates):
        if level != rounded(value) and level not in levels:
            levels.append(level)
    return levels


def best_grid(
    winner: Winner, space: dict[str, tuple], *, name: str, preset: str, n_seeds: int
) -> dict[str, Any]:
    """The grid YAML's content: ``extends`` the preset, the winner's full config as the
    baseline, one factor per searched field, ``n_seeds`` seeds after the winner's."""
    factors = {field: neighbours(field, bounds, winner.values) for field, bounds in space.items()}
    first = max(winner.seeds) + 1
    return {
        "name": name,
        "extends": preset,
        "baseline": dict(winner.values),
        "factors": {field: levels for field, levels in factors.items() if levels},
        "datasets": [winner.dataset],
        "seeds": list(range(first, first + n_seeds)),
    }


def write_best_grid(path: Path, grid: dict[str, Any], header: str) -> None:
    """Write ``grid`` as YAML to ``path`` (atomically), under a comment naming the winner."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    text = comment + yaml.safe_dump(grid, sort_keys=False, default_flow_style=None)
    atomic_write_bytes(path, text.encode("utf-8"))
