"""SIGINT and SIGTERM during a sweep: stop gracefully, say so, exit 128 + the signal number.

While Tune runs, the first signal only records itself: the runner's stopper then stops
every trial, the store keeps what finished, and the CLI prints an 'interrupted' summary. A
second signal (or one before Tune runs) raises KeyboardInterrupt at once. The state is
module-level because Tune pickles its stopper and callbacks.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_received: int | None = None
_graceful = False


def _handle(signum: int, frame: Any) -> None:
    global _received
    first = _received is None
    _received = signum if first else _received
    if not (first and _graceful):
        raise KeyboardInterrupt


def requested() -> bool:
    """Whether SIGINT or SIGTERM arrived since ``handling`` began."""
    return _received is not None


def signal_name() -> str:
    return signal.Signals(_received).name if _received is not None else "SIGINT"


def exit_code() -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + (_received or signal.SIGINT)


def install() -> None:
    """(Re)install the handlers: ray.init replaces SIGTERM's with its own."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handle)


@contextmanager
def _installed(is_graceful: bool) -> Iterator[None]:
    """Our handlers for the block, graceful or not; after it, the previous handlers and
    not graceful."""
    global _graceful
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install()
    _graceful = is_graceful
    try:
        yield
    finally:
        _graceful = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def handling() -> Iterator[None]:
    """Catch SIGINT and SIGTERM for the block; the previous handlers come back after it."""
    global _received
    _received = None
    with _installed(is_graceful=False):
        yield


@contextmanager
def graceful() -> Iterator[None]:
    """Inside: a first signal is only recorded (the runner's stopper ends the run)."""
    with _installed(is_graceful=True):
        yield
