"""sweeps.schedule: longest trials first, the tail on the free CPUs; and on a real Ray, the
start order and the CPUs (torch threads) each trial really got."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps import ablation
from sweeps.grid import GridSpec, expand
from sweeps.runner import Resources, connect, run_trials
from sweeps.schedule import makespan, plan_schedule
from sweeps.schema import read_table
from sweeps.store import ResultStore
from testkit.tiny import tiny_params


def test_longest_first_ties_keep_grid_order():
    seconds = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 5.0}
    schedule = plan_schedule(list(seconds), seconds, cores=2)
    assert schedule.order == ("b", "d", "c", "a")
    assert schedule.cpus == dict.fromkeys(seconds, 1.0)


def test_the_grid_order_is_kept_where_longest_first_would_end_later():
    # LPT on two cores: 3+2+2 on one, 3+2 on the other, 7; this grid order packs 3+3 | 2+2+2.
    seconds = {"a": 3.0, "c": 2.0, "d": 2.0, "b": 3.0, "e": 2.0}
    schedule = plan_schedule(list(seconds), seconds, cores=2, new_actor_s=0.0)
    assert schedule.order == ("a", "c", "d", "b", "e")
    assert not schedule.longest_first
    assert schedule.makespan_s == schedule.grid_order_makespan_s == 6.0
    assert schedule.describe() == (
        "schedule: grid order (longest first would end no sooner), every trial on 1 CPU; "
        "estimated wall time 6 s"
    )
    one = dict.fromkeys(seconds, 1.0)
    lpt = sorted(seconds, key=lambda trial: -seconds[trial])
    assert makespan(lpt, seconds, one, 2, base_cpus=1.0, alpha=0.0, new_actor_s=0.0) == 7.0


def test_makespan_starts_in_order_as_cpus_free_up():
    seconds = {"a": 10.0, "b": 4.0, "c": 4.0, "d": 4.0}
    one = dict.fromkeys(seconds, 1.0)
    kw = {"base_cpus": 1.0, "alpha": 1.0, "new_actor_s": 0.0}
    # a on one core; b, c, d one after the other on the other: all end at 12.
    assert makespan(list(seconds), seconds, one, 2, **kw) == 12.0
    # d on 2 CPUs waits until both are free (a ends at 10), then runs at twice the speed.
    assert makespan(list(seconds), seconds, {**one, "d": 2.0}, 2, **kw) == 12.0
    # Order is kept: c on 2 CPUs waits for a; d cannot start before c.
    assert makespan(list(seconds), seconds, {**one, "c": 2.0}, 2, **kw) == 16.0
    # Grid order with the longest last leaves a core idle for most of a.
    assert makespan(["b", "c", "d", "a"], seconds, one, 2, **kw) == 14.0
    assert makespan(list(seconds), seconds, one, 4, max_concurrent=1, **kw) == 22.0


def test_the_last_trial_gets_the_free_cpu_when_that_ends_the_grid_sooner():
    seconds = {"short": 60.0, "long1": 100.0, "long2": 100.0}
    schedule = plan_schedule(list(seconds), seconds, cores=2, alpha=1.0, new_actor_s=6.0)
    assert schedule.order == ("long1", "long2", "short")
    assert schedule.cpus == {"long1": 1.0, "long2": 1.0, "short": 2.0}
    assert schedule.makespan_s == pytest.approx(100 + 30 + 6)
    assert schedule.grid_order_makespan_s == pytest.approx(160)
    assert "the last 1 on 2 CPUs" in schedule.describe()


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"alpha": 0.0}, "no speed-up from more threads (a busy machine)"),
        ({"alpha": 1.0, "max_cpus": 1.0}, "no node has more than one CPU"),
        ({"alpha": 1.0, "new_actor_s": 100.0}, "a new actor costs more than it saves"),
    ],
)
def test_no_widening_when_it_cannot_pay(options, why):
    seconds = {"short": 60.0, "long1": 100.0, "long2": 100.0}
    schedule = plan_schedule(list(seconds), seconds, cores=2, **options)
    assert set(schedule.cpus.values()) == {1.0}, why
    assert "every trial on 1 CPU" in schedule.describe()


def test_many_cores_widen_only_the_tail_and_never_lengthen_the_grid():
    seconds = {f"t{i:02d}": float(100 - 3 * i) for i in range(20)}
    kw = {"alpha": 0.8, "new_actor_s": 5.0}
    schedule = plan_schedule(list(seconds), seconds, cores=16, **kw)
    widened = [trial for trial in schedule.order if schedule.cpus[trial] > 1]
    assert widened and widened == list(schedule.order[-len(widened) :])
    unwidened = makespan(schedule.order, seconds, dict.fromkeys(seconds, 1.0), 16,
                         base_cpus=1.0, **kw)  # fmt: skip
    assert schedule.makespan_s < unwidened


# ------------------------------------------------------------------ on a real Ray


@pytest.mark.ray
def test_real_ray_starts_trials_longest_first_and_gives_the_tail_both_cpus(tmp_path: Path):
    baseline = tiny_params(max_iters=10, eval_interval=10, warmup_iters=0, sample_tokens=0)
    trials = expand(GridSpec("tiny", baseline, {"n_layer": [2, 3]}, seeds=1))
    ids = [trial.trial_id for trial in trials]  # grid order: baseline, n_layer 2, n_layer 3
    # Estimated times that make the grid's first trial the shortest: it runs last, alone,
    # on both CPUs.
    seconds = dict(zip(ids, [60.0, 100.0, 100.0], strict=True))
    schedule = plan_schedule(ids, seconds, cores=2, alpha=1.0, new_actor_s=6.0)
    assert schedule.order == (ids[1], ids[2], ids[0])
    by_id = {trial.trial_id: trial for trial in trials}
    widened = {t: c for t, c in schedule.cpus.items() if c != 1.0}
    assert widened == {ids[0]: 2.0}

    store = ResultStore(tmp_path / "results")
    connection = connect(num_cpus=2, results=tmp_path / "results")
    try:
        outcome = run_trials(
            connection, store, ablation.param_space([by_id[t] for t in schedule.order], widened),
            name="tiny", total=3, resources=Resources(), progress=False,
        )  # fmt: skip
    finally:
        import ray

        ray.shutdown()
    assert sorted(outcome.ok) == sorted(ids)
    rows = read_table(store.root, "trials").table.to_pandas().set_index("trial_id")
    # The widened trial started only once both 1-CPU trials had ended, with 2 torch threads.
    last = rows.loc[ids[0]]
    assert last.started_at >= max(rows.loc[ids[1]].finished_at, rows.loc[ids[2]].finished_at)
    assert rows.num_threads.to_dict() == {ids[0]: 2, ids[1]: 1, ids[2]: 1}
    # Fixed costs are recorded per trial; imports only where a process was new.
    assert (rows.setup_s > 0).all() and (rows.eval_s > 0).all()
    assert rows.import_s.notna().all()
