"""Fault tolerance on real Ray processes: nothing a dead node, a killed driver, a diverging
trial, a corrupt file or a typo does may cost results.

Sweeps run as their own processes (``python sweeps/ablation.py ...``) exactly as a user runs
them; the test changes nodes and kills processes from its main thread while a watcher
thread reads the store over and over (it must be readable at every moment). Every Ray
process a test starts is stopped by that test, whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from sweeps.grid import expand, load_grid
from sweeps.schema import MARKER, TABLES, read_table
from testkit.tiny import tiny_model, tiny_params, tiny_train

REPO = Path(__file__).resolve().parents[1]
ABLATION = REPO / "sweeps" / "ablation.py"

# Measured on the tiny model (seeds 0-2, 40 steps): lr 10 with weight_decay 0.1 does NOT
# diverge (AdamW's decoupled decay p *= 1 - lr * wd zeroes the weights at lr 10); lr 30
# diverges by step 9 and lr 100 by step 4-5, with or without weight decay.
DIVERGING_LR = 100.0


def write_grid(path: Path, *, name: str, factors: dict, seeds: int, **baseline: Any) -> Path:
    grid = {"name": name, "datasets": ["shakespeare_char"], "seeds": seeds,
            "baseline": tiny_params(**baseline), "factors": factors}  # fmt: skip
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def expected_steps(max_iters: int, eval_interval: int) -> list[int]:
    return list(range(0, max_iters + 1, eval_interval))


def read(root: Path, table: str):
    result = read_table(root, table)
    assert result.corrupt == [], f"corrupt {table} files: {result.corrupt}"
    return result.table.to_pandas()


def curve_steps(root: Path) -> dict[str, list[int]]:
    """trial_id -> the curve steps the store holds now (running trials included)."""
    curves = read_table(root, "curves", columns=["trial_id", "step"]).table.to_pylist()
    steps: dict[str, list[int]] = {}
    for row in curves:
        steps.setdefault(row["trial_id"], []).append(row["step"])
    return {trial: sorted(values) for trial, values in steps.items()}


def finished(root: Path) -> dict[str, str]:
    rows = read_table(root, "trials", columns=["trial_id", "status"]).table.to_pylist()
    return {row["trial_id"]: row["status"] for row in rows}


class StoreWatcher(threading.Thread):
    """Reads every table of the store in a loop while sweeps write it; records any moment
    the store was not readable (a corrupt or torn file) or held a duplicate row."""

    KEYS: ClassVar[dict[str, list[str]]] = {
        "trials": ["trial_id"],
        "curves": ["trial_id", "step"],
        "attention": ["trial_id", "step", "layer", "head"],
        "samples": ["trial_id"],
    }

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.reads, self.problems = root, 0, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            if (self.root / MARKER).is_file():
                for table in TABLES:
                    result = read_table(self.root, table, columns=self.KEYS[table])
                    if result.corrupt:
                        self.problems.append(f"{table}: unreadable {result.corrupt}")
                    keys = list(zip(*(result.table.column(k).to_pylist()
                                      for k in self.KEYS[table]), strict=True))  # fmt: skip
                    if len(keys) != len(set(keys)):
                        self.problems.append(f"{table}: duplicate rows")
                self.reads += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


@contextlib.contextmanager
def watching(root: Path) -> Iterator[StoreWatcher]:
    watcher = StoreWatcher(root)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


class Driver:
    """``python sweeps/ablation.py ARGS`` as its own process, output in files.

    Remembers every process it (or Ray on its behalf) started, so ``cleanup`` can end them
    by pid, orphans of a SIGKILLed driver included (some outlive it by 40 s).
    """

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        self.started = time.monotonic()
        with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(ABLATION), *args], stdout=out, stderr=err,
                env=env, cwd=REPO, start_new_session=True,
            )  # fmt: skip
        self.family: dict[int, float] = {}

    @property
    def out(self) -> str:
        return Path(f"{self.log}.out").read_text()

    @property
    def err(self) -> str:
        return Path(f"{self.log}.err").read_text()

    def watch(self) -> None:
        """Note the driver's descendants (Ray's processes and trial workers) seen now."""
        table = _process_table()
        family, grew = {self.proc.pid}, True
        while grew:
            new = {pid for pid, (ppid, _) in table.items() if ppid in family} - family
            family |= new
            grew = bool(new)
        for pid in family - {self.proc.pid}:
            self.family[pid] = table[pid][1]

    def wait_until(self, what: str, predicate: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.watch()
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"driver exited ({self.proc.returncode}) before {what}:\n"
                            f"{self.out}\n{self.err[-3000:]}")  # fmt: skip
            time.sleep(0.1)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.out}")

    def finish(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.watch()
            time.sleep(0.2)
        if self.proc.poll() is None:
            pytest.fail(f"driver still running after {timeout:.0f}s:\n{self.out}")
        return self.proc.returncode

    def sigkill(self) -> None:
        self.watch()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        table = _process_table()
        for pid, started in self.family.items():
            if table.get(pid, (None, None))[1] == started:  # the same process, not a new pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def driver_env() -> dict[str, str]:
    """The user's environment: no RAY_AUTH_MODE (the runner finds the token itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


# ------------------------------------------------------------------ 1. worker node lost
# On a cluster whose nodes share nothing, with S3 checkpoints: tests/test_sharenothing.py.


# ------------------------------------------------------------------ 2. driver SIGKILLed


