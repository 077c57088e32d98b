"""Shared fixtures. Tests never write into ../shared: they copy the data they need.

The shared tiny-shakespeare comes from $CHARLM_DATA_DIR as CI sets it (../shared/data),
else from ../shared/data beside the repo. Every test runs with CHARLM_DATA_DIR pointing at
a writable temporary copy, so nothing can write into the shared directory by accident.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from test_reliability import Driver

    from testkit.sharenothing import MotoS3

SHAKESPEARE = "tiny_shakespeare.txt"


def _shared_data_dir() -> Path:
    from_env = os.environ.get("CHARLM_DATA_DIR")
    if from_env and (Path(from_env) / SHAKESPEARE).is_file():
        return Path(from_env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED_DATA = _shared_data_dir()
SHARED_SHAKESPEARE = SHARED_DATA / SHAKESPEARE


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models run fastest, and most steadily, on one thread (Ray trials set their own)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def prepared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide data directory with tiny-shakespeare copied in and encoded once."""
    from charlm.data import load_dataset

    data_dir = tmp_path_factory.mktemp("data")
    shutil.copyfile(SHARED_SHAKESPEARE, data_dir / SHAKESPEARE)
    load_dataset("shakespeare_char", data_dir)
    return data_dir


@pytest.fixture(autouse=True)
def _data_dir_env(prepared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARLM_DATA_DIR", str(prepared_data_dir))


@pytest.fixture
def shakespeare_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory holding only the raw tiny_shakespeare.txt, as $CHARLM_DATA_DIR."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(SHARED_SHAKESPEARE, data_dir / SHAKESPEARE)
    monkeypatch.setenv("CHARLM_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server on 127.0.0.1 for one test module (testkit/sharenothing.py)."""
    from testkit.sharenothing import MotoS3

    server = MotoS3(log=tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def drivers() -> Iterator[list[Driver]]:
    """Sweep drivers a test starts (test_reliability.Driver); each is cleaned up after."""
    started: list[Driver] = []
    try:
        yield started
    finally:
        for driver in started:
            driver.cleanup()
