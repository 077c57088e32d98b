"""Rounds of trials: what the store still lacks, for fixed seeds or for ``--seeds auto``.

A fixed-seed grid is one round: every trial without an ok row. With a ``Design``
(``--seeds auto``) the store is replayed look by look (``sweeps.sequential.advance``): a
round holds the trials the current look still needs, the open levels' next seeds and the
baseline's seeds for the pairing. The store alone decides, so the same command after a
killed driver continues the design where the store stands. No Ray here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sweeps.grid import BASELINE, TrialSpec
from sweeps.manytoone import judge
from sweeps.schema import read_table
from sweeps.sequential import Design, LevelResult, Progress, advance, noise_model

if TYPE_CHECKING:
    from sweeps.estimate import Estimate

Level = tuple[str, str]  # (factor, level)


@dataclass
class _Experiment:
    """One dataset of the grid: its baseline and levels, each trial by seed."""

    baseline: dict[int, TrialSpec]
    levels: dict[Level, dict[int, TrialSpec]]

    def metrics(
        self, values: dict[str, float]
    ) -> tuple[dict[Level, dict[int, float]], dict[int, float]]:
        """(each level's, the baseline's) seed -> metric, of the trials ``values`` holds."""

        def metric(by_seed: dict[int, TrialSpec]) -> dict[int, float]:
            return {s: values[t.trial_id] for s, t in by_seed.items() if t.trial_id in values}

        return {key: metric(by_seed) for key, by_seed in self.levels.items()}, metric(self.baseline)


class SeedRounds:
    """The trials of ``trials`` to run next, given the store at ``root``.

    ``trials``: every trial the sweep may run (with a design: ``max_seeds`` per config).
    A trial is done when it has an ok row, when its row failed and it was already tried by
    this driver (``tried``), or when its store file is unreadable (left alone).
    """

    def __init__(self, trials: list[TrialSpec], root: Path, design: Design | None = None):
        self.trials, self.root, self.design = trials, root, design
        self.tried: set[str] = set()
        self.experiments: dict[str, _Experiment] = {}
        for trial in trials:
            experiment = self.experiments.setdefault(trial.dataset, _Experiment({}, {}))
            if trial.factor == BASELINE:
                experiment.baseline[trial.seed] = trial
            else:
                experiment.levels.setdefault((trial.factor, trial.level), {})[trial.seed] = trial

    def _read(self) -> tuple[dict[str, str], dict[str, float], set[str]]:
        read = read_table(self.root, "trials", columns=["trial_id", "status", "best_val_loss"])
        rows = read.table.to_pylist()
        statuses = {row["trial_id"]: row["status"] for row in rows}
        values = {
            row["trial_id"]: row["best_val_loss"]
            for row in rows
            if row["status"] == "ok"
            and row["best_val_loss"] is not None
            and math.isfinite(row["best_val_loss"])
        }
        return statuses, values, {path.stem for path, _ in read.corrupt}

    def progress(self) -> dict[str, Progress]:
        """Per dataset, where the design stands (requires a design)."""
        assert self.design is not None
        statuses, values, blocked = self._read()

        def done(trial: TrialSpec) -> bool:
            status = statuses.get(trial.trial_id)
            return (
                status == "ok"
                or (status is not None and trial.trial_id in self.tried)
                or trial.trial_id in blocked
            )

        result = {}
        for dataset, experiment in self.experiments.items():

            def done_at(key: Level | None, seed: int, experiment: _Experiment = experiment) -> bool:
                by_seed = experiment.baseline if key is None else experiment.levels[key]
                return done(by_seed[seed])

            result[dataset] = advance(self.design, *experiment.metrics(values), done_at)
        return result

    def verdicts(self, fixed: Design) -> dict[str, dict[Level, LevelResult]]:
        """Per dataset, every level's verdict as the report gives it: the design's looks
        for --seeds auto, else ``fixed`` (one look, seed-blocked Dunnett) over the store."""
        if self.design is not None and self.design.adaptive:
            return {dataset: p.results for dataset, p in self.progress().items()}
        _, values, _ = self._read()
        return {
            dataset: judge(fixed, *experiment.metrics(values))
            for dataset, experiment in self.experiments.items()
        }

    def next_round(self) -> list[TrialSpec]:
        """The trials to run now (empty: the sweep is complete); marks them as tried."""
        statuses, _, blocked = self._read()
        wanted = self.trials
        if self.design is not None:
            wanted = []
            for dataset, progress in self.progress().items():
                experiment = self.experiments[dataset]
                wanted += [experiment.baseline[s] for s in range(progress.baseline_target)]
                for key, target in progress.targets.items():
                    wanted += [experiment.levels[key][s] for s in range(target)]
        todo = [
            t
            for t in wanted
            if statuses.get(t.trial_id) != "ok"
            and t.trial_id not in blocked
            and t.trial_id not in self.tried
        ]
        self.tried.update(t.trial_id for t in todo)
        return todo

    def look_line(self) -> str:
        """Where the design stands, one line per dataset, after a round."""
        lines = []
        for dataset, progress in self.progress().items():
            decided = sum(r.verdict != "unresolved" for r in progress.results.values())
            total = len(self.experiments[dataset].levels)
            if progress.finished:
                lines.append(f"{Path(dataset).name}: design complete, {decided} of {total} "
                             "levels resolved")  # fmt: skip
            else:
                names = ", ".join(f"{f}={lv}" for f, lv in progress.targets)
                lines.append(
                    f"{Path(dataset).name}: look {progress.look + 1} of "
                    f"{self.design.looks if self.design else 1}: {decided} of {total} levels "
                    f"resolved; {names or 'the baseline'} go to "
                    f"{progress.baseline_target} seeds"
                )
        return "\n".join(lines)


def _observed(rounds: SeedRounds, dataset: str) -> tuple[list[float], list[float]] | None:
    """noise_model of ``dataset``'s configs from the store (None: not enough seeds yet)."""
    _, values, _ = rounds._read()
    return noise_model(*rounds.experiments[dataset].metrics(values))


