"""Faults and bad input, round two (issue 10): nothing hangs, nothing lies, nothing runs twice.

Resource requests no node can hold, resumes that cannot be resumed, signals to a real sweep
process, two drivers on one store, trial identity of text files, end-of-run failures moved to
the start, unreadable model files in the report, and a full disk (a real tmpfs in a private
mount namespace).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from charlm.config import ConfigError, ModelConfig, TrainConfig
from sweeps.grid import PRESETS, expand, trial_id
from sweeps.options import (
    check_memory,
    check_trial_resources,
    node_types,
    trial_memory_bytes,
)
from sweeps.schema import MARKER, read_table
from testkit.tiny import tiny_model, tiny_params, tiny_store

REPO = Path(__file__).resolve().parents[1]
ABLATION = REPO / "sweeps" / "ablation.py"


def _grid(path: Path, name: str, seeds: int, **baseline) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"name": name, "datasets": ["shakespeare_char"],
                                    "seeds": seeds, "baseline": tiny_params(**baseline),
                                    "factors": {}}))  # fmt: skip
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _finished(root: Path) -> dict[str, str]:
    rows = read_table(root, "trials", columns=["trial_id", "status"]).table.to_pylist()
    return {row["trial_id"]: row["status"] for row in rows}


# ------------------------------------------------------------------ resources (pure)


def test_a_request_no_node_can_hold_is_refused_naming_what_was_found():
    nodes = [{"CPU": 2.0, "GPU": 0.0}, {"CPU": 4.0, "GPU": 0.0}]
    assert check_trial_resources(4, 0, nodes, "the cluster") is None
    with pytest.raises(ConfigError, match=r"--cpus-per-trial 8: no node has that many CPUs "
                       r"\(the cluster: 2 nodes, the largest with 4 CPUs\): give "
                       r"--cpus-per-trial 4 or less\."):  # fmt: skip
        check_trial_resources(8, 0, nodes, "the cluster")
    with pytest.raises(ConfigError, match=r"--gpus-per-trial 1: no node has a GPU"):
        check_trial_resources(1, 1, nodes, "the cluster")
    with pytest.raises(ConfigError, match=r"no CPUs for trials \(this machine has 0 CPUs\)"):
        check_trial_resources(1, 0, [{"CPU": 0.0, "GPU": 0.0}], "this machine")


def test_a_request_only_an_autoscaler_can_satisfy_says_what_it_waits_for():
    config = {
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}},
            "gpu_worker": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 2},
            "off": {"resources": {"CPU": 64, "GPU": 8}, "max_workers": 0},
        },
    }
    types = node_types(config)
    assert set(types) == {"head", "gpu_worker"}  # max_workers 0: never started
    nodes = [{"CPU": 2.0}]
    assert check_trial_resources(4, 1, nodes, "the cluster", types) == (
        "waiting for the autoscaler to add a gpu_worker node (4 CPU and 1 GPU per trial)"
    )
    with pytest.raises(ConfigError, match="--cpus-per-trial 16: no node has that many CPUs"):
        check_trial_resources(16, 0, nodes, "the cluster", types)
    # A node type whose resources come from the cloud's instance type: it may fit.
    unknown = node_types({"available_node_types": {"w": {"node_config": {}}}})
    assert "waiting for the autoscaler" in check_trial_resources(16, 0, nodes, "c", unknown)


def test_memory_estimate_refuses_a_batch_that_cannot_fit():
    model, train = ModelConfig(n_layer=4, n_embed=128, block_size=256), TrainConfig(batch_size=64)
    need = trial_memory_bytes(model, train, 65)
    # Measured peak RSS of this shape (3 steps, CPU, torch 2.13): 1,585 MiB.
    assert 1400 * 2**20 < need < 1800 * 2**20
    rows = [("baseline=baseline", model, train, 65)]
    check_memory(rows, 1, 2 * need, "this machine")
    with pytest.raises(ConfigError) as raised:
        check_memory(rows, 1, 1000 * 2**20, "this machine")
    message = str(raised.value)
    assert message.startswith("baseline=baseline: ") and "this machine has 1,000 MiB" in message
    assert re.search(r"needs about [\d,]+ MiB", message) and "smaller batch_size" in message
    with pytest.raises(ConfigError, match=r"4 trials at a time need .* pass --max-concurrent 2\."):
        check_memory(rows, 4, 2.5 * need, "this machine")


# ------------------------------------------------------------------ trial identity


def test_text_dataset_trial_ids_follow_the_content_not_the_path(tmp_path: Path, monkeypatch):
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be\n" * 200)
    model, train = ModelConfig(), TrainConfig(dataset=str(text))
    first = trial_id(model, train)
    monkeypatch.chdir(tmp_path)
    other_spelling = TrainConfig(dataset=f"./sub/../{text.name}".replace("sub/../", ""))
    (tmp_path / "sub").mkdir()
    assert trial_id(model, TrainConfig(dataset="sub/../corpus.txt")) == first
    assert trial_id(model, other_spelling) == first
    (tmp_path / "link.txt").symlink_to(text)
    assert trial_id(model, TrainConfig(dataset="link.txt")) == first
    text.write_text("to be or not to be?\n" * 200)  # edited in place
    assert trial_id(model, train) != first


def test_builtin_dataset_trial_ids_are_unchanged():
    """Pinned: stores written before content hashing keep their trial ids."""
    (trial,) = expand(PRESETS["notebook"], factors=[], seeds=1)
    assert trial.trial_id == "3f6ac0a2cdf523d1"


# ------------------------------------------------------------------ train: resume, prompt


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m charlm.train`` in this process (its torch import is paid once)."""
    import contextlib
    import io

    from charlm.train import main

    args = ["--n-layer", "1", "--n-head", "2", "--n-embed", "16", "--block-size", "16",
            "--batch-size", "4", "--eval-iters", "2", "--eval-interval", "10",
            "--sample-tokens", "10", "--threads", "1", "--quiet", "--out", str(out)]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*args, *extra])
    return subprocess.CompletedProcess([], code, stdout.getvalue(), stderr.getvalue())


