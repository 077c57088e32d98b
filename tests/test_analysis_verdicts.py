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


def test_fixed_seed_sweep_is_judged_by_seed_blocked_dunnett(tmp_path):
    root = _store(tmp_path / "results", "fixed")
    verdicts = level_verdicts(_trials(root), root).set_index("level")
    assert verdicts.loc["better", "verdict"] == "better"
    # one pooled seed-noise variance: the noisy level widens every level's interval
    widths = verdicts["ci_high"] - verdicts["ci_low"]
    assert widths.to_numpy() == pytest.approx([widths.iloc[0]] * 3)
    assert set(verdicts["method"]) == {"dunnett"} and set(verdicts["seeds"]) == {SEEDS}
    assert set(verdicts["df"]) == {3 * (SEEDS - 1)}  # pooled over the 3 levels
    differences = [v - b for v, b in zip(LEVELS["better"], BASE, strict=True)]
    row = verdicts.loc["better"]
    assert row.delta == pytest.approx(sum(differences) / SEEDS)
    assert row.p_adjusted < 0.05 and verdicts.loc["same", "p_adjusted"] > 0.05
    assert verdicts.loc["same", "verdict"] == "unresolved"


# The README's 2-seed short run (best val loss per seed, rebuilt from its table): the main
# table showed n_embed=32 as p(Holm) 0.045* and the verdicts table as unresolved.
README_RUN = {
    "baseline": (2.9348, 2.9316), "block_size=32": (2.9706, 2.9408),
    "block_size=256": (2.9352, 2.9210), "dropout=0.0": (2.9207, 2.9171),
    "dropout=0.3": (2.9792, 2.9700), "n_embed=32": (3.3687, 3.3587),
    "n_embed=128": (2.5841, 2.5787), "n_head=1": (2.9337, 2.9283),
    "n_head=8": (2.9359, 2.9313), "n_layer=1": (2.9750, 2.9624),
    "n_layer=8": (2.9316, 2.9190),
}  # fmt: skip


def _readme_store(root):
    init_store(root)
    rows = []
    for config, values in README_RUN.items():
        factor, _, level = config.partition("=")
        level = level or "baseline"
        rows += [trial_row(f"{config}-{s}", sweep="notebook", factor=factor, level=level,
                           seed=s, best_val_loss=v) for s, v in enumerate(values)]  # fmt: skip
    write_rows(root, "trials", rows, "notebook")
    return root


def test_every_output_shows_the_same_verdict_interval_and_p(tmp_path, capsys):
    import json

    from analysis.export import slug
    from analysis.verdicts import interval_text

    root = _readme_store(tmp_path / "results")
    out = tmp_path / "report"
    assert main([str(root), "--out", str(out), "--format", "png", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    verdicts = level_verdicts(_trials(root), root)
    row = verdicts.set_index("config").loc["n_embed=32"]
    assert row.verdict == "worse" and row.ci_low > 0.3 and row.p_adjusted < 0.05
    markdown = (out / "report.md").read_text()
    csv = pd.read_csv(out / "tables" / "verdicts.csv").set_index("config")
    table = pd.read_csv(out / "tables" / "table_notebook.csv").set_index("Config")
    for r in verdicts.itertuples():
        text = interval_text(r.delta, r.ci_low, r.ci_high)
        excludes = r.ci_low > 0 or r.ci_high < 0
        assert (r.p_adjusted < 0.05) == excludes == (r.verdict in ("better", "worse"))
        assert f"| {r.config} " in markdown and f"| {r.verdict} | {text} |" in markdown
        assert f"{r.config:<24} {r.verdict:<11} {text:>30}" in printed
        assert table.loc[r.config, "Verdict"] == r.verdict
        assert table.loc[r.config, "Δ Best val loss vs baseline [interval]"] == text
        assert csv.loc[r.config, "verdict"] == r.verdict
        assert csv.loc[r.config, "ci_low"] == pytest.approx(r.ci_low)
        info = json.loads((out / "final_info" / "notebook" / slug(r.config) / "final_info.json")
                          .read_text())["shakespeare_char"]["verdict"]  # fmt: skip
        assert info["verdict"] == r.verdict
        assert (info["ci_low"], info["ci_high"]) == pytest.approx((r.ci_low, r.ci_high))
    assert "Holm-adjusted across the levels" not in markdown and "Verdicts (" not in markdown
    unresolved = verdicts[verdicts["verdict"] == "unresolved"]
    assert len(unresolved)  # the one sentence at the top says so, with the command
    sentence = f"The seeds cannot resolve {len(unresolved)} of {len(verdicts)} levels"
    assert sentence in markdown.split("## Overview")[0]
    needed = int(unresolved["seeds_needed"].max())
    assert f"--seeds {needed}" in markdown and "--seeds auto" in markdown
    assert sentence in printed


def test_auto_sweep_uses_its_recorded_design_and_the_report_shows_it(tmp_path, capsys):
    root = _store(tmp_path / "results", "auto")
    record_design(root, "auto", Design(levels=3, min_effect=0.02, max_seeds=SEEDS))
    verdicts = level_verdicts(_trials(root), root)
    assert set(verdicts["design"]) == {"auto"} and set(verdicts["method"]) == {"sequential"}
    # looks at 3, 5, 6 seeds: each interval at 1 - 0.05 / (3 looks x 3 levels)
    noisy = verdicts.set_index("level").loc["noisy"]
    differences = [v - b for v, b in zip(LEVELS["noisy"], BASE, strict=True)]
    reference = stats.ttest_1samp(differences, 0.0)
    assert noisy.ci_low == pytest.approx(reference.confidence_interval(1 - 0.05 / 9).low)
    assert noisy.p_adjusted == pytest.approx(min(1.0, reference.pvalue * 9))

    out = tmp_path / "report"
    assert main([str(root), "--out", str(out), "--format", "png", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    line = ("verdicts auto/shakespeare_char (sequential, 95% familywise over 3 levels): "
            "1 better, 0 worse, 1 equivalent (±0.02), 1 unresolved")  # fmt: skip
    assert line in printed
    markdown = (out / "report.md").read_text()
    assert "repeated intervals over planned looks" in markdown
    assert "| dropout=noisy | 6 |" in markdown  # its row of the unresolved table
    assert "--max-seeds" in markdown and "--name auto-more" in markdown
    table = pd.read_csv(out / "tables" / "verdicts.csv")
    assert sorted(table["verdict"]) == ["better", "equivalent", "unresolved"]


def test_unreadable_designs_file_is_a_note_not_a_crash(tmp_path):
    root = _store(tmp_path / "results", "auto")
    (root / DESIGNS_FILE).write_text("{not json")
    verdicts = level_verdicts(_trials(root), root)
    assert set(verdicts["design"]) == {"fixed"}
    assert "designs.json is unreadable" in verdicts.attrs["notes"][0]
