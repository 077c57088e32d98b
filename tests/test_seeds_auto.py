"""``python sweeps/ablation.py --seeds auto`` on a real local Ray: rounds, a driver killed
between rounds, the same command continuing the design; dry run and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_reliability import Driver, driver_env, read, write_grid

from sweeps import ablation
from sweeps.sequential import DESIGNS_FILE, Design, load_designs, record_design
from sweeps.store import ResultStore

AUTO = ["--seeds", "auto", "--max-seeds", "4", "--min-effect", "1e-6"]


@pytest.mark.ray
def test_auto_rounds_survive_a_driver_killed_between_rounds(tmp_path: Path, drivers, capsys):
    """Schedule 3 then 4 seeds. At 99.9999% confidence three seeds cannot resolve the level,
    so a second round adds one seed to it and one to the baseline. The first driver is
    SIGKILLed as soon as it announces the second round; the same command finishes the
    design from the store, and a third run has nothing left to do."""
    grid = write_grid(tmp_path / "grid.yaml", name="auto", factors={"dropout": [0.2]}, seeds=2,
                      max_iters=20, eval_interval=10)  # fmt: skip
    results = tmp_path / "results"
    args = ["--grid", str(grid), "--results", str(results), "--num-cpus", "2", *AUTO,
            "--confidence", "0.999999"]  # fmt: skip

    first = Driver(args, tmp_path / "first", env=driver_env())
    drivers.append(first)
    first.wait_until("the second round", lambda: "next round: 2 trials" in first.out, 300)
    first.sigkill()
    assert "up to 8 trials, 0 already in" in first.out and "6 to run now" in first.out
    assert "look 2 of 2: 0 of 1 levels resolved; dropout=0.2 go to 4 seeds" in first.out
    at_kill = read(results, "trials")
    assert set(at_kill.status) == {"ok"} and len(at_kill) >= 6
    assert sorted(at_kill[at_kill.seed < 3].groupby("factor").seed.apply(sorted).items()) == [
        ("baseline", [0, 1, 2]), ("dropout", [0, 1, 2]),
    ]  # fmt: skip

    second = Driver(args, tmp_path / "second", env=driver_env())
    drivers.append(second)
    assert second.finish(timeout=300) == 0, second.out + second.err[-3000:]
    done = len(at_kill)
    assert f"{done} already in {results}, {8 - done} to run now" in second.out
    trials = read(results, "trials")
    assert len(trials) == 8 and trials.trial_id.is_unique and set(trials.status) == {"ok"}
    assert sorted(trials.groupby("factor").seed.apply(sorted).items()) == [
        ("baseline", [0, 1, 2, 3]), ("dropout", [0, 1, 2, 3]),
    ]  # fmt: skip
    assert "design complete, 0 of 1 levels resolved" in second.out
    verdict = ("verdicts auto/shakespeare_char (sequential, 100% familywise over 1 level): "
               "0 better, 0 worse, 0 equivalent (±1e-06), 1 unresolved")  # fmt: skip
    assert verdict in second.out
    assert load_designs(results)["auto"] == Design(
        levels=1, min_effect=1e-6, max_seeds=4, confidence=0.999999
    )

    assert ablation.main(args) == 0  # nothing left: Ray is not even started
    out = capsys.readouterr().out
    assert "8 already in" in out and "0 to run now" in out and verdict in out


def test_auto_dry_run_prints_first_round_expected_and_worst_case(tmp_path: Path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", name="auto", factors={"dropout": [0.1, 0.2]},
                      seeds=2, max_iters=20, eval_interval=10)  # fmt: skip
    results = tmp_path / "results"
    code = ablation.main(["--grid", str(grid), "--results", str(results), "--dry-run", *AUTO])
    assert code == 0
    out = capsys.readouterr().out
    assert "12 trials: 3 configs x 4 seeds" in out  # the worst case is listed
    assert "--seeds auto (seeds 3, 4; equivalent within ±1e-06" in out
    first = next(line for line in out.splitlines() if "first round" in line)
    worst = next(line for line in out.splitlines() if "worst case" in line)
    expected = next(line for line in out.splitlines() if line.strip().startswith("expected "))
    assert "9.0 trials" in first and "12.0 trials" in worst
    n_expected = float(expected.split()[1])
    assert 9.0 <= n_expected <= 12.0
    assert "no data yet, assumed no effects" in out
    assert not results.exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "auto", "--max-seeds", "1"], "--max-seeds 1: a paired interval needs"),
        (["--max-seeds", "5"], "--max-seeds 5 needs --seeds auto"),
        (["--seeds", "auto", "--min-effect", "0"], "--min-effect 0: give the smallest"),
        (["--seeds", "auto", "--confidence", "1.5"], "--confidence 1.5: give a level between"),
        (["--seeds", "many"], "'many' is not a number of seeds: give e.g. 3, or auto"),
    ],
)
def test_bad_auto_options_are_one_line_exit_2(tmp_path: Path, capsys, extra, message):
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_:
        ablation.main(["--factors", "dropout", "--results", str(results), *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not results.exists()


def test_a_changed_design_is_refused_and_nothing_written(tmp_path: Path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", name="auto", factors={"dropout": [0.2]}, seeds=2,
                      max_iters=20, eval_interval=10)  # fmt: skip
    results = tmp_path / "results"
    ResultStore(results)
    record_design(results, "auto", Design(levels=1, min_effect=1e-6, max_seeds=4))
    before = (results / DESIGNS_FILE).read_bytes()
    for extra in (["--seeds", "auto", "--max-seeds", "6"], ["--seeds", "3", "--min-effect", "1"]):
        with pytest.raises(SystemExit) as exit_:
            ablation.main(["--grid", str(grid), "--results", str(results), *extra])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "sweep auto runs with --seeds auto --min-effect 1e-06 --max-seeds 4" in err
    assert (results / DESIGNS_FILE).read_bytes() == before
    assert json.loads(before)["sweeps"]["auto"]["max_seeds"] == 4
