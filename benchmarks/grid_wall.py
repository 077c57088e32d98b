"""The whole grid's wall time: the sweep service against the loop a user would write instead.

    python benchmarks/grid_wall.py [--steps 400] [--seeds 2] [--factors all|subset|f1,f2]
        [--cores N] [--loop-eval-iters 200] [--loop-model notebook|charlm] [--loop-first]

Runs the notebook preset shortened to ``--steps`` steps x ``--seeds`` seeds (22 trials by
default) twice, back to back in one process:

1. **The service**, as ``python sweeps/ablation.py`` runs it: an embedded Ray on ``--cores``
   CPUs, the trials longest first (``sweeps.schedule``), one CPU per trial, evaluation
   within its budget (``charlm.evaluation``), probes, samples, checkpoints and the Parquet
   store. Timed from Ray's start to its shutdown.
2. **The notebook loop**: the same trainings (same configs, seeds, batches and
   initialisation) one after the other with all threads, evaluating as the notebook does:
   ``eval_iters`` (200) fresh random batches per split at every evaluation, and a 300-token
   sample at the end. Its model is the notebook's (``--loop-model notebook``, the default):
   nanoGPT's maths with torch's own dropout and SDPA's ``dropout_p``, which is
   ``GPT(cfg, fast_dropout=False)``. ``--loop-model charlm`` gives the loop the service's CPU
   dropout path instead, to see what the scheduling and the evaluation alone are worth.

With the notebook's model, the script also times a few training steps of both models per
config, in pairs (outside both wall times), and estimates what the loop would have taken
with the service's model: the ratio against that is the share of the gain that is not the
model's dropout path.

It prints both wall times and their ratio (target: the service in at most half the loop's
time on 2 cores), where the service's core-seconds went (training steps, evaluation, probes,
samples, checkpoints, per-trial set-up and imports, Ray's own share, start-up and stop, idle
cores), and the mean final val loss per level for both, with the seeds' standard error
(their dropout masks differ, so they agree within seed noise, not exactly).

The full default run took 2 h 3 min on an idle 2-core machine (2 min of paired timing,
30 min of service, 90 min of loop); ``--steps 100 --seeds 1 --factors subset`` takes ~9 min.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch

from charlm.data import get_batch, load_dataset
from charlm.model import GPT
from charlm.sample import generate_text
from charlm.train import lr_at
from sweeps.ablation import param_space, schedule_trials
from sweeps.grid import PRESETS, TrialSpec, expand
from sweeps.launch import prepare_datasets
from sweeps.runner import Resources, RunSettings, connect, run_trials
from sweeps.schema import read_table
from sweeps.store import ResultStore

SUBSET = ["n_layer", "block_size"]  # the longest and the shortest trials
SAMPLE_TOKENS = 300
PAIRED_STEPS = 5  # training steps per model per round of the paired step timing
LOOP_MODELS = {"notebook": False, "charlm": True}  # --loop-model -> GPT(fast_dropout=...)


@dataclass
class Run:
    """One way of running the grid: its wall time, where it went, final val loss per trial."""

    wall_s: float
    val_loss: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)  # name -> core-seconds or seconds
    threads: dict[str, int] = field(default_factory=dict)
    train_s: dict[str, float] = field(default_factory=dict)  # the loop's training per trial


def plan(args: argparse.Namespace) -> list[TrialSpec]:
    factors = None if args.factors == "all" else SUBSET if args.factors == "subset" else [
        name.strip() for name in args.factors.split(",") if name.strip()
    ]  # fmt: skip
    return expand(PRESETS["notebook"], factors=factors, seeds=args.seeds, max_iters=args.steps)


def service(trials: list[TrialSpec], cores: int) -> Run:
    """The ablation CLI's run path on an embedded Ray, timed from Ray's start to its stop."""
    vocab_sizes = prepare_datasets(trials)
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "results")
        start = time.time()
        connection = connect(num_cpus=cores, results=store.root)
        connected = time.time()
        try:
            resources = Resources(cpus_per_trial=1.0)
            ordered, line, _ = schedule_trials(trials, resources, vocab_sizes)
            planned = time.time()
            print(f"  {line}", flush=True)
            run_trials(
                connection, store, param_space(ordered), RunSettings(
                    name="grid_wall", total=len(ordered), resources=resources, progress=False),
            )  # fmt: skip
        finally:
            ray.shutdown()
        end = time.time()
        rows = read_table(store.root, "trials").table.to_pylist()
    first = min(row["started_at"].timestamp() for row in rows)
    last = max(row["finished_at"].timestamp() for row in rows)
    spans = {
        r["trial_id"]: r["finished_at"].timestamp() - r["started_at"].timestamp() for r in rows
    }
    threads = {row["trial_id"]: row["num_threads"] or 1 for row in rows}
    busy = sum(spans[t] * threads[t] for t in spans)

    def core_s(key: str) -> float:
        return sum((row[key] or 0.0) * threads[row["trial_id"]] for row in rows)

    parts = {
        "training steps": core_s("steps_s"),
        "evaluation": core_s("eval_s"),
        "probes": core_s("probe_s"),
        "samples": core_s("sample_s"),
        "checkpoints": core_s("checkpoint_s"),
        "set-up in train() (dataset, model, optimizer)": core_s("setup_s"),
    }
    parts["Ray/Tune within trials (reports, checkpoint upload)"] = busy - sum(parts.values())
    # A new trial process imports before its trial starts: the first processes' imports
    # fall in the start-up, later ones between trials (clipped to the trials' window).
    imports = sum(
        threads[row["trial_id"]] * max(0.0, min(started, last) - max(started - imported, first))
        for row in rows
        if (imported := row["import_s"] or 0.0)
        and (started := row["started_at"].timestamp()) > first
    )  # fmt: skip
    parts["imports in new trial processes (after the first trials)"] = imports
    parts[f"start-up: Ray {connected - start:.1f} s, schedule {planned - connected:.1f} s, "
          f"first trial {first - planned:.1f} s (with imports)"] = cores * (
        first - start
    )  # fmt: skip
    parts["stop (last trial's end to Ray shut down)"] = cores * (end - last)
    parts["idle cores while trials ran"] = cores * (last - first) - busy - imports
    return Run(
        wall_s=end - start,
        val_loss={row["trial_id"]: row["final_val_loss"] for row in rows},
        seconds=parts,
        threads=threads,
    )


@torch.no_grad()
def notebook_loss(
    model: GPT, data, spec: TrialSpec, generator: torch.Generator, eval_iters: int
) -> dict:
    """The notebook's estimate_loss: eval_iters fresh random batches per split."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = []
        for _ in range(eval_iters):
            x, y = get_batch(data.splits[split], spec.train.batch_size, spec.model.block_size,
                             generator)  # fmt: skip
            losses.append(model(x, y)[1].item())
        out[split] = statistics.fmean(losses)
    model.train()
    return out


