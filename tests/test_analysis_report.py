"""The report CLI: self-contained output, what-is-missing notes, and clean failures."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import heatmaps
from analysis.report import main
from sweeps.schema import read_table
from testkit.synthetic import trial_row, write_rows
from testkit.tiny import tiny_store

SPEC = {"sweeps": ("base", "change"), "datasets": ("shakespeare_char",), "n_factors": 1,
        "n_levels": 2, "seeds": 2, "eval_steps": 4, "failed_share": 0.0}  # fmt: skip


@pytest.fixture
def store(tmp_path):
    root = tiny_store(tmp_path / "results", **SPEC)
    write_rows(
        root,
        "trials",
        [
            trial_row(
                "boom",
                sweep="base",
                factor="n_layer",
                level="2",
                seed=7,
                status="failed",
                error="non-finite loss at step 150",
            )
        ],
        "boom",
    )
    return root


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images += [value for name, value in attrs if name == "src"]
        else:
            self.links += [value for name, value in attrs if name in ("href", "src") and value]


def _files(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")} if path.exists() else set()


def test_report_is_self_contained(store, tmp_path, capsys, monkeypatch):
    maps = [np.full((2, 6, 6), 1 / 6) for _ in range(2)]
    monkeypatch.setattr(heatmaps, "capture_attention", lambda path, text: (maps, list(text[:6])))
    (store / "models").mkdir(exist_ok=True)  # a store made by ResultStore has it
    (store / "models" / "base-shakespeare_char-baseline-baseline-s0.pt").write_bytes(b"")
    out = tmp_path / "report"
    assert main([str(store), "--out", str(out), "--format", "png,svg"]) == 0
    printed = capsys.readouterr().out
    assert "sweep base" in printed and f"report: {out / 'report.html'}" in printed
    page = (out / "report.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert parser.links, "the report links its figures and tables"
    # One file to mail: every figure is embedded as a PNG data URI, the files stay beside it.
    assert len(parser.images) == len(list((out / "figures").rglob("*.png"))) > 0
    for image in parser.images:
        assert image.startswith("data:image/png;base64,"), image[:40]
    assert any(link.endswith(".svg") for link in parser.links)
    for link in parser.links:
        assert not re.match(r"^[a-z]+:|^/", link), link  # relative only: no URL, no absolute
        target = (out / link).resolve()
        assert target.is_relative_to(out.resolve()) and target.is_file(), link
    markdown = (out / "report.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", markdown):
        assert (out / link).is_file() and not link.startswith("/"), link
    figures = {p.relative_to(out / "figures").as_posix() for p in (out / "figures").rglob("*.png")}
    for sweep in ("base", "change"):
        for stem in (
            "1_params_vs_loss",
            "2_factor_curves",
            "3_loss_bars",
            "4_attention",
            "5_layer_similarity",
        ):
            assert f"{sweep}/{stem}.png" in figures
    assert "7_sweeps_compared.png" in figures
    assert "6_heatmaps/shakespeare_char_heads_layer1.png" in figures  # default: last layer
    assert (out / "figures" / "base" / "3_loss_bars.svg").is_file()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "<style>" in page and "<script" not in page and "http" not in text
    assert "boom" in page and "non-finite loss at step 150" in page  # diverged trial listed
    assert "Factor ranking" in page and "Generated samples" in page
    for name in ("summary.csv", "effects.csv", "ranking.csv", "table_base.tex", "table_base.md"):
        assert (out / "tables" / name).is_file()
    assert (out / "final_info" / "base" / "baseline" / "final_info.json").is_file()
    # A second run replaces the earlier report.
    assert main([str(store), "--out", str(out), "--format", "svg", "--quiet"]) == 0
    assert not list((out / "figures").rglob("*.png"))


def test_corrupt_file_named_and_skipped_or_strict(store, tmp_path, capsys):
    bad = store / "curves" / "base-shakespeare_char-baseline-baseline-s1.parquet"
    bad.write_bytes(bad.read_bytes()[:40])
    out = tmp_path / "report"
    assert main([str(store), "--out", str(out), "--format", "png", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: skipped corrupt store file {bad}")
    assert str(bad) in (out / "report.html").read_text()

    strict_out = tmp_path / "strict"
    assert main([str(store), "--out", str(strict_out), "--strict"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "--strict" in lines[0]
    assert not strict_out.exists() and captured.out == ""


@pytest.mark.parametrize("kind", ["missing", "not_a_store"])
def test_not_a_store_exits_2_and_writes_nothing(tmp_path, capsys, kind):
    results = tmp_path / "results"
    if kind == "not_a_store":
        results.mkdir()
        (results / "notes.txt").write_text("x")
    before = _files(tmp_path)
    assert main([str(results)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(results) in lines[0]
    assert ("does not exist" if kind == "missing" else "charlm-store.json") in lines[0]
    assert _files(tmp_path) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "gif"], "--format gif"),
        (["--sweep", "nope"], "--sweep nope"),
        (["--heatmap-layer", "-1"], "--heatmap-layer -1"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_cli_input_one_line_exit_2(store, tmp_path, capsys, argv, message):
    before = _files(tmp_path)
    assert _exit_code([str(store), "--out", str(tmp_path / "r"), *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert _files(tmp_path) == before


def test_heatmap_layer_out_of_range_writes_nothing(store, tmp_path, capsys, monkeypatch):
    maps = [np.full((2, 4, 4), 0.25) for _ in range(2)]
    monkeypatch.setattr(heatmaps, "capture_attention", lambda path, text: (maps, list("abcd")))
    (store / "models").mkdir(exist_ok=True)  # a store made by ResultStore has it
    (store / "models" / "base-shakespeare_char-baseline-baseline-s0.pt").write_bytes(b"")
    assert main([str(store), "--out", str(tmp_path / "r"), "--heatmap-layer", "5"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "has 2 layers" in lines[0]
    assert not (tmp_path / "r").exists()


def test_store_still_being_written(tmp_path, capsys):
    root = tiny_store(tmp_path / "results", **SPEC)
    write_rows(
        root, "curves", {"trial_id": ["running"], "step": [50], "val_loss": [3.0]}, "running"
    )
    (root / "trials" / ".tmp-write.parquet").write_bytes(b"half a file")  # a write in progress
    out = tmp_path / "report"
    assert main([str(root), "--out", str(out), "--format", "png"]) == 0
    assert "1 trial(s) in progress" in (out / "report.html").read_text()
    assert capsys.readouterr().err == ""


def test_refuses_out_dir_holding_other_files(store, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    assert main([str(store), "--out", str(out)]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_module_entry_point_and_no_ray(tmp_path):
    code = (
        "import sys, analysis, analysis.report, analysis.plots, analysis.load;"
        "assert 'ray' not in sys.modules, 'analysis imported ray'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    done = subprocess.run(
        [sys.executable, "-m", "analysis", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1


def _exit_code(argv: list[str]) -> int:
    """main's status, whether returned or raised by argparse as SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


