"""The runner (``sweeps.runner``): the cluster file and head checks, Ray's token auth, the
progress line, and ``run_trials`` (actor reuse; a failing trial's retries on a real Ray)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import ray
import yaml
from ray import tune

from sweeps import ablation, runner
from sweeps.grid import GridSpec, expand
from sweeps.runner import (
    ClusterError,
    Resources,
    RunSettings,
    connect,
    head_address,
    load_cluster_config,
    run_trials,
)
from sweeps.schema import read_table
from sweeps.storage import resolve_storage
from sweeps.store import ResultStore
from sweeps.trainable import run_trial
from testkit.tiny import tiny_params

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ cluster and head


def test_shipped_cluster_yaml_passes_rays_launcher_schema():
    config = load_cluster_config(REPO / "cluster.yaml")
    assert config["provider"]["type"] == "aws"
    assert any(node.get("resources", {}).get("GPU") for node in
               config["available_node_types"].values())  # fmt: skip
    text = (REPO / "cluster.yaml").read_text()
    assert "0.0.0.0" not in text and "aws_secret" not in text.lower()


def test_rays_private_validator_still_rejects_bad_configs():
    # Pins the private API that load_cluster_config relies on.
    from ray.autoscaler._private.util import prepare_config, validate_config

    good = {"cluster_name": "x", "provider": {"type": "local", "head_ip": "127.0.0.1",
                                              "worker_ips": []}}  # fmt: skip
    validate_config(prepare_config(dict(good)))
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's ValidationError
        validate_config(prepare_config({**good, "no_such_key": 1}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cluster_name: [unclosed\n", "not valid YAML at line"),
        ("- just\n- a list\n", "not a cluster-launcher config"),
        ("cluster_name: x\nprovider: {head_ip: 1.2.3.4}\n", "rejected by Ray's cluster-launcher"),
        ("cluster_name: x\nbogus_key: 1\nprovider: {type: local, head_ip: 127.0.0.1, "
         "worker_ips: []}\n", "rejected by Ray's cluster-launcher"),
    ],
)  # fmt: skip
def test_malformed_cluster_yaml_is_a_clear_error(tmp_path: Path, text: str, message: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ClusterError, match=message):
        load_cluster_config(path)


def test_unreachable_head_names_the_address_and_what_to_run(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClusterError, match=rf"cannot reach the Ray head at 127.0.0.1:{port} "
                       r"\(Connection refused\): start the cluster with `ray up"):  # fmt: skip
        connect("cluster.yaml", address=f"127.0.0.1:{port}")


def test_head_address_from_a_local_provider(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = yaml.safe_load("provider: {type: local, head_ip: 10.0.0.5, worker_ips: []}")
    assert head_address(config, "c.yaml") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:10001")
    assert head_address(config, "c.yaml") == "ray://127.0.0.1:10001"


def test_runner_reloads_rays_config_when_it_turns_token_auth_on(monkeypatch):
    """Pins the private API the runner uses: Ray reads RAY_AUTH_MODE once at import, so the
    runner reloads its config after setting it (else ray.init fails after ~20 s)."""
    from ray._raylet import AuthenticationMode, Config, get_authentication_mode

    from sweeps.runner import _auth_for_existing_cluster

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 32)
    Config.initialize("")
    try:
        assert get_authentication_mode() == AuthenticationMode.DISABLED
        _auth_for_existing_cluster()
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    finally:
        monkeypatch.undo()
        Config.initialize("")


# ------------------------------------------------------------------ run_trials


def test_progress_line_names_what_the_sweep_waits_for_while_nothing_runs():
    from sweeps.runner import _ProgressCallback

    class Trial:
        status = "PENDING"

    waiting = "waiting for the autoscaler to add a gpu_worker node (1 CPU and 1 GPU per trial)"
    progress = _ProgressCallback(RunSettings("x", 3, progress_period_s=0.0, waiting=waiting))
    line = progress._line([Trial(), Trial(), Trial()])
    assert line.endswith(f"0 running, 3 pending of 3 | best val - | ETA ? | {waiting}")
    Trial.status = "RUNNING"
    assert waiting not in progress._line([Trial()])


def test_progress_line_prints_at_every_period_while_nothing_happens(capsys, monkeypatch):
    from sweeps import runner

    clock = {"now": 100.0}
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock["now"])
    progress = runner._ProgressCallback(runner.RunSettings("x", 2))
    for _ in range(3):
        clock["now"] += 11.0
        progress.on_step_end(iteration=0, trials=[])
        clock["now"] += 1.0
        progress.on_step_end(iteration=0, trials=[])  # within the period: nothing
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("0 running, 2 pending of 2" in line for line in lines)


class _GridTrial:
    def __init__(self, trial_id: str, status: str = "RUNNING"):
        self.trial_id, self.status = f"tune-{trial_id}", status
        self.config = {"trial": {"trial_id": trial_id,
                                 "columns": {"factor": "n_layer", "level": trial_id}}}  # fmt: skip


def test_the_eta_starts_from_the_estimate_and_follows_the_observed_speed(monkeypatch, capsys):
    from sweeps import runner

    clock = {"now": 0.0}
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock["now"])
    estimates = {"a": 100.0, "b": 100.0, "c": 50.0}
    progress = runner._ProgressCallback(runner.RunSettings(
        "x", 3, max_iters={"a": 100, "b": 100, "c": 100}, progress_period_s=0.0,
        estimates=estimates), slots=2)  # fmt: skip
    a, b, c = (_GridTrial(name) for name in "abc")
    # Before anything ran: the estimates over two slots, (100 + 100 + 50) / 2 s.
    assert progress._line([]).endswith("best val - | ETA 2m05s")
    progress.on_trial_result(0, [a, b], a, {"step": 0, "val_loss": 4.17})
    progress.on_trial_result(0, [a, b], b, {"step": 0, "val_loss": 4.17})
    assert "best val - |" in capsys.readouterr().out  # step 0's loss ranks nothing
    clock["now"] = 100.0  # halfway through, by the steps: twice as slow as estimated
    progress.on_trial_result(0, [a, b], a, {"step": 50, "val_loss": 3.0})
    # a and b have 2 x 100 - 100 s left each at the observed speed, c 2 x 50 s: 300 / 2 slots.
    assert progress._line([a, b]).endswith("best val 3.0000 (n_layer=a) | ETA 2m30s")
    clock["now"] = 200.0
    progress.on_trial_complete(0, [a, b, c], a)
    progress.on_trial_result(0, [b, c], c, {"step": 0, "val_loss": 4.17})
    # b is 200 s in of its 200 s, c has 100 s left: the longest trial bounds the ETA.
    assert progress._line([b, c]).endswith("ETA 1m40s")


def test_a_retried_trial_waiting_for_a_node_does_not_stretch_the_eta(monkeypatch):
    """The soak's ETA read 2 h with 10 min left: a trial whose node died kept the clock of its
    first attempt while it waited, and read as 30x slower than its estimate."""
    from sweeps import runner

    clock = {"now": 0.0}
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock["now"])
    progress = runner._ProgressCallback(runner.RunSettings(
        "x", 2, max_iters={"a": 100, "b": 100}, progress_period_s=0.0,
        estimates={"a": 10.0, "b": 10.0}), slots=1)  # fmt: skip
    a = _GridTrial("a")
    progress.on_trial_result(0, [a], a, {"step": 0, "val_loss": 4.17})
    progress.on_trial_recover(0, [a], a)  # its node died
    clock["now"] = 300.0  # five minutes until a node is back
    assert progress._line([a]).endswith("ETA 20s")  # a and b at their estimates, one slot
    progress.on_trial_result(0, [a], a, {"step": 50, "val_loss": 3.0})  # resumed
    clock["now"] = 302.0  # a resumed at half its steps: 5 s of its estimate left then
    assert progress._line([a]).endswith("ETA 13s")  # a has 3 s left, b 10 s


def test_a_search_eta_prices_every_trial_at_the_default_estimate(monkeypatch):
    from sweeps import runner

    monkeypatch.setattr(runner.time, "monotonic", lambda: 0.0)
    progress = runner._ProgressCallback(
        runner.RunSettings(
            "x", 10, default_max_iters=100, progress_period_s=0.0, default_estimate_s=30.0
        ),
        slots=2,
    )
    assert progress._line([]).endswith("ETA 2m30s")  # 10 x 30 s over 2 slots


@pytest.mark.parametrize(("embedded", "reused"), [(True, True), (False, False)])
def test_run_trials_lets_tune_reuse_actors_only_where_the_connection_allows(
    embedded: bool, reused: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """On a cluster Tune may hand a cached actor on a dead node to a PENDING trial and then
    fails that trial for good, retries or not (the soak lost 2 of 200 trials so).

    This pins run_trials' half (the TuneConfig it builds, whatever the caller's says);
    connect's half is checked on real Rays: the embedded one reuses actors
    (test_sweeps.py: later trials import nothing), a cluster does not (test_sharenothing.py:
    every trial pays its imports)."""

    seen = {}

    class FakeTuner:
        def __init__(self, trainable, *, param_space, tune_config, run_config):
            seen["reuse_actors"] = tune_config.reuse_actors

        def fit(self):
            return None

    monkeypatch.setattr(runner.tune, "Tuner", FakeTuner)
    store = ResultStore(tmp_path / "results")
    connection = runner.Connection("test", reuse_actors=embedded,
                                   storage=resolve_storage(None, store.root))  # fmt: skip
    for config in (None, tune.TuneConfig(reuse_actors=True)):
        seen.clear()
        runner.run_trials(connection, store, {}, runner.RunSettings(
            name="x", total=0, resources=runner.Resources(), tune_config=config,
            progress=False))  # fmt: skip
        assert seen == {"reuse_actors": reused}
    assert not hasattr(runner, "_reuse_actors")  # no module global: the Connection says


@pytest.mark.ray
def test_a_raising_trial_is_recorded_failed_and_the_others_finish(tmp_path: Path):
    baseline = tiny_params(max_iters=20, eval_interval=10)
    trials = expand(GridSpec("tiny", baseline, {"n_head": [1]}, seeds=1))
    doomed = next(t.trial_id for t in trials if t.factor == "n_head")

    def flaky(config):
        if config["trial"]["trial_id"] == doomed:
            raise RuntimeError("boom in user code")
        run_trial(config)

    store = ResultStore(tmp_path / "results")
    connection = connect(num_cpus=2, results=store.root)
    assert connection.reuse_actors  # the embedded local Ray (see Connection)
    try:
        outcome = run_trials(
            connection, store, ablation.param_space(trials), RunSettings(
                name="tiny", total=len(trials), resources=Resources(), trainable=flaky,
                max_failures=1, progress=False),
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert list(outcome.failed) == [doomed] and len(outcome.ok) == 1
    rows = read_table(tmp_path / "results", "trials").table.to_pandas().set_index("trial_id")
    assert rows.loc[doomed, "status"] == "failed"
    assert rows.loc[doomed, "error"] == "RuntimeError: boom in user code"
    assert rows.loc[doomed, "attempts"] == 2  # one retry, then recorded as failed
    assert rows.drop(index=doomed).status.tolist() == ["ok"]


@pytest.mark.ray
def test_a_deterministic_error_is_not_retried_again_a_changing_one_is(tmp_path: Path):
    def raising_at_step_20(config):
        """The project's trainable, with an error before the report of step 20: the same
        one on every attempt for the baseline, a new one per attempt for the other trial."""
        import sweeps.trainable as trainable

        real = trainable.train_steps
        counter = tmp_path / f"{config['trial']['trial_id']}.attempts"

        def steps(*args, **kwargs):
            for metrics in real(*args, **kwargs):
                if metrics["step"] >= 20:
                    if config["trial"]["columns"]["factor"] == "baseline":
                        raise ValueError("deterministic at step 20")
                    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
                    counter.write_text(str(attempt))
                    raise ValueError(f"transient, attempt {attempt}")
                yield metrics

        trainable.train_steps = steps
        try:
            trainable.run_trial(config)
        finally:
            trainable.train_steps = real

    trials = expand(GridSpec("det", tiny_params(max_iters=40, eval_interval=10), {"n_head": [1]},
                             seeds=1))  # fmt: skip
    store = ResultStore(tmp_path / "results")
    connection = connect(num_cpus=2, results=store.root)
    try:
        outcome = run_trials(
            connection, store, ablation.param_space(trials), RunSettings(
                name="det", total=len(trials), resources=Resources(),
                trainable=raising_at_step_20, max_failures=3, progress=False),
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert len(outcome.failed) == 2
    rows = read_table(store.root, "trials").table.to_pandas().set_index("factor")
    same = rows.loc["baseline"]
    assert same.attempts == 2  # the first retry met the same error at the same step
    assert same.error == ("ValueError: deterministic at step 20 (again after step 10 on retry: "
                          "deterministic, not retried again)")  # fmt: skip
    assert same.last_step == 10
    changing = rows.loc["n_head"]
    assert changing.attempts == 4  # 1 + max_failures: each retry failed differently
    assert changing.error == "ValueError: transient, attempt 4"


def test_a_failed_trial_is_one_line_naming_the_users_exception():
    from sweeps.runner import _OutputFilter

    lines = [
        "2026-12-07 01:57:01,000\tERROR tune_controller.py:1336 -- Trial task failed for "
        "trial run_trial_47ae6_00000\n",
        "Traceback (most recent call last):\n",
        '  File "event_manager.py", line 110, in resolve_future\n',
        "ray.exceptions.RayTaskError(RuntimeError): ray::ImplicitFunc.train() (pid=1174)\n",
        "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
        '  File "charlm/model.py", line 608, in _sample\n',
        "    return torch.multinomial(probs, num_samples=1, generator=generator)\n",
        "RuntimeError: probability tensor contains either `inf`, `nan` or element < 0\n",
        "[40s] 0 done, 1 failed, 0 running, 0 pending of 1 | best val - | ETA ?\n",
    ]
    keep = _OutputFilter()
    assert [line for line in map(keep, lines) if line is not None] == [
        "Trial task failed for trial run_trial_47ae6_00000: RuntimeError: probability tensor "
        "contains either `inf`, `nan` or element < 0\n",
        lines[-1],
    ]
