"""sweeps.schedule: longest trials first; and on a real Ray, the start order and the CPUs
(torch threads) each trial really got."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps import ablation
from sweeps.grid import GridSpec, expand
from sweeps.runner import Resources, RunSettings, connect, run_trials
from sweeps.schedule import makespan, plan_schedule
from sweeps.schema import read_table
from sweeps.store import ResultStore
from testkit.tiny import tiny_params


def test_longest_first_ties_keep_grid_order():
    seconds = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 5.0}
    schedule = plan_schedule(list(seconds), seconds, slots=2)
    assert schedule.order == ("b", "d", "c", "a")


def test_the_plan_line_gives_both_orders_wall_times():
    seconds = {"short": 60.0, "long1": 100.0, "long2": 100.0}
    schedule = plan_schedule(list(seconds), seconds, slots=2)
    assert schedule.order == ("long1", "long2", "short")
    assert schedule.makespan_s == 160.0
    assert schedule.grid_order_makespan_s == 160.0
    # Grid order with the longest last ends later.
    assert plan_schedule(["s", "m", "l"], {"s": 1.0, "m": 2.0, "l": 3.0}, slots=2).describe() == (
        "schedule: longest trials first, every trial on 1 CPU; estimated wall time 3 s "
        "(grid order: 4 s)"
    )


def test_makespan_starts_in_order_as_slots_free_up():
    seconds = {"a": 10.0, "b": 4.0, "c": 4.0, "d": 4.0}
    # a on one slot; b, c, d one after the other on the other: all end at 12.
    assert makespan(list(seconds), seconds, 2) == 12.0
    # Grid order with the longest last leaves a slot idle for most of a.
    assert makespan(["b", "c", "d", "a"], seconds, 2) == 14.0
    assert makespan(list(seconds), seconds, 1) == 22.0
    assert makespan(list(seconds), seconds, 4) == 10.0


# ------------------------------------------------------------------ on a real Ray


@pytest.mark.ray
def test_real_ray_starts_trials_longest_first_each_on_its_cpu(tmp_path: Path):
    baseline = tiny_params(max_iters=10, eval_interval=10, warmup_iters=0, sample_tokens=0)
    trials = expand(GridSpec("tiny", baseline, {"n_layer": [2, 3]}, seeds=1))
    ids = [trial.trial_id for trial in trials]  # grid order: baseline, n_layer 2, n_layer 3
    # Estimated times that make the grid's first trial the shortest: it runs last.
    seconds = dict(zip(ids, [60.0, 100.0, 100.0], strict=True))
    schedule = plan_schedule(ids, seconds, slots=2)
    assert schedule.order == (ids[1], ids[2], ids[0])
    by_id = {trial.trial_id: trial for trial in trials}

    store = ResultStore(tmp_path / "results")
    connection = connect(num_cpus=2, results=tmp_path / "results")
    try:
        outcome = run_trials(
            connection, store, ablation.param_space([by_id[t] for t in schedule.order]),
            RunSettings(name="tiny", total=3, resources=Resources(), progress=False),
        )  # fmt: skip
    finally:
        import ray

        ray.shutdown()
    assert sorted(outcome.ok) == sorted(ids)
    rows = read_table(store.root, "trials").table.to_pandas().set_index("trial_id")
    # The last trial started only once one of the two longer ones had ended, on 1 thread.
    last = rows.loc[ids[0]]
    assert last.started_at >= min(rows.loc[ids[1]].finished_at, rows.loc[ids[2]].finished_at)
    assert rows.num_threads.to_dict() == {ids[0]: 1, ids[1]: 1, ids[2]: 1}
    # Fixed costs are recorded per trial; imports only where a process was new.
    assert (rows.setup_s > 0).all() and (rows.eval_s > 0).all()
    assert rows.import_s.notna().all()
