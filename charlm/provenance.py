"""Which code produced a result: the project's version and git commit, and the machine.

Recorded by the sweep CLIs in the result store (``sweep_runs/``) so a report can say how
its runs were set up, months later. Every lookup is best effort: outside a git checkout,
or without git, the commit is None.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

DISTRIBUTION = "charlm-sweeps"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the directory holding charlm/


def package_version(distribution: str = DISTRIBUTION) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(root: Path = _SOURCE_ROOT) -> str | None:
    """The commit of the checkout this code runs from, '+dirty' when tracked files differ
    from it; None when the code is not in a git checkout (an installed wheel)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return None  # not this project's own checkout
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}+dirty" if dirty else commit


def provenance() -> dict[str, Any]:
    """Version, commit, Python, torch and Ray versions (installed, not imported), host."""
    return {
        "project_version": package_version(),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "ray": package_version("ray"),
        "host": socket.gethostname(),
        "platform": platform.platform(terse=True),
        "command": " ".join(["python", *sys.argv]),
    }
