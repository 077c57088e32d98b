"""The Tune trainable (``sweeps.trainable``): a search trial's seeds train in lockstep exactly
as alone, and a retried trial resumes all of them from Tune's checkpoint."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray

from charlm.config import ModelConfig
from charlm.train import train, train_steps
from sweeps.runner import Resources, RunSettings, connect, run_trials
from sweeps.schema import read_table, remove_dead_dirs
from sweeps.search import BASE_KEY, describe_search_trial, run_search_trial
from sweeps.store import ResultStore
from sweeps.trainable import _TRIAL_DIR, _TRIAL_PREFIX
from testkit.tiny import TINY_PARAMS, tiny_model, tiny_train

REPO = Path(__file__).resolve().parents[1]

# A trial's process: import the trainable, train the tiny config; say what was imported when.
_TRIAL_PROCESS = """
import sys
import sweeps.trainable
from charlm import probes
from charlm.train import train_steps
from testkit.tiny import tiny_model, tiny_train

at_import = "sklearn" in sys.modules
at_first_silhouette = []
silhouette = probes.hidden_silhouette

def watched(*args, **kwargs):
    at_first_silhouette.append("sklearn" in sys.modules)
    return silhouette(*args, **kwargs)

probes.hidden_silhouette = watched
for _ in train_steps(tiny_model(), tiny_train(max_iters=4, eval_interval=2)):
    pass
heavy = {"analysis", "matplotlib", "sklearn"}
loaded = sorted({name.split(".")[0] for name in sys.modules} & heavy)
print(at_import, at_first_silhouette[:1], loaded)
"""


def test_lockstep_seeds_train_exactly_as_alone_with_dropout():
    """Two train_steps loops driven in turn (as a search trial's seeds are) give the
    losses each seed gives alone: each keeps its own RNG stream for dropout."""
    model = tiny_model(dropout=0.2)
    configs = [tiny_train(batch_size=4, max_iters=12, eval_interval=4, warmup_iters=1,
                          sample_tokens=0, seed=seed, num_threads=1)
               for seed in (0, 1)]  # fmt: skip
    alone = [train(model, cfg) for cfg in configs]
    loops = [train_steps(model, cfg) for cfg in configs]
    reports: list[list[dict]] = [[], []]
    while True:
        step = [next(loop, None) for loop in loops]
        if step[0] is None:
            break
        assert step[0]["step"] == step[1]["step"]  # lockstep
        for index, metrics in enumerate(step):
            reports[index].append(metrics)
    for index, result in enumerate(alone):
        assert [m["val_loss"] for m in reports[index]] == [p["val_loss"] for p in result.curve]
        assert [m["step"] for m in reports[index]] == [0, 4, 8, 12]
    assert alone[0].final_val_loss != alone[1].final_val_loss  # the seeds differ


def test_a_trial_process_imports_scikit_learn_at_its_first_silhouette_and_no_analysis():
    """What a fresh trial process pays for: scikit-learn only once a silhouette is computed,
    never the analysis package or matplotlib."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.run([sys.executable, "-c", _TRIAL_PROCESS], capture_output=True,
                             text=True, cwd=REPO, env=env, timeout=300)  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.split("\n")[-2] == "False [False] ['sklearn']"


def test_only_dead_trials_of_this_pid_namespace_lose_their_working_directory(tmp_path: Path):
    """The soak's worker nodes share /tmp, each with its own pids: a pid that is dead here
    may be a live trial there, so only this namespace's dead pids are removed."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead = ended.stdout.strip()
    ours = tmp_path / f"{_TRIAL_PREFIX}{dead}-abc"
    live = tmp_path / f"{_TRIAL_PREFIX}{os.getpid()}-abc"
    elsewhere = tmp_path / f"charlm-trial-otherhost-4026532999-{dead}-abc"
    for path in (ours, live, elsewhere):
        path.mkdir()
    assert remove_dead_dirs(tmp_path, _TRIAL_DIR) == [ours]
    assert live.is_dir() and elsewhere.is_dir()


@pytest.mark.ray
def test_a_killed_trial_resumes_all_its_seeds_from_the_checkpoint(tmp_path: Path):
    """The first attempt's process dies (os._exit) after its step-12 report; the retry
    resumes both seeds from that checkpoint and ends with the losses of an unbroken run, and
    removes the working directory the dead process left in the temp dir."""
    log, marker = tmp_path / "reports.log", tmp_path / "killed-once"

    def dies_once(config):
        from ray import tune

        real = tune.report
        attempt = 2 if marker.exists() else 1

        def report(metrics, checkpoint=None):
            if attempt == 1 and metrics["step"] == 18:  # the step-12 report surely landed
                marker.write_text(str(os.getpid()))
                os._exit(1)
            real(metrics, checkpoint=checkpoint)
            with log.open("a") as file:
                file.write(f"{attempt} {metrics['step']}\n")

        tune.report = report
        try:
            run_search_trial(config)
        finally:
            tune.report = real

    shape = ("n_head", "n_layer", "n_embed", "block_size")
    sampled = {**{key: TINY_PARAMS[key] for key in shape}, "dropout": 0.1, "learning_rate": 3e-3}
    train_cfg = tiny_train(max_iters=24, eval_interval=6, sample_tokens=0, num_threads=1)
    model_cfg = ModelConfig(**{k: v for k, v in sampled.items() if k != "learning_rate"})
    params = {**dataclasses.asdict(model_cfg), **dataclasses.asdict(train_cfg)}
    base = {"params": {**params, "learning_rate": 3e-3}, "sweep": "kill", "seeds_per_trial": 2}
    store = ResultStore(tmp_path / "results")
    connection = connect(num_cpus=1, results=store.root)
    try:
        outcome = run_trials(
            connection, store, {**sampled, BASE_KEY: base},
            RunSettings(name="kill", total=1, resources=Resources(), describe=describe_search_trial,
                        trainable=dies_once, max_failures=2, progress=False),
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert len(outcome.ok) == 2 and not outcome.failed
    left = Path(tempfile.gettempdir()).glob(f"{_TRIAL_PREFIX}{marker.read_text()}-*")
    assert list(left) == []
    attempts = [line.split() for line in log.read_text().splitlines()]
    assert attempts == [["1", "0"], ["1", "6"], ["1", "12"], ["2", "18"], ["2", "24"]]
    trials = read_table(tmp_path / "results", "trials").table.to_pandas().sort_values("seed")
    assert list(trials.seed) == [0, 1] and set(trials.attempts) == {2}
    assert set(trials.status) == {"ok"} and not trials.early_stopped.any()
    curves = read_table(tmp_path / "results", "curves").table.to_pandas()
    for row in trials.itertuples():
        assert sorted(curves[curves.trial_id == row.trial_id].step) == [0, 6, 12, 18, 24]
        alone = train(model_cfg, dataclasses.replace(train_cfg, seed=row.seed,
                                                     learning_rate=3e-3))  # fmt: skip
        assert row.final_val_loss == alone.final_val_loss
        assert math.isfinite(row.final_val_loss)
