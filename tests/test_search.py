"""The search: ASHA's rule, the winner and its grid, seeds per trial end to end, the study's
ids, and the search report, on a real local Ray with a real Optuna (SQLite) storage (the
seeds' lockstep and resume are the trainable's: test_trainable.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from charlm.config import ModelConfig, TrainConfig
from sweeps import search
from sweeps.best_grid import Winner, best_grid, neighbours
from sweeps.grid import expand, load_grid
from sweeps.schema import read_table

REPO = Path(__file__).resolve().parents[1]

# Sizes a CI machine trains in a second; the same six fields as search.SEARCH_SPACE.
TINY_SPACE = {
    "n_head": ("choice", [1, 2]),
    "n_layer": ("randint", 1, 3),
    "n_embed": ("choice", [16, 32]),
    "dropout": ("uniform", 0.0, 0.2),
    "block_size": ("choice", [16, 32]),
    "learning_rate": ("loguniform", 1e-3, 1e-2),
}
TINY_SETS = ["--set", "batch_size=8", "--set", "eval_iters=2", "--set", "sample_tokens=20",
             "--set", "warmup_iters=2", "--set", "probe_batch_size=2"]  # fmt: skip


def table(results: Path, name: str):
    read = read_table(results, name)
    assert read.corrupt == []
    return read.table.to_pandas()


# ---------------------------------------------------------------- no Ray


@pytest.mark.parametrize(
    ("max_iters", "interval", "expected"),
    [
        (30, 7, (6, 2, 2.0)),  # evaluations at 7, 14, 21, 28, 30: rungs at 2 and 4 reports
        (3000, 500, (7, 2, 3.0)),  # 6 evaluations: rungs at 2 and 6
        (5000, 250, (21, 2, 3.0)),
        (10, 10, (2, 2, 2.0)),  # one evaluation after step 0: nothing to stop
    ],
)
def test_asha_rule_counts_evaluations(max_iters, interval, expected):
    assert search.asha_settings(max_iters, interval) == expected


def test_asha_explicit_values_win_and_short_runs_evaluate_four_times():
    assert search.asha_settings(3000, 500, grace_period=3, reduction_factor=4) == (7, 3, 4)
    assert search.search_eval_interval(30, 30) == 7
    assert search.search_eval_interval(3000, 500) == 500
    assert search.search_eval_interval(3, 3) == 1


def test_neighbours_are_a_valid_step_either_side():
    space = search.SEARCH_SPACE
    values = {"n_head": 4, "n_layer": 8, "n_embed": 96, "dropout": 0.05,
              "block_size": 32, "learning_rate": 2e-3}  # fmt: skip
    assert neighbours("n_head", space["n_head"], values) == [2, 8]
    assert neighbours("n_embed", space["n_embed"], values) == [64, 128]  # multiples of 4
    assert neighbours("n_embed", space["n_embed"], {**values, "n_head": 8}) == [64, 128]
    assert neighbours("n_head", space["n_head"], {**values, "n_embed": 96}) == [2, 8]
    assert neighbours("n_layer", space["n_layer"], values) == [7]  # randint(1, 9): 8 is the top
    assert neighbours("block_size", space["block_size"], values) == [64]
    assert neighbours("dropout", space["dropout"], values) == [0.0, 0.15]
    assert neighbours("learning_rate", space["learning_rate"], values) == [1e-3, 3e-3]
    assert neighbours("learning_rate", space["learning_rate"],
                      {**values, "learning_rate": 1.0734e-4}) == [1e-4, 2.15e-4]  # fmt: skip


def test_labels_print_learning_rates_in_scientific_notation():
    assert search.format_value("learning_rate", 0.000107) == "1.07e-04"
    assert search.format_value("learning_rate", 0.000139) == "1.39e-04"
    assert search.format_value("dropout", 0.123456) == "0.123"
    assert search.format_value("n_head", 4) == "4"


def test_seeds_per_trial_zero_is_bad_input(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--seeds", "0", "--results", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    (line,) = err
    assert line.startswith("error: --seeds 0:") and ">= 1" in line  # the flag, value and fix
    assert not (tmp_path / "r").exists()


def test_best_grid_is_a_loadable_ofat_grid_on_fresh_seeds(tmp_path: Path):
    model, train_cfg = (
        ModelConfig(n_layer=2, n_head=2, n_embed=32, block_size=16),
        TrainConfig(
            max_iters=24, eval_interval=6, warmup_iters=2, learning_rate=3e-3, batch_size=8
        ),
    )
    values = {**dataclasses.asdict(model), **dataclasses.asdict(train_cfg)}
    for name in ("seed", "dataset", "vocab_size", "data_dir", "device", "num_threads"):
        values.pop(name)
    values = {k: v for k, v in values.items() if v is not None}
    winner = Winner("c0ffee", ["a", "b"], [0, 1], "shakespeare_char", values, 1.5, 0.01, 4)
    grid = best_grid(winner, TINY_SPACE, name="tiny-best", preset="notebook", n_seeds=3)
    path = tmp_path / "best_grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    trials = expand(load_grid(path))
    # Baseline + n_head 1, n_layer 1, n_embed 16, dropout 0.1 -/+ a third of its range,
    # block_size 32, learning_rate 1.5e-3 and 6e-3: 9 configs x seeds 2, 3, 4.
    assert grid["factors"] == {"n_head": [1], "n_layer": [1], "n_embed": [16],
                               "dropout": [0.0333, 0.1667], "block_size": [32],
                               "learning_rate": [0.0015, 0.006]}  # fmt: skip
    assert len(trials) == 9 * 3 and {t.seed for t in trials} == {2, 3, 4}
    base = next(t for t in trials if t.factor == "baseline")
    assert (base.model.n_embed, base.train.learning_rate, base.train.max_iters) == (32, 3e-3, 24)


# ---------------------------------------------------------------- real Ray


@pytest.mark.ray
def test_search_with_two_seeds_per_trial_end_to_end(tmp_path: Path, capsys, monkeypatch):
    """Six configs x 2 seeds, one at a time (deterministic ASHA): two store rows per config,
    the study's values are the seed means, ASHA stops some, the winner's grid dry-runs, and
    the report names the winner."""
    import optuna

    from analysis.report import ReportOptions, build_report
    from sweeps import ablation
    from sweeps.best_grid import find_winner

    monkeypatch.setattr(search, "SEARCH_SPACE", TINY_SPACE)
    results = tmp_path / "results"
    code = search.main([
        "--n-trials", "6", "--max-iters", "24", "--seeds", "2", "--name", "tiny",
        "--results", str(results), "--num-cpus", "2", "--cpus-per-trial", "2",
        "--max-concurrent", "1", *TINY_SETS,
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "6 trials x 2 seeds" in out
    assert (
        "ASHA: 5 reports per trial (step 0, then every 6 steps), grace period 2, reduction "
        "factor 2" in out
    )
    # The progress line names store trial ids, not Tune's.
    best_ids = re.findall(r"best val \d\.\d{4} \(trial ([0-9a-f]{16})\+([0-9a-f]{16})\)", out)
    assert best_ids

    trials = table(results, "trials")
    assert len(trials) == 12 and set(trials.kind) == {"search"} and trials.trial_id.is_unique
    per_config = trials.groupby("config_id")
    assert per_config.size().tolist() == [2] * 6
    assert all(sorted(g.seed) == [0, 1] for _, g in per_config)
    assert per_config["level"].nunique().eq(1).all()  # one label per config
    assert set(trials.status) == {"ok"}
    stopped = trials[trials.early_stopped]
    assert 2 <= len(stopped) < 12 and per_config["early_stopped"].nunique().eq(1).all()
    curves = table(results, "curves").groupby("trial_id").step.apply(list)
    for row in trials.itertuples():
        steps = curves[row.trial_id]
        assert steps == [0, 6, 12, 18, 24][: len(steps)]
        assert len(steps) == 5 or row.early_stopped
    assert {tid for pair in best_ids for tid in pair} <= set(trials.trial_id)

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{results / 'optuna.db'}")
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(told) == 6
    by_id = trials.set_index("trial_id")
    for trial in told:
        ids = trial.user_attrs["store_trial_ids"]
        rows = by_id.loc[ids]
        assert list(rows.seed) == [0, 1] and set(rows.config_id) == {trial.user_attrs["config_id"]}
        assert trial.user_attrs["seed_val_losses"] == pytest.approx(list(rows.final_val_loss))
        assert trial.value == pytest.approx(rows.final_val_loss.mean(), rel=1e-12)

    winner = find_winner(results, "tiny")
    assert winner is not None and len(winner.trial_ids) == 2
    complete = trials[~trials.early_stopped].groupby("config_id").final_val_loss.mean()
    assert winner.config_id == complete.idxmin()
    assert winner.mean_val_loss == pytest.approx(complete.min())
    assert f"store trials {', '.join(winner.trial_ids)}" in out
    assert f"wrote {results / 'best_grid.yaml'}" in out

    grid_path = results / "best_grid.yaml"
    expected = expand(load_grid(grid_path))
    assert {t.seed for t in expected} == {2, 3, 4}
    base = next(t for t in expected if t.factor == "baseline")
    assert base.model.n_embed == int(by_id.loc[winner.trial_ids[0], "n_embed"])
    assert ablation.main(["--grid", str(grid_path), "--dry-run", "--results", str(results)]) == 0
    dry = capsys.readouterr().out
    assert f"{len(expected)} trials: {len(expected) // 3} configs x 3 seeds" in dry
    assert all(t.trial_id in dry for t in expected)

    report = build_report(results, tmp_path / "report", ReportOptions(formats=("png",), jobs=1))
    page = report.html.read_text()
    assert f"Winner of tiny (shakespeare_char): config {winner.config_id}" in page
    assert "No attention rows" not in page
    assert re.search(r"<td>\d\.\d\de-0\d</td>", page)  # learning rates, 3 significant digits
    figures = tmp_path / "report" / "figures" / "search"
    assert (figures / "tiny_shakespeare_char_loss_vs_params.png").is_file()
    assert (figures / "tiny_shakespeare_char_best_so_far.png").is_file()


# ---------------------------------------------------------------- the study's settings and fate


def _settings(**changes):
    base = search._base_trial(search._parse(["--max-iters", "24", *TINY_SETS]))
    settings = search.study_settings(base, 1, search.asha_settings(24, 6))
    return {**settings, **changes}


def test_a_study_with_other_settings_is_refused_naming_the_difference(tmp_path: Path, capsys):
    from sweeps.store import ResultStore
    from sweeps.study import open_study

    results = ResultStore(tmp_path / "results").root
    url = f"sqlite:///{results / 'optuna.db'}"
    open_study(url, "search", _settings())  # the study a first run created
    capsys.readouterr()
    before = sorted(p.name for p in results.rglob("*")), (results / "optuna.db").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--max-iters", "2000", "--results", str(results), *TINY_SETS])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: study 'search' in sqlite:///") and "other settings" in line
    assert "max_iters 24 (study) vs 2000 (this run)" in line
    assert "eval_interval 6 (study) vs 500 (this run)" in line
    assert "start a new study with --name" in line
    after = sorted(p.name for p in results.rglob("*")), (results / "optuna.db").read_bytes()
    assert after == before  # nothing written


def test_running_trials_of_a_dead_driver_are_failed_when_the_study_is_opened(tmp_path: Path):
    import optuna

    from sweeps.study import DRIVER_ATTR, driver_tag, open_study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    study, done, failed = open_study(url, "s", _settings())
    assert (done, failed) == (0, 0)
    dead = study.ask()
    dead.set_user_attr(DRIVER_ATTR, {**driver_tag(), "pid": int(gone.stdout)})
    alive = study.ask()
    alive.set_user_attr(DRIVER_ATTR, driver_tag())  # this process: still running
    elsewhere = study.ask()
    elsewhere.set_user_attr(DRIVER_ATTR, {"host": "another-host", "pid": 1})
    study.tell(study.ask(), 1.0)
    _, done, failed = open_study(url, "s", _settings())
    states = {t.number: t.state for t in optuna.load_study(study_name="s", storage=url).trials}
    assert (done, failed) == (1, 1)
    running = optuna.trial.TrialState.RUNNING
    assert states == {0: optuna.trial.TrialState.FAIL, 1: running, 2: running,
                      3: optuna.trial.TrialState.COMPLETE}  # fmt: skip


SEARCH_SCRIPT = f"""
import sys
from sweeps import search
search.SEARCH_SPACE = {TINY_SPACE!r}
sys.exit(search.main(sys.argv[1:]))
"""


@pytest.mark.ray
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_search_says_so_writes_no_winner_and_fails_its_optuna_trials(
    tmp_path: Path, signum: int, code: int
):
    import optuna

    results = tmp_path / "results"
    argv = [sys.executable, "-c", SEARCH_SCRIPT, "--n-trials", "4", "--max-iters", "400",
            "--results", str(results), "--num-cpus", "1", "--max-concurrent", "1",
            "--grace-period", "20", *TINY_SETS]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        driver = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=REPO,
                                  start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # one trial finished, the next one running
            rows = table(results, "trials") if (results / "trials").is_dir() else []
            if len(rows):
                break
            assert driver.poll() is None, (tmp_path / "err").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("no trial finished within 300 s")
        os.kill(driver.pid, signum)
        assert driver.wait(timeout=120) == code, (tmp_path / "err").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    stdout = (tmp_path / "out").read_text()
    print(stdout)
    name = signal.Signals(signum).name
    assert re.search(
        rf"interrupted by {name}: \d+ trials finished in this run; study 'search' "
        r"has (\d+) of 4 \((\d+) unfinished trials marked FAILED\); no winner and "
        r"no best_grid\.yaml from a partial search\. To continue, run the same "
        r"command again: it runs the \d+ trials the study lacks\.",
        stdout,
    ), stdout
    assert "best of" not in stdout and "trials finished (" not in stdout
    assert not (results / "best_grid.yaml").exists()
    assert "Traceback" not in (tmp_path / "err").read_text()
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{results / 'optuna.db'}")
    states = [trial.state for trial in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert optuna.trial.TrialState.FAIL in states  # the trial the signal stopped
    if signum != signal.SIGTERM:
        return
    # The same command again runs the trials the study lacks, then names the winner.
    lacking = int(re.search(r"it runs the (\d+) trials the study lacks", stdout).group(1))
    again = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"searching on embedded local Ray: 1 CPUs, 0 GPUs: {lacking} trials x 1 seed (the "\
           f"study lacks {lacking} of --n-trials 4)" in again.stdout  # fmt: skip
    done = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{results / 'optuna.db'}")
    assert sum(trial.state in done for trial in study.trials) == 4
    assert (results / "best_grid.yaml").is_file()


def test_the_winner_line_says_one_seed_has_no_stderr():
    values = {"n_head": 4, "n_layer": 2}
    one = Winner("c0ffee", ["a"], [0], "shakespeare_char", values, 2.69621, None, 3)
    assert "final val loss 2.6962 (1 seed, no stderr);" in one.line(["n_head"], search.format_value)
    assert "±" not in one.line(["n_head"], search.format_value)
    two = Winner("c0ffee", ["a", "b"], [0, 1], "shakespeare_char", values, 2.5, 0.0123, 3)
    assert "2.5000 ± 0.0123 (mean ± stderr over 2 seeds)" in two.line(
        ["n_head"], search.format_value
    )


def test_asha_is_expected_to_train_a_share_of_the_steps():
    from sweeps.estimate import asha_fraction

    # The notebook preset: 3000 steps, evaluations every 500 (7 reports), rungs at 2 and 6
    # reports (steps 500 and 2500); each keeps a third of the trials reaching it.
    expected = (2 / 3 * 500 + 1 / 3 * 2 / 3 * 2500 + 1 / 9 * 3000) / 3000
    assert asha_fraction(3000, 500, 7, 2, 3.0) == pytest.approx(expected)
    assert asha_fraction(3000, 500, 2, 2, 3.0) == 1.0  # no rung before the end: no stopping


def test_search_dry_run_prices_the_trials_and_writes_nothing(tmp_path: Path, capsys):
    results = tmp_path / "results"
    argv = ["--dry-run", "--n-trials", "4", "--seeds", "2", "--max-iters", "30"]
    assert search.main([*argv, "--results", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("4 trials x 2 seeds, configs drawn at random from the search")
    assert "load average" in lines[0] and "a trial takes" in lines[0]
    upper, asha = lines[1:3]
    assert "every trial to its last step (upper bound)" in upper and "wall time" in upper
    assert "with ASHA stopping trials early (expected:" in asha
    scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}
    found = [re.search(r"([\d.]+) ?([kMG]?) training tokens", line) for line in (upper, asha)]
    counts = [float(match[1]) * scale[match[2]] for match in found if match]
    assert 0 < counts[1] < counts[0]  # ASHA trains fewer tokens than the upper bound
    assert not results.exists()


def test_the_dry_run_samples_the_search_space_with_the_base_fixed():
    base = search._base_trial(search._parse(["--max-iters", "30", "--first-seed", "5"]))
    trials = search.sampled_trials(base, 6, 2, seed=0)
    assert len(trials) == 12 and [t.seed for t in trials[:2]] == [5, 6]
    for trial in trials:
        assert trial.model.n_head in (1, 2, 4, 8) and 1 <= trial.model.n_layer <= 8
        assert trial.model.n_embed % trial.model.n_head == 0
        assert 1e-4 <= trial.train.learning_rate <= 3e-3
        assert trial.train.max_iters == 30 and trial.train.batch_size == base.train.batch_size
    assert trials == search.sampled_trials(base, 6, 2, seed=0)  # seeded