def _train_step(
    model: GPT, optimizer, data, spec: TrialSpec, step: int, batches: torch.Generator
) -> None:
    """One step of the notebook's training: lr schedule, batch, backward, clip, AdamW."""
    cfg = spec.train
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    x, y = get_batch(data.splits["train"], cfg.batch_size, spec.model.block_size, batches)
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _model(
    spec: TrialSpec, vocab_size: int, fast_dropout: bool
) -> tuple[GPT, torch.optim.Optimizer]:
    cfg = spec.train
    torch.manual_seed(cfg.seed)
    model = GPT(dataclasses.replace(spec.model, vocab_size=vocab_size), fast_dropout=fast_dropout)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate,
                                          (cfg.beta1, cfg.beta2), "cpu")  # fmt: skip
    return model, optimizer


def step_time_ratios(trials: list[TrialSpec], cores: int, rounds: int = 2) -> dict:
    """Per config: the service model's training step time over the notebook model's, at
    ``cores`` threads, timed in alternating rounds of ``PAIRED_STEPS`` steps each."""
    torch.set_num_threads(cores)
    ratios = {}
    for spec in trials:
        if spec.model in ratios:
            continue
        data = load_dataset(spec.train.dataset, spec.train.data_dir)
        models = {fast: _model(spec, data.vocab_size, fast) for fast in (True, False)}
        elapsed = {True: 0.0, False: 0.0}
        for round_ in range(rounds + 1):  # round 0 warms up
            for fast, (model, optimizer) in models.items():
                batches = torch.Generator().manual_seed(round_)
                began = time.perf_counter()
                for step in range(PAIRED_STEPS):
                    _train_step(model, optimizer, data, spec, step, batches)
                elapsed[fast] += (time.perf_counter() - began) if round_ else 0.0
        ratios[spec.model] = elapsed[True] / elapsed[False]
    return ratios


