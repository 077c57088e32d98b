"""Time `analysis` on a large synthetic store: aggregation plus every figure.

    python benchmarks/analysis_speed.py                 # build a 10,000-trial store in a temp dir
    python benchmarks/analysis_speed.py --store DIR     # reuse (or build once into) DIR

The store: 2 sweeps (a baseline sweep and one with a code change) x 2 datasets x 50 configs
(baseline + 7 factors x 7 levels) x 50 seeds = 10,000 trials, 60 eval steps each (600,000
curve rows), probes at every eval step on 4 layers x 4 heads (9.6 million attention rows:
the worst case, probe_interval = eval_interval), one sample per trial, 1% diverged trials.
The store is compacted first (one Parquet part per table, what a sweep does at its end;
sweeps.schema.compact_store), and that is timed apart. Like a real sweep's store it has
models/<trial_id>.pt for every finished trial (an untrained GPT of the baseline shape per
dataset, hard-linked to each trial id), so the attention heatmaps (figure 6) are captured
and drawn too: every figure `python -m analysis` draws on a real store.
Prints the breakdown of build_report, then times `python -m analysis` writing the same
report (interpreter start and imports included, what a user waits for); the target, under
15 s, applies to both. On Linux it also prints how much CPU other processes used
meanwhile: on a shared 2-core machine that, not the code, can make the numbers swing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from analysis.report import ReportOptions, build_report
from charlm.text import text_table
from sweeps.schema import MARKER, compact_store, read_table
from sweeps.store import MODELS_DIR
from testkit.synthetic import SyntheticSpec, build_store

TARGET_S = 15.0
# tiny-shakespeare's 65 characters: covers the synthetic samples the heatmaps are drawn on
VOCAB = list("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def add_models(root: Path, spec: SyntheticSpec) -> int:
    """Write models/<trial_id>.pt for every finished trial, as a sweep does: one untrained
    GPT of the baseline shape per dataset (the model file format of charlm.train),
    hard-linked to each of its trials' ids.

    Run it in a child process: importing torch here would take torch's import time out of
    the heatmap capture timed below (the report imports torch only to capture)."""
    import torch

    from charlm.config import ModelConfig
    from charlm.model import GPT
    from charlm.train import save_model

    trials = read_table(root, "trials", ["trial_id", "dataset", "status"]).table.to_pandas()
    models = root / MODELS_DIR
    models.mkdir(exist_ok=True)
    config = ModelConfig(n_layer=spec.n_layer, n_head=spec.n_head, vocab_size=len(VOCAB))
    torch.manual_seed(0)
    written = 0
    for dataset, rows in trials[trials["status"].eq("ok")].groupby("dataset"):
        source = models / f".{dataset}.pt"
        save_model(source, GPT(config), VOCAB, dataset)
        for trial_id in rows["trial_id"]:
            target = models / f"{trial_id}.pt"
            if not target.exists():
                os.link(source, target)  # 10,000 copies would take 11 GB
            written += 1
        source.unlink()
    return written


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (figure workers, commands)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used (Linux /proc/stat), else None:
    minus ours, what others took from a shared machine while we were timed."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="store directory to reuse or build into")
    parser.add_argument("--seeds", type=int, default=50, help="seeds per config (default 50)")
    parser.add_argument("--jobs", type=int, default=None, help="figure processes (default: CPUs)")
    parser.add_argument("--formats", default="png,svg", help="figure formats (default png,svg)")
    parser.add_argument(
        "--per-trial-read",
        action="store_true",
        help="also time reading the uncompacted per-trial files (slow)",
    )
    args = parser.parse_args()
    temp = None
    root = args.store
    if root is None:
        temp = Path(tempfile.mkdtemp(prefix="analysis-speed-"))
        root = temp / "store"
    spec = SyntheticSpec(
        sweeps=("base", "change"),
        datasets=("shakespeare_char", "enwik8"),
        n_factors=7,
        n_levels=7,
        seeds=args.seeds,
        eval_steps=60,
        n_layer=4,
        n_head=4,
        failed_share=0.01,
    )
    try:
        if not (root / MARKER).exists():
            start = time.perf_counter()
            build_store(root, spec)
            print(f"built the store in {time.perf_counter() - start:.1f} s (not timed below)")
        if not (root / MODELS_DIR).is_dir():
            start = time.perf_counter()
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=context) as child:
                count = child.submit(add_models, root, spec).result()
            print(f"wrote {count:,} model files in {time.perf_counter() - start:.1f} s (not timed)")
        if args.per_trial_read and len(list((root / "trials").glob("*.parquet"))) > 1:
            start = time.perf_counter()
            rows = sum(
                read_table(root, t).table.num_rows for t in ("trials", "curves", "attention")
            )
            print(
                f"per-trial files, read_table of 3 tables: {time.perf_counter() - start:.1f} s "
                f"({rows:,} rows)"
            )
        start = time.perf_counter()
        compact_store(root)
        print(f"compact_store: {time.perf_counter() - start:.1f} s (once, at the end of a sweep)")
        out = root.parent / "report"
        shutil.rmtree(out, ignore_errors=True)
        start, machine, ours = time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds()
        report = build_report(root, out, ReportOptions(args.formats.split(","), jobs=args.jobs))
        total, cpu = time.perf_counter() - start, sum(report.cpu_timings.values())
        store = report.analysis.store
        print(
            f"store: {len(store.trials):,} trials, {len(store.curves):,} curve rows, "
            f"{len(store.attention):,} attention rows; {len(report.figures)} figure files"
        )
        phases = [
            (name, f"{seconds:.2f}s", f"{report.cpu_timings[name]:.2f}s")
            for name, seconds in report.timings.items()
        ]
        for line in text_table(("phase", "wall", "CPU"), phases, right={1, 2}):
            print(f"  {line}")
        print(f"build_report: {total:.2f} s wall ({cpu:.2f} s CPU, figure workers included)")
        # What a user waits for: the same report from the command, imports and its printed
        # summary included.
        command = [sys.executable, "-m", "analysis", str(root), "--out", str(out)]
        command += ["--format", args.formats]
        command += ["--jobs", str(args.jobs)] if args.jobs is not None else []
        children = _own_cpu_seconds()
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        end_to_end = time.perf_counter() - start
        print(
            f"python -m analysis, end to end (interpreter start, imports, the same report): "
            f"{end_to_end:.2f} s wall ({_own_cpu_seconds() - children:.2f} s CPU)"
        )
        if machine is not None:
            others = _busy_cpu_seconds() - machine - (_own_cpu_seconds() - ours)
            print(f"other processes on this machine meanwhile: {max(others, 0.0):.1f} CPU-s")
        loads = ", ".join(f"{load:.2f}" for load in os.getloadavg())
        verdict = "OK" if max(total, end_to_end) < TARGET_S else "OVER"
        print(
            f"target < {TARGET_S:.0f} s (both): {verdict}; load average {loads} "
            f"(1, 5, 15 min) on {os.cpu_count()} cores"
        )
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
