"""Make a report from a real tiny sweep and look at it in headless Chromium.

    python benchmarks/report_screenshot.py [--out benchmarks/out/report-shot] [--width 1400]

Runs a real 6-trial sweep (sweeps/ablation.py on the embedded local Ray, 30 steps each),
writes its report with python -m analysis, opens it with testkit.browser (every image
loads, no sideways scroll, no console errors, set-up table there) and saves a screenshot
of the whole page, OUT/page.png, so people can look at what a reader sees. Prints the
checks and the time each step took.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testkit.browser import check_page  # noqa: E402
from testkit.realstore import TINY_GRID  # noqa: E402


def _run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "report-shot",
                        help="directory for the store, report and screenshot")  # fmt: skip
    parser.add_argument("--width", type=int, default=1400, help="window width (default 1400)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    grid = out / "tiny.yaml"
    grid.write_text(TINY_GRID)
    print(f"load average {os.getloadavg()[0]:.2f} at the start")
    sweep_s = _run(["sweeps/ablation.py", "--grid", str(grid), "--results",
                    str(out / "results"), "--num-cpus", "2"])  # fmt: skip
    report_s = _run(["-m", "analysis", str(out / "results"), "--out", str(out / "report")])
    start = time.perf_counter()
    check = check_page(out / "report" / "report.html", width=args.width,
                       screenshot=out / "page.png")  # fmt: skip
    browser_s = time.perf_counter() - start
    print(f"sweep {sweep_s:.1f} s, report {report_s:.1f} s, browser {browser_s:.1f} s")
    size = (out / "report" / "report.html").stat().st_size
    print(f"{check.url}: {size / 1e3:,.0f} kB, {len(check.images)} images, page "
          f"{check.scroll_width}px wide at {check.width}px, {check.height}px tall")  # fmt: skip
    for problem in check.problems or ["none"]:
        print(f"problems: {problem}")
    print(f"screenshot: {check.screenshot}; load average {os.getloadavg()[0]:.2f} at the end")
    return 1 if check.problems else 0


if __name__ == "__main__":
    sys.exit(main())