def test_resume_only_what_can_be_resumed(tmp_path: Path):
    out = tmp_path / "run"
    assert _train(out, "--max-iters", "20").returncode == 0
    checkpoint = out / "ckpt.pt"
    before = checkpoint.read_bytes()

    done = _train(
        out, "--max-iters", "5", "--eval-interval", "5", "--lr-decay-iters", "20", "--resume"
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: --resume: ") and done.stderr.count("\n") == 1
    assert str(checkpoint) in done.stderr and "max_iters 5 is below its step 20" in done.stderr
    assert "--max-iters 20 or more" in done.stderr and "new --out" in done.stderr  # both fixes
    changed = _train(out, "--max-iters", "30", "--lr-decay-iters", "20", "--resume", "--lr",
                     "0.001", "--seed", "3", "--dropout", "0.2", "--batch-size", "8",
                     "--n-embed", "32", "--weight-decay", "0")  # fmt: skip
    assert changed.returncode == 2
    (line,) = changed.stderr.splitlines()
    assert line.startswith("error: --resume: ") and str(checkpoint) in line
    changed_fields = [
        ("n_embed", "16", "32"),
        ("dropout", "0.1", "0.2"),
        ("seed", "0", "3"),
        ("batch_size", "4", "8"),
        ("learning_rate", "0.0003", "0.001"),
        ("weight_decay", "0.1", "0"),
    ]
    for field, old, new in changed_fields:  # each field with both values, and nothing else
        assert f"{field} {old} (this run: {new})" in line
    assert line.count("(this run: ") == len(changed_fields)
    fix = " ".join(f"--{field.replace('_', '-')} {old}" for field, old, _ in changed_fields)
    assert f"pass {fix} to resume" in line and "new --out" in line
    schedule = _train(out, "--max-iters", "30", "--resume")  # lr_decay_iters follows max_iters
    assert schedule.returncode == 2
    assert "lr_decay_iters 20 (this run: 30)" in schedule.stderr
    assert "--lr-decay-iters 20" in schedule.stderr
    assert checkpoint.read_bytes() == before  # nothing written by a refused resume

    resumed = _train(out, "--max-iters", "30", "--lr-decay-iters", "20", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    import json

    curve = json.loads((out / "result.json").read_text())["curve"]
    assert [p["step"] for p in curve] == [0, 10, 20, 30]


def test_resume_refuses_an_edited_dataset_file(tmp_path: Path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    out = tmp_path / "run"
    assert _train(out, "--dataset", str(text), "--max-iters", "10").returncode == 0
    text.write_text("the quick brown fox jumps over the lazy cat\n" * 100)
    refused = _train(out, "--dataset", str(text), "--max-iters", "20", "--lr-decay-iters",
                     "10", "--resume")  # fmt: skip
    assert refused.returncode == 2
    assert "the dataset file's content changed since the checkpoint" in refused.stderr


@pytest.mark.ray
def test_a_dataset_edited_after_the_sweep_started_fails_its_trials_by_name(tmp_path: Path):
    """Trials carry the content their sweep recorded: the file edited after the param space
    was built fails its trials at their start (no retry, not averaged), naming the file;
    the other dataset's trials train and record its hash."""
    import hashlib

    import ray

    from sweeps import ablation
    from sweeps.grid import GridSpec
    from sweeps.runner import Resources, RunSettings, connect, run_trials
    from sweeps.store import ResultStore

    kept, edited = tmp_path / "kept.txt", tmp_path / "edited.txt"
    kept.write_text("to be or not to be, that is the question\n" * 200)
    edited.write_text("all the world's a stage, and all the men and women\n" * 200)
    spec = GridSpec("edit", tiny_params(max_iters=10, eval_interval=5), {},
                    datasets=(str(kept), str(edited)), seeds=1)  # fmt: skip
    trials = expand(spec)
    space = ablation.param_space(trials)  # what the driver hands Tune at the sweep's start
    recorded = hashlib.sha256(edited.read_bytes()).hexdigest()
    edited.write_text("all the world's a stage, and all the men and women merely players\n" * 200)
    store = ResultStore(tmp_path / "results")
    connection = connect(num_cpus=2, results=store.root)
    try:
        outcome = run_trials(
            connection,
            store,
            space,
            RunSettings(
                name="edit", total=2, resources=Resources(), max_failures=3, progress=False
            ),
        )
    finally:
        ray.shutdown()
    rows = read_table(store.root, "trials").table.to_pandas().set_index("dataset")
    ok, failed = rows.loc[str(kept)], rows.loc[str(edited)]
    assert ok.status == "ok" and ok.dataset_sha256 == hashlib.sha256(kept.read_bytes()).hexdigest()
    assert failed.status == "failed" and failed.attempts == 1  # not retried
    assert failed.dataset_sha256 == recorded
    assert failed.error.startswith(f"DatasetChangedError: dataset {edited} changed since the "
                                   f"sweep started (its content has sha256 ")  # fmt: skip
    assert "restore the file, or run the sweep again" in failed.error
    assert list(outcome.failed) == [failed.trial_id]


def test_text_without_newline_samples_from_its_first_character(tmp_path: Path):
    from charlm.train import train

    text = tmp_path / "one_line.txt"
    text.write_text("abcabcabd" * 300)  # no newline anywhere
    model = tiny_model(dropout=0.1)
    result = train(model, TrainConfig(dataset=str(text), max_iters=4, eval_interval=4,
                                      eval_iters=1, batch_size=4, sample_tokens=12))  # fmt: skip
    assert result.status == "ok"
    assert result.sample["prompt"] == "a" and result.sample["n_chars"] == 12


# ------------------------------------------------------------------ report: model files


def test_unreadable_model_file_is_named_its_heatmaps_skipped_strict_fails(tmp_path, capsys):
    import torch

    from analysis.report import main

    root = tiny_store(tmp_path / "results", datasets=("shakespeare_char",))
    trials = read_table(root, "trials", columns=["trial_id", "status"]).table.to_pylist()
    (root / "models").mkdir(exist_ok=True)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for row in trials:  # every candidate for the best trial: a pickle that would run code
        torch.save({"model": Evil()}, root / "models" / f"{row['trial_id']}.pt")
    code = main([str(root), "--out", str(tmp_path / "report"), "--format", "png", "--jobs",
                 "1", "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert re.search(r"warning: Heatmap for shakespeare_char skipped: unreadable model file "
                     rf"{re.escape(str(root))}/models/[^ ]+\.pt "
                     r"\(UnpicklingError: Weights only load failed\)\.$",
                     captured.err, re.M)  # fmt: skip
    html = (tmp_path / "report" / "report.html").read_text()
    assert "unreadable model file" in html and not marker.exists()

    code = main([str(root), "--out", str(tmp_path / "strict"), "--strict", "--quiet"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("error: unreadable model file ")
    assert not (tmp_path / "strict").exists()


# ------------------------------------------------------------------ two drivers, one store


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sweeps.store import locked
    with locked(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(600)
""")


@pytest.mark.parametrize("cli", ["ablation", "search"])
def test_second_driver_is_refused_while_the_first_holds_the_store(cli: str, tmp_path: Path, capsys):
    from sweeps import ablation, search

    results = tmp_path / "results"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(results)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True, env={**os.environ,
                              "PYTHONPATH": str(REPO)})  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        grid = _grid(tmp_path / "grid.yaml", "lock", seeds=1, max_iters=4, eval_interval=4)
        argv = ["--results", str(results), "--num-cpus", "1"]
        with pytest.raises(SystemExit) as exit_info:
            if cli == "ablation":
                ablation.main([*argv, "--grid", str(grid)])
            else:
                search.main([*argv, "--n-trials", "1", "--max-iters", "4"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: results directory {results} ") and err.count("\n") == 1
        assert f"pid {holder.pid}" in err and f"host {socket.gethostname()}" in err  # the holder
        assert " UTC)" in err and "wait for it to finish" in err and "another --results" in err
        assert sorted(p.name for p in results.iterdir()) == [".lock"]  # nothing else written
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    from sweeps.store import locked

    with locked(results):  # free again: no stale lock after the holder died
        assert f"pid {os.getpid()} " in (results / ".lock").read_text()


# ------------------------------------------------------------------ signals (real Ray)


@pytest.mark.ray
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_sweep_says_so_keeps_what_finished_and_exits_128_plus_signal(
    tmp_path: Path, signum: int, code: int
):
    grid = _grid(tmp_path / "grid.yaml", "stop", seeds=3, max_iters=200, eval_interval=20)
    results = tmp_path / "results"
    args = [sys.executable, str(ABLATION), "--grid", str(grid), "--results", str(results),
            "--num-cpus", "1"]  # fmt: skip
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        driver = subprocess.Popen(args, stdout=out, stderr=err, cwd=REPO, env=_env(),
                                  start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # one trial finished, the next one running
            done = _finished(results) if (results / MARKER).is_file() else {}
            if done:
                break
            assert driver.poll() is None, (tmp_path / "err").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("no trial finished within 240 s")
        os.kill(driver.pid, signum)
        assert driver.wait(timeout=120) == code
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    stdout = (tmp_path / "out").read_text()
    name = signal.Signals(signum).name
    done = _finished(results)
    print(stdout)
    assert set(done.values()) == {"ok"} and 1 <= len(done) < 3  # no row for the stopped one
    assert re.search(
        rf"interrupted by {name}: \d+ trials finished in this run; {len(done)} of "
        rf"3 are in {re.escape(str(results))} \(0 failed\), {3 - len(done)} not "
        r"finished\. To continue, run the same command again",
        stdout,
    ), stdout
    assert "trials finished, 0 failed in" not in stdout  # no normal summary
    assert "Traceback" not in (tmp_path / "err").read_text()
    assert list((results / "_ray").iterdir()) == []  # its checkpoints removed


# ------------------------------------------------------------------ full disk


def _can_mount_tmpfs() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) for a private tmpfs mount"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c",
                            "mount --make-rprivate / && mount -t tmpfs -o size=1m t /mnt"],
                           capture_output=True, text=True)  # fmt: skip
    return None if probe.returncode == 0 else f"cannot mount a tmpfs here: {probe.stderr.strip()}"


FULL_DISK = textwrap.dedent("""
    set -e
    mount --make-rprivate /
    mkdir -p "$RESULTS"
    mount -t tmpfs -o size=4m tmpfs "$RESULTS"
    cp -a "$STORE"/. "$RESULTS"/
    # Fill the disk before the sweep writes: deterministic, no race with the trials.
    dd if=/dev/zero of="$RESULTS/filler" bs=64k 2>/dev/null || true
    set +e
    "$PYTHON" "$ABLATION" --grid "$GRID" --results "$RESULTS" --num-cpus 1 --max-failures 0 \
        > "$LOG.full.out" 2> "$LOG.full.err"
    echo "full=$?"
    cp -a "$RESULTS"/. "$AFTER"/ 2>/dev/null
    rm "$RESULTS/filler"
    "$PYTHON" "$ABLATION" --grid "$GRID" --results "$RESULTS" --num-cpus 1 \
        > "$LOG.free.out" 2> "$LOG.free.err"
    echo "free=$?"
    rm -rf "$STORE" && cp -a "$RESULTS" "$STORE"
""")


@pytest.mark.ray
def test_full_disk_is_one_line_exit_1_store_intact_and_the_rerun_works(tmp_path: Path):
    reason = _can_mount_tmpfs()
    if reason:
        pytest.skip(reason)
    from sweeps import ablation

    grid = _grid(tmp_path / "grid.yaml", "disk", seeds=2, max_iters=10, eval_interval=5)
    store = tmp_path / "store"
    # One trial already in the store, as a sweep wrote it.
    assert ablation.main(["--grid", str(grid), "--results", str(store), "--num-cpus", "1",
                          "--seeds", "1"]) == 0  # fmt: skip
    first = _finished(store)
    (tmp_path / "after").mkdir()
    env = {**_env(), "RESULTS": str(tmp_path / "mnt"), "STORE": str(store), "GRID": str(grid),
           "PYTHON": sys.executable, "ABLATION": str(ABLATION), "LOG": str(tmp_path / "log"),
           "AFTER": str(tmp_path / "after")}  # fmt: skip
    run = subprocess.run(["unshare", "--mount", "bash", "-c", FULL_DISK], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=400)  # fmt: skip
    assert run.returncode == 0, run.stderr
    log = {name: (tmp_path / f"log.{name}").read_text() for name in
           ("full.out", "full.err", "free.out", "free.err")}  # fmt: skip
    assert "full=1" in run.stdout, log
    (line,) = log["full.err"].splitlines()
    print(line)
    assert re.fullmatch(rf"error: cannot write under {re.escape(env['RESULTS'])} \(No space "
                        r"left on device: .*\); trials already in the store are kept: free "
                        r"space \(or make it writable\) and run the same command again to run "
                        r"the rest\.", line), line  # fmt: skip
    assert _finished(tmp_path / "after") == first  # the store as it was: whole, readable
    assert "free=0" in run.stdout, log
    assert "2 trials in the grid: 1 already in" in log["free.out"]
    assert "1 trials finished, 0 failed" in log["free.out"]
    assert len(_finished(store)) == 2 and set(_finished(store).values()) == {"ok"}


# ------------------------------------------------------------------ analysis: exits (issue 22)


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc: no psutil needed)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_analysis_stopped_by_sigterm_ends_its_figure_workers_and_leaves_no_temp(tmp_path: Path):
    store = tiny_store(tmp_path / "store", n_factors=4, seeds=3, eval_steps=20)
    out = tmp_path / "report"
    args = [sys.executable, "-m", "analysis", str(store), "--out", str(out), "--jobs", "2",
            "--format", "png,svg,pdf"]  # fmt: skip
    pipe = subprocess.PIPE
    driver = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=pipe, stderr=pipe, text=True,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and len(workers) < 2:
            assert driver.poll() is None, driver.communicate()
            workers = _children(driver.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "the figure workers never started"
        os.kill(driver.pid, signal.SIGTERM)
        stdout, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 143, stderr
    assert stdout.strip().splitlines()[-1].startswith("interrupted by SIGTERM: no report written")
    assert "Traceback" not in stderr
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)]  # the workers ended with their parent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no temp dir, no report


def test_analysis_out_checks_are_one_line_before_pandas_and_matplotlib(tmp_path: Path):
    store = tiny_store(tmp_path / "store", n_factors=1, seeds=1, eval_steps=2, attention=False)
    (tmp_path / "here").mkdir()
    probe = ("import sys; from analysis.cli import main; code = main(sys.argv[1:]); "
             "heavy = [m for m in ('pandas', 'matplotlib', 'scipy') if m in sys.modules]; "
             "print(code, heavy)")  # fmt: skip
    cases = {
        ".": r"error: --out \. is the current directory or holds it, which the report cannot "
        r"replace: give a new directory, e\.g\. --out report\.",
        str(tmp_path): r"error: --out .* is the current directory or holds it, .*",
        str(store / "trials"): r"error: --out .*trials exists and holds other files: .*",
    }
    before = _tree_of(tmp_path)
    for out, message in cases.items():
        run = subprocess.run([sys.executable, "-c", probe, str(store), "--out", out],
                             cwd=tmp_path / "here", env={**_env(), "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.stdout.strip() == "2 []", (out, run.stdout, run.stderr)
        (line,) = run.stderr.strip().splitlines()
        assert re.fullmatch(message, line), line
    assert _tree_of(tmp_path) == before  # nothing written


def _tree_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


ANALYSIS_DISK = textwrap.dedent("""
    mount --make-rprivate /
    mkdir -p "$MNT"
    mount -t tmpfs -o size=256k tmpfs "$MNT"
    "$PYTHON" -m analysis "$STORE" --out "$MNT/report" --jobs 1 > "$LOG.full.out" 2> "$LOG.full.err"
    echo "full=$?"
    ls -A "$MNT" > "$LOG.full.ls"
    umount "$MNT"
    mount -t tmpfs -o size=64m tmpfs "$MNT"
    cp -a "$STORE" "$MNT/store"
    mount -o remount,ro "$MNT"
    "$PYTHON" -m analysis "$MNT/store" > "$LOG.ro.out" 2> "$LOG.ro.err"
    echo "ro=$?"
""")


def test_analysis_full_disk_and_read_only_store_are_one_line(tmp_path: Path):
    reason = _can_mount_tmpfs()
    if reason:
        pytest.skip(reason)
    store = tiny_store(tmp_path / "store", n_factors=2, seeds=2, eval_steps=4, attention=False)
    env = {**_env(), "MNT": str(tmp_path / "mnt"), "STORE": str(store), "PYTHON": sys.executable,
           "LOG": str(tmp_path / "log"), "PYTHONPATH": str(REPO)}  # fmt: skip
    run = subprocess.run(["unshare", "--mount", "bash", "-c", ANALYSIS_DISK], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    log = {name: (tmp_path / f"log.{name}").read_text()
           for name in ("full.out", "full.err", "full.ls", "ro.err")}  # fmt: skip
    assert "full=1" in run.stdout, (run.stdout, run.stderr, log)
    (line,) = log["full.err"].splitlines()
    print(line)
    assert re.fullmatch(rf"error: cannot write the report under {re.escape(env['MNT'])} \(No "
                        r"space left on device: .*\); nothing was replaced: free space \(or "
                        r"give --out a writable directory\) and run the same command again\.",
                        line), line  # fmt: skip
    assert log["full.ls"] == ""  # the temp directory went with the failure
    assert "ro=2" in run.stdout, (run.stdout, log)
    (line,) = log["ro.err"].splitlines()
    print(line)
    assert re.fullmatch(
        r"error: --out .*/store/report \(the default\): .*/store is not "
        r"writable; give --out a directory you can write to\.",
        line,
    ), line
