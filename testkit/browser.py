"""Open a report in a real headless Chromium and check what a reader sees.

``python -m testkit.browser REPORT_DIR/report.html [--screenshot page.png] [--width 1400]``
prints the checks and exits 1 when one fails. Selenium drives Debian's ``chromium`` through
its ``chromium-driver`` (``apt-get install chromium chromium-driver``; ``.ci/run`` installs
both); no browser or driver is downloaded. Checked: every image loads, no horizontal
scroll at the given width, no console errors or failed loads, the set-up table is there,
and each figure is shown at a scale that keeps its 8-pt text at 8 pt or more.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BrowserError", "PageCheck", "check_page", "find_chromium", "main"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver", "chromium-driver")

# What the page says about itself, measured in the browser after every image has loaded.
_PROBE = """
const images = [...document.images].map(img => ({
  alt: img.alt, complete: img.complete, natural: img.naturalWidth, shown: img.clientWidth,
}));
const setup = document.querySelector('#setup table');
const settings = setup ? [...setup.querySelectorAll('tbody tr')].map(
  tr => [...tr.cells].map(td => td.textContent)) : null;
return {
  images, settings,
  scrollWidth: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
  sections: [...document.querySelectorAll('section')].map(s => s.id),
};
"""


class BrowserError(RuntimeError):
    """Chromium or its driver is missing, or would not start."""


@dataclass
class PageCheck:
    """What the page showed; ``problems`` lists every failed check (empty: all passed)."""

    url: str
    width: int
    images: list[dict[str, Any]]
    settings: list[list[str]] | None
    scroll_width: int
    height: int
    sections: list[str]
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        found = []
        broken = [img["alt"] for img in self.images if not img["complete"] or not img["natural"]]
        if broken:
            found.append(f"{len(broken)} image(s) did not load: {', '.join(broken[:3])}")
        if self.scroll_width > self.width:
            found.append(f"horizontal scroll: the page is {self.scroll_width}px wide")
        found += [f"console: {line}" for line in self.console_errors]
        if not self.settings:
            found.append("no set-up table (section#setup table)")
        for img in self.images:
            scale = img["shown"] / img["natural"] if img["natural"] else 0.0
            if img["natural"] and scale < 0.999:  # 8-pt text at 100 dpi shrinks below 8 pt
                found.append(f"figure scaled to {scale:.0%} of its size: {img['alt']}")
        return found


def _which(names: tuple[str, ...], variable: str) -> str | None:
    if os.environ.get(variable):
        return os.environ[variable]
    return next((path for name in names if (path := shutil.which(name))), None)


def find_chromium() -> str | None:
    """The Chromium binary ($CHROMIUM wins), when its driver is there too; else None."""
    binary = _which(BROWSERS, "CHROMIUM")
    return binary if binary and _which(DRIVERS, "CHROMEDRIVER") else None


def _driver(binary: str, width: int, height: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--force-device-scale-factor=1", f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = _which(DRIVERS, "CHROMEDRIVER")
    if driver_path is None:
        raise BrowserError("no chromedriver: apt-get install chromium-driver, or set $CHROMEDRIVER")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    # The viewport, not the window, is what a reader's page is laid out in.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1,
                            "mobile": False})  # fmt: skip
    return driver


def check_page(
    page: str | Path,
    *,
    width: int = 1400,
    height: int = 900,
    screenshot: str | Path | None = None,
    binary: str | None = None,
) -> PageCheck:
    """Load ``page`` (a local HTML file) at ``width`` x ``height`` CSS pixels and measure it;
    with ``screenshot``, also save the whole page as a PNG there."""
    binary = binary or find_chromium()
    if binary is None:
        raise BrowserError(
            "no Chromium and chromedriver found: apt-get install chromium chromium-driver"
        )
    url = Path(page).resolve().as_uri()
    driver = _driver(binary, width, height)
    try:
        driver.get(url)  # returns once the load event has fired: every image is in
        values = driver.execute_script(_PROBE)
        shot = None
        if screenshot is not None:
            clip = {"x": 0, "y": 0, "width": width, "height": values["height"], "scale": 1}
            data = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True, "clip": clip})["data"]  # fmt: skip
            shot = Path(screenshot)
            shot.write_bytes(base64.b64decode(data))
        errors = [entry["message"] for entry in driver.get_log("browser")
                  if entry.get("level") == "SEVERE"]  # fmt: skip
    finally:
        driver.quit()
    return PageCheck(url=url, width=width, images=values["images"], settings=values["settings"],
                     scroll_width=values["scrollWidth"], height=values["height"],
                     sections=values["sections"], console_errors=errors,
                     screenshot=shot)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.browser",
        description="Open a report in headless Chromium and check it (see the module doc).",
    )
    parser.add_argument("page", help="the report.html to open")
    parser.add_argument("--width", type=int, default=1400, help="window width, CSS pixels")
    parser.add_argument("--screenshot", help="save the whole page as this PNG (default: none)")
    args = parser.parse_args(argv)
    if not Path(args.page).is_file():
        parser.error(f"{args.page}: no such file; give the path of a report.html")
    try:
        check = check_page(args.page, width=args.width, screenshot=args.screenshot)
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{check.url}: {len(check.images)} images, page {check.scroll_width}px wide at "
        f"{check.width}px, {check.height}px tall, sections {', '.join(check.sections)}"
    )
    if check.screenshot:
        print(f"screenshot: {check.screenshot}")
    for problem in check.problems:
        print(f"problem: {problem}")
    return 1 if check.problems else 0


if __name__ == "__main__":
    sys.exit(main())
