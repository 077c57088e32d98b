"""Verdicts per level in the report, for fixed-seed and --seeds auto sweeps."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from analysis.report import main
from analysis.verdicts import level_verdicts
from sweeps.sequential import DESIGNS_FILE, Design, record_design
from testkit.synthetic import init_store, trial_row, write_rows

SEEDS = 6
BASE = [1.50, 1.52, 1.49, 1.51, 1.53, 1.50]
LEVELS = {  # level -> per-seed best_val_loss
    "better": [b - 0.20 + 0.002 * (s % 3) for s, b in enumerate(BASE)],
    "same": [b + 0.001 * (-1) ** s for s, b in enumerate(BASE)],
    "noisy": [b + d for b, d in zip(BASE, [0.05, -0.04, 0.06, -0.05, 0.04, -0.03], strict=True)],
}


def _store(root, sweep: str):
    init_store(root)
    rows = [trial_row(f"{sweep}-b{s}", sweep=sweep, seed=s, best_val_loss=v)
            for s, v in enumerate(BASE)]  # fmt: skip
    for level, values in LEVELS.items():
        rows += [
            trial_row(f"{sweep}-{level}{s}", sweep=sweep, factor="dropout", level=level, seed=s,
                      best_val_loss=v)
            for s, v in enumerate(values)
        ]  # fmt: skip
    write_rows(root, "trials", rows, sweep)
    return root


def _trials(root) -> pd.DataFrame:
    from analysis.load import load_store

    return load_store(root).trials


def test_fixed_seed_sweep_is_judged_with_bonferroni_over_its_levels(tmp_path):
    root = _store(tmp_path / "results", "fixed")
    verdicts = level_verdicts(_trials(root), root).set_index("level")
    assert verdicts.loc["better", "verdict"] == "better"
    assert verdicts.loc["same", "verdict"] == "equivalent"
    assert verdicts.loc["noisy", "verdict"] == "unresolved"
    assert set(verdicts["design"]) == {"fixed"} and set(verdicts["seeds"]) == {SEEDS}
    differences = [v - b for v, b in zip(LEVELS["noisy"], BASE, strict=True)]
    reference = stats.ttest_1samp(differences, 0.0).confidence_interval(1 - 0.05 / 3)
    row = verdicts.loc["noisy"]
    assert (row.ci_low, row.ci_high) == pytest.approx((reference.low, reference.high))
    assert row.interval_level == pytest.approx(1 - 0.05 / 3)
    assert row.seeds_needed > SEEDS
    assert pd.isna(verdicts.loc["better", "seeds_needed"])


def test_auto_sweep_uses_its_recorded_design_and_the_report_shows_it(tmp_path, capsys):
    root = _store(tmp_path / "results", "auto")
    record_design(root, "auto", Design(levels=3, min_effect=0.02, max_seeds=SEEDS))
    verdicts = level_verdicts(_trials(root), root)
    assert set(verdicts["design"]) == {"auto"}
    # looks at 3, 5, 6 seeds: each interval at 1 - 0.05 / (3 looks x 3 levels)
    assert verdicts["interval_level"].iloc[0] == pytest.approx(1 - 0.05 / 9)

    out = tmp_path / "report"
    assert main([str(root), "--out", str(out), "--format", "png", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    line = ("verdicts auto/shakespeare_char (auto seeds, 95% familywise): 1 better, 0 worse, "
            "1 equivalent (±0.02), 1 unresolved (would need up to")  # fmt: skip
    assert line in printed
    markdown = (out / "report.md").read_text()
    assert "Verdicts (shakespeare_char, auto seeds)" in markdown
    assert "| dropout=noisy | unresolved |" in markdown
    table = pd.read_csv(out / "tables" / "verdicts.csv")
    assert sorted(table["verdict"]) == ["better", "equivalent", "unresolved"]


def test_unreadable_designs_file_is_a_note_not_a_crash(tmp_path):
    root = _store(tmp_path / "results", "auto")
    (root / DESIGNS_FILE).write_text("{not json")
    verdicts = level_verdicts(_trials(root), root)
    assert set(verdicts["design"]) == {"fixed"}
    assert "designs.json is unreadable" in verdicts.attrs["notes"][0]