@pytest.mark.ray
def test_driver_sigkilled_then_rerun_finishes_the_rest_without_rerunning(
    tmp_path: Path, drivers: list[Driver]
):
    max_iters, interval = 200, 50
    grid = write_grid(tmp_path / "grid.yaml", name="crash", factors={"n_head": [1]}, seeds=2,
                      max_iters=max_iters, eval_interval=interval)  # fmt: skip
    results = tmp_path / "results"
    args = ["--grid", str(grid), "--results", str(results), "--num-cpus", "2"]
    steps = expected_steps(max_iters, interval)
    n_trials = len(expand(load_grid(grid)))
    assert n_trials == 4

    def one_done_one_midway() -> bool:
        if not (results / MARKER).is_file():
            return False
        done, now = finished(results), curve_steps(results)
        return bool(done) and any(t not in done and len(s) < len(steps) for t, s in now.items())

    with watching(results) as watcher:
        first = Driver(args, tmp_path / "first", env=driver_env())
        drivers.append(first)
        first.wait_until("a finished and a running trial", one_done_one_midway, timeout=240)
        first.sigkill()
        done = finished(results)
        files = {t: _identity(results / "trials" / f"{t}.parquet") for t in done}
        partial = {t for t, s in curve_steps(results).items() if t not in done}
        assert done and partial and set(done.values()) == {"ok"}

        second = Driver(args, tmp_path / "second", env=driver_env())
        drivers.append(second)
        code = second.finish(timeout=300)
    assert code == 0, second.out + second.err[-3000:]
    assert watcher.problems == [] and watcher.reads > 10
    rerun = n_trials - len(done)
    assert f"{n_trials} trials in the grid: {len(done)} already in {results}, {rerun} to run" in (
        second.out
    )
    assert f"{rerun} trials finished, 0 failed" in second.out

    trials = read(results, "trials")
    assert len(trials) == n_trials and trials.trial_id.is_unique and set(trials.status) == {"ok"}
    # No finished trial ran again: its row is the very file written before the kill.
    assert {t: _identity(results / "trials" / f"{t}.parquet") for t in done} == files
    curves = read(results, "curves")
    assert not curves.duplicated(["trial_id", "step"]).any()
    assert curves.groupby("trial_id").step.apply(list).tolist() == [steps] * n_trials
    assert len(read(results, "samples")) == n_trials
    assert len(list((results / "models").glob("*.pt"))) == n_trials


def _identity(path: Path) -> tuple[int, int, bytes]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


# ------------------------------------------------------------------ 3./4. divergence, corrupt


@pytest.fixture(scope="module")
def diverged_store(tmp_path_factory: pytest.TempPathFactory, prepared_data_dir: Path):
    """A real sweep: the baseline and a learning rate that diverges, two seeds each."""
    from sweeps import ablation

    root = tmp_path_factory.mktemp("diverged")
    grid = write_grid(root / "grid.yaml", name="lr", factors={"learning_rate": [DIVERGING_LR]},
                      seeds=2, max_iters=40, eval_interval=10)  # fmt: skip
    results = root / "results"
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CHARLM_DATA_DIR", str(prepared_data_dir))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = ablation.main(["--grid", str(grid), "--results", str(results),
                                  "--num-cpus", "2"])  # fmt: skip
    return {"grid": grid, "results": results, "code": code, "out": out.getvalue(),
            "err": err.getvalue()}  # fmt: skip


@pytest.mark.ray
def test_diverging_trial_is_recorded_failed_and_left_out_of_aggregates(diverged_store):
    from analysis import analyze

    results = diverged_store["results"]
    assert diverged_store["code"] == 1  # some trials failed; the sweep went on
    assert "2 trials finished, 2 failed" in diverged_store["out"]
    trials = read(results, "trials").set_index("trial_id")
    diverged = trials[trials.learning_rate == DIVERGING_LR]
    assert len(diverged) == 2 and set(diverged.status) == {"failed"}
    for error, last_step in zip(diverged.error, diverged.last_step, strict=True):
        assert re.fullmatch(r"non-finite loss at step (\d+)", error)
        assert int(error.rsplit(" ", 1)[1]) == last_step and 0 < last_step <= 40
    assert f"failed: {diverged.index[0]}: non-finite loss at step" in diverged_store["err"]
    baseline = trials[trials.factor == "baseline"]
    assert len(baseline) == 2 and set(baseline.status) == {"ok"}
    assert set(trials.attempts) == {1}  # a diverged trial is an outcome, never retried

    analysis = analyze(results)
    summary = analysis.summary.set_index("factor")
    assert summary.loc["learning_rate", "n_ok"] == 0
    assert summary.loc["learning_rate", "n_failed"] == 2
    assert summary.loc["baseline", "n_ok"] == 2 and summary.loc["baseline", "n_failed"] == 0
    assert summary.loc["baseline", "best_val_loss_n"] == 2
    assert summary.loc["learning_rate", "best_val_loss_n"] == 0  # left out of the means
    failed = analysis.failed.set_index("trial_id")
    assert sorted(failed.index) == sorted(diverged.index)
    assert failed.diverged.all()
    assert failed.diverged_at_step.tolist() == diverged.loc[failed.index, "last_step"].tolist()