def notebook_loop(trials: list[TrialSpec], cores: int, eval_iters: int, fast_dropout: bool) -> Run:
    """One trial after the other with all threads: the same training, the notebook's
    evaluation, a sample at the end."""
    torch.set_num_threads(cores)
    parts: dict[str, float] = defaultdict(float)
    val_loss, train_s = {}, {}
    start = time.perf_counter()
    for spec in trials:
        cfg = spec.train
        data = load_dataset(cfg.dataset, cfg.data_dir)
        model, optimizer = _model(spec, data.vocab_size, fast_dropout)
        batches = torch.Generator().manual_seed(cfg.seed)
        eval_batches = torch.Generator().manual_seed(1337)
        train_s[spec.trial_id] = 0.0
        for step in range(cfg.max_iters + 1):
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                began = time.perf_counter()
                losses = notebook_loss(model, data, spec, eval_batches, eval_iters)
                parts["evaluation"] += time.perf_counter() - began
            if step == cfg.max_iters:
                break
            began = time.perf_counter()
            _train_step(model, optimizer, data, spec, step, batches)
            train_s[spec.trial_id] += time.perf_counter() - began
        parts["training steps"] += train_s[spec.trial_id]
        began = time.perf_counter()
        generate_text(model, data, "\n", SAMPLE_TOKENS, cfg.temperature, cfg.top_k, cfg.seed)
        parts["samples"] += time.perf_counter() - began
        val_loss[spec.trial_id] = losses["val"]
    wall = time.perf_counter() - start
    parts["other (model build, Python)"] = wall - sum(parts.values())
    return Run(wall_s=wall, val_loss=val_loss, seconds=dict(parts), train_s=train_s)


def same_code_loop(trials: list[TrialSpec], loop: Run, ratios: dict) -> float:
    """The loop's wall time had it trained with the service's model: its training steps
    scaled per config by the paired step-time ratio, everything else as measured."""
    scaled = sum(loop.train_s[t.trial_id] * ratios[t.model] for t in trials)
    return loop.wall_s - sum(loop.train_s.values()) + scaled


