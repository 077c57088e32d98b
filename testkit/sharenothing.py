"""A local Ray cluster whose nodes share nothing but the network, and a local S3 server.

``ShareNothingCluster`` is a real ``ray start --head`` on this machine (the driver's node)
plus worker nodes started with ``ray start --address ... --block``, each inside its own
mount and PID namespace (``unshare --mount --pid --fork --mount-proc``, as root) with a
private tmpfs over every path the driver and the head write: the test's temporary
directories (result stores, data caches), the head's Ray temp dir and /dev/shm. A worker
node therefore cannot read the driver's files, as on a real cluster, and killing its
namespace's first process (SIGKILL) kills the whole node at once, as a lost machine does.

``MotoS3`` is moto's S3 server (``python -m moto.server``) on 127.0.0.1 in its own process,
with a bucket and random credentials that reach Ray's processes only through their
environment.

Token authentication (Ray 2.59+) is on, as ``ray start --head`` does on a real cluster:
every node gets ``RAY_AUTH_MODE=token`` and the cluster's token in ``RAY_AUTH_TOKEN``; the
sweep driver gets only the token and must turn token mode on by itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
OBJECT_STORE = 256 * 1024**2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make a private mount+PID namespace with a tmpfs, or None."""
    if os.geteuid() != 0:
        return "share-nothing cluster needs root (unshare --mount --pid and mount -t tmpfs)"
    if shutil.which("unshare") is None:
        return "share-nothing cluster needs util-linux's unshare, which is not installed"
    with tempfile.TemporaryDirectory() as probe:
        process = subprocess.run(
            ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "sh", "-c",
             f"mount -t tmpfs tmpfs {probe} && touch {probe}/x"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        leaked = Path(probe, "x").exists()
    if process.returncode != 0:
        return f"cannot make a mount+PID namespace here: {process.stderr.strip()}"
    if leaked:
        return "a tmpfs mounted in a private mount namespace showed outside it"
    return None


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    return sorted(tree)


def _kill_tree(root: int) -> None:
    for pid in _process_tree(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class WorkerNode:
    """One worker node: ``unshare`` whose child is the namespace's first process."""

    process: subprocess.Popen
    log: Path
    index: int

    @property
    def init_pid(self) -> int | None:
        """Host pid of the namespace's first process (``ray start --block``)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError, ValueError):
            return int(children.read_text().split()[0])
        return None

    def kill(self) -> None:
        """SIGKILL the node: its namespace's first process dies, the kernel kills the rest."""
        pid = self.init_pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait(timeout=30)


@dataclass
class ShareNothingCluster:
    """A Ray head on this machine and worker nodes that cannot see its files."""

    root: Path
    hidden: list[Path]
    node_env: dict[str, str] = field(default_factory=dict)
    worker_cpus: int = 2
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    workers: list[WorkerNode] = field(default_factory=list)
    head: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        # Short: Ray's unix sockets live under it (108-byte limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rsn", dir="/tmp"))
        self.hidden = [*self.hidden, self.temp_dir, Path("/dev/shm")]
        # Each node's own data cache starts from the shared copy (read before any test
        # points CHARLM_DATA_DIR at a private one).
        self.shakespeare = _shared_data() / "tiny_shakespeare.txt"
        for path in self.hidden:
            for needed in (REPO, Path(sys.executable), self.shakespeare):
                if needed.resolve().is_relative_to(path.resolve()):
                    raise RuntimeError(f"{needed} lies under {path}, which workers cannot see")
        self._added = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        return {**env, **self.node_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}  # fmt: skip

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The sweep driver's environment: the token, but no RAY_AUTH_MODE (the runner
        turns token mode on itself, as for a user who copied the head's token)."""
        env = {k: v for k, v in self._env().items() if k != "RAY_AUTH_MODE"}
        env.pop("RAY_ADDRESS", None)
        return {**env, "PYTHONWARNINGS": "ignore", **extra}

    def _agent_ports(self) -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}"]  # fmt: skip

    def start(self, workers: int = 1) -> ShareNothingCluster:
        log = self.root / "head.log"
        with open(log, "w") as out:
            self.head = subprocess.Popen(
                [RAY, "start", "--head", f"--port={self.port}", "--num-cpus=0",
                 "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                 f"--temp-dir={self.temp_dir}", f"--object-store-memory={OBJECT_STORE}",
                 *self._agent_ports(), "--block"],
                stdout=out, stderr=subprocess.STDOUT, env=self._env(), cwd=REPO,
                start_new_session=True,
            )  # fmt: skip
        if not _started(self.head, log, timeout=180):
            raise RuntimeError(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self, attempts: int = 3) -> WorkerNode:
        """Start one more worker node in its own mount and PID namespace; return once it
        has joined. On a loaded machine a raylet can miss Ray's fixed 30 s registration
        window, and its node then exits: it is started afresh, up to ``attempts`` times."""
        for _ in range(attempts):
            worker = self._start_worker()
            if _started(worker.process, worker.log, timeout=180):
                return worker
            self.kill_worker(worker)
        raise RuntimeError(f"no worker node started in {attempts} attempts:\n"
                           f"{worker.log.read_text()[-3000:]}")  # fmt: skip

    def _start_worker(self) -> WorkerNode:
        self._added += 1
        index = self._added
        data = self.temp_dir / f"node{index}-data"
        mounts = "\n".join(
            f"if [ -d {path} ]; then mount -t tmpfs -o mode=1777 tmpfs {path}; fi"
            for path in self.hidden
        )
        low = 20000 + 500 * (index % 20)
        script = textwrap.dedent(f"""\
            set -e
            {textwrap.indent(mounts, " " * 12).strip()}
            mkdir -p {data}
            cp {self.shakespeare} {data}/
            export CHARLM_DATA_DIR={data}
            exec {RAY} start --address={self.address} --num-cpus={self.worker_cpus} \\
                --node-ip-address=127.0.0.1 --temp-dir={self.temp_dir} \\
                --object-store-memory={OBJECT_STORE} \\
                --min-worker-port={low} --max-worker-port={low + 499} \\
                {" ".join(self._agent_ports())} --block
            """)
        log = self.root / f"worker{index}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
                 "sh", "-c", script],
                stdout=out, stderr=subprocess.STDOUT, env=self._env(), cwd=REPO,
                start_new_session=True,
            )  # fmt: skip
        worker = WorkerNode(process, log, index)
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: WorkerNode) -> None:
        worker.kill()
        self.workers.remove(worker)

    def run_python(self, code: str, timeout: float = 120) -> str:
        """Run ``code`` as a Ray driver of this cluster (``ADDRESS`` is defined); its stdout."""
        process = subprocess.run(
            [sys.executable, "-c", f"ADDRESS = {self.address!r}\n{textwrap.dedent(code)}"],
            capture_output=True, text=True, timeout=timeout, cwd=REPO,
            env={**self._env(), "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        if process.returncode != 0:
            raise RuntimeError(f"driver code failed:\n{process.stdout}\n{process.stderr[-3000:]}")
        return process.stdout

    def shutdown(self) -> None:
        for worker in list(self.workers):
            with contextlib.suppress(Exception):
                self.kill_worker(worker)
        if self.head is not None:
            _kill_tree(self.head.pid)
            self.head.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _started(process: subprocess.Popen, log: Path, timeout: float) -> bool:
    """Until ``ray start --block`` says its node is up (True) or exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.3)
    return False


def _shared_data() -> Path:
    from_env = os.environ.get("CHARLM_DATA_DIR")
    if from_env and (Path(from_env) / "tiny_shakespeare.txt").is_file():
        return Path(from_env)
    return REPO.parent / "shared" / "data"


_REQUEST = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (/\S*) HTTP')
_TRIAL_DIR = re.compile(r"/[A-Za-z_]+_[0-9a-f]{5}_\d{5}_[^/]*")  # Tune's trial directory
_VARYING = re.compile(
    r"[0-9a-f]{16,}|\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d|\d{8}-\d{6}-\d+|checkpoint_\d+"
)


def by_operation(requests: Counter[tuple[str, str]]) -> Counter[str]:
    """``MotoS3.requests`` summed by operation (GET, PUT, HEAD, POST, DELETE)."""
    counts: Counter[str] = Counter()
    for (operation, _), count in requests.items():
        counts[operation] += count
    return counts


def rates_line(requests: Counter[tuple[str, str]], seconds: float) -> str:
    """'N in S s, R/min: PUT n (r/min), HEAD ...': ``requests`` over ``seconds``."""
    operations = by_operation(requests)
    total, minutes = sum(operations.values()), max(seconds, 1e-9) / 60
    parts = ", ".join(f"{op} {n} ({n / minutes:.0f}/min)" for op, n in operations.most_common())
    return f"{total} in {seconds:.0f} s, {total / minutes:.0f}/min: {parts}"


@dataclass
class MotoS3:
    """moto's S3 server on 127.0.0.1 in its own process, with one bucket."""

    log: Path
    bucket: str = "charlm"
    port: int = field(default_factory=free_port)
    access_key: str = field(default_factory=lambda: "AKIA" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Credentials and region, as a node's environment (or instance role) provides."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip

    def uri(self, prefix: str) -> str:
        """``--storage`` for this server: no secret in it."""
        return f"s3://{self.bucket}/{prefix}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def start(self, timeout: float = 60) -> MotoS3:
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log.read_text()
                    raise RuntimeError(f"moto server did not start: {log}") from None
                time.sleep(0.2)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)  # fmt: skip

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def requests(self) -> Counter[tuple[str, str]]:
        """Requests the server answered so far, by (operation, path): a trial's directory is
        shown as '<trial>'; ids, dates and checkpoint numbers as '*'."""
        counts: Counter[tuple[str, str]] = Counter()
        for line in self.log.read_text(errors="replace").splitlines():
            request = _REQUEST.search(line)
            if request:
                path = _TRIAL_DIR.sub("/<trial>", request.group(2).split("?")[0])
                path = _VARYING.sub("*", path)
                counts[(request.group(1), path)] += 1
        return counts

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
