"""Open a report in a real headless Chromium and check what a reader sees.

``python -m analysis.browser REPORT_DIR/report.html [--screenshot page.png] [--width 1400]``
prints the checks and exits 1 when one fails. It drives the browser over the DevTools
protocol on a pipe (``--remote-debugging-pipe``: JSON messages on file descriptors 3 and
4), so it needs nothing but the ``chromium`` binary (Debian: ``apt-get install chromium``)
and no network. Checked: every image loads, no horizontal scroll at the given width, no
console errors or failed loads, the set-up table is there, and each figure is shown at a
scale that keeps its 8-pt text at 8 pt or more.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BrowserError", "PageCheck", "check_page", "find_chromium", "main"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# What the page says about itself, measured in the browser after every image has loaded.
_PROBE = """
(() => {
  const images = [...document.images].map(img => ({
    alt: img.alt, complete: img.complete, natural: img.naturalWidth,
    shown: img.clientWidth,
  }));
  const setup = document.querySelector('#setup table');
  const settings = setup ? [...setup.querySelectorAll('tbody tr')].map(
    tr => [...tr.cells].map(td => td.textContent)) : null;
  return JSON.stringify({
    images, settings,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    height: document.documentElement.scrollHeight,
    title: document.title,
    sections: [...document.querySelectorAll('section')].map(s => s.id),
  });
})()
"""


class BrowserError(RuntimeError):
    """Chromium is missing, would not start, or did not answer."""


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


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome binary on PATH ($CHROMIUM wins), else None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class _DevTools:
    """One headless browser process and the DevTools protocol on its pipe."""

    def __init__(self, binary: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.profile = tempfile.mkdtemp(prefix="charlm-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # The child's ends must not sit on 3 or 4 when they are moved there (fds >= 10).
        child_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_read)
        os.close(from_browser_write)

        def descriptors() -> None:  # in the child: the pipe ends as fds 3 (in) and 4 (out)
            os.dup2(child_read, 3)
            os.dup2(child_write, 4)

        # close_fds=False: our other descriptors are close-on-exec (PEP 446) and vanish at
        # exec; closing "all but pass_fds" would run after preexec_fn and close 3 and 4.
        self.process = subprocess.Popen(
            [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking",
             "--hide-scrollbars", f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=descriptors, close_fds=False,
        )  # fmt: skip
        os.close(child_read)
        os.close(child_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        while True:
            event = self._read()
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise BrowserError(f"no answer from the browser in {self.timeout_s:.0f} s")
            ready, _, _ = select.select([self._from_browser], [], [], 0.5)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError("the browser closed its DevTools pipe (did it start?)")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                with contextlib.suppress(BrowserError, OSError):
                    self.send("Browser.close")
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            for descriptor in (self._to_browser, self._from_browser):
                with contextlib.suppress(OSError):
                    os.close(descriptor)
            shutil.rmtree(self.profile, ignore_errors=True)


def check_page(
    page: str | Path,
    *,
    width: int = 1400,
    height: int = 900,
    screenshot: str | Path | None = None,
    binary: str | None = None,
    timeout_s: float = 60.0,
) -> PageCheck:
    """Load ``page`` (a local HTML file) at ``width`` x ``height`` CSS pixels and measure it;
    with ``screenshot``, also save the whole page as a PNG there."""
    binary = binary or find_chromium()
    if binary is None:
        raise BrowserError(
            "no Chromium found: install it (Debian: apt-get install chromium) or set $CHROMIUM"
        )
    url = Path(page).resolve().as_uri()
    browser = _DevTools(binary, timeout_s)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        probe = browser.send(
            "Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, session=session
        )
        values = json.loads(probe["result"]["value"])
        shot = None
        if screenshot is not None:
            data = browser.send(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True,
                 "clip": {"x": 0, "y": 0, "width": width, "height": values["height"],
                          "scale": 1}},
                session=session,
            )["data"]  # fmt: skip
            shot = Path(screenshot)
            shot.write_bytes(base64.b64decode(data))
        errors = [_error_text(event) for event in browser.events]
        return PageCheck(
            url=url,
            width=width,
            images=values["images"],
            settings=values["settings"],
            scroll_width=values["scrollWidth"],
            height=values["height"],
            sections=values["sections"],
            console_errors=[e for e in errors if e],
            screenshot=shot,
        )
    finally:
        browser.close()


def _error_text(event: dict) -> str | None:
    """The text of a console error, an uncaught exception or a failed load, else None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return details.get("exception", {}).get("description") or details.get("text")
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return " ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"])
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('text')} {entry.get('url', '')}".strip()
    return None


def main(argv: list[str] | None = None) -> int:
    from charlm.cli import OneLineParser

    parser = OneLineParser(
        prog="python -m analysis.browser",
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