def auto_compute(
    trials: list[TrialSpec], estimate: Estimate, design: Design, root: Path, sweeps: int = 2000
) -> str:
    """The dry run's lines for --seeds auto: trials and compute of the first round, the
    expected design (simulated: seed noise and effects from the store when it holds every
    config's first seeds, else no effects and seed noise D/2) and the worst case."""
    from sweeps.estimate import format_duration
    from sweeps.sequential import simulate

    rounds = SeedRounds(trials, root, design)
    per_trial = {
        t: (row.seconds or 0.0) + estimate.overhead_s for t, row in estimate.by_trial().items()
    }
    rng = np.random.default_rng(0)
    configs: list[tuple[float, float]] = []  # (expected seeds, seconds per trial) per config
    sources = []
    for dataset, experiment in rounds.experiments.items():
        observed = _observed(rounds, dataset) if root.is_dir() else None
        if observed is None:
            deltas = [0.0] * len(experiment.levels)
            noise, base_sd = [design.min_effect / 2] * len(experiment.levels), None
            sources.append(f"{Path(dataset).name}: no data yet, assumed no effects and seed "
                           f"noise sd {design.min_effect / 2:g}")  # fmt: skip
        else:
            (deltas, noise), base_sd = observed, 0.0
            sources.append(f"{Path(dataset).name}: effects and paired spread from {root}")
        simulation = simulate(design, np.array(deltas), np.array(noise), sweeps, rng,
                              baseline_sd=base_sd)  # fmt: skip
        seeds = simulation.seeds.mean(axis=0)
        expected = [(experiment.baseline, float(simulation.baseline_seeds.mean()))]
        expected += list(zip(experiment.levels.values(), seeds, strict=True))
        for by_seed, n in expected:
            configs.append((n, per_trial[by_seed[0].trial_id] if 0 in by_seed else 0.0))
    first = design.schedule[0]
    worst_s = sum(per_trial[t.trial_id] for t in trials)
    slots = max(1, estimate.concurrent)

    def line(name: str, n: float, seconds: float) -> str:
        return (f"  {name:<11} {n:>7.1f} trials, trial time {format_duration(seconds)}, "
                f"wall time ~{format_duration(seconds / slots)} with {slots} at once")  # fmt: skip

    return "\n".join(
        [
            f"--seeds auto ({design.describe()}):",
            line("first round", first * len(configs), first * sum(s for _, s in configs)),
            line("expected", sum(n for n, _ in configs), sum(n * s for n, s in configs)),
            line("worst case", len(trials), worst_s),
            *(f"  expected: {source}" for source in sources),
        ]
    )