def report(
    trials: list[TrialSpec], cores: int, svc: Run, loop: Run, eval_iters: int,
    loop_model: str, ratios: dict | None,
) -> str:  # fmt: skip
    ratio = svc.wall_s / loop.wall_s
    model = ("the notebook's model: torch's dropout, SDPA dropout_p" if loop_model == "notebook"
             else "the service's model: charlm's CPU dropout path")  # fmt: skip
    lines = [
        f"notebook preset, {trials[0].train.max_iters} steps x "
        f"{len({t.seed for t in trials})} seeds: {len(trials)} trials on {cores} cores",
        f"service (LPT order, budgeted evaluation): {svc.wall_s:8.1f} s",
        f"notebook loop ({cores} threads, {eval_iters} batches per split per evaluation, "
        f"{model}): {loop.wall_s:8.1f} s",
        f"ratio service / loop: {ratio:.3f}  (target <= 0.50: "
        f"{'met' if ratio <= 0.5 else 'not met'})",
    ]
    if ratios:
        same = same_code_loop(trials, loop, ratios)
        lines += [
            "service model's training step / notebook model's (paired, per config): "
            + ", ".join(f"{r:.2f}" for r in ratios.values()),
            f"the loop with the service's model (estimated from those ratios): {same:8.1f} s; "
            f"ratio service / that loop: {svc.wall_s / same:.3f}",
        ]
    lines.append(
        f"where the service's {cores} cores x {svc.wall_s:.0f} s = {cores * svc.wall_s:.0f} "
        "core-s went:"
    )
    total = cores * svc.wall_s
    for name, value in svc.seconds.items():
        lines.append(f"  {name:<66} {value:8.1f} core-s  {100 * value / total:5.1f}%")
    lines.append(f"where the loop's {loop.wall_s:.0f} s went ({cores} threads throughout):")
    for name, value in loop.seconds.items():
        lines.append(f"  {name:<66} {value:8.1f} s       {100 * value / loop.wall_s:5.1f}%")
    lines.append("mean final val loss per level (service: exact or budgeted sample; loop: "
                 f"{eval_iters} random batches):")  # fmt: skip
    lines.append(f"  {'factor':<12}{'level':<10}{'seeds':>6}{'service':>10}{'loop':>10}"
                 f"{'diff':>9}{'seed stderr':>13}")  # fmt: skip
    levels: dict[tuple[str, str], list[TrialSpec]] = defaultdict(list)
    for trial in trials:
        levels[(trial.factor, trial.level)].append(trial)
    for (factor, level), members in levels.items():
        ours = [svc.val_loss[t.trial_id] for t in members]
        theirs = [loop.val_loss[t.trial_id] for t in members]
        spread = statistics.stdev(ours) / math.sqrt(len(ours)) if len(ours) > 1 else math.nan
        lines.append(
            f"  {factor:<12}{level:<10}{len(members):>6}{statistics.fmean(ours):>10.4f}"
            f"{statistics.fmean(theirs):>10.4f}"
            f"{statistics.fmean(ours) - statistics.fmean(theirs):>+9.4f}{spread:>13.4f}"
        )
    lines.append(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
                 "(1, 5, 15 min)")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="steps per trial (default 400)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per config (default 2)")
    parser.add_argument(
        "--factors",
        default="all",
        help=f"all (default), subset ({','.join(SUBSET)}) or a comma list",
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count() or 1,
        help="CPUs for both (default: this machine's)",
    )
    parser.add_argument(
        "--loop-eval-iters",
        type=int,
        default=200,
        help="the loop's random batches per split per evaluation (default 200, the "
        "notebook's; lower only to check the script on a busy machine)",
    )
    parser.add_argument(
        "--loop-model",
        choices=sorted(LOOP_MODELS),
        default="notebook",
        help="the loop's model: notebook (default: torch's dropout and SDPA dropout_p, as a "
        "notebook writes nanoGPT) or charlm (the service's CPU dropout path)",
    )
    parser.add_argument(
        "--loop-first", action="store_true", help="run the loop before the service (default: after)"
    )
    args = parser.parse_args()  # fmt: skip
    trials = plan(args)
    print(f"grid_wall: {len(trials)} trials, {args.cores} cores, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    ratios = None
    if args.loop_model == "notebook":
        began = time.perf_counter()
        ratios = step_time_ratios(trials, args.cores)
        print(f"paired step timing of the two models: {time.perf_counter() - began:.1f} s "
              "(in neither wall time)", flush=True)  # fmt: skip
    runs: dict[str, Run] = {}
    for name in ("loop", "service") if args.loop_first else ("service", "loop"):
        print(f"running the {name}...", flush=True)
        if name == "loop":
            runs[name] = notebook_loop(
                trials, args.cores, args.loop_eval_iters, LOOP_MODELS[args.loop_model]
            )
        else:
            runs[name] = service(trials, args.cores)
        print(f"  {runs[name].wall_s:.1f} s", flush=True)
    print(report(trials, args.cores, runs["service"], runs["loop"], args.loop_eval_iters,
                 args.loop_model, ratios))  # fmt: skip


if __name__ == "__main__":
    main()
