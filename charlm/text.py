"""Plain-text output helpers shared by the CLIs, the analysis and the benchmarks: aligned
tables, durations and numbers with a thousands prefix."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

_SI_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_COUNT_PREFIXES = ((1e9, "B"), (1e6, "M"), (1e3, "k"))  # parameter counts: billions, not giga


def short_repr(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters so a message stays one short line:
    a 300-digit integer prints as its first digits and its length."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 16]}... ({len(text)} chars)"


def text_table(
    header: Sequence[object], rows: Sequence[Sequence[object]], right: Collection[int] = ()
) -> list[str]:
    """Aligned lines: the header, then one per row, columns two spaces apart, as wide as
    their widest cell; the columns whose index is in ``right`` are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [
            str(cell).rjust(width) if index in right else str(cell).ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_duration(seconds: float | None) -> str:
    """'4.2 s', '42 s', '12.5 min', '3.4 h', '2.1 d'; '-' for None or a non-finite value."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_clock(seconds: float) -> str:
    """Whole seconds as progress lines stamp them: '42s', '8m35s', '3h48m'."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def scaled(value: float, unit: str = "", *, sep: str = " ", counts: bool = False) -> str:
    """``value`` to 3 significant digits over its power of 1000, with the prefix and ``unit``:
    '1.23 PFLOP', '850 k'; ``counts`` uses k, M, B (parameter counts, e.g. '12.8M' with
    ``sep=''``) instead of the SI k, M, G, T, P, E."""
    for threshold, prefix in _COUNT_PREFIXES if counts else _SI_PREFIXES:
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{sep}{prefix}{unit}"
    return f"{value:.3g}{sep}{unit}".rstrip()


def mean_stderr(
    mean: float, stderr: float | None, n: int, digits: int = 4, *, explain: bool = True
) -> str:
    """A mean over ``n`` seeds with its standard error: '2.6962 ± 0.0123 (mean ± stderr over
    3 seeds)' (without the parenthesis when not ``explain``: a table's header says it), and
    '2.6962 (1 seed, no stderr)' when one seed leaves no spread to show."""
    if n < 2 or stderr is None or not math.isfinite(stderr):
        return f"{mean:.{digits}f} ({n} seed{'s' * (n != 1)}, no stderr)"
    text = f"{mean:.{digits}f} ± {stderr:.{digits}f}"
    return f"{text} (mean ± stderr over {n} seeds)" if explain else text
