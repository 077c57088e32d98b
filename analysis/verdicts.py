"""Verdicts per ablation level against its baseline: better / worse / equivalent / unresolved.

The rule is ``sweeps.sequential``'s (pure statistics shared with the ``--seeds auto``
driver, imported like the store format): the paired t-interval of level - baseline in
best_val_loss over the seeds both have, at the level the sweep's design fixes. A sweep run
with ``--seeds auto`` is judged by its recorded design (RESULTS/designs.json); any other
ablation sweep as a one-look fixed-seed design with Bonferroni over its levels, and
±D from ``--min-effect`` if it was recorded, else the default. No Ray.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.aggregate import _by_experiment, _seed_values, config_label
from sweeps.sequential import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MIN_EFFECT,
    METRIC,
    Design,
    DesignError,
    evaluate,
    load_designs,
)

__all__ = ["level_verdicts", "report_tables", "summary_lines", "write_csv"]

COLUMNS = [
    "sweep", "dataset", "factor", "level", "config", "verdict", "delta", "ci_low", "ci_high",
    "seeds", "n_pairs", "seeds_needed", "design", "min_effect", "confidence", "interval_level",
]  # fmt: skip


def level_verdicts(trials: pd.DataFrame, root: Path | None = None) -> pd.DataFrame:
    """One row per ablation level (COLUMNS); ``attrs["notes"]`` holds notes for the report
    (an unreadable designs.json: its sweeps are then judged as fixed-seed ones)."""
    notes: list[str] = []
    try:
        designs = load_designs(root) if root is not None else {}
    except DesignError as exc:
        designs, notes = {}, [str(exc)]
    rows = []
    for (sweep, dataset), configs in _by_experiment(_seed_values(trials, METRIC)).items():
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
        for (factor, level), values in levels.items():
            result = evaluate(design, values.to_dict(), base.to_dict())
            rows.append(
                [sweep, dataset, factor, level, config_label(factor, level), result.verdict,
                 result.delta, result.ci_low, result.ci_high, result.seeds, result.n_pairs,
                 result.needed, "auto" if design.adaptive else "fixed", design.min_effect,
                 design.confidence, 1 - design.alpha]
            )  # fmt: skip
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["seeds_needed"] = frame["seeds_needed"].astype("Int64")
    frame.attrs["notes"] = notes
    return frame


def _interval(row: pd.Series) -> str:
    if not math.isfinite(row.ci_low):
        return f"{row.delta:+.4f}" if math.isfinite(row.delta) else "–"
    return f"{row.delta:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]"


def report_tables(verdicts: pd.DataFrame, sweep: str) -> list[tuple[str, pd.DataFrame]]:
    """The report's verdict table(s) of one sweep, one per dataset, with their captions."""
    tables = []
    for dataset, rows in verdicts[verdicts["sweep"] == sweep].groupby("dataset", sort=True):
        first = rows.iloc[0]
        caption = (
            f"Verdicts ({Path(dataset).name}, {first.design} seeds): level − baseline in "
            f"{METRIC}, paired by seed, interval at {first.interval_level:.4%} so that all "
            f"verdicts hold together with {first.confidence:.0%} confidence (Bonferroni over "
            f"levels{' and looks' if first.design == 'auto' else ''}); equivalent = inside "
            f"±{first.min_effect:g}; 'seeds needed': 80% power (statsmodels TTestPower)"
        )
        table = pd.DataFrame(
            {
                "Config": rows["config"].to_numpy(),
                "Verdict": rows["verdict"].to_numpy(),
                "Δ [interval]": [_interval(row) for row in rows.itertuples()],
                "Seeds": rows["seeds"].to_numpy(),
                "Seeds needed": [
                    ("–" if pd.isna(n) else str(n)) if v == "unresolved" else ""
                    for v, n in zip(rows["verdict"], rows["seeds_needed"], strict=True)
                ],
            }
        )
        tables.append((caption, table))
    return tables


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}-{high}"


def summary_lines(verdicts: pd.DataFrame) -> list[str]:
    """One line per (sweep, dataset): counts of each verdict and the seeds per level."""
    lines = []
    for (sweep, dataset), rows in verdicts.groupby(["sweep", "dataset"], sort=True):
        counts = rows["verdict"].value_counts()
        first = rows.iloc[0]
        unresolved = rows[rows["verdict"] == "unresolved"]
        needs = ""
        if len(unresolved):
            most = unresolved["seeds_needed"].max()
            needs = f" (would need up to {most} seeds)" if pd.notna(most) else ""
        lines.append(
            f"verdicts {sweep}/{Path(dataset).name} ({first.design} seeds, "
            f"{first.confidence:.0%} familywise): {counts.get('better', 0)} better, "
            f"{counts.get('worse', 0)} worse, {counts.get('equivalent', 0)} equivalent "
            f"(±{first.min_effect:g}), {counts.get('unresolved', 0)} unresolved{needs}; "
            f"{_span(rows['seeds'])} seeds per level"
        )
    return lines


def write_csv(verdicts: pd.DataFrame, directory: Path) -> Path:
    """verdicts.csv in ``directory`` (the report's tables)."""
    path = directory / "verdicts.csv"
    verdicts.to_csv(path, index=False)
    return path
