"""Shared pieces of the project's command-line interfaces."""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from charlm.config import ConfigError

__all__ = ["DefaultsHelpFormatter", "OneLineParser", "check_writable_dir", "fail"]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with status 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already names one.

    Flags (store_true) are left as written; an option without help text gets one that is
    only its default. Help is printed as written, without %-formatting ("95%" as is).
    """

    def _format_action(self, action: argparse.Action) -> str:
        if action.option_strings and action.help is not argparse.SUPPRESS:
            action = copy.copy(action)
            action.help = _with_default(action)
        return super()._format_action(action)

    def _expand_help(self, action: argparse.Action) -> str:
        return action.help or ""


def _with_default(action: argparse.Action) -> str:
    text = action.help or ""
    if (
        isinstance(action, argparse._StoreConstAction)  # flags, store_true/false
        or action.nargs == 0
        or action.required
        or "default" in text.lower()
    ):
        return text
    default = action.default
    if default is None:
        shown = "none"
    elif isinstance(default, list | tuple):
        shown = ",".join(map(str, default))
    else:
        shown = str(default)
    return f"{text} (default: {shown})" if text else f"default: {shown}"


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (naming the problem and pointing at --help), exit 2,
    no prefix matching (a typo such as --seed for --seeds must not launch a sweep) and
    every option's default in --help (DefaultsHelpFormatter)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
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
