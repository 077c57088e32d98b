"""Character-level datasets: fetch, verify, encode once to memory-mapped arrays, batch.

A dataset is one of ``DATASETS`` (downloaded into the data directory on first use and
checked against its published size and sha256) or the path of a local UTF-8 text file.
Its text is encoded once into ``<name>.tokens.npy`` (uint8 for up to 256 symbols, else
uint16 or int32) with ``<name>.vocab.json`` (the symbol of each id) and
``<name>.meta.json`` (the source sha256 and split boundaries) beside it; later loads just
memory-map the array. Every file is written to a temporary name and moved into place, so
concurrent trials preparing the same dataset never see a torn or half-downloaded file.

Batches are int64 tensors ``(B, T)`` whose targets ``y`` are the inputs ``x`` shifted by
one position; random offsets come only from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import numpy as np
import platformdirs

from charlm.config import ConfigError
from charlm.fsio import atomic_write

if TYPE_CHECKING:  # torch is imported where batches are made: the CLIs check input without it
    import torch

DATA_DIR_ENV = "CHARLM_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 60.0  # per blocking socket operation, not for the whole download
_CHUNK = 1 << 22  # elements per step when counting symbols, to bound temporary memory

Result = TypeVar("Result")


class DataError(ConfigError):
    """A dataset that cannot be fetched, verified or read; the message says what to do."""


class DatasetChangedError(DataError):
    """A dataset whose content is not the one a sweep recorded for the trial."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named dataset comes from, how to verify it and how to split it.

    ``sha256`` and ``size`` describe the text that gets encoded: the downloaded file itself,
    or its zip ``member``. ``byte_level`` datasets use the distinct bytes as vocabulary
    (rendered as characters via latin-1); the others the distinct UTF-8 characters.
    ``split_sizes`` gives the train/val/test lengths in tokens (summing to ``size``);
    None means the first 90% train and the rest val.
    """

    url: str
    file_name: str
    sha256: str
    size: int
    member: str | None = None
    byte_level: bool = False
    split_sizes: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.split_sizes is not None and sum(self.split_sizes) != self.size:
            raise ConfigError(
                f"split_sizes={self.split_sizes} of {self.file_name} sum to "
                f"{sum(self.split_sizes)}, not size={self.size}: make them add up."
            )


def _mahoney(name: str, sha256: str) -> DatasetSpec:
    """A 100M-byte benchmark of mattmahoney.net (a zip holding ``name``), split 90M/5M/5M."""
    return DatasetSpec(
        url=f"http://mattmahoney.net/dc/{name}.zip",
        file_name=f"{name}.zip",
        sha256=sha256,
        size=100_000_000,
        member=name,
        byte_level=True,
        split_sizes=(90_000_000, 5_000_000, 5_000_000),
    )


DATASETS: dict[str, DatasetSpec] = {
    "shakespeare_char": DatasetSpec(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        file_name="tiny_shakespeare.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
    ),
    "enwik8": _mahoney(
        "enwik8", "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"
    ),
    "text8": _mahoney("text8", "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """An encoded dataset: its vocabulary and one 1-D integer array per split.

    ``vocab[i]`` is the character of token id ``i`` (for byte-level datasets the byte
    rendered via latin-1, so ``decode(...).encode("latin-1")`` gives back the raw bytes).
    ``splits`` maps "train", "val" (and "test" for enwik8/text8) to read-only memory-mapped
    arrays of ids in ``[0, vocab_size)``.
    """

    name: str
    vocab: list[str]
    splits: dict[str, np.ndarray]
    source_sha256: str = ""  # of the downloaded archive or the text file: its identity

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {symbol: index for index, symbol in enumerate(self.vocab)}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a character outside the vocabulary raises DataError."""
        try:
            return [self._ids[char] for char in text]
        except KeyError as error:
            raise DataError(
                f"character {error.args[0]!r} is not in the vocabulary of {self.name} "
                f"({self.vocab_size} characters): use only characters from its training text."
            ) from None

    @cached_property
    def _symbols(self) -> np.ndarray:
        return np.array(self.vocab, dtype=object)

    def decode(self, ids: Iterable[int] | np.ndarray | torch.Tensor) -> str:
        """The text of a sequence of token ids (vectorised: fast on whole splits too)."""
        if not isinstance(ids, np.ndarray) and hasattr(ids, "cpu"):  # a torch.Tensor
            ids = ids.cpu().numpy()
        return "".join(self._symbols[np.asarray(ids, dtype=np.int64)].tolist())

    def split_length(self, name: str) -> int:
        """Number of tokens in split ``name``."""
        if name not in self.splits:
            raise DataError(
                f"split={name!r} is not a split of {self.name}: "
                f"use one of {', '.join(self.splits)}."
            )
        return len(self.splits[name])


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else $CHARLM_DATA_DIR, else the user cache."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or platformdirs.user_cache_dir("charlm")
    return Path(chosen).expanduser()


