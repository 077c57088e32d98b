"""The tables as files: the paper table (strings) as CSV, Markdown and LaTeX, the raw
aggregates as CSV, and the research templates' ``final_info.json`` per config.

Nothing here computes a statistic (aggregate.py does); it formats and writes what
aggregate returns. Every file goes through ``charlm.fsio.atomic_write_bytes``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import CONFIG_KEYS, METRICS, _ok, config_summary
from charlm.fsio import atomic_write_bytes
from charlm.text import scaled
from sweeps.schema import config_label

__all__ = [
    "final_info",
    "format_params",
    "paper_table",
    "slug",
    "to_latex",
    "to_markdown",
    "write_final_info",
    "write_tables",
]


def _json_number(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def final_info(
    trials: pd.DataFrame, metrics: Sequence[str] = METRICS, summary: pd.DataFrame | None = None
) -> dict[tuple, dict]:
    """Per (sweep, factor, level): the research templates' ``final_info.json`` content,
    ``{dataset: {"means": {"<m>_mean": x}, "stderrs": {"<m>_stderr": x},
    "final_info_dict": {"<m>": [value per seed, by seed], "seed": [...]}}}`` over ok trials
    (NaN -> null). Means and stderrs are config_summary's (pass ``summary`` to reuse one).
    Search sweeps are left out (see search_leaderboard)."""
    summary = config_summary(trials, metrics) if summary is None else summary
    ok = _ok(trials, metrics)
    ok = ok[ok["kind"].ne("search")].sort_values("seed")
    per_seed = ok.groupby(CONFIG_KEYS, sort=False)[[*metrics, "seed"]].agg(list)
    result: dict[tuple, dict] = {}
    for row in summary[summary["kind"].ne("search")].itertuples(index=False):
        key = (row.sweep, row.dataset, row.factor, row.level)
        if key not in per_seed.index:
            continue
        values = per_seed.loc[key]
        entry = {
            "means": {f"{m}_mean": _json_number(getattr(row, f"{m}_mean")) for m in metrics},
            "stderrs": {f"{m}_stderr": _json_number(getattr(row, f"{m}_stderr")) for m in metrics},
            "final_info_dict": {m: [_json_number(v) for v in values[m]] for m in metrics},
        }
        entry["final_info_dict"]["seed"] = [int(v) for v in values["seed"]]
        result.setdefault((row.sweep, row.factor, row.level), {})[row.dataset] = entry
    return result


def slug(name: str) -> str:
    """A file-name-safe version of a sweep/config/dataset name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "_"


def write_final_info(
    trials: pd.DataFrame, out_dir: str | Path, summary: pd.DataFrame | None = None
) -> list[Path]:
    """Write ``<out_dir>/<sweep>/<config>/final_info.json`` for every config; the paths."""
    paths = []
    for (sweep, factor, level), content in final_info(trials, summary=summary).items():
        path = Path(out_dir) / slug(sweep) / slug(config_label(factor, level)) / "final_info.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(content, indent=2) + "\n").encode())
        paths.append(path)
    return paths


def _format_number(value: float, digits: int) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def format_params(value: float) -> str:
    """A parameter (or any) count as tables print it: 201.34k, 5.53M, 812."""
    if value is None or not np.isfinite(value):
        return "–"
    return scaled(value, sep="", counts=True)


def _format_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def paper_table(
    summary: pd.DataFrame, effects: pd.DataFrame, metric: str = "best_val_loss", digits: int = 4
) -> pd.DataFrame:
    """The table of a paper, as strings: per config mean ± stderr of the losses, n, the
    difference in ``metric`` from the baseline with its 95% CI, the Holm-adjusted p-value
    (* when significant) and the parameter count. One row per config of ``summary``."""
    merged = summary.merge(
        effects[[*CONFIG_KEYS, "delta", "ci_low", "ci_high", "p_holm", "significant", "test"]],
        on=CONFIG_KEYS,
        how="left",
    )
    names = {
        "best_val_loss": "Best val loss",
        "final_train_loss": "Final train loss",
        "final_val_loss": "Final val loss",
    }

    def mean_stderr(row: pd.Series, column: str) -> str:
        mean, stderr = row[f"{column}_mean"], row[f"{column}_stderr"]
        if not np.isfinite(mean):
            return "–"
        if not np.isfinite(stderr):
            return _format_number(mean, digits)
        return f"{mean:.{digits}f} ± {stderr:.{digits}f}"

    rows = []
    for _, row in merged.iterrows():
        delta = row.get("delta")
        if row["factor"] == "baseline":
            change, p = "(baseline)", ""
        elif delta is None or not np.isfinite(delta):
            change, p = "–", "–"
        elif not np.isfinite(row["ci_low"]):
            change, p = f"{delta:+.{digits}f}", "–"
        else:
            change = (
                f"{delta:+.{digits}f} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]"
            )
            p = _format_p(row["p_holm"]) + ("*" if row["significant"] else "")
        out = {"Dataset": row["dataset"], "Config": row["config"], "n": int(row["n_ok"])}
        if row["n_failed"]:
            out["n"] = f"{int(row['n_ok'])} (+{int(row['n_failed'])} failed)"
        for column, name in names.items():
            out[name] = mean_stderr(row, column)
        out[f"Δ {names.get(metric, metric)} vs baseline [95% CI]"] = change
        out["p (Holm)"] = p
        out["Params"] = format_params(row["n_params_mean"])
        rows.append(out)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of string cells."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |"]
    lines.append("|" + "|".join(" --- " for _ in table.columns) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "–": "--",
    "<": r"$<$",
}


def _latex(value: Any) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(value))


def to_latex(table: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs ``tabular`` (inside a ``table`` with ``caption``) of string cells."""
    align = "".join("l" if column in ("Dataset", "Config") else "r" for column in table.columns)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    lines.append(" & ".join(_latex(c) for c in table.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(_latex(v) for v in row) + r" \\" for row in table.itertuples(False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption is not None:
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex(caption)}}}", *lines]
        lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_tables(
    summary: pd.DataFrame,
    effects: pd.DataFrame,
    ranking: pd.DataFrame,
    out_dir: str | Path,
    metric: str = "best_val_loss",
) -> list[Path]:
    """Write the raw numbers (summary.csv, effects.csv, ranking.csv) and, per sweep, the
    paper table as table_<sweep>.csv, .md and .tex into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in (("summary", summary), ("effects", effects), ("ranking", ranking)):
        path = out / f"{name}.csv"
        atomic_write_bytes(path, frame.to_csv(index=False).encode())
        paths.append(path)
    for sweep, rows in summary.groupby("sweep", sort=True):
        table = paper_table(rows, effects, metric)
        stem = out / f"table_{slug(sweep)}"
        atomic_write_bytes(stem.with_suffix(".csv"), table.to_csv(index=False).encode())
        atomic_write_bytes(stem.with_suffix(".md"), to_markdown(table).encode())
        caption = f"Sweep {sweep}: mean ± standard error over seeds; Δ vs the baseline."
        atomic_write_bytes(stem.with_suffix(".tex"), to_latex(table, caption).encode())
        paths += [stem.with_suffix(suffix) for suffix in (".csv", ".md", ".tex")]
    return paths
