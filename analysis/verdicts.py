"""Verdicts per ablation level against its baseline: better / worse / equivalent / unresolved,
each with its interval and adjusted p-value: the one frame every table, file and summary
of a level shows.

The rule is ``sweeps.manytoone.judge`` (pure statistics shared with the ablation CLI,
imported like the store format): a sweep run with ``--seeds auto`` is judged by its
recorded design (RESULTS/designs.json, repeated intervals); any other ablation sweep by
seed-blocked Dunnett intervals over its levels (one family per sweep and dataset), with
±D from ``--min-effect`` if it was recorded, else the default. No Ray.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.aggregate import _by_experiment, _seed_values, _sort_configs, config_label
from sweeps.manytoone import METHODS, format_verdicts, judge, method_name
from sweeps.sequential import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MIN_EFFECT,
    METRIC,
    Design,
    DesignError,
    LevelResult,
    load_designs,
)

COLUMNS = [
    "sweep", "dataset", "factor", "level", "config", "metric", "method", "verdict", "delta",
    "ci_low", "ci_high", "p_adjusted", "df", "seeds", "n_pairs", "seeds_needed", "design",
    "levels", "min_effect", "confidence",
]  # fmt: skip


def level_verdicts(
    trials: pd.DataFrame, root: Path | None = None, metric: str = METRIC
) -> pd.DataFrame:
    """One row per ablation level (COLUMNS), in reading order; ``method`` names the rule
    (``sweeps.manytoone.METHODS``), ``levels`` the family's size; ``attrs["notes"]`` holds
    notes for the report (an unreadable designs.json: its sweeps are then judged as
    fixed-seed ones)."""
    notes: list[str] = []
    try:
        designs = load_designs(root) if root is not None else {}
    except DesignError as exc:
        designs, notes = {}, [str(exc)]
    rows = []
    for (sweep, dataset), configs in _by_experiment(_seed_values(trials, metric)).items():
        base = next((s for (f, _), s in configs.items() if f == "baseline"), None)
        levels = {key: s for key, s in configs.items() if key[0] != "baseline"}
        if base is None or not levels:
            continue
        design = designs.get(sweep)
        if design is None or not design.adaptive:
            seeds = max(len(s) for s in configs.values())
            design = Design(
                levels=len(levels),
                min_effect=design.min_effect if design else DEFAULT_MIN_EFFECT,
                max_seeds=max(2, seeds),
                confidence=design.confidence if design else DEFAULT_CONFIDENCE,
                adaptive=False,
            )
        results = judge(design, {k: v.to_dict() for k, v in levels.items()}, base.to_dict())
        for (factor, level), result in results.items():
            rows.append(
                [sweep, dataset, factor, level, config_label(factor, level), metric,
                 method_name(design), result.verdict, result.delta, result.ci_low,
                 result.ci_high, result.p_adjusted, result.df, result.seeds, result.n_pairs,
                 result.needed, "auto" if design.adaptive else "fixed", len(levels),
                 design.min_effect, design.confidence]
            )  # fmt: skip
    frame = _sort_configs(pd.DataFrame(rows, columns=COLUMNS))
    frame["seeds_needed"] = frame["seeds_needed"].astype("Int64")
    frame.attrs["notes"] = notes
    return frame


def interval_text(delta: float, low: float, high: float, digits: int = 4) -> str:
    """'+0.4305 [+0.4128, +0.4482]', the difference alone without an interval, or '–'."""
    if not math.isfinite(delta):
        return "–"
    if not math.isfinite(low):
        return f"{delta:+.{digits}f}"
    return f"{delta:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def p_text(p: float, alpha: float) -> str:
    """The adjusted p as tables print it, * below alpha ('–' when there is none)."""
    if not math.isfinite(p):
        return "–"
    return ("<0.001" if p < 0.001 else f"{p:.3f}") + ("*" if p < alpha else "")


def caption(verdicts: pd.DataFrame, sweep: str) -> str:
    """What a sweep's verdicts mean, in one paragraph: the method, its family, D."""
    rows = verdicts[verdicts["sweep"] == sweep]
    if rows.empty:
        return ""
    first = rows.iloc[0]
    family = (
        f"one family per dataset: its {first.levels} non-baseline levels"
        if first.method == "dunnett"
        else "one family per dataset: its levels and the design's looks"
    )
    return (
        f"Verdict, Δ = level − baseline in {first.metric} with its simultaneous "
        f"{first.confidence:.0%} interval, and p adjusted by the same method: "
        f"{METHODS[first.method]}; {family}. better / worse: the interval excludes 0 "
        f"(exactly when p < {1 - first.confidence:.2g}, marked *); equivalent: it lies "
        f"inside ±{first.min_effect:g}; else unresolved ('seeds needed': 80% power, paired "
        "t-test at the Bonferroni level, statsmodels TTestPower)."
    )


