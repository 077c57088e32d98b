"""Offline analysis of a result store: load -> tidy DataFrames -> aggregate -> figures -> report.

Never imports Ray. As a library (an offline script)::

    from analysis import analyze, paper_table, to_markdown, write_tables

    result = analyze("results/")  # load the store, aggregate over seeds
    print(result.summary[["sweep", "dataset", "config", "best_val_loss_mean",
                          "best_val_loss_stderr", "best_val_loss_n"]])
    print(result.verdicts[["config", "method", "verdict", "delta", "ci_low", "ci_high",
                           "p_adjusted"]])
    print(result.ranking[["sweep", "dataset", "rank", "factor", "effect"]])
    print(to_markdown(paper_table(result.summary, result.verdicts)))
    write_tables(result.summary, result.verdicts, result.ranking, "tables/")

As a command: ``python -m analysis RESULTS_DIR --out REPORT_DIR`` (see analysis.report).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Names are imported on first use, so `python -m analysis` answers bad input before pandas,
# scipy and matplotlib load (analysis.cli).
_MODULES = {
    **dict.fromkeys(
        [
            "CONFIG_KEYS", "METRICS", "attention_summary", "baseline_configs",
            "config_summary", "curve_summary", "failed_trials",
            "holm", "rank_factors", "search_leaderboard",
        ],
        "analysis.aggregate",
    ),
    **dict.fromkeys(
        [
            "final_info", "paper_table", "to_latex", "to_markdown", "write_final_info",
            "write_tables",
        ],
        "analysis.export",
    ),
    **dict.fromkeys(["CorruptStoreError", "Store", "StoreError", "load_store"], "analysis.load"),
    **dict.fromkeys(
        ["Analysis", "Report", "ReportOptions", "analyze", "build_report"], "analysis.report"
    ),
    "level_verdicts": "analysis.verdicts",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(import_module(_MODULES[name]), name)


__all__ = sorted(_MODULES)
