"""Checkpoint storage for Ray Tune: what ``--storage`` may name, secrets kept out of sight,
and the probe that proves every node of a cluster can read and write it.

Ray Tune checks from inside each trial that the checkpoint storage is visible there, so on a
cluster whose nodes share nothing a driver-local path fails every trial (after its retries).
The runner probes the storage before any trial runs: the driver writes a probe file, a
zero-CPU task on every node reads it back and writes its own answer, and the driver reads
the answers. Ray-free (pyarrow only): the runner ships :func:`probe_from_node` to the nodes.

Credentials never travel in a URI we print or store: :func:`redact` hides the secret parts
(``secret_key=``, ``session_token=``, ``user:password@``...) in any text.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.cli import check_writable_dir
from charlm.config import ConfigError

EXAMPLE = (
    "e.g. --storage s3://your-bucket/charlm (S3 credentials on every node) or "
    "--storage /mnt/nfs/charlm (the same NFS mount on every node)"
)
# Query parameters of pyarrow's filesystem URIs (and common others) that carry a secret.
_SECRET_PARAMS = (
    "access_key", "secret_key", "session_token", "password", "token", "sas_token",
    "account_key", "credential", "credentials", "sig", "signature",
)  # fmt: skip
_QUERY_SECRET = re.compile(rf"(?i)([?&;](?:{'|'.join(_SECRET_PARAMS)})=)[^&#\s'\"]*")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]*:)[^@/\s'\"]+@")


class StorageError(ConfigError):
    """Checkpoint storage that cannot serve every node: bad input (exit 2)."""


def redact(text: str) -> str:
    """``text`` with the secret parts of any URI in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", _QUERY_SECRET.sub(r"\1***", text))


@dataclass(frozen=True)
class Storage:
    """Where Ray Tune keeps trial checkpoints: an absolute local path or a URI."""

    location: str
    default: bool = False

    @property
    def is_uri(self) -> bool:
        return "://" in self.location

    @property
    def shown(self) -> str:
        """The location as it may be printed: secrets redacted."""
        return redact(self.location)


def resolve_storage(value: str | None, results: Path) -> Storage:
    """The checkpoint storage a run uses: ``value`` (``--storage``) or ``RESULTS/_ray``.

    Only the form is checked here (no network, nothing written); reachability is the
    probe's job once the cluster is known.
    """
    if value is None:
        return Storage(str((Path(results) / "_ray").resolve()), default=True)
    if not value.strip():
        raise StorageError(f"--storage is empty: give a path or URI, {EXAMPLE}.")
    if "://" in value:
        scheme, _, rest = value.partition("://")
        where = rest.split("?")[0]
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) or not where.strip("/"):
            raise StorageError(
                f"--storage {redact(value)}: not a URI pyarrow can open (scheme://bucket/path); "
                f"{EXAMPLE}."
            )
        if scheme.lower() != "file":
            return Storage(value)
        value = where
    path = Path(value).expanduser()
    check_writable_dir(path, "--storage")
    return Storage(str(path.resolve()))


def declared_worker_types(config: dict[str, Any]) -> list[str]:
    """Node types of a cluster-launcher config that the autoscaler may start as workers."""
    head = config.get("head_node_type")
    cluster_max = config.get("max_workers", 2)
    return sorted(
        name
        for name, node in (config.get("available_node_types") or {}).items()
        if name != head and node.get("max_workers", cluster_max) > 0
    )


def check_storage(
    value: str | None,
    results: Path,
    *,
    cluster_config: dict[str, Any] | None = None,
    cluster: str | Path | None = None,
    embedded: bool = True,
) -> Storage:
    """Every check of ``--storage`` that needs no running cluster; raises StorageError.

    Its form; a cluster.yaml that declares worker nodes needs storage other than the
    default (nodes the autoscaler adds later cannot be probed now); on the embedded local
    Ray an explicit storage is written and read back here. Nothing is left behind.
    """
    storage = resolve_storage(value, results)
    workers = declared_worker_types(cluster_config or {})
    if workers and storage.default:
        raise StorageError(
            f"{cluster} declares worker nodes ({', '.join(workers)}) but checkpoints would go "
            f"to {storage.shown} on this machine only (no --storage given): pass --storage "
            f"with a location every node can read and write, {EXAMPLE}."
        )
    if embedded:  # one machine: writing it here is the probe
        check_writable_here(storage)
    return storage


def _filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) of a storage location."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(location)


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text[:300])


def write_probe(storage: Storage) -> tuple[str, str, list[str]]:
    """Write a probe file into ``storage``: (its name, its token, directories created).

    Raises StorageError naming the storage when even this machine cannot write it.
    """
    name, token = f".charlm-probe-{secrets.token_hex(8)}", secrets.token_hex(16)
    created: list[str] = []
    try:
        filesystem, base = _filesystem(storage.location)
        if not storage.is_uri:
            missing, parent = [], Path(base)
            while not parent.exists():
                missing.append(str(parent))
                parent = parent.parent
            created = missing[::-1]
        filesystem.create_dir(base, recursive=True)
        with filesystem.open_output_stream(_join(base, name)) as stream:
            stream.write(token.encode())
    except Exception as exc:  # pyarrow raises OSError, ArrowInvalid, ValueError...
        remove_probe(storage, name, [], created)
        raise StorageError(
            f"checkpoint storage {storage.shown} cannot be written from this machine "
            f"({_one_line(exc)}): pass --storage with a location every node can read and "
            f"write, {EXAMPLE}."
        ) from None
    return name, token, created


def check_writable_here(storage: Storage) -> None:
    """An explicit storage must at least take a file from this machine: write and remove a
    probe (StorageError otherwise). Run before anything else is written (bad input)."""
    if not storage.default:
        name, _, created = write_probe(storage)
        remove_probe(storage, name, [], created)


def probe_from_node(location: str, name: str, token: str, node: str) -> str | None:
    """Run on a node: read the probe, write this node's answer. None, or what went wrong."""
    try:
        filesystem, base = _filesystem(location)
        with filesystem.open_input_stream(_join(base, name)) as stream:
            seen = stream.read().decode(errors="replace")
        if seen != token:
            return "it holds a different probe file there (another directory of the same name)"
        with filesystem.open_output_stream(_join(base, f"{name}.{node}")) as stream:
            stream.write(token.encode())
    except Exception as exc:
        return _one_line(exc)
    return None


def read_answers(storage: Storage, name: str, token: str, nodes: list[str]) -> list[str]:
    """The nodes whose answer this machine cannot read back (written somewhere else)."""
    filesystem, base = _filesystem(storage.location)
    missing = []
    for node in nodes:
        try:
            with filesystem.open_input_stream(_join(base, f"{name}.{node}")) as stream:
                if stream.read().decode(errors="replace") != token:
                    missing.append(node)
        except Exception:
            missing.append(node)
    return missing


def remove_probe(storage: Storage, name: str, nodes: list[str], created: list[str]) -> None:
    """Delete the probe, the nodes' answers and the directories the probe created."""
    try:
        filesystem, base = _filesystem(storage.location)
    except Exception:
        return
    for path in [_join(base, name), *(_join(base, f"{name}.{node}") for node in nodes)]:
        try:
            filesystem.delete_file(path)
        except Exception:
            continue
    for directory in reversed(created):
        try:
            Path(directory).rmdir()
        except OSError:
            break
