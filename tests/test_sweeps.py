"""End to end on a real local Ray: a tiny OFAT grid into a real Parquet store."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sweeps import ablation
from sweeps.grid import expand, load_grid
from sweeps.schema import planned_trials, read_runs, read_table
from testkit.tiny import tiny_params

pytestmark = pytest.mark.ray

TINY_BASELINE = json.dumps(tiny_params(max_iters=20, eval_interval=10))  # YAML's flow style


def write_grid(path: Path, factors: str, seeds: int = 2) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            name: tiny
            datasets: [shakespeare_char]
            seeds: {seeds}
            baseline: {TINY_BASELINE}
            factors:
            """
        )
        + textwrap.indent(textwrap.dedent(factors), "  ")
    )
    return path


def table(results: Path, name: str):
    read = read_table(results, name)
    assert read.corrupt == []
    return read.table.to_pandas()


def test_tiny_grid_end_to_end_then_resume_runs_only_new_seeds(tmp_path: Path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", "n_head: [1, 4]\nn_layer: [2, 3]\n")
    results = tmp_path / "results"
    args = ["--grid", str(grid), "--results", str(results), "--num-cpus", "2"]

    assert ablation.main(args) == 0
    out = capsys.readouterr().out
    assert "10 trials in the grid: 0 already" in out and "10 trials finished, 0 failed" in out

    trials = table(results, "trials")
    expected = {t.trial_id for t in expand(load_grid(grid))}
    assert set(trials.trial_id) == expected and len(trials) == 10
    assert set(trials.status) == {"ok"}
    assert sorted(trials.groupby(["factor", "level"]).size().items()) == [
        (("baseline", "baseline"), 2), (("n_head", "1"), 2), (("n_head", "4"), 2),
        (("n_layer", "2"), 2), (("n_layer", "3"), 2),
    ]  # fmt: skip
    assert set(trials.device) == {"cpu"} and set(trials.attempts) == {1}
    # the end-of-run verdicts are python -m analysis's, line for line (one rule: judge)
    from analysis.load import load_store
    from analysis.verdicts import level_verdicts, summary_lines

    lines = summary_lines(level_verdicts(load_store(results).trials, results))
    assert "(dunnett, 95% familywise over 4 levels)" in lines[-1]
    assert all(line in out for line in lines[:-1]) and lines[-1].split(";")[0] in out
    assert (trials.best_val_loss < trials.final_val_loss + 1e-9).all()
    assert trials.kind.unique().tolist() == ["ablation"]
    # The embedded local Ray lets Tune reuse trial actors (runner.Connection): the later
    # trials of an actor import nothing (import_s 0), its first pays the imports.
    assert (trials.import_s == 0).any() and (trials.import_s > 0).any(), trials.import_s.tolist()
    curves = table(results, "curves")
    assert curves.groupby("trial_id").step.apply(list).tolist() == [[0, 10, 20]] * 10
    attention = table(results, "attention")
    # n_layer levels 1,2,3 with n_head 2 (or 1/4 at n_layer 1), 3 probe steps each.
    per_trial = attention.groupby("trial_id").size()
    heads = {row.trial_id: row.n_layer * row.n_head * 3 for row in trials.itertuples()}
    assert per_trial.to_dict() == heads
    samples = table(results, "samples")
    assert len(samples) == 10 and (samples.n_chars == 20).all()
    # schema version 2: per-layer silhouette and the sample's own attention per layer
    assert attention.silhouette.between(-1, 1).all()
    layers = trials.set_index("trial_id").n_layer
    for row in samples.itertuples():
        assert len(row.attention_entropy) == len(row.effective_span) == layers[row.trial_id]
    assert len(list((results / "models").glob("*.pt"))) == 10
    # The run record holds the planned grid: every trial, its config and parameter count.
    (plan,) = planned_trials(read_runs(results)).values()
    by_id = {entry["trial_id"]: entry for entry in plan}
    assert set(by_id) == expected
    for row in trials.itertuples():
        assert (by_id[row.trial_id]["n_params"], by_id[row.trial_id]["n_layer"]) == (
            row.n_params, row.n_layer)  # fmt: skip
    assert "results/report/report.html" in out.replace(str(results.parent) + "/", "")

    # The same command again: nothing runs (Ray is not even started).
    assert ablation.main(args) == 0
    assert "10 trials in the grid: 10 already" in capsys.readouterr().out

    # Three seeds instead of two: only the five new trials run.
    assert ablation.main([*args, "--seeds", "3"]) == 0
    assert "15 trials in the grid: 10 already" in capsys.readouterr().out
    trials = table(results, "trials")
    assert len(trials) == 15 and trials.trial_id.is_unique
    assert len(planned_trials(read_runs(results))["tiny"]) == 15  # the newest run's plan
    assert sorted(trials.seed.value_counts().items()) == [(0, 5), (1, 5), (2, 5)]


def test_fractional_gpus_pack_four_trials_and_fall_back_to_cpu(tmp_path: Path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", "n_head: [1]\nn_layer: [2]\n", seeds=1)
    results = tmp_path / "results"
    code = ablation.main([
        "--grid", str(grid), "--results", str(results), "--num-cpus", "2", "--num-gpus", "1",
        "--gpus-per-trial", "0.25", "--cpus-per-trial", "0.5", "--seeds", "2",
    ])  # fmt: skip
    assert code == 0
    trials = table(results, "trials")
    assert len(trials) == 6 and set(trials.device) == {"cpu"}
    # Four quarter-GPU trials ran at the same time: their run intervals overlap.
    spans = sorted(zip(trials.started_at, trials.finished_at, strict=True))
    overlap = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert overlap == 4
