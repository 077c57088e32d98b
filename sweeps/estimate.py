"""What a sweep will cost before it runs (``--dry-run``): tokens, FLOPs and wall time.

Per distinct configuration (one row per dataset/factor/level, shared by its seeds):

- training tokens per trial = max_iters x batch_size x block_size;
- FLOPs per token = the GPT's ``flops_per_token()`` (6 x non-embedding params +
  12 x n_layer x n_embed x block_size, forward and backward);
- evaluation: train.py evaluates at step 0, every ``eval_interval`` steps and at the end,
  each time on train and val, by ``charlm.evaluation.plan_evaluation`` (at most a third as
  many tokens as training over the run); counted at its most (the train sample usually
  stops earlier, at its target standard error); an evaluated token costs a third of a
  trained one (forward only);
- seconds per step, measured here: a few AdamW steps of the real GPT on random tokens with
  torch threads = CPUs per trial. Large configurations are timed on a smaller batch and
  scaled linearly (CPU time is close to linear in the batch), so each configuration costs
  about a second at most.

Wall time = (sum of trial times + a start-up overhead per trial) / concurrent trials, and
never less than the longest trial. Probes and the final sample are not counted (small).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from charlm.config import ModelConfig, TrainConfig
from charlm.text import format_duration, scaled, text_table
from sweeps.grid import TrialSpec, trial_id

DEFAULT_OVERHEAD_S = 1.3  # Ray actor start per trial, measured on 2 cores
# Used when the caller gives no vocabulary size for a dataset (the cost barely depends on it).
KNOWN_VOCAB_SIZES = {"shakespeare_char": 65, "text8": 27, "enwik8": 256}
FALLBACK_VOCAB_SIZE = 256
# A deliberately low guess of CPU speed, only to pick the first timed batch size.
_GUESSED_FLOPS_PER_THREAD = 5e9
_CPU_BUILD_PARAMS = 5_000_000  # larger models are counted on the meta device
_MIN_TIMED_ROWS = 8  # smallest timed batch below the full one: two sizes are fitted
# Configurations timed together hold their weights and AdamW state at once (16 bytes a
# parameter): at most this many parameters per round-robin group.
_ROUND_ROBIN_PARAMS = 50_000_000


@dataclass(frozen=True)
class StepTiming:
    """Seconds per training step at the full batch size.

    ``method`` 'timed': measured on ``timed_steps`` steps of ``timed_batch_size`` rows
    (below the trial's batch size, scaled up by a linear fit). 'flops': the overall time
    budget was spent, so the step's FLOPs were priced at the speed measured on the others.
    """

    seconds_per_step: float
    timed_batch_size: int
    timed_steps: int
    threads: int
    method: str = "timed"
    device: str = "cpu"  # every estimate is timed on the CPU


@dataclass(frozen=True)
class ConfigEstimate:
    """The cost of one distinct configuration, per trial, and the trials that share it."""

    config_id: str  # the trial id with seed 0: the same for every seed of a configuration
    dataset: str
    factor: str
    level: str
    trial_ids: tuple[str, ...]
    n_params: int  # non-embedding parameters (GPT.num_params())
    flops_per_token: int  # training (forward + backward)
    train_steps: int  # max_iters
    train_tokens: int  # per trial: max_iters x batch_size x block_size
    eval_passes: int
    eval_tokens: int  # per trial, all passes and splits
    flops: float  # per trial: training + evaluation
    timing: StepTiming | None  # None when not measured

    @property
    def n_trials(self) -> int:
        return len(self.trial_ids)

    @property
    def seconds(self) -> float | None:
        """Estimated seconds of one trial (training and evaluation, no start-up overhead)."""
        if self.timing is None:
            return None
        seconds_per_token = self.timing.seconds_per_step * self.train_steps / self.train_tokens
        return self.timing.seconds_per_step * self.train_steps + (
            self.eval_tokens * seconds_per_token / 3
        )


@dataclass(frozen=True)
class Estimate:
    """Per-configuration rows and totals for a list of trials on the resources given."""

    rows: tuple[ConfigEstimate, ...]
    cpus_per_trial: float
    concurrent: int
    overhead_s: float
    measured_on: str  # e.g. 'cpu, 1 thread per trial'; '' when not measured
    load_average: float | None = None  # the machine's 1-minute load when timing began

    @property
    def n_trials(self) -> int:
        return sum(row.n_trials for row in self.rows)

    @property
    def total_flops(self) -> float:
        return sum(row.flops * row.n_trials for row in self.rows)

    @property
    def total_tokens(self) -> int:
        return sum(row.train_tokens * row.n_trials for row in self.rows)

    @property
    def trial_seconds(self) -> float | None:
        """Sum over trials of their time, start-up overhead included."""
        if any(row.seconds is None for row in self.rows):
            return None
        return sum(((row.seconds or 0.0) + self.overhead_s) * row.n_trials for row in self.rows)

    @property
    def wall_seconds(self) -> float | None:
        """Trial time spread over the concurrent slots, at least the longest trial."""
        total = self.trial_seconds
        if total is None or not self.rows:
            return total
        longest = max(row.seconds or 0.0 for row in self.rows) + self.overhead_s
        return max(total / max(1, self.concurrent), longest)

    def by_trial(self) -> dict[str, ConfigEstimate]:
        """The row each trial belongs to, by trial id."""
        return {trial_id: row for row in self.rows for trial_id in row.trial_ids}


def eval_passes(train: TrainConfig) -> int:
    """Evaluations in one run: at step 0, every eval_interval steps, and at max_iters."""
    from charlm.evaluation import n_evaluations

    return n_evaluations(train)


def _split_lengths(dataset: str) -> dict[str, int] | None:
    """Train and val lengths in tokens, from the dataset's published size (no loading);
    a local file's byte size stands in for its character count."""
    from charlm.data import DATASETS

    if dataset in DATASETS:
        spec = DATASETS[dataset]
        if spec.split_sizes is not None:
            return {"train": spec.split_sizes[0], "val": spec.split_sizes[1]}
        size = spec.size
    elif os.path.isfile(dataset):
        size = os.path.getsize(dataset)
    else:
        return None
    return {"train": size * 9 // 10, "val": size - size * 9 // 10}


def eval_tokens_per_pass(model: ModelConfig, train: TrainConfig) -> int:
    """Tokens one evaluation reads at most over train and val (see the module docstring)."""
    from charlm.evaluation import plan_evaluation

    lengths = _split_lengths(train.dataset)
    if lengths is None:  # unknown sizes: as if both splits were large
        lengths = {"train": 2**62, "val": 2**62}
    return plan_evaluation(lengths, model.block_size, train).max_windows() * model.block_size


def with_vocab(model: ModelConfig, dataset: str, vocab_sizes: Mapping[str, int]) -> ModelConfig:
    """``model`` with its vocabulary size set: its own, else the dataset's (``vocab_sizes``,
    then KNOWN_VOCAB_SIZES, then 256)."""
    if model.vocab_size is not None:
        return model
    size = vocab_sizes.get(dataset, KNOWN_VOCAB_SIZES.get(dataset, FALLBACK_VOCAB_SIZE))
    return dataclasses.replace(model, vocab_size=size)


def _count(model: ModelConfig) -> tuple[int, int]:
    """(non-embedding params, FLOPs per token) of the real GPT.

    Small models are built on the CPU (milliseconds); large ones on the meta device, which
    allocates nothing but costs a one-time import of about a second.
    """
    from charlm.model import GPT

    rough_params = 12 * model.n_layer * model.n_embed**2 + (model.vocab_size or 0) * model.n_embed
    device = "cpu" if rough_params < _CPU_BUILD_PARAMS else "meta"
    # Initialisation draws stay out of the caller's RNG.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        gpt = GPT(model)
    return gpt.num_params(), gpt.flops_per_token()


def n_params(model: ModelConfig, dataset: str, vocab_sizes: Mapping[str, int]) -> int:
    """The non-embedding parameters of the GPT of ``model`` on ``dataset`` (what a trial's
    ``n_params`` reports), counted without timing anything."""
    return _count(with_vocab(model, dataset, vocab_sizes))[0]


class _StepTimer:
    """AdamW steps of the real GPT of one configuration on random tokens, sized and warmed
    up on construction, then timed one step at a time (``time_step``) so that several
    configurations' steps can be interleaved: a machine whose load changes while the
    estimate runs then slows every configuration alike, not the ones timed last."""

    def __init__(self, model: ModelConfig, batch_size: int, budget_s: float, warmup_steps: int):
        from charlm.model import GPT

        if model.vocab_size is None:
            raise ValueError("time_train_step needs model.vocab_size: set it from the dataset.")
        self.model, self.batch_size = model, batch_size
        self.generator = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
            torch.manual_seed(0)
            self.gpt = GPT(model)
        self.gpt.train()
        self.optimizer = self.gpt.configure_optimizer(0.1, 3e-4, (0.9, 0.99), "cpu")
        self.flops_per_token = self.gpt.flops_per_token()
        self.n_params = self.gpt.num_params()
        self.batch = self._warm_up(budget_s, warmup_steps, torch.get_num_threads())
        # Below the full batch, time two sizes and fit seconds = fixed + per_row * rows, so
        # the fixed per-step cost (optimizer, Python) is not scaled up with the batch.
        self.small = max(1, self.batch // 2) if self.batch < batch_size else self.batch
        self.times: dict[int, list[float]] = {self.batch: [], self.small: []}

    def _warm_up(self, budget_s: float, warmup_steps: int, threads: int) -> int:
        """Warm-up steps; the batch rows that make a step take its share of ``budget_s``:
        a low guess of the speed first, corrected after the warm-up (the first is slow)."""
        step_target = budget_s / (warmup_steps + 3 + 1)
        min_rows = min(self.batch_size, _MIN_TIMED_ROWS)
        guess = _GUESSED_FLOPS_PER_THREAD * max(1, threads) * step_target
        fitting = int(guess / (self.flops_per_token * self.model.block_size))
        batch = min(self.batch_size, max(min_rows, fitting))
        warm = [self._step(batch) for _ in range(max(1, warmup_steps))]
        if len(warm) > 1:
            batch = min(self.batch_size, max(min_rows, int(batch * step_target / warm[-1])))
        return batch

    def _step(self, rows: int) -> float:
        vocab_size = self.model.vocab_size or 1
        shape = (rows, self.model.block_size)
        x = torch.randint(vocab_size, shape, generator=self.generator)
        y = torch.randint(vocab_size, shape, generator=self.generator)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # dropout draws stay out of the caller's RNG
            _, loss = self.gpt(x, y)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.gpt.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def time_step(self, index: int) -> None:
        """Time the ``index``-th step (odd ones on the smaller batch, when there is one)."""
        rows = self.small if index % 2 == 1 else self.batch
        self.times[rows].append(self._step(rows))

    def timing(self, threads: int) -> StepTiming:
        """Seconds per step at the full batch: the least disturbed (fastest) step, scaled
        to the full batch by the two-size fit."""
        large_s = min(self.times[self.batch])
        per_step = large_s
        if self.batch < self.batch_size:
            per_step = large_s * self.batch_size / self.batch
            if self.times[self.small] and self.batch > self.small:
                per_row = (large_s - min(self.times[self.small])) / (self.batch - self.small)
                fixed = large_s - per_row * self.batch
                if per_row > 0 and fixed >= 0:
                    per_step = fixed + per_row * self.batch_size
        return StepTiming(
            seconds_per_step=per_step,
            timed_batch_size=self.batch,
            timed_steps=sum(len(values) for values in self.times.values()),
            threads=max(1, threads),
        )


def time_train_step(
    model: ModelConfig,
    batch_size: int,
    *,
    threads: int = 1,
    budget_s: float = 1.0,
    warmup_steps: int = 2,
    timed_steps: int = 3,
) -> tuple[StepTiming, int, int]:
    """Time AdamW steps of the real GPT on random tokens on the CPU; also return its params
    and FLOPs.

    ``model.vocab_size`` must be set. Returns (timing, non-embedding params, FLOPs per
    token). The batch is shrunk until ``warmup_steps + timed_steps`` steps fit in
    about ``budget_s`` seconds and the time is scaled back to ``batch_size``; torch's thread
    count is ``threads`` while timing and restored afterwards.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        started = time.perf_counter()
        timer = _StepTimer(model, batch_size, budget_s, warmup_steps)
        for index in range(timed_steps):
            if time.perf_counter() - started > budget_s and timer.times[timer.batch]:
                break  # a big configuration: fewer steps
            timer.time_step(index)
        return timer.timing(threads), timer.n_params, timer.flops_per_token
    finally:
        torch.set_num_threads(previous_threads)


def _time_round_robin(
    keys: Sequence[tuple[ModelConfig, int]],
    *,
    threads: int,
    budget_s: float,
    total_budget_s: float,
    min_rounds: int = 6,
    max_rounds: int = 40,
) -> dict[tuple[ModelConfig, int], _StepTimer]:
    """A sized, warmed-up timer per (model, batch size) while ``total_budget_s`` lasts (one
    at least), then their timed steps interleaved round-robin (every configuration's
    first step, then every second step, ...) in groups that fit ``_ROUND_ROBIN_PARAMS``:
    ``min_rounds`` rounds, then more while the budget lasts (each configuration's fastest
    step counts, so more rounds find the least disturbed one). Load that comes and goes
    while timing then slows every configuration alike instead of the ones timed last."""
    started = time.perf_counter()
    timers: dict[tuple[ModelConfig, int], _StepTimer] = {}
    for key in keys:
        if timers and time.perf_counter() - started > total_budget_s:
            break
        timers[key] = _StepTimer(key[0], key[1], budget_s, warmup_steps=2)
    groups: list[list[_StepTimer]] = [[]]
    for timer in timers.values():
        held = sum(t.n_params for t in groups[-1])
        if groups[-1] and held + timer.n_params > _ROUND_ROBIN_PARAMS:
            groups.append([])
        groups[-1].append(timer)
    for group in groups:
        for index in range(max_rounds):
            if index >= min_rounds and time.perf_counter() - started > total_budget_s:
                break
            for timer in group:
                timer.time_step(index)
    return timers


def estimate(
    trials: Sequence[TrialSpec],
    cpus_per_trial: float = 1,
    concurrent: int = 1,
    vocab_size_by_dataset: Mapping[str, int] | None = None,
    *,
    measure: bool = True,
    overhead_s: float = DEFAULT_OVERHEAD_S,
    budget_s: float = 0.5,
    total_budget_s: float = 5.0,
) -> Estimate:
    """Tokens, FLOPs and (when ``measure``) time of ``trials`` on these resources.

    ``cpus_per_trial`` sets the torch threads of the timing runs (at least 1);
    ``concurrent`` is how many trials run at once (cluster CPUs // CPUs per trial, or the
    GPU slots); ``vocab_size_by_dataset`` gives each dataset's vocabulary size (defaults:
    KNOWN_VOCAB_SIZES, else 256). Each distinct model shape and batch size is timed once
    on the CPU, for about ``budget_s`` seconds (one step at least); once timing has taken
    ``total_budget_s``, the remaining configurations are priced by their FLOPs at the speed
    measured so far.
    """
    vocab_sizes = dict(vocab_size_by_dataset or {})
    threads = max(1, int(cpus_per_trial))
    groups: dict[str, list[TrialSpec]] = {}
    for trial in trials:
        config_id = trial_id(trial.model, dataclasses.replace(trial.train, seed=0))
        groups.setdefault(config_id, []).append(trial)
    models = {
        key: with_vocab(ts[0].model, ts[0].dataset, vocab_sizes) for key, ts in groups.items()
    }
    load = os.getloadavg()[0] if measure and hasattr(os, "getloadavg") else None
    counted: dict[ModelConfig, tuple[int, int]] = {}
    timed: dict[tuple[ModelConfig, int], StepTiming] | None = None
    measured_on = ""
    if measure:
        keys = {(models[key], ts[0].train.batch_size): None for key, ts in groups.items()}
        timed, counted = _measure(list(keys), threads, budget_s, total_budget_s)
        measured_on = f"cpu, {threads} thread{'s' if threads != 1 else ''} per trial"
    rows = [_row(key, ts, models[key], counted, timed) for key, ts in groups.items()]
    return Estimate(
        rows=tuple(rows),
        cpus_per_trial=cpus_per_trial,
        concurrent=max(1, concurrent),
        overhead_s=overhead_s,
        measured_on=measured_on,
        load_average=load,
    )


def _row(
    config_id: str,
    members: list[TrialSpec],
    model: ModelConfig,
    counted: dict[ModelConfig, tuple[int, int]],
    timed: Mapping[tuple[ModelConfig, int], StepTiming] | None,
) -> ConfigEstimate:
    """The estimate of one configuration (``members`` its trials); ``timed`` None: not
    measured; a configuration it lacks (out of time) is priced by its FLOPs at the speed
    measured on the others."""
    first, train = members[0], members[0].train
    if model not in counted:
        counted[model] = _count(model)
    n_params, flops_per_token = counted[model]
    timing = timed.get((model, train.batch_size)) if timed is not None else None
    if timed is not None and timing is None:
        step_flops = flops_per_token * train.batch_size * model.block_size
        any_timing = next(iter(timed.values()))
        timing = dataclasses.replace(
            any_timing, seconds_per_step=_seconds_per_flop(timed, counted) * step_flops,
            timed_batch_size=0, timed_steps=0, method="flops",
        )  # fmt: skip
    train_tokens = train.max_iters * train.batch_size * model.block_size
    passes = eval_passes(train)
    eval_tokens = passes * eval_tokens_per_pass(model, train)
    return ConfigEstimate(
        config_id=config_id,
        dataset=first.dataset,
        factor=first.factor,
        level=first.level,
        trial_ids=tuple(trial.trial_id for trial in members),
        n_params=n_params,
        flops_per_token=flops_per_token,
        train_steps=train.max_iters,
        train_tokens=train_tokens,
        eval_passes=passes,
        eval_tokens=eval_tokens,
        flops=float(flops_per_token) * (train_tokens + eval_tokens / 3),
        timing=timing,
    )


def _measure(
    keys: Sequence[tuple[ModelConfig, int]], threads: int, budget_s: float, total_budget_s: float
) -> tuple[dict[tuple[ModelConfig, int], StepTiming], dict[ModelConfig, tuple[int, int]]]:
    """Step timings of ``keys`` (round-robin, see ``_time_round_robin``) on ``threads``
    torch threads, and the (params, FLOPs per token) of each model timed."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _warm_up_torch()
        timers = _time_round_robin(
            keys, threads=threads, budget_s=budget_s, total_budget_s=total_budget_s
        )
    finally:
        torch.set_num_threads(previous_threads)
    timed = {key: timer.timing(threads) for key, timer in timers.items()}
    counted = {key[0]: (timer.n_params, timer.flops_per_token) for key, timer in timers.items()}
    return timed, counted


def _warm_up_torch() -> None:
    """Pay torch's one-time costs (the optimizer's lazy imports, first kernels of attention
    and dropout) on a tiny GPT, so they are not charged to the first configuration."""
    tiny = ModelConfig(n_layer=1, n_head=2, n_embed=16, block_size=16, dropout=0.1, vocab_size=8)
    time_train_step(tiny, 2, budget_s=0.0, warmup_steps=1, timed_steps=1)


def _seconds_per_flop(
    timed: Mapping[tuple[ModelConfig, int], StepTiming],
    counted: Mapping[ModelConfig, tuple[int, int]],
) -> float:
    """Training seconds per FLOP over the configurations timed so far (a pooled rate)."""
    seconds = flops = 0.0
    for (model, batch_size), timing in timed.items():
        seconds += timing.seconds_per_step
        flops += counted[model][1] * batch_size * model.block_size
    return seconds / flops if flops else 1.0 / _GUESSED_FLOPS_PER_THREAD


# ---------------------------------------------------------------- formatting


def load_text(load_average: float) -> str:
    """'load average 1.84 on 2 CPUs': how busy the machine was while steps were timed (a
    busy machine times every step slower, so its estimate runs long or short with it)."""
    return f"load average {load_average:.2f} on {os.cpu_count() or 1} CPUs"


def _timed_on(estimate: Estimate) -> str:
    """'timed on cpu, 1 thread per trial, load average ...', or 'not timed'."""
    timed_on = f"timed on {estimate.measured_on}" if estimate.measured_on else "not timed"
    if estimate.load_average is None:
        return timed_on
    return f"{timed_on}, {load_text(estimate.load_average)}"


def _milliseconds(timing: StepTiming | None) -> str:
    if timing is None:
        return "-"
    return f"{'~' if timing.method == 'flops' else ''}{timing.seconds_per_step * 1000:.1f}"


def format_table(trials: Sequence[TrialSpec], estimate: Estimate) -> str:
    """The trials (id, dataset, factor, level, seed, params), their count, then the estimate."""
    rows = estimate.by_trial()
    trial_rows = [
        (t.trial_id, t.dataset, t.factor, t.level, str(t.seed), f"{rows[t.trial_id].n_params:,}")
        for t in trials
    ]
    trial_header = ("trial_id", "dataset", "factor", "level", "seed", "params")
    lines = text_table(trial_header, trial_rows, {4, 5})
    n_configs = len({(t.dataset, t.factor, t.level) for t in trials})
    n_seeds, n_datasets = len({t.seed for t in trials}), len({t.dataset for t in trials})
    lines.append(
        f"{len(trials)} trial{'s' if len(trials) != 1 else ''}: {n_configs} configs "
        f"x {n_seeds} seed{'s' if n_seeds != 1 else ''} x {n_datasets} "
        f"dataset{'s' if n_datasets != 1 else ''} (repeats of the baseline dropped)"
    )
    lines.append("")
    lines.append(
        f"compute estimate ({_timed_on(estimate)}; "
        f"{estimate.concurrent} concurrent trial{'s' if estimate.concurrent != 1 else ''}; "
        f"{estimate.overhead_s:g} s start-up per trial):"
    )
    config_rows = [
        (
            row.dataset,
            row.factor,
            row.level,
            str(row.n_trials),
            f"{row.n_params:,}",
            scaled(row.train_tokens),
            scaled(row.flops, "FLOP"),
            _milliseconds(row.timing),
            format_duration(row.seconds),
        )
        for row in estimate.rows
    ]
    header = (
        "dataset", "factor", "level", "trials", "params", "tokens/trial", "FLOPs/trial",
        "ms/step", "time/trial",
    )  # fmt: skip
    lines.extend(text_table(header, config_rows, {3, 4, 5, 6, 7, 8}))
    if any(row.timing is not None and row.timing.method == "flops" for row in estimate.rows):
        lines.append("~ priced by FLOPs at the speed measured on the others (time budget spent)")
    lines.append(
        f"total: {estimate.n_trials} trials, {scaled(estimate.total_tokens)} training tokens, "
        f"{scaled(estimate.total_flops, 'FLOP')}; trial time "
        f"{format_duration(estimate.trial_seconds)}, wall time "
        f"{format_duration(estimate.wall_seconds)} with {estimate.concurrent} at once"
    )
    return "\n".join(lines)


def asha_fraction(
    max_iters: int, eval_interval: int, max_t: int, grace: int, reduction_factor: float
) -> float:
    """The expected share of its steps a search trial trains under ASHA, if each rung
    stops the worse ``1 - 1/reduction_factor`` of the trials reaching it (what ASHA aims
    at; its first trials pass rungs that hold no results yet, so a real search trains
    somewhat more). Rungs at ``grace x factor^k`` reports (Ray's ASHA); report r comes at
    step (r - 1) x ``eval_interval`` (step 0 is the first)."""
    alive, steps = 1.0, 0.0
    rung = float(grace)
    while rung < max_t:
        stopped = alive * (1 - 1 / reduction_factor)
        steps += stopped * min((rung - 1) * eval_interval, max_iters)
        alive -= stopped
        rung *= reduction_factor
    return (steps + alive * max_iters) / max_iters


def format_search_estimate(estimate: Estimate, seeds: int, fraction: float) -> str:
    """The search's dry run: its sampled trials' compute when every trial trains to the
    end (an upper bound) and as ASHA is expected to stop them (``asha_fraction``)."""
    trials = estimate.n_trials // max(1, seeds)
    times = sorted((row.seconds or 0.0) * seeds for row in estimate.rows)
    spread = (
        f"a trial takes {format_duration(times[0])} to {format_duration(times[-1])} "
        f"(median {format_duration(times[len(times) // 2])}) to the end"
        if times
        else ""
    )

    def line(what: str, share: float) -> str:
        trial_s = (estimate.trial_seconds or 0.0) * share
        wall_s = (estimate.wall_seconds or 0.0) * share
        return (
            f"  {what}: {scaled(estimate.total_tokens * share)} training tokens, "
            f"{scaled(estimate.total_flops * share, 'FLOP')}; trial time "
            f"{format_duration(trial_s)}, wall time {format_duration(wall_s)} with "
            f"{estimate.concurrent} at once"
        )

    return "\n".join([
        f"{trials} trials x {seeds} seed{'s' * (seeds != 1)}, configs drawn at random from "
        f"the search space as TPE's first trials are ({_timed_on(estimate)}; {spread}):",
        line("every trial to its last step (upper bound)", 1.0),
        line(f"with ASHA stopping trials early (expected: {fraction:.0%} of the steps)", fraction),
    ])  # fmt: skip