# ---------------------------------------------------------------- a report taken mid-sweep


def _mid_sweep(trial) -> str:
    """n_layer=3 seed 0 finished, the baseline's seed 0 running, the rest not started."""
    if trial.seed == 0 and (trial.factor, trial.level) == ("n_layer", "3"):
        return "finished"
    return "running" if trial.seed == 0 and trial.factor == "baseline" else "pending"


@pytest.fixture(scope="module")
def mid_sweep_store(tmp_path_factory):
    from testkit.realstore import build_real_store

    return build_real_store(tmp_path_factory.mktemp("mid") / "results", state=_mid_sweep)


def _markdown_table(text: str, caption: str) -> list[list[str]]:
    """The rows of the Markdown table under ``**caption**`` (header first)."""
    block = text[text.index(f"**{caption}") :].split("\n\n")[1]
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in block.splitlines() if not line.startswith("| ---")]  # fmt: skip


def test_a_report_mid_sweep_shows_the_planned_grid_and_the_baseline(mid_sweep_store, tmp_path,
                                                                    capsys):  # fmt: skip
    out = tmp_path / "report"
    assert main([str(mid_sweep_store), "--out", str(out), "--format", "png"]) == 0
    printed = capsys.readouterr().out
    counts = "1 of 6 planned trials finished (1 ok, 0 failed); 1 running, 4 not started"
    assert f"note: Sweep tiny: {counts}." in printed
    page = (out / "report.md").read_text()
    settings = dict(_markdown_table(page, "Sweep tiny**")[1:])
    # The baseline is the baseline's config (2 layers), though only n_layer=3 has finished.
    assert settings["Baseline model"].startswith("2 layers, 2 heads, 16 wide, block 32")
    trials = read_table(mid_sweep_store, "trials").table.to_pylist()
    (finished,) = trials
    assert finished["n_layer"] == 3
    assert settings["Baseline parameters"] != f"{finished['n_params']:,}"
    assert settings["Factors and levels"] == "n_layer: 1, 3"  # every planned level
    assert settings["Seeds"] == "0, 1 (2 per config)"
    assert settings["Trials"] == counts
    grid = _markdown_table(page, f"Sweep tiny: planned grid, {counts}")
    assert grid[0] == ["Dataset", "Factor", "Level", "Seeds", "Params", "Finished", "State"]
    rows = {(row[1], row[2]): (row[4], row[5], row[6]) for row in grid[1:]}
    assert rows == {
        ("baseline", "baseline"): (settings["Baseline parameters"], "0 of 2", "running"),
        ("n_layer", "1"): (rows[("n_layer", "1")][0], "0 of 2", "pending"),
        ("n_layer", "3"): (f"{finished['n_params']:,}", "1 of 2", "pending"),
    }
    assert "no baseline trial has finished yet" in page
    html_page = (out / "report.html").read_text()
    assert "planned grid" in html_page and "<td>running</td>" in html_page


