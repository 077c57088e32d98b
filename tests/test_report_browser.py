"""The report of a small real store, opened in a real headless Chromium (Debian's package,
driven by Selenium through chromium-driver, testkit.browser): what a reader sees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analysis.cli import main as analysis_main
from testkit.browser import check_page, find_chromium
from testkit.realstore import build_real_store

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium or chromedriver on PATH: apt-get install chromium chromium-driver "
    "(.ci/run installs both)",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    store = build_real_store(root / "results")
    out = root / "report"
    assert analysis_main([str(store), "--out", str(out), "--quiet"]) == 0
    return out


def _settings(page: str) -> dict[str, str]:
    setup = page[page.index("<section id='setup'>") : page.index("<section id='overview'>")]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", setup)
    return dict(rows)


def test_the_report_starts_with_how_the_runs_were_set_up(report: Path):
    page = (report / "report.html").read_text()
    assert page.index("How the runs were set up") < page.index("Overview")
    settings = _settings(page)
    assert settings["Training steps (max_iters)"] == "30"
    assert settings["Batch size"] == "8"
    assert settings["Seeds"] == "0, 1 (2 per config)"
    assert settings["Factors and levels"] == "n_layer: 1, 3"
    assert settings["Datasets"] == "shakespeare_char"
    assert settings["Baseline model"].startswith("2 layers, 2 heads, 16 wide, block 32")
    assert settings["Learning rate"] == (
        "AdamW; linear warm-up to 0.0003 over 2 steps, cosine decay to 3e-05 at step 30"
    )
    assert settings["Evaluation"].startswith("every 10 steps (eval_interval); 2 batches")
    assert settings["Device used"] == "cpu (6 trials)"
    assert settings["Trials"] == "6 of 6 planned trials finished (6 ok, 0 failed)"
    code = r"charlm-sweeps \S+, (git commit [0-9a-f]{40}(\+dirty)?|commit unknown)"
    assert re.match(code, settings["Code"]), settings["Code"]
    assert "this process (no Ray)" in settings["Machines"]


def test_one_file_holds_every_figure(report: Path):
    page = (report / "report.html").read_text()
    pngs = sorted((report / "figures").rglob("*.png"))
    embedded = re.findall(r"<img src='data:image/png;base64,", page)
    assert len(embedded) == len(pngs) >= 7  # figures 1-5 and both heatmaps
    assert "6_heatmaps/shakespeare_char_layers.svg" in page  # the files stay linked


@needs_chromium
def test_chromium_shows_every_image_without_scrolling_sideways_or_errors(report: Path, tmp_path):
    shot = tmp_path / "page.png"
    check = check_page(report / "report.html", width=1400, screenshot=shot)
    assert check.problems == []
    assert len(check.images) == len(list((report / "figures").rglob("*.png")))
    assert all(img["complete"] and img["natural"] > 0 for img in check.images)
    assert check.scroll_width <= 1400
    assert check.console_errors == []
    assert check.settings and ["Training steps (max_iters)", "30"] in check.settings
    assert check.sections[:2] == ["setup", "overview"]
    # Every figure is shown at its own size: its 8-pt text stays 8 pt on the page.
    assert all(img["shown"] == img["natural"] for img in check.images)
    assert shot.read_bytes()[:4] == b"\x89PNG" and check.height > 900


@needs_chromium
def test_the_browser_check_catches_a_broken_page(tmp_path: Path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><img src='missing.png' alt='gone'>"
        "<div style='width:3000px'>wide</div><script>console.error('boom')</script>"
        "</body></html>"
    )
    problems = check_page(page, width=1400).problems
    assert any("did not load: gone" in p for p in problems), problems
    assert any("horizontal scroll" in p for p in problems), problems
    assert any("boom" in p for p in problems), problems
    assert any("missing.png" in p for p in problems), problems  # the failed load is logged
    assert any("no set-up table" in p for p in problems), problems