@pytest.mark.ray
def test_corrupt_store_file_is_named_set_aside_and_its_trial_run_again(
    diverged_store, tmp_path: Path, capsys
):
    from analysis.report import main as analysis_main
    from sweeps import ablation

    results = tmp_path / "results"
    shutil.copytree(diverged_store["results"], results)
    trials = read(results, "trials")
    victim = trials[(trials.factor == "baseline") & (trials.seed == 0)].trial_id.item()
    other = trials[(trials.factor == "baseline") & (trials.seed == 1)].trial_id.item()
    bad_trial = results / "trials" / f"{victim}.parquet"
    bad_curve = results / "curves" / f"{other}.parquet"
    for path in (bad_trial, bad_curve):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    torn = {path: _identity(path) for path in (bad_trial, bad_curve)}

    # analysis: names each file, goes on with the rest.
    code = analysis_main([str(results), "--out", str(tmp_path / "report"), "--format", "png",
                          "--jobs", "1", "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"warning: skipped corrupt store file {bad_trial}" in captured.err
    assert f"warning: skipped corrupt store file {bad_curve}" in captured.err
    assert (tmp_path / "report" / "report.html").is_file()
    # --strict: fails clearly, naming the file.
    code = analysis_main([str(results), "--out", str(tmp_path / "strict"), "--strict"])
    captured = capsys.readouterr()
    assert code == 2
    (line,) = captured.err.strip().splitlines()
    assert re.fullmatch(f"error: corrupt store file ({bad_trial}|{bad_curve}): .*", line), line

    # The sweep again (baseline only: its other trial is finished): the unreadable trials
    # file is set aside, named in one line, and its trial runs again; the torn curves file
    # of the finished trial is not overwritten.
    torn_bytes = bad_trial.read_bytes()
    code = ablation.main(["--grid", str(diverged_store["grid"]), "--results", str(results),
                          "--factors", "baseline", "--num-cpus", "2"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (moved,) = (results / "trials").glob(f"{victim}.parquet.unreadable-*")
    assert re.search(
        rf"warning: store file {re.escape(str(bad_trial))} is unreadable \(.*\): "
        rf"moved to {moved.name}, its trials run again",
        captured.err,
    ), captured.err
    assert moved.read_bytes() == torn_bytes  # kept for the user, byte for byte
    assert "2 trials in the grid: 1 already in" in captured.out and "1 to run" in captured.out
    assert finished(results)[victim] == "ok"
    assert _identity(bad_curve) == torn[bad_curve]


# ------------------------------------------------------------------ 5. bad input


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(root: Path) -> dict[str, tuple[int, bytes]] | None:
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file()
            else b"") for p in sorted(root.rglob("*"))}  # fmt: skip


# (id, CLI, arguments, expected message: a regex matched against the whole line). In the
# arguments, {tmp} is the test's directory; every case gets --results {tmp}/results unless
# it names its own. These are the rows of docs/bad-input.md's table.
BAD_INPUT = [
    ("n_embed-not-divisible", "ablation", ["--set", "n_embed=10", "--factors", "dropout"],
     r"error: 1 invalid grid level in grid 'notebook': baseline: n_embed=10 is not divisible "
     r"by n_head=4: choose n_embed as a multiple of n_head \(e\.g\. 8\)\."),
    ("n_embed-level-not-divisible", "ablation", ["--grid", "{tmp}/embed.yaml"],
     r"error: 1 invalid grid level in grid 'e' \(.*embed\.yaml\): n_embed=10: n_embed=10 is "
     r"not divisible by n_head=4: choose n_embed as a multiple of n_head \(e\.g\. 8\)\."),
    ("dropout-1.5", "ablation", ["--set", "dropout=1.5", "--factors", "n_head"],
     r"error: 1 invalid grid level in grid 'notebook': baseline: dropout=1\.5 is invalid: it "
     r"must be a number in \[0, 1\), e\.g\. 0\.1\."),
    ("block_size-0", "ablation", ["--set", "block_size=0", "--factors", "n_head"],
     r"error: 1 invalid grid level in grid 'notebook': baseline: block_size=0 is invalid: it "
     r"must be a positive integer\."),
    ("block_size-too-long", "ablation", ["--set", "block_size=200000", "--factors", "n_head"],
     r"error: baseline: block_size=200000 is longer than the val split of "
     r"shakespeare_char \(111540 characters\): use a block_size below 111540\."),
    ("unknown-factor", "ablation", ["--factors", "n_heads"],
     r"error: unknown factor\(s\) n_heads \(did you mean n_head\?\) in grid 'notebook': its "
     r"factors are n_head, n_layer, n_embed, dropout, block_size\."),
    ("unknown-dataset", "ablation", ["--datasets", "shakespeare"],
     r"error: 1 invalid dataset in grid 'notebook': dataset='shakespeare' is unknown: use one "
     r"of shakespeare_char, enwik8, text8 or the path of a UTF-8 text file\."),
    ("unknown-field", "ablation", ["--set", "n_embd=64"],
     r"error: unknown config field\(s\) n_embd \(overrides; did you mean n_embed\?\): valid "
     r"fields are n_layer, n_head, n_embed, .*, num_threads, compile\."),
    ("malformed-grid-yaml", "ablation", ["--grid", "{tmp}/broken.yaml"],
     r"error: grid file .*broken\.yaml: not valid YAML: expected ',' or '\]', but got "
     r"'<stream end>' at line 2, column 1; fix the syntax there\."),
    ("missing-grid-file", "ablation", ["--grid", "{tmp}/nope.yaml"],
     r"error: grid file .*nope\.yaml: no such file; give the path of a grid YAML file or a "
     r"preset name \(notebook, nanogpt\)\."),
    ("python-tag-in-grid", "ablation", ["--grid", "{tmp}/evil.yaml"],
     r"error: grid file .*evil\.yaml: not valid YAML: could not determine a constructor for "
     r"the tag 'tag:yaml\.org,2002:python/object/apply:os\.system'.*"),
    ("malformed-cluster-yaml", "ablation", ["--cluster", "{tmp}/broken.yaml"],
     r"error: --cluster .*broken\.yaml: not valid YAML at line 2; fix the file\."),
    ("cluster-yaml-bad-schema", "ablation", ["--cluster", "{tmp}/badcluster.yaml"],
     r"error: --cluster .*badcluster\.yaml: rejected by Ray's cluster-launcher schema: "
     r"Unsupported node provider: nonsense; see https://docs\.ray\.io/.*"),
    ("missing-cluster-yaml", "ablation", ["--cluster", "{tmp}/nope.yaml"],
     r"error: --cluster .*nope\.yaml: no such file; give the path of a cluster\.yaml\."),
    ("unreachable-cluster", "ablation",
     ["--cluster", "{tmp}/unreachable.yaml", "--factors", "n_head", "--seeds", "1"],
     r"error: cannot reach the Ray head at 127\.0\.0\.1:\d+ \(Connection refused\): start the "
     r"cluster with `ray up .*unreachable\.yaml` and run this on the head \(`ray submit "
     r".*unreachable\.yaml sweeps/ablation\.py -- \.\.\.`\), or open a tunnel to it first\."),
    ("unreachable-address", "ablation",
     ["--address", "127.0.0.1:{port}", "--factors", "n_head", "--seeds", "1"],
     r"error: cannot reach the Ray head at 127\.0\.0\.1:\d+ \(Connection refused\): .*"),
    ("results-not-a-store", "ablation", ["--results", "{tmp}/photos"],
     r"error: results directory .*photos is not a result store \(no charlm-store\.json\) and "
     r"is not empty: pick a new or empty directory with --results\."),
    ("results-unwritable", "ablation", ["--results", "{tmp}/afile/results"],
     r"error: --results .*afile/results: .*afile is not writable; name a directory you can "
     r"write to\."),
    ("results-is-a-file", "ablation", ["--results", "{tmp}/afile"],
     r"error: --results .*afile: exists and is not a directory; name a directory\."),
    ("seeds-0", "ablation", ["--seeds", "0"], r"error: --seeds 0: give a number of seeds >= 1\."),
    ("unknown-option", "ablation", ["--seed", "3"],
     r"error: unrecognized arguments: --seed 3; did you mean --seeds\? "
     r"\(see python sweeps/ablation\.py --help\)"),
    ("storage-empty", "ablation", ["--storage", "", "--factors", "n_head"],
     r"error: --storage is empty: give a path or URI, "
     r"e\.g\. --storage s3://your-bucket/charlm \(S3 credentials on every node\) or --storage "
     r"/mnt/nfs/charlm \(the same NFS mount on every node\)\."),
    ("storage-not-a-uri", "ablation", ["--storage", "s3://", "--factors", "n_head"],
     r"error: --storage s3://: not a URI pyarrow can open \(scheme://bucket/path\); "
     r"e\.g\. --storage s3://your-bucket/charlm \(S3 credentials on every node\) or --storage "
     r"/mnt/nfs/charlm \(the same NFS mount on every node\)\."),
    ("storage-secret-redacted", "ablation",
     ["--storage", "s3://?secret_key=hunter2hunter2&access_key=AKIAXX", "--factors", "n_head"],
     r"error: --storage s3://\?secret_key=\*\*\*&access_key=\*\*\*: not a URI pyarrow can "
     r"open \(scheme://bucket/path\); e\.g\. .*"),
    ("storage-s3-uri-rejected", "ablation",
     ["--storage", "s3://bucket/x?secret_key=hunter2", "--factors", "n_head", "--seeds", "1"],
     r"error: checkpoint storage s3://bucket/x\?secret_key=\*\*\* cannot be written from this "
     r"machine \(Unexpected query parameter in S3 URI: 'secret_key'\): pass --storage with a "
     r"location every node can read and write, e\.g\. .*"),
    ("storage-unwritable", "ablation", ["--storage", "{tmp}/afile/checkpoints"],
     r"error: --storage .*afile/checkpoints: .*afile is not writable; name a directory you "
     r"can write to\."),
    ("cluster-yaml-workers-without-storage", "ablation",
     ["--cluster", "{repo}/cluster.yaml", "--factors", "n_head", "--seeds", "1"],
     r"error: .*cluster\.yaml declares worker nodes \(gpu_worker\) but checkpoints would go "
     r"to .*results/_ray on this machine only \(no --storage given\): "
     r"pass --storage with a location every node can read and write, e\.g\. --storage "
     r"s3://your-bucket/charlm \(S3 credentials on every node\) or --storage /mnt/nfs/charlm "
     r"\(the same NFS mount on every node\)\."),
    ("search-cluster-yaml-workers-without-storage", "search",
     ["--cluster", "{repo}/cluster.yaml"],
     r"error: .*cluster\.yaml declares worker nodes \(gpu_worker\) but checkpoints would go "
     r"to .*results/_ray on this machine only \(no --storage given\): pass --storage .*"),
    ("search-storage-not-a-uri", "search", ["--storage", "gs://"],
     r"error: --storage gs://: not a URI pyarrow can open \(scheme://bucket/path\); .*"),
    ("search-sets-a-searched-field", "search", ["--set", "n_embed=10", "--set", "dropout=0.5"],
     r"error: --set n_embed, dropout: searched by the study, so the value would be ignored; "
     r"drop it \(the searched fields are n_head, n_layer, n_embed, dropout, block_size, "
     r"learning_rate\)\."),
    ("search-batch_size-0", "search", ["--set", "batch_size=0"],
     r"error: .*batch_size=0 is invalid: it must be a positive integer\."),
    ("search-weight_decay-negative", "search", ["--set", "weight_decay=-1"],
     r"error: .*weight_decay=-1(\.0)? is invalid: .*"),
    ("search-unknown-dataset", "search", ["--datasets", "shakespeare"],
     r"error: 1 invalid dataset in grid 'notebook': dataset='shakespeare' is unknown: .*"),
    ("search-malformed-cluster-yaml", "search", ["--cluster", "{tmp}/broken.yaml"],
     r"error: --cluster .*broken\.yaml: not valid YAML at line 2; fix the file\."),
    ("search-unreachable-cluster", "search", ["--cluster", "{tmp}/unreachable.yaml"],
     r"error: cannot reach the Ray head at 127\.0\.0\.1:\d+ \(Connection refused\): .*"
     r"\(`ray submit .*unreachable\.yaml sweeps/search\.py -- \.\.\.`\), .*"),
    ("search-results-not-a-store", "search", ["--results", "{tmp}/photos"],
     r"error: results directory .*photos is not a result store .*"),
    ("search-results-unwritable", "search", ["--results", "{tmp}/afile/results"],
     r"error: --results .*afile is not writable; name a directory you can write to\."),
    ("search-n-trials-0", "search", ["--n-trials", "0"],
     r"error: --n-trials 0: give a number of trials >= 1\."),
    # Issue 10: what used to hang, loop or fail only inside trials.
    ("cpus-per-trial-above-any-node", "ablation", ["--cpus-per-trial", "4096"],
     r"error: --cpus-per-trial 4096: no node has that many CPUs \(this machine has \d+ CPUs\): "
     r"give --cpus-per-trial \d+ or less\."),
    ("gpu-without-gpus", "ablation", ["--gpus-per-trial", "1", "--num-gpus", "0"],
     r"error: --gpus-per-trial 1: no node has a GPU \(this machine has \d+ CPUs and no GPU\): "
     r"use --gpus-per-trial 0, or a machine or cluster with GPUs\."),
    ("num-cpus-0", "ablation", ["--num-cpus", "0"],
     r"error: no CPUs for trials \(this machine has 0 CPUs\): give --num-cpus 1 or more, or "
     r"add nodes with CPUs\."),
    ("num-cpus-negative", "ablation", ["--num-cpus", "-2"],
     r"error: --num-cpus -2: give a number in \[0, 1e\+06\] \(default: all\)\."),
    # Issue 25: the experiment state's upload period, a domain of the shared run options.
    ("state-every-0", "ablation", ["--state-every", "0"],
     r"error: --state-every 0: give a number of seconds >= 1 \(default 300\)\."),
    ("search-state-every-nan", "search", ["--state-every", "nan"],
     r"error: --state-every nan: give a number of seconds >= 1 \(default 300\)\."),
    ("max-failures-negative", "ablation", ["--max-failures", "-1"],
     r"error: --max-failures -1: give a number of retries >= 0 \(e\.g\. 3\); a negative number "
     r"would retry a failing trial forever\."),
    ("unsafe-name", "ablation", ["--name", "../../x"],
     r"error: --name '\.\./\.\./x': a sweep name becomes a directory name, so it must be "
     r"letters, digits, '_', '\.', '=', '\+' or '-' \(not starting with '\.'\): use e\.g\. 'x'\."),
    ("unsafe-yaml-name", "ablation", ["--grid", "{tmp}/badname.yaml"],
     r"error: grid file .*badname\.yaml: name 'a/\.\./\.\./b': a sweep name becomes a directory "
     r"name, .*: use e\.g\. 'a_b'\."),
    ("vocab_size-mismatch", "ablation", ["--set", "vocab_size=10", "--factors", "n_head"],
     r"error: baseline: vocab_size=10 does not match shakespeare_char's vocabulary of "
     r"65: leave vocab_size unset to take it from the dataset\."),
    ("batch-cannot-fit-in-memory", "ablation",
     ["--set", "batch_size=20000", "--set", "block_size=1024", "--factors", "n_head"],
     r"error: n_head=8: one trial needs about [\d,]+ MiB \(estimate\) but this machine "
     r"\(MemAvailable\) has [\d,]+ MiB: use a smaller batch_size, probe_batch_size, "
     r"block_size or model\."),
    ("search-unsafe-name", "search", ["--name", "../x"],
     r"error: --name '\.\./x': a sweep name becomes a directory name, .*"),
    ("search-grace-period-0", "search", ["--grace-period", "0"],
     r"error: --grace-period 0: give a number of evaluations >= 1 \(default 2\)\."),
    ("search-reduction-factor-1", "search", ["--reduction-factor", "1"],
     r"error: --reduction-factor 1: ASHA needs a factor > 1 \(default 2 or 3, see "
     r"docs/commands\.md\)\."),
    ("search-bad-optuna-storage", "search", ["--optuna-storage", "redis://localhost/0"],
     r"error: --optuna-storage redis://\.\.\.: not a database URL Optuna can open; use one of "
     r"sqlite://, .* or a journal file path ending in \.log\."),
    ("search-optuna-storage-missing-dir", "search",
     ["--optuna-storage", "sqlite:///{tmp}/nodir/study.db"],
     r"error: --optuna-storage sqlite:///.*/nodir/study\.db: the directory .*nodir does not "
     r"exist; create it or name a database file in an existing directory\."),
    ("search-cpus-per-trial-above-any-node", "search", ["--cpus-per-trial", "4096"],
     r"error: --cpus-per-trial 4096: no node has that many CPUs .*"),
    # Issue 22: every value in its declared domain (charlm.config.Domain), at every door.
    ("int-above-int64", "ablation", ["--set", "eval_iters=99999999999999999999"],
     r"error: 1 invalid grid level in grid 'notebook': baseline: eval_iters=99999999999999999999 "
     r"is too large: it must be at most 9,223,372,036,854,775,807 \(the store's 64-bit integer "
     r"columns\)\."),
    ("huge-value-shortened", "ablation", ["--set", "max_iters=1e308"],
     r"error: .*baseline: max_iters=\d{24}\.\.\. \(309 chars\) is too large: .*"),
    ("warmup-longer-than-the-run", "ablation", ["--set", "warmup_iters=5000", "--max-iters", "20"],
     r"error: 1 invalid grid level in grid 'notebook': baseline: warmup_iters=5000 is not below "
     r"max_iters=3000: the whole run would be warm-up; give fewer warm-up steps \(e\.g\. 300\)\."),
    ("probe-interval-never-met", "ablation", ["--set", "probe_interval=700", "--max-iters", "1000"],
     r"error: .*probe_interval=700: probes run at evaluations \(every 500 steps\) whose step is "
     r"a multiple of it, and none falls within max_iters=3000; give a multiple of eval_interval "
     r"up to 3000\."),
    ("gpus-per-trial-nan", "ablation", ["--gpus-per-trial", "nan"],
     r"error: --gpus-per-trial nan: give a number >= 0, e\.g\. 0\.25 or 1\."),
    ("name-too-long", "ablation", ["--name", "a" * 300],
     r"error: --name 'a+\.\.\. \(302 chars\): is too long \(300 characters\): a sweep "
     r"name becomes a directory name, at most 100 characters; give a shorter one\."),
    ("seeds-beyond-any-sweep", "ablation", ["--seeds", "100000000"],
     r"error: --seeds 100000000 is too large: it must be at most 100,000 \(a sweep plans at "
     r"most that many trials\)\."),
    ("max-seeds-beyond-any-sweep", "ablation", ["--seeds", "auto", "--max-seeds", "1000000"],
     r"error: --max-seeds 1000000 is too large: it must be at most 100,000 .*"),
    ("trials-beyond-any-sweep", "ablation", ["--seeds", "20000"],
     r"error: 220,000 trials \(20,000 seeds x 11 configs x 1 datasets\) in grid 'notebook' are "
     r"more than a sweep plans \(at most 100,000\): give at most 9,090 seeds\."),
    ("duplicate-factor-key", "ablation", ["--grid", "{tmp}/dup.yaml"],
     r"error: grid file .*dup\.yaml: not valid YAML: duplicate key 'n_head' \(lines 4 and 5\); "
     r"keep one of them\."),
    ("duplicate-baseline-key", "ablation", ["--grid", "{tmp}/dup2.yaml"],
     r"error: grid file .*dup2\.yaml: not valid YAML: duplicate key 'baseline' \(lines 2 and "
     r"3\); keep one of them\."),
    ("dataset-is-a-directory", "ablation", ["--datasets", "{tmp}/special"],
     r"error: 1 invalid dataset in grid 'notebook': dataset='.*special': is a directory, not a "
     r"regular file; give the path of a UTF-8 text file\."),
    ("dataset-is-a-fifo", "ablation", ["--datasets", "{tmp}/special/fifo"],
     r"error: .*dataset='.*fifo': is a FIFO \(named pipe\), not a regular file; .*"),
    ("dataset-is-a-device", "ablation", ["--datasets", "/dev/null"],
     r"error: .*dataset='/dev/null': is a character device, not a regular file; .*"),
    ("grid-is-a-fifo", "ablation", ["--grid", "{tmp}/special/fifo"],
     r"error: grid file .*fifo: is a FIFO \(named pipe\), not a regular file; give the path "
     r"of a grid YAML file\."),
    ("cluster-is-a-directory", "ablation", ["--cluster", "{tmp}/special"],
     r"error: --cluster .*special: is a directory, not a regular file; give the path of a "
     r"cluster\.yaml\."),
    ("cluster-yaml-duplicate-key", "ablation", ["--cluster", "{tmp}/dupcluster.yaml"],
     r"error: --cluster .*dupcluster\.yaml: duplicate key 'provider' \(lines 2 and 3\); keep "
     r"one of them\."),
    ("probe-batch-cannot-fit-in-memory", "ablation",
     ["--set", "probe_batch_size=100000", "--factors", "n_head"],
     r"error: n_head=8: one trial needs about [\d,]+ MiB \(estimate\) but this machine .*"),
    ("search-seed-beyond-numpy", "search", ["--first-seed", "4294967296"],
     r"error: --first-seed 4294967296 is too large: it must be at most 4,294,967,295 "
     r"\(numpy's seed range\)\."),
    ("search-last-seed-beyond-numpy", "search", ["--first-seed", "4294967295", "--seeds", "2"],
     r"error: --first-seed 4294967295 with --seeds 2: the last seed 4,294,967,296 is above "
     r"4,294,967,295 \(numpy's seed range\); give --first-seed 4,294,967,294 or less\."),
    ("search-n-trials-beyond-any-sweep", "search", ["--n-trials", "100000000"],
     r"error: --n-trials 100000000 is too large: it must be at most 100,000 .*"),
    ("search-warmup-longer-than-the-run", "search", ["--set", "warmup_iters=5000"],
     r"error: .*warmup_iters=5000 is not below max_iters=3000: the whole run would be warm-up.*"),
    ("search-huge-int", "search", ["--set", "sample_tokens=" + "9" * 300],
     r"error: .*sample_tokens=9{24}\.\.\. \(300 chars\) is too large: .*"),
    # Issue 22: what used to run, or end in a traceback, over a store or study.
    ("newer-store-file-on-rerun", "ablation",
     ["--results", "{stores}/newer", "--factors", "n_head", "--seeds", "1", "--max-iters", "2"],
     r"error: .*/newer/trials/x\.parquet: result store file schema version \d+ is newer than "
     r"this charlm-sweeps reads \(up to \d+\): upgrade charlm-sweeps \(pip install -U "
     r"charlm-sweeps\)\."),
    ("search-study-with-other-settings", "search", ["--results", "{stores}/study",
     "--max-iters", "2000"],
     r"error: study 'search' in sqlite:///.*/study/optuna\.db ran with other settings: "
     r"max_iters 24 \(study\) vs 2000 \(this run\); .*: run it with the study's settings "
     r"\(same --preset, .*\), or start a new study with --name\."),
]  # fmt: skip


@pytest.fixture(scope="module")
def prepared_stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stores the issue-22 cases name: one holding a trials file of a newer version, one
    whose search study ran with --max-iters 24."""
    import pyarrow.parquet as pq

    from sweeps import search
    from sweeps.schema import SCHEMA_VERSION, conform
    from sweeps.store import ResultStore
    from sweeps.study import open_study

    root = tmp_path_factory.mktemp("stores")
    newer = ResultStore(root / "newer").root
    table = conform("trials", [{"trial_id": "x", "status": "ok"}])
    pq.write_table(table.replace_schema_metadata({"schema_version": str(SCHEMA_VERSION + 1)}),
                   newer / "trials" / "x.parquet")  # fmt: skip
    study = ResultStore(root / "study").root
    base = search._base_trial(search._parse(["--max-iters", "24"]))
    asha = search.asha_settings(base.train.max_iters, base.train.eval_interval)
    open_study(f"sqlite:///{study / 'optuna.db'}", "search", search.study_settings(base, 1, asha))
    return root


@pytest.fixture
def bad_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_stores: Path
) -> dict[str, str]:
    """The files the bad-input cases name, and a closed port as the 'cluster head'."""
    (tmp_path / "embed.yaml").write_text(
        "name: e\nbaseline: {n_layer: 1, n_head: 4, n_embed: 16}\nfactors:\n  n_embed: [10]\n"
    )
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    (tmp_path / "badname.yaml").write_text("name: a/../../b\nfactors: {}\n")
    (tmp_path / "evil.yaml").write_text(
        f"name: !!python/object/apply:os.system ['touch {tmp_path}/pwned']\n"
    )
    (tmp_path / "badcluster.yaml").write_text("cluster_name: x\nprovider: {type: nonsense}\n")
    (tmp_path / "unreachable.yaml").write_text(
        "cluster_name: local\nprovider: {type: local, head_ip: 127.0.0.1, worker_ips: []}\n"
        "auth: {ssh_user: me}\n"
    )
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not a store")
    (tmp_path / "afile").write_text("a file, not a directory\n")
    (tmp_path / "dup.yaml").write_text("name: d\nbaseline: {n_layer: 1}\nfactors:\n  n_head: [1]\n"
                                       "  n_head: [4]\n")  # fmt: skip
    (tmp_path / "dup2.yaml").write_text("name: d\nbaseline: {n_layer: 1}\nbaseline: {n_layer: 2}\n"
                                        "factors: {}\n")  # fmt: skip
    (tmp_path / "dupcluster.yaml").write_text("cluster_name: x\nprovider: {type: local}\n"
                                              "provider: {type: aws}\n")  # fmt: skip
    (tmp_path / "special").mkdir()
    os.mkfifo(tmp_path / "special" / "fifo")  # never opened: a reader would block forever
    port = _free_port()
    monkeypatch.setattr("sweeps.runner.GCS_PORT", port)  # a head that is surely not there
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return {"tmp": str(tmp_path), "port": str(port), "repo": str(REPO),
            "stores": str(prepared_stores)}  # fmt: skip


@pytest.mark.timeout(120)  # a case that slipped through would start a whole sweep
@pytest.mark.parametrize(("cli", "argv", "message"), [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    cli: str, argv: list[str], message: str, bad_inputs: dict[str, str], tmp_path: Path, capsys
):
    from sweeps import ablation, search

    argv = [arg.format(**bad_inputs) for arg in argv]
    if "--results" not in argv:
        argv += ["--results", str(tmp_path / "results")]
    results = Path(argv[argv.index("--results") + 1])
    before = {path: _tree(path) for path in (tmp_path, results)}
    with pytest.raises(SystemExit) as exit_info:
        (ablation if cli == "ablation" else search).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(message, lines[0]), lines[0]
    assert {path: _tree(path) for path in (tmp_path, results)} == before  # nothing written
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "/dev/null"], "dataset='/dev/null': is a character device, not a regular"),
        (["--dataset", "{tmp}"], "is a directory, not a regular file; give the path of a UTF-8"),
        (["--seed", str(2**32)], "seed=4294967296 is too large: it must be at most 4,294,967,295"),
        (["--eval-iters", str(2**63)], "eval_iters=9223372036854775808 is too large: it must be"),
        (["--learning-rate", "nan"], "learning_rate=nan is invalid: it must be a finite number"),
        (["--max-iters", "20", "--warmup-iters", "5000"], "--warmup-iters 5000 is not below "
         "--max-iters 20: the whole run would be warm-up"),
        (["--eval-interval", "5000"], "--eval-interval 5000 is above --max-iters 3000: no "
         "evaluation would fall within the run; give at most 3000."),
        (["--max-iters", "10", "--lr-decay-iters", "2", "--warmup-iters", "5"],
         "--lr-decay-iters 2 is below --warmup-iters 5: the decay would end before the warm-up"),
    ],
)  # fmt: skip
def test_charlm_train_checks_the_same_domains(argv: list[str], message: str, tmp_path, capsys):
    from charlm import train_args

    argv = [arg.format(tmp=tmp_path) for arg in argv]
    with pytest.raises(SystemExit) as info:
        train_args.parse([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_analysis_jobs_are_bounded_by_the_cpu_count(tmp_path: Path, capsys):
    from analysis import cli

    with pytest.raises(SystemExit) as info:
        cli.main([str(tmp_path), "--jobs", "100000000"])
    err = capsys.readouterr().err
    cpus = len(os.sched_getaffinity(0))
    assert info.value.code == 2 and err.count("\n") == 1
    assert f"--jobs 100000000: this machine has {cpus} CPUs" in err
    assert f"give --jobs {cpus} or less" in err


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-31, 1e-30, 1e-20])
def test_a_tiny_temperature_samples_the_most_likely_token(temperature: float):
    """Below GREEDY_TEMPERATURE sampling is argmax; just above it the shifted logits send
    every other token to probability 0, never to NaN."""
    import torch

    from charlm.model import GPT

    torch.manual_seed(0)
    model = GPT(tiny_model(vocab_size=65))
    prompt = torch.randint(65, (1, 4))  # (1, T)
    greedy = model.generate(prompt, 8, temperature=1e-300)
    sampled = model.generate(prompt, 8, temperature=temperature,
                             generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(sampled, greedy)
    logits, _ = model(greedy[:, :-1])
    assert torch.equal(greedy[0, 4:], logits[0, 3:].argmax(-1))


def test_the_memory_estimate_counts_the_probe_batch_and_its_attention_maps():
    from sweeps.options import trial_memory_bytes

    model, train = tiny_model(n_layer=4, n_head=8, n_embed=64, block_size=256), tiny_train()
    base = trial_memory_bytes(model, train, 65)
    probes = dataclasses.replace(train, probe_batch_size=1000)
    maps = 4 * model.n_layer * 1000 * model.n_head * model.block_size**2  # fp32 (B, nh, T, T)
    assert trial_memory_bytes(model, probes, 65) - base >= maps


def test_bad_input_from_a_real_process_prints_only_the_error_line(tmp_path: Path):
    """What the user sees: no traceback, no warnings, one line and status 2."""
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    process = subprocess.run(
        [sys.executable, str(ABLATION), "--grid", str(tmp_path / "broken.yaml"), "--results",
         str(tmp_path / "results")], capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert process.returncode == 2
    assert process.stderr.count("\n") == 1 and process.stderr.startswith("error: grid file ")
    assert process.stdout == "" and not (tmp_path / "results").exists()


# ------------------------------------------------------------------ 6. security basics


def _tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")  # fmt: skip
    return [REPO / name for name in listed if name and (REPO / name).is_file()]


def test_yaml_is_only_read_with_safe_load():
    for path in _tracked_files():
        if path.suffix == ".py" and path.name != Path(__file__).name:
            text = path.read_text()
            assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(|Loader=", text), path


def test_checkpoints_load_with_weights_only(tmp_path: Path):
    import torch

    from charlm.train import load_model

    for path in _tracked_files():
        if path.suffix == ".py" and path.name != Path(__file__).name:
            for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
                assert "weights_only=True" in call, f"{path}: {call}"
    # A checkpoint that would run code when unpickled is refused, and the code never runs.
    marker = tmp_path / "pwned"
    torch.save({"model": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"[Ww]eights only load failed"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_cluster_yaml_keeps_ray_ports_private_and_says_how_to_reach_them():
    text = (REPO / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in text  # no port opened to every address
    assert "ray dashboard cluster.yaml" in text and "ray attach cluster.yaml -p 10001" in text
    for port in ("6379", "8265", "10001"):
        assert port in text
    readme = (REPO / "docs" / "clusters.md").read_text()
    assert "ray dashboard" in readme and re.search(r"SSH|ssh", readme), (
        "docs/clusters.md must say how to reach the dashboard/client ports (SSH tunnel, "
        "`ray dashboard`)"
    )


def test_no_credentials_in_the_repository():
    patterns = [
        r"AKIA[0-9A-Z]{16}",  # AWS access key id
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        r"(?i)aws_secret_access_key\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}",  # a literal secret
        r"ghp_[0-9A-Za-z]{36}",  # GitHub token
    ]
    token_file = Path.home() / ".ray" / "auth_token"
    token = token_file.read_text().strip() if token_file.is_file() else None
    for path in _tracked_files():
        text = path.read_text(errors="ignore")
        for pattern in patterns:
            assert not re.search(pattern, text), f"{path} matches {pattern}"
        assert not token or token not in text, f"{path} holds this machine's Ray auth token"


# ------------------------------------------------------------------ soak (slow)


@pytest.mark.slow
@pytest.mark.ray
def test_soak_200_trials_with_a_worker_node_killed_every_30s_loses_nothing(tmp_path: Path):
    """The soak of benchmarks/soak.py as a test (share-nothing cluster, S3 checkpoints; an
    hour or more on a busy 2-core machine): `pytest -m slow`."""
    from testkit.sharenothing import namespaces_unavailable
    from testkit.soak import SoakSettings, run_soak

    if reason := namespaces_unavailable():
        pytest.skip(reason)
    result = run_soak(tmp_path / "soak", SoakSettings(trials=200, kill_every_s=30.0))
    print("\n".join(result.lines()))
    assert result.rows_lost == 0 and result.unreadable == [] and result.exit_code == 0
    assert result.ok == 200 and result.kills >= 1 and result.retries >= 1
    assert result.s3_objects_written > 0
