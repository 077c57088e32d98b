from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import platformdirs
import pytest
import torch

from charlm import data
from charlm.config import ConfigError
from charlm.data import (
    DataError,
    Dataset,
    DatasetSpec,
    check_block_size,
    get_batch,
    iter_windows,
    load_dataset,
    n_windows,
    resolve_data_dir,
)

SMALL_TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 4


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves a directory; ``/truncated`` promises 1000 bytes and hangs up after 10."""

    def do_GET(self) -> None:
        if self.path != "/truncated":
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(SMALL_TEXT[:10])
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving a directory: yields (directory, base URL)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()
        thread.join()


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cache"
    directory.mkdir()
    return directory


def use_spec(monkeypatch: pytest.MonkeyPatch, name: str, **changes: object) -> DatasetSpec:
    spec = dataclasses.replace(data.DATASETS[name], **changes)
    monkeypatch.setitem(data.DATASETS, name, spec)
    return spec


def use_small_text(monkeypatch: pytest.MonkeyPatch, url: str) -> DatasetSpec:
    return use_spec(
        monkeypatch, "shakespeare_char", url=url, sha256=sha256(SMALL_TEXT), size=len(SMALL_TEXT)
    )


def make_zip(member: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, content)
    return buffer.getvalue()


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


PREPARED_FILES = [
    "shakespeare_char.meta.json",
    "shakespeare_char.tokens.npy",
    "shakespeare_char.vocab.json",
    "tiny_shakespeare.txt",
]


# --- data directory ---------------------------------------------------------------------


def test_resolve_data_dir_prefers_argument_then_env_then_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHARLM_DATA_DIR", raising=False)
    assert resolve_data_dir() == Path(platformdirs.user_cache_dir("charlm"))
    monkeypatch.setenv("CHARLM_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_data_dir_that_cannot_be_created_is_a_data_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match=r"cannot create the data directory .*a_file/data"):
        load_dataset("shakespeare_char", blocker / "data")


# --- download against a real local HTTP server -----------------------------------------------


def test_download_verifies_and_caches(
    server: tuple[Path, str], empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, base_url = server
    (served / "input.txt").write_bytes(SMALL_TEXT)
    use_small_text(monkeypatch, f"{base_url}/input.txt")

    dataset = load_dataset("shakespeare_char", empty_dir)

    assert (empty_dir / "tiny_shakespeare.txt").read_bytes() == SMALL_TEXT
    assert files_in(empty_dir) == PREPARED_FILES  # no temporary file left behind
    text = SMALL_TEXT.decode()
    assert dataset.vocab == sorted(set(text))
    assert dataset.decode(np.concatenate([dataset.splits["train"], dataset.splits["val"]])) == text
    # The served file is gone: the cache alone must do.
    (served / "input.txt").unlink()
    assert load_dataset("shakespeare_char", empty_dir).vocab == dataset.vocab


def test_download_with_wrong_checksum_leaves_nothing(
    server: tuple[Path, str], empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, base_url = server
    tampered = SMALL_TEXT.replace(b"speak", b"SPEAK")
    (served / "input.txt").write_bytes(tampered)
    spec = use_small_text(monkeypatch, f"{base_url}/input.txt")

    with pytest.raises(DataError) as raised:
        load_dataset("shakespeare_char", empty_dir)

    message = str(raised.value)
    assert f"the file downloaded from {spec.url} is corrupt" in message
    assert f"has sha256 {sha256(tampered)}, expected {spec.sha256}" in message
    assert f"place tiny_shakespeare.txt (sha256 {spec.sha256}) in {empty_dir}" in message
    assert "\n" not in message
    assert files_in(empty_dir) == []


def test_download_404_gives_the_fix_and_leaves_nothing(
    server: tuple[Path, str], empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base_url = server
    spec = use_small_text(monkeypatch, f"{base_url}/missing.txt")

    with pytest.raises(DataError, match="HTTP 404") as raised:
        load_dataset("shakespeare_char", empty_dir)

    message = str(raised.value)
    assert spec.url in message and "HTTP 404" in message  # what failed and why
    for fix in ("place tiny_shakespeare.txt", spec.sha256, str(empty_dir), "CHARLM_DATA_DIR"):
        assert fix in message
    assert files_in(empty_dir) == []


def test_download_cut_short_leaves_nothing(
    server: tuple[Path, str], empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base_url = server
    spec = use_small_text(monkeypatch, f"{base_url}/truncated")

    with pytest.raises(DataError) as raised:
        load_dataset("shakespeare_char", empty_dir)

    assert str(raised.value).startswith(
        f"download of {spec.url} failed (closed with 990 bytes still to come): check the network"
    )

    assert files_in(empty_dir) == []


def test_connection_refused_gives_the_fix_and_leaves_nothing(
    empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    spec = use_small_text(monkeypatch, f"http://127.0.0.1:{port}/input.txt")

    with pytest.raises(DataError) as raised:
        load_dataset("shakespeare_char", empty_dir)

    assert str(raised.value).startswith(f"download of {spec.url} failed (")
    assert "refused): check the network or place tiny_shakespeare.txt" in str(raised.value)
    assert files_in(empty_dir) == []


def test_present_corrupt_file_is_downloaded_again(
    server: tuple[Path, str], empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, base_url = server
    (served / "input.txt").write_bytes(SMALL_TEXT)
    use_small_text(monkeypatch, f"{base_url}/input.txt")
    (empty_dir / "tiny_shakespeare.txt").write_bytes(b"truncated")

    load_dataset("shakespeare_char", empty_dir)

    assert (empty_dir / "tiny_shakespeare.txt").read_bytes() == SMALL_TEXT


def test_present_corrupt_file_and_failed_download_says_both(
    server: tuple[Path, str], empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base_url = server
    spec = use_small_text(monkeypatch, f"{base_url}/missing.txt")
    raw = empty_dir / "tiny_shakespeare.txt"
    raw.write_bytes(b"truncated")

    with pytest.raises(DataError) as raised:
        load_dataset("shakespeare_char", empty_dir)

    assert str(raised.value).startswith(
        f"{raw} is corrupt (it has 9 bytes, expected {spec.size}) and downloading it again "
        f"failed: download of {spec.url} failed (HTTP 404"
    )
    assert files_in(empty_dir) == ["tiny_shakespeare.txt"]


# --- zipped, byte-level datasets (enwik8-like) ----------------------------------------------


ENWIK_LIKE = ("<page><title>Café</title>" * 8).encode()  # 208 bytes, some of them non-ASCII


def test_zip_member_is_verified_encoded_by_bytes_and_split(
    server: tuple[Path, str], empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, base_url = server
    (served / "enwik8.zip").write_bytes(make_zip("enwik8", ENWIK_LIKE))
    use_spec(
        monkeypatch,
        "enwik8",
        url=f"{base_url}/enwik8.zip",
        sha256=sha256(ENWIK_LIKE),
        size=len(ENWIK_LIKE),
        split_sizes=(188, 10, 10),
    )

    dataset = load_dataset("enwik8", empty_dir)

    assert {name: dataset.split_length(name) for name in dataset.splits} == {
        "train": 188,
        "val": 10,
        "test": 10,
    }
    assert dataset.vocab == sorted(set(ENWIK_LIKE.decode("latin-1")))  # bytes, not characters
    assert "é" not in dataset.vocab and "\xc3" in dataset.vocab
    whole = np.concatenate([dataset.splits[name] for name in ("train", "val", "test")])
    assert dataset.decode(whole).encode("latin-1") == ENWIK_LIKE
    assert dataset.splits["test"].dtype == np.uint8


@pytest.mark.parametrize(
    ("served_bytes", "problem"),
    [
        (make_zip("enwik8", ENWIK_LIKE[:-1] + b"!"), "its member enwik8 has sha256 "),
        (make_zip("enwik8", ENWIK_LIKE[:-1]), "its member enwik8 has 207 bytes, expected 208"),
        (make_zip("other", ENWIK_LIKE), "it is not a zip file holding enwik8"),
        (ENWIK_LIKE, "it is not a zip file holding enwik8"),
    ],
)
def test_bad_zip_download_is_rejected_and_not_kept(
    server: tuple[Path, str],
    empty_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    served_bytes: bytes,
    problem: str,
) -> None:
    served, base_url = server
    (served / "enwik8.zip").write_bytes(served_bytes)
    use_spec(
        monkeypatch,
        "enwik8",
        url=f"{base_url}/enwik8.zip",
        sha256=sha256(ENWIK_LIKE),
        size=len(ENWIK_LIKE),
        split_sizes=(188, 10, 10),
    )

    with pytest.raises(DataError, match=f"is corrupt: {problem}") as raised:
        load_dataset("enwik8", empty_dir)

    assert f"place enwik8.zip (holding enwik8 with sha256 {sha256(ENWIK_LIKE)})" in str(
        raised.value
    )
    assert files_in(empty_dir) == []


def test_split_sizes_must_add_up_to_the_size() -> None:
    with pytest.raises(ConfigError, match=r"split_sizes=\(1, 1, 1\) of x.zip sum to 3, not size=4"):
        DatasetSpec(url="http://x", file_name="x.zip", sha256="0", size=4, split_sizes=(1, 1, 1))


def test_standard_splits_of_enwik8_and_text8() -> None:
    for name in ("enwik8", "text8"):
        spec = data.DATASETS[name]
        assert spec.split_sizes == (90_000_000, 5_000_000, 5_000_000)
        assert (spec.size, spec.member, spec.byte_level) == (100_000_000, name, True)


# --- the real tiny-shakespeare --------------------------------------------------------------


def test_tiny_shakespeare_vocab_splits_and_round_trip(shakespeare_data_dir: Path) -> None:
    dataset = load_dataset("shakespeare_char")

    assert dataset.name == "shakespeare_char"
    assert dataset.vocab_size == 65
    assert dataset.split_length("train") == 1_003_854
    assert dataset.split_length("val") == 111_540
    for split in dataset.splits.values():
        assert isinstance(split, np.memmap)
        assert split.dtype == np.uint8
    text = (shakespeare_data_dir / "tiny_shakespeare.txt").read_text()
    sample = text[5000:6000]
    assert dataset.decode(dataset.encode(sample)) == sample
    assert dataset.decode(dataset.splits["val"][:100]) == text[1_003_854:1_003_954]


def test_second_load_reuses_the_encoded_files(shakespeare_data_dir: Path) -> None:
    load_dataset("shakespeare_char")
    paths = sorted(shakespeare_data_dir.iterdir())
    mtimes = [path.stat().st_mtime_ns for path in paths]

    dataset = load_dataset("shakespeare_char")

    assert sorted(shakespeare_data_dir.iterdir()) == paths
    assert [path.stat().st_mtime_ns for path in paths] == mtimes
    assert dataset.vocab_size == 65


def test_meta_from_another_source_re_encodes(shakespeare_data_dir: Path) -> None:
    load_dataset("shakespeare_char")
    meta_path = shakespeare_data_dir / "shakespeare_char.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["source_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))

    load_dataset("shakespeare_char")

    assert (
        json.loads(meta_path.read_text())["source_sha256"]
        == data.DATASETS["shakespeare_char"].sha256
    )


def test_concurrent_preparation_never_sees_a_torn_file(shakespeare_data_dir: Path) -> None:
    results: list[Dataset | BaseException] = []

    def prepare() -> None:
        try:
            results.append(load_dataset("shakespeare_char"))
        except BaseException as error:  # surfaced by the assertion below
            results.append(error)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(isinstance(result, Dataset) for result in results), results
    assert {result.split_length("train") for result in results} == {1_003_854}
    assert files_in(shakespeare_data_dir) == PREPARED_FILES


def test_unknown_character_and_split_are_data_errors(shakespeare_data_dir: Path) -> None:
    dataset = load_dataset("shakespeare_char")
    with pytest.raises(DataError, match="character '@' is not in the vocabulary"):
        dataset.encode("hello @ world")
    with pytest.raises(DataError, match="split='test' is not a split of shakespeare_char"):
        dataset.split_length("test")


# --- local text files -----------------------------------------------------------------------


def test_local_text_file_is_encoded_into_the_data_dir(tmp_path: Path, empty_dir: Path) -> None:
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    text = "Ünïcödé lines ✓ with a few symbols.\n" * 30
    path = user_dir / "notes.txt"
    path.write_text(text, encoding="utf-8")

    dataset = load_dataset(str(path), empty_dir)

    assert files_in(user_dir) == ["notes.txt"]  # never writes beside the user's file
    assert all(name.startswith("local-notes-") for name in files_in(empty_dir))
    assert dataset.name == str(path)
    assert dataset.vocab == sorted(set(text))
    assert dataset.split_length("train") == len(text) * 9 // 10
    assert dataset.split_length("train") + dataset.split_length("val") == len(text)
    assert dataset.decode(np.concatenate(list(dataset.splits.values()))) == text

    path.write_text(text + "new: Ω\n", encoding="utf-8")
    assert "Ω" in load_dataset(str(path), empty_dir).vocab


def test_local_file_that_is_not_utf8_or_too_short(tmp_path: Path, empty_dir: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait ".encode("latin-1") * 10)
    with pytest.raises(DataError, match=r"is not UTF-8 text .*: convert it to UTF-8 first"):
        load_dataset(str(latin), empty_dir)
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    with pytest.raises(DataError, match="has only 9 characters, leaving 1 for the val split"):
        load_dataset(str(short), empty_dir)
    assert files_in(empty_dir) == []


# --- batches and windows --------------------------------------------------------------------


def test_get_batch_is_seeded_by_the_generator_only() -> None:
    split = (np.arange(1000) % 251).astype(np.uint8)

    torch.manual_seed(1)
    x, y = get_batch(split, 4, 16, torch.Generator().manual_seed(7))
    torch.manual_seed(2)  # the global RNG must not matter
    x_again, y_again = get_batch(split, 4, 16, torch.Generator().manual_seed(7))
    x_other, _ = get_batch(split, 4, 16, torch.Generator().manual_seed(8))

    assert x.shape == y.shape == (4, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    assert not torch.equal(x, x_other)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y, (x + 1) % 251)  # the next token of every position


def test_get_batch_uses_every_valid_offset_and_no_other() -> None:
    split = np.arange(12, dtype=np.uint8)
    x, y = get_batch(split, 2000, 4, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == set(range(12 - 4))
    assert y.max().item() == 11
    with pytest.raises(ConfigError, match="block_size=12 needs 13 tokens but the split has 12"):
        get_batch(split, 1, 12, torch.Generator())


def test_iter_windows_predicts_each_position_once() -> None:
    split = np.arange(103, dtype=np.uint16)
    batches = list(iter_windows(split, block_size=8, batch_size=5))

    assert n_windows(103, 8) == 12
    assert [len(x) for x, _ in batches] == [5, 5, 2]
    x = torch.cat([x for x, _ in batches]).flatten()
    y = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(x, torch.arange(0, 96))
    assert torch.equal(y, torch.arange(1, 97))  # targets 97..102 form a partial window: dropped
    assert n_windows(97, 8) == 12 and n_windows(96, 8) == 11 and n_windows(1, 8) == 0


def test_check_block_size_names_the_smallest_split(shakespeare_data_dir: Path) -> None:
    dataset = load_dataset("shakespeare_char")
    check_block_size(dataset, 111_539)
    with pytest.raises(ConfigError) as raised:
        check_block_size(dataset, 111_540)
    message = str(raised.value)
    assert "block_size=111540" in message and "val split" in message  # the field, the split
    assert "(111540 characters)" in message and "block_size below 111540" in message  # the fix
