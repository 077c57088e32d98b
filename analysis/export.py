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
from analysis.verdicts import caption as verdicts_caption
from analysis.verdicts import interval_text, p_text
from charlm.fsio import atomic_write_bytes
from charlm.text import scaled
from sweeps.schema import config_label


def _json_number(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


VERDICT_FIELDS = ("verdict", "delta", "ci_low", "ci_high", "p_adjusted", "method", "metric",
                  "confidence", "min_effect")  # fmt: skip


def final_info(
    trials: pd.DataFrame,
    metrics: Sequence[str] = METRICS,
    summary: pd.DataFrame | None = None,
    verdicts: pd.DataFrame | None = None,
) -> dict[tuple, dict]:
    """Per (sweep, factor, level): the research templates' ``final_info.json`` content,
    ``{dataset: {"means": {"<m>_mean": x}, "stderrs": {"<m>_stderr": x},
    "final_info_dict": {"<m>": [value per seed, by seed], "seed": [...]},
    "verdict": {VERDICT_FIELDS}}}`` over ok trials (NaN -> null; "verdict" for the levels
    of ``verdicts``, the rows of level_verdicts). Means and stderrs are config_summary's
    (pass ``summary`` to reuse one). Search sweeps are left out (see search_leaderboard)."""
    summary = config_summary(trials, metrics) if summary is None else summary
    ok = _ok(trials, metrics)
    ok = ok[ok["kind"].ne("search")].sort_values("seed")
    per_seed = ok.groupby(CONFIG_KEYS, sort=False)[[*metrics, "seed"]].agg(list)
    judged = {} if verdicts is None else {
        tuple(row[k] for k in CONFIG_KEYS): {f: _json_number(row[f]) for f in VERDICT_FIELDS}
        for row in verdicts.to_dict("records")
    }  # fmt: skip
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
        if key in judged:
            entry["verdict"] = judged[key]
        result.setdefault((row.sweep, row.factor, row.level), {})[row.dataset] = entry
    return result


def slug(name: str) -> str:
    """A file-name-safe version of a sweep/config/dataset name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "_"


def write_final_info(
    trials: pd.DataFrame,
    out_dir: str | Path,
    summary: pd.DataFrame | None = None,
    verdicts: pd.DataFrame | None = None,
) -> list[Path]:
    """Write ``<out_dir>/<sweep>/<config>/final_info.json`` for every config; the paths."""
    paths = []
    for (sweep, factor, level), content in final_info(trials, summary=summary,
                                                      verdicts=verdicts).items():  # fmt: skip
        path = Path(out_dir) / slug(sweep) / slug(config_label(factor, level)) / "final_info.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(content, indent=2) + "\n").encode())
        paths.append(path)
    return paths


def format_params(value: float) -> str:
    """A parameter (or any) count as tables print it: 201.34k, 5.53M, 812."""
    if value is None or not np.isfinite(value):
        return "–"
    return scaled(value, sep="", counts=True)


def paper_table(
    summary: pd.DataFrame, verdicts: pd.DataFrame, metric: str = "best_val_loss", digits: int = 4
) -> pd.DataFrame:
    """The table of a paper, as strings: per config mean ± stderr of the losses, n, the
    parameter count and, per level, its verdict, its difference in ``metric`` from the
    baseline with the verdict's interval and the same method's adjusted p (* below alpha):
    the rows of ``analysis.verdicts.level_verdicts``. One row per config of ``summary``."""
    columns = ["verdict", "delta", "ci_low", "ci_high", "p_adjusted", "confidence"]
    merged = summary.merge(verdicts[[*CONFIG_KEYS, *columns]], on=CONFIG_KEYS, how="left")
    names = {
        "best_val_loss": "Best val loss",
        "final_train_loss": "Final train loss",
        "final_val_loss": "Final val loss",
    }

    def mean_stderr(row: pd.Series, column: str) -> str:
        mean, stderr = row[f"{column}_mean"], row[f"{column}_stderr"]
        if not np.isfinite(mean):
            return "–"
        text = f"{mean:.{digits}f}"
        return f"{text} ± {stderr:.{digits}f}" if np.isfinite(stderr) else text

    rows = []
    for _, row in merged.iterrows():
        if row["factor"] == "baseline":
            verdict, change, p = "(baseline)", "", ""
        elif pd.isna(row["verdict"]):
            verdict, change, p = "–", "–", "–"
        else:
            verdict = row["verdict"]
            change = interval_text(row["delta"], row["ci_low"], row["ci_high"], digits)
            p = p_text(row["p_adjusted"], 1 - row["confidence"])
        out = {"Dataset": row["dataset"], "Config": row["config"], "n": int(row["n_ok"])}
        if row["n_failed"]:
            out["n"] = f"{int(row['n_ok'])} (+{int(row['n_failed'])} failed)"
        for column, name in names.items():
            out[name] = mean_stderr(row, column)
        out["Verdict"] = verdict
        out[f"Δ {names.get(metric, metric)} vs baseline [interval]"] = change
        out["p (adj.)"] = p
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
    verdicts: pd.DataFrame,
    ranking: pd.DataFrame,
    out_dir: str | Path,
    metric: str = "best_val_loss",
) -> list[Path]:
    """Write the raw numbers (summary.csv, verdicts.csv: one row per level with its verdict,
    interval and adjusted p, ranking.csv) and, per sweep, the paper table as
    table_<sweep>.csv, .md and .tex into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in (("summary", summary), ("verdicts", verdicts), ("ranking", ranking)):
        path = out / f"{name}.csv"
        atomic_write_bytes(path, frame.to_csv(index=False).encode())
        paths.append(path)
    for sweep, rows in summary.groupby("sweep", sort=True):
        table = paper_table(rows, verdicts, metric)
        stem = out / f"table_{slug(sweep)}"
        atomic_write_bytes(stem.with_suffix(".csv"), table.to_csv(index=False).encode())
        atomic_write_bytes(stem.with_suffix(".md"), to_markdown(table).encode())
        caption = f"Sweep {sweep}: mean ± standard error over seeds. " + verdicts_caption(
            verdicts, sweep
        )
        atomic_write_bytes(stem.with_suffix(".tex"), to_latex(table, caption).encode())
        paths += [stem.with_suffix(suffix) for suffix in (".csv", ".md", ".tex")]
    return paths
