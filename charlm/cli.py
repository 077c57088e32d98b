"""Shared pieces of the project's command-line interfaces."""

from __future__ import annotations

import argparse
import copy
import difflib
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from charlm.config import ConfigError


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
    no prefix matching (a typo such as --seed for --seeds must not launch a sweep), a
    "did you mean" for a misspelled option, and every option's default in --help
    (DefaultsHelpFormatter)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def _did_you_mean(self, extras: list[str]) -> str:
        """'; did you mean --seeds?' for the unknown options among ``extras`` that are close
        to one of this parser's (shown) options."""
        known = {  # option -> the spelling to suggest (an old alias's new one)
            option: getattr(action, "canonical", option)
            for action in self._actions
            if action.help is not argparse.SUPPRESS or hasattr(action, "canonical")
            for option in action.option_strings
        }
        names = [extra.split("=", 1)[0] for extra in extras if extra.startswith("-")]
        hints = []
        for name in names:
            close = difflib.get_close_matches(name, list(known), n=1)
            if close:
                hint = known[close[0]]
                hints.append(f"{hint} for {name}" if len(names) > 1 else hint)
        return f"; did you mean {', '.join(hints)}?" if hints else ""

    def error(self, message: str) -> NoReturn:
        unknown = "unrecognized arguments: "  # argparse's message, its words joined by spaces
        if message.startswith(unknown):
            message += self._did_you_mean(message[len(unknown) :].split())
        fail(f"{message} (see {self.prog} --help)")


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden spelling of the option ``new`` (its destination), with a
    one-line note on stderr naming the new spelling; ``--help`` shows only ``new``."""
    target = next(a for a in parser._actions if new in a.option_strings)

    class _Alias(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            print(f"note: {old} is now spelled {new}; {old} will go away.", file=sys.stderr)
            setattr(namespace, self.dest, values)

    if target.type is not None:
        kwargs["type"] = target.type
    alias = parser.add_argument(old, dest=target.dest, action=_Alias, help=argparse.SUPPRESS,
                                **kwargs)  # fmt: skip
    alias.canonical = new  # type: ignore[attr-defined]  # read by OneLineParser._did_you_mean


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