def test_running_trials_of_a_sweep_that_is_gone_read_stopped(mid_sweep_store, tmp_path):
    import socket
    from datetime import datetime, timezone

    from sweeps.schema import LOCK_FILE, lock_note

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    lock = mid_sweep_store / LOCK_FILE
    lock.write_text(lock_note(int(gone.stdout), socket.gethostname(), datetime.now(timezone.utc)))
    try:
        out = tmp_path / "report"
        assert main([str(mid_sweep_store), "--out", str(out), "--quiet"]) == 0
        page = (out / "report.md").read_text()
    finally:
        lock.unlink()
    assert (
        "1 stopped before the end, 4 not started (no sweep writes this store now: run the "
        "same command to finish)" in page
    )
    assert "| shakespeare_char | baseline | baseline | 0, 1 | 7,264 | 0 of 2 | stopped |" in page


def test_level_states_follow_the_store():
    from analysis.settings import level_states, trial_counts

    planned = pd.DataFrame(
        [("s", "d", factor, level, seed, f"{factor}{level}{seed}", 10, auto)
         for factor, level, auto in (("baseline", "baseline", False), ("a", "1", False),
                                     ("a", "2", False), ("a", "3", False), ("b", "1", True))
         for seed in (0, 1)],
        columns=["sweep", "dataset", "factor", "level", "seed", "trial_id", "n_params",
                 "adaptive_seeds"],
    )  # fmt: skip
    trials = pd.DataFrame({"trial_id": ["baselinebaseline0", "baselinebaseline1", "a10", "b10"],
                           "status": ["ok", "failed", "ok", "ok"]})  # fmt: skip
    states = level_states(planned, trials, ["a20", "a11"], alive=None)
    assert states["state"].tolist() == ["finished", "running", "running", "pending", "open"]
    assert states[["ok", "failed", "running"]].values.tolist() == [
        [1, 1, 0], [1, 0, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0]
    ]  # fmt: skip
    assert trial_counts(states) == (
        "4 of up to 10 planned trials finished (3 ok, 1 failed); 2 running, 4 not started"
    )
    gone = level_states(planned, trials, ["a20", "a11"], alive=False)
    assert gone["state"].tolist() == ["finished", "stopped", "stopped", "pending", "open"]