def load_dataset(dataset: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a named dataset or a local UTF-8 text file, preparing it on first use.

    Named datasets are downloaded into the data directory (see ``resolve_data_dir``) unless
    a file with the right checksum is already there. Local files are never written to:
    their encoded arrays go into the data directory under a name derived from the file's
    path and content, so editing the file gives a fresh encoding.
    """
    directory = resolve_data_dir(data_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the data directory {directory} ({error}): "
            f"set {DATA_DIR_ENV} to a writable directory."
        ) from error
    if dataset in DATASETS:
        spec = DATASETS[dataset]
        stem = directory / dataset
        return _open_encoded(dataset, stem, spec.sha256) or _encode(
            dataset, stem, _fetch(spec, directory), spec.sha256, spec.byte_level, spec.split_sizes
        )
    path = Path(dataset).expanduser()
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DataError(
            f"dataset={dataset!r} cannot be read ({error}): give the path of a readable "
            f"UTF-8 text file or one of {', '.join(DATASETS)}."
        ) from error
    digest = hashlib.sha256(content).hexdigest()
    path_digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    stem = directory / f"local-{path.stem}-{path_digest[:12]}-{digest[:12]}"
    return _open_encoded(dataset, stem, digest) or _encode(
        dataset, stem, content, digest, byte_level=False, split_sizes=None
    )


def check_block_size(dataset: Dataset, block_size: int) -> None:
    """Raise ConfigError unless a window of ``block_size + 1`` tokens fits in train and val."""
    split, length = min(
        ((name, dataset.split_length(name)) for name in ("train", "val")), key=lambda item: item[1]
    )
    if block_size + 1 > length:
        raise ConfigError(
            f"block_size={block_size} is longer than the {split} split of {dataset.name} "
            f"({length} characters): use a block_size below {length}."
        )


def get_batch(
    data: np.ndarray,
    batch_size: int,
    block_size: int,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of windows from one split: int64 ``x`` and ``y`` of shape (B, T).

    Window starts are uniform over ``[0, len(data) - block_size)`` and drawn from the
    (CPU) ``generator`` alone, so equal seeds give equal batches. ``y[:, t] == x[:, t + 1]``
    within the window, i.e. y is the next token of every position of x.
    """
    _check_window(data, block_size)
    import torch

    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    return windows(data, starts.numpy(), block_size, device)


class BatchSampler:
    """Random training batches of one split, drawn where the model trains.

    Window starts come from the CPU ``generator`` exactly as ``get_batch`` draws them, so a
    seed gives the same batches on every device. On CUDA the split is copied to the device
    once when it fits in a quarter of the free device memory (``resident``), and each batch
    is gathered there: only the batch's B start offsets cross the bus per step. Otherwise
    (and on the CPU) batches are gathered from the memory-mapped split (pinned,
    non-blocking copies on CUDA). ``resident=True`` forces the device-side gather, which
    also runs on the CPU (tests compare it with ``get_batch``).
    """

    def __init__(
        self,
        data: np.ndarray,
        batch_size: int,
        block_size: int,
        device: str | torch.device = "cpu",
        resident: bool | None = None,
    ) -> None:
        _check_window(data, block_size)
        import torch

        self.data, self.batch_size, self.block_size = data, batch_size, block_size
        self.device = torch.device(device)
        if resident is None:  # on CUDA: when the split fits in a quarter of the free memory
            free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else 0
            resident = len(data) * 4 <= free / 4
        self.resident = resident
        if resident:
            # int32 holds every vocabulary we encode; torch gathers uint16 poorly.
            host = np.asarray(data, dtype=np.uint8 if data.dtype == np.uint8 else np.int32)
            self.tokens = torch.from_numpy(host).to(self.device)
            self.offsets = torch.arange(block_size + 1, device=self.device)

    def __call__(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch (x, y), int64 of shape (B, T), from ``generator``."""
        if not self.resident:
            return get_batch(self.data, self.batch_size, self.block_size, generator, self.device)
        import torch

        starts = torch.randint(
            len(self.data) - self.block_size, (self.batch_size,), generator=generator
        )
        if self.device.type == "cuda":
            starts = starts.pin_memory()
        starts = starts.to(self.device, non_blocking=True)
        rows = self.tokens[starts[:, None] + self.offsets].long()  # (B, T + 1)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def _check_window(data: np.ndarray, block_size: int) -> None:
    if block_size + 1 > len(data):
        raise ConfigError(
            f"block_size={block_size} needs {block_size + 1} tokens but the split has "
            f"{len(data)}: use a smaller block_size."
        )


def n_windows(split_len: int, block_size: int) -> int:
    """Number of non-overlapping windows ``iter_windows`` yields for a split of this length."""
    return max(0, (split_len - 1) // block_size)


def iter_windows(
    data: np.ndarray, block_size: int, batch_size: int, device: str | torch.device = "cpu"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches (x, y) of consecutive non-overlapping windows, for exact evaluation.

    Window ``i`` has inputs ``data[i*T : (i+1)*T]`` and targets one position later, so every
    target position ``1 .. n_windows * T`` is predicted exactly once. The first token (no
    context) and the last ``(len(data) - 1) % T`` targets (a partial window) are not scored.
    Every batch has ``batch_size`` windows except possibly the last.
    """
    count = n_windows(len(data), block_size)
    for first in range(0, count, batch_size):
        starts = np.arange(first, min(first + batch_size, count)) * block_size
        yield windows(data, starts, block_size, device)


def windows(
    data: np.ndarray, starts: np.ndarray, block_size: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets ``(B, T)`` of the windows starting at ``starts``."""
    import torch

    rows = data[starts[:, None] + np.arange(block_size + 1)]  # (B, T + 1)
    tokens = torch.from_numpy(rows.astype(np.int64))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    if torch.device(device).type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _open_encoded(name: str, stem: Path, source_sha256: str) -> Dataset | None:
    """The dataset encoded at ``stem`` if its meta says it came from ``source_sha256``."""
    try:
        meta = json.loads(Path(f"{stem}.meta.json").read_text())
        if meta["source_sha256"] != source_sha256:
            return None
        vocab = json.loads(Path(f"{stem}.vocab.json").read_text())
        tokens = np.load(f"{stem}.tokens.npy", mmap_mode="r")
        splits = {split: tokens[start:end] for split, (start, end) in meta["splits"].items()}
    except (OSError, ValueError, KeyError, TypeError):  # absent or unreadable: encode again
        return None
    return Dataset(name=name, vocab=vocab, splits=splits, source_sha256=source_sha256)


def _encode(
    name: str,
    stem: Path,
    content: bytes,
    source_sha256: str,
    byte_level: bool,
    split_sizes: tuple[int, int, int] | None,
) -> Dataset:
    """Encode ``content``, write tokens, vocab and (last, marking completion) meta."""
    if byte_level:
        codes = np.frombuffer(content, dtype=np.uint8)
    else:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"dataset={name!r} is not UTF-8 text ({error}): convert it to UTF-8 first."
            ) from error
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    tokens, symbols = _tokenize(codes)
    ranges = _split_ranges(len(tokens), split_sizes)
    for split, (start, end) in ranges.items():
        if end - start < 2:
            raise DataError(
                f"dataset={name!r} has only {len(tokens)} characters, leaving {end - start} "
                f"for the {split} split: use a longer text."
            )
    vocab = [chr(symbol) for symbol in symbols]
    _atomic_write(Path(f"{stem}.tokens.npy"), lambda file: np.save(file, tokens))
    _atomic_write(Path(f"{stem}.vocab.json"), lambda file: file.write(json.dumps(vocab).encode()))
    meta = {"source_sha256": source_sha256, "splits": ranges}
    _atomic_write(Path(f"{stem}.meta.json"), lambda file: file.write(json.dumps(meta).encode()))
    memmap = np.load(f"{stem}.tokens.npy", mmap_mode="r")
    splits = {split: memmap[start:end] for split, (start, end) in ranges.items()}
    return Dataset(name=name, vocab=vocab, splits=splits, source_sha256=source_sha256)


def _tokenize(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids of ``codes`` (bytes or code points) in the sorted set of distinct codes, and that set."""
    bins = int(codes.max()) + 1 if len(codes) else 1
    counts = sum(
        (np.bincount(codes[i : i + _CHUNK], minlength=bins) for i in range(0, len(codes), _CHUNK)),
        start=np.zeros(bins, dtype=np.int64),
    )
    symbols = np.flatnonzero(counts)
    dtype = (
        np.uint8 if len(symbols) <= 1 << 8 else np.uint16 if len(symbols) <= 1 << 16 else np.int32
    )
    lookup = np.zeros(bins, dtype=dtype)
    lookup[symbols] = np.arange(len(symbols))
    return lookup[codes], symbols


def _split_ranges(
    length: int, split_sizes: tuple[int, int, int] | None
) -> dict[str, tuple[int, int]]:
    """[start, end) of each split: the given train/val/test sizes, or 90% train / 10% val."""
    if split_sizes is None:
        boundary = length * 9 // 10
        return {"train": (0, boundary), "val": (boundary, length)}
    train, val, test = split_sizes
    return {
        "train": (0, train),
        "val": (train, train + val),
        "test": (train + val, train + val + test),
    }


def _fetch(spec: DatasetSpec, directory: Path) -> bytes:
    """The verified text of ``spec``: from the file in ``directory``, else downloaded."""
    raw = directory / spec.file_name
    if not raw.exists():
        return _download(spec, raw)
    with raw.open("rb") as file:
        content, problem = _read_content(spec, file)
    if problem is None:
        return content
    try:
        return _download(spec, raw)
    except DataError as error:
        raise DataError(
            f"{raw} is corrupt ({problem}) and downloading it again failed: {error}"
        ) from error


def _download(spec: DatasetSpec, raw: Path) -> bytes:
    """Download ``spec.url`` to ``raw`` and return its verified text; nothing kept on failure."""
    fix = (
        f"place {spec.file_name} ("
        + (f"holding {spec.member} with " if spec.member else "")
        + f"sha256 {spec.sha256}) in {raw.parent}, or set {DATA_DIR_ENV} to a directory holding it"
    )

    def fetch_and_verify(file: BinaryIO) -> bytes:
        try:
            with urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                shutil.copyfileobj(response, file, 1 << 20)
                if response.length:  # http.client returns a short body silently
                    raise ConnectionError(f"closed with {response.length} bytes still to come")
        except (OSError, http.client.HTTPException) as error:  # HTTP status, refused, timeout
            raise DataError(
                f"download of {spec.url} failed ({_reason(error)}): check the network or {fix}."
            ) from error
        file.seek(0)
        content, problem = _read_content(spec, file)
        if problem is not None:
            raise DataError(
                f"the file downloaded from {spec.url} is corrupt: {problem}; retry later, or {fix}."
            )
        return content

    return _atomic_write(raw, fetch_and_verify)


def _reason(error: Exception) -> object:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    return error.reason if isinstance(error, urllib.error.URLError) else error


def _read_content(spec: DatasetSpec, file: BinaryIO) -> tuple[bytes, str | None]:
    """The text held by a raw file (itself or its zip member) and what is wrong with it, if any."""
    subject = "it" if spec.member is None else f"its member {spec.member}"
    if spec.member is None:
        content = file.read()
    else:
        try:
            with zipfile.ZipFile(file) as archive:
                content = archive.read(spec.member)
        except (zipfile.BadZipFile, KeyError, zlib.error, EOFError) as error:
            return b"", f"it is not a zip file holding {spec.member} ({error})"
    if len(content) != spec.size:
        return content, f"{subject} has {len(content)} bytes, expected {spec.size}"
    digest = hashlib.sha256(content).hexdigest()
    if digest != spec.sha256:
        return content, f"{subject} has sha256 {digest}, expected {spec.sha256}"
    return content, None


def _atomic_write(path: Path, write: Callable[[BinaryIO], Result]) -> Result:
    """Run ``write`` on a durable temporary file beside ``path``, then move it into place.

    If ``write`` raises, the temporary file is removed and ``path`` is left untouched.
    """
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise DataError(
            f"cannot write {path.name} into {path.parent} (permission denied): "
            f"set {DATA_DIR_ENV} to a writable directory."
        )
    with atomic_write(path) as file:
        return write(file)
