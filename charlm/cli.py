"""Shared pieces of the project's command-line interfaces."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from charlm.config import ConfigError

__all__ = ["OneLineParser", "check_writable_dir", "fail"]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with status 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (naming the problem and pointing at --help), exit 2,
    and no prefix matching: a typo such as --seed for --seeds must not launch a sweep."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def check_writable_dir(path: Path, option: str) -> None:
    """Raise ConfigError unless ``path`` is, or could be created as, a writable directory.

    Nothing is created: bad input must leave the file system as it was.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: exists and is not a directory; name a directory.")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{option} {path}: {existing} is not writable; name a directory you can write to."
        )