def report_tables(verdicts: pd.DataFrame, sweep: str) -> list[tuple[str, pd.DataFrame]]:
    """Unresolved levels' seeds needed, per dataset of ``sweep`` (the verdicts themselves
    are columns of the sweep's main table, export.paper_table)."""
    tables = []
    rows = verdicts[(verdicts["sweep"] == sweep) & (verdicts["verdict"] == "unresolved")]
    for dataset, part in rows.groupby("dataset", sort=True):
        table = pd.DataFrame(
            {
                "Config": part["config"].to_numpy(),
                "Seeds": part["seeds"].to_numpy(),
                "Seeds needed": ["–" if pd.isna(n) else str(n) for n in part["seeds_needed"]],
            }
        )
        tables.append((f"Unresolved levels ({Path(dataset).name}): seeds that would resolve "
                       "them", table))  # fmt: skip
    return tables


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}-{high}"


def summary_lines(verdicts: pd.DataFrame) -> list[str]:
    """Per (sweep, dataset): one line per level (verdict, Δ [interval], adjusted p, seeds)
    and a line of counts: ``sweeps.manytoone.format_verdicts``, as the ablation CLI prints."""
    lines = []
    for (sweep, dataset), rows in verdicts.groupby(["sweep", "dataset"], sort=False):
        first = rows.iloc[0]
        design = Design(
            levels=int(first.levels), min_effect=float(first.min_effect),
            max_seeds=max(2, int(rows["seeds"].max())), confidence=float(first.confidence),
            adaptive=first.method == "sequential",
        )  # fmt: skip
        fields = ["verdict", "delta", "ci_low", "ci_high", "n_pairs", "seeds"]
        results = {
            (row["factor"], row["level"]): LevelResult(
                **{f: row[f] for f in fields},
                needed=None if pd.isna(row["seeds_needed"]) else int(row["seeds_needed"]),
                p_adjusted=row["p_adjusted"],
                df=row["df"],
            )
            for row in rows.to_dict("records")
        }
        lines += format_verdicts(results, design, dataset, sweep)
        lines[-1] += f"; {_span(rows['seeds'])} seeds per level"
    return lines


def unresolved_sentence(verdicts: pd.DataFrame, command: str | None = None) -> str | None:
    """One sentence for the top of the report when some level is unresolved: how many,
    and the command that would resolve them (``--seeds auto``, or the seeds needed)."""
    unresolved = verdicts[verdicts["verdict"] == "unresolved"]
    if unresolved.empty:
        return None
    most = unresolved["seeds_needed"].max()
    sweep = unresolved["sweep"].iloc[0]
    base = command or f"python sweeps/ablation.py --name {sweep}"
    if (unresolved["method"] == "sequential").any():  # its design is fixed: a new sweep
        rerun = _with_option(base, "--name", f"{sweep}-more")
        if pd.notna(most):
            rerun = _with_option(rerun, "--max-seeds", str(int(most)))
        would = f"`{rerun}` would"
    else:
        fixed = _with_option(base, "--seeds", str(int(most))) if pd.notna(most) else None
        auto = _with_option(base, "--seeds", "auto")
        would = (f"`{fixed}` would (or `{auto}`, which adds seeds only where they matter)"
                 if fixed else f"`{auto}` would")  # fmt: skip
    names = ", ".join(unresolved["config"].head(4)) + (", ..." if len(unresolved) > 4 else "")
    return (
        f"The seeds cannot resolve {len(unresolved)} of {len(verdicts)} levels ({names}): {would}."
    )


def _with_option(command: str, flag: str, value: str) -> str:
    """``command`` with ``flag``'s value replaced by ``value`` (or the option added)."""
    words = command.split()
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return " ".join([*words[: i + 1], value, *words[i + 2 :]])
        if word.startswith(f"{flag}="):
            return " ".join([*words[:i], f"{flag} {value}", *words[i + 1 :]])
    return " ".join([*words, flag, value])
