"""Versioned file formats: refuse a newer version in one line, upgrade an older one step by step.

Every format the project writes with a version number (the result store's Parquet files and
marker, checkpoints and model files) is read through ``upgrade``: the reader knows its
``current`` version and a mapping ``upgrades`` from each older version v to the one function
that turns data of version v into data of version v + 1.

How to bump a format (e.g. the store adds columns): raise its ``..._VERSION`` constant by one
and add ``UPGRADES[old] = function`` taking data as version ``old`` wrote it and returning
it as the new version writes it (the tests check that every step has its function).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from charlm.config import ConfigError

Data = TypeVar("Data")


class FormatVersionError(ConfigError):
    """A file in a format version this code cannot read (newer, or not a version at all)."""


def check_version(
    version: object,
    *,
    current: int,
    where: str,
    what: str,
    error: type[FormatVersionError] = FormatVersionError,
) -> int:
    """``version`` if this code reads it (1..``current``), else ``error`` in one line naming
    ``where``, the versions and the fix."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise error(
            f"{where}: {what} version {version!r} is not one charlm-sweeps wrote: "
            "give a file written by charlm-sweeps."
        )
    if version > current:
        raise error(
            f"{where}: {what} version {version} is newer than this charlm-sweeps reads "
            f"(up to {current}): upgrade charlm-sweeps (pip install -U charlm-sweeps)."
        )
    return version


def upgrade(
    data: Data,
    version: object,
    *,
    current: int,
    upgrades: Mapping[int, Callable[[Data], Data]],
    where: str,
    what: str,
    error: type[FormatVersionError] = FormatVersionError,
) -> Data:
    """``data`` read as format ``version`` of ``what``, brought to version ``current``.

    A version this code cannot read raises ``error`` (see ``check_version``); an older one
    goes through ``upgrades[version]``, ``upgrades[version + 1]``, ... in turn.
    """
    step = check_version(version, current=current, where=where, what=what, error=error)
    while step < current:
        data = upgrades[step](data)
        step += 1
    return data
