"""The GPU path, measured: one command that prints what a user's CUDA machine does with charlm.

On a CUDA machine it prints, in under five minutes:

1. training tokens/s and MFU (model FLOPs / the bf16 matmul peak measured in the same run)
   for the notebook baseline and nanoGPT's shakespeare-char config, each eager and with
   ``--compile``, timed through ``charlm.train.train`` itself (batches on the device, no
   per-step host sync): the rate of the second half of the run, after warm-up/compilation;
2. generation tokens/s at the nanoGPT shape with and without the KV cache;
3. the wall time of the notebook grid's baseline trial (the full run, evaluations, probes
   and sample included);
4. the aggregate training tokens/s of 1, 2, 4 and 8 notebook-baseline trials sharing the
   device as separate processes (as fractional-GPU Ray trials do).

``--device cpu --quick`` runs every part at toy length (a test does, so it never rots):

    python benchmarks/gpu.py                      # on a CUDA machine
    python benchmarks/gpu.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from charlm.config import TrainConfig
from charlm.data import load_dataset
from charlm.model import GPT
from charlm.train import train
from sweeps.grid import PRESETS, TrialSpec, expand

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import generation_tokens_per_s, matmul_peak_flops


def baseline(preset: str, device: str, data_dir: str | None) -> TrialSpec:
    """The baseline trial of a built-in preset (seed 0), placed on ``device``."""
    overrides = {"device": device, **({"data_dir": data_dir} if data_dir else {})}
    trials = expand(PRESETS[preset], seeds=1, overrides=overrides)
    return next(trial for trial in trials if trial.factor == "baseline")


def peak_flops(device: str) -> tuple[float, str]:
    """The matmul peak this run compares against: bf16 on CUDA, float32 on the CPU."""
    if not device.startswith("cuda"):
        return matmul_peak_flops(), "float32"
    size, repeats = 8192, 20
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    torch.mm(a, b)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        torch.mm(a, b)
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1000), "bf16"


def training_rate(
    trial: TrialSpec, steps: int, compile_: bool = False, batch_size: int | None = None
) -> float:
    """Training tokens/s of ``trial`` over the second half of a ``steps``-step run
    (``batch_size`` replaces the trial's, for toy runs)."""
    half = max(1, steps // 2)
    train_cfg = dataclasses.replace(
        trial.train, max_iters=2 * half, eval_interval=half, eval_iters=2, warmup_iters=0,
        sample_tokens=0, probe_interval=4 * half, compile=compile_,
        batch_size=batch_size or trial.train.batch_size,
    )  # fmt: skip
    result = train(trial.model, train_cfg)
    return float(result.curve[-1]["tokens_per_s"])


def training_rows(
    device: str,
    steps: int,
    peak: float,
    data_dir: str | None,
    batch_size: int | None = None,
    with_compile: bool = True,
) -> list[str]:
    lines = [f"{'config':<22} {'compile':<8} {'tokens/s':>12} {'MFU':>7}"]
    for preset, label in (("notebook", "notebook baseline"), ("nanogpt", "nanoGPT shakespeare")):
        trial = baseline(preset, device, data_dir)
        vocab = load_dataset(trial.train.dataset, trial.train.data_dir).vocab_size
        flops = GPT(dataclasses.replace(trial.model, vocab_size=vocab)).flops_per_token()
        for compile_ in (False, True) if with_compile else (False,):
            rate = training_rate(trial, steps, compile_, batch_size)
            lines.append(
                f"{label:<22} {'yes' if compile_ else 'no':<8} {rate:>12,.0f} "
                f"{flops * rate / peak:>7.2%}"
            )
    return lines


def generation_rows(device: str, new_tokens: int, vocab_size: int) -> list[str]:
    model = dataclasses.replace(baseline("nanogpt", device, None).model, vocab_size=vocab_size)
    uncached, _ = generation_tokens_per_s(model, new_tokens, use_cache=False, device=device)
    cached, _ = generation_tokens_per_s(model, new_tokens, use_cache=True, device=device)
    return [
        f"generation at 384 wide, batch 1, {new_tokens} tokens: {uncached:,.0f} tok/s uncached, "
        f"{cached:,.0f} tok/s with the KV cache ({cached / uncached:.1f}x)"
    ]


def baseline_trial_seconds(device: str, quick_steps: int | None, data_dir: str | None) -> str:
    trial = baseline("notebook", device, data_dir)
    train_cfg = trial.train
    if quick_steps is not None:
        train_cfg = dataclasses.replace(
            train_cfg, max_iters=quick_steps, eval_interval=quick_steps // 2, eval_iters=2,
            warmup_iters=0, sample_tokens=20, batch_size=2,
        )  # fmt: skip
    start = time.perf_counter()
    result = train(trial.model, train_cfg)
    seconds = time.perf_counter() - start
    return (
        f"notebook baseline trial ({train_cfg.max_iters} steps, evaluations, probes and sample): "
        f"{seconds:.1f} s wall, best val {result.best_val_loss:.4f}"
    )


def sharing_rows(device: str, counts: Sequence[int], steps: int, data_dir: str | None) -> list[str]:
    """Aggregate tokens/s of N concurrent worker processes, each training the baseline."""
    lines = [f"{'processes':>9} {'aggregate tok/s':>16} {'per process':>12}"]
    command = [sys.executable, __file__, "--worker", "--device", device, "--steps", str(steps)]
    command += ["--quick"] if steps < 100 else []
    if data_dir:
        command += ["--data-dir", data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for count in counts:
        workers = [
            subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
            for _ in range(count)
        ]
        rates = []
        for worker in workers:
            out, _ = worker.communicate()
            if worker.returncode != 0:
                raise SystemExit(f"a worker failed with exit status {worker.returncode}")
            rates.append(json.loads(out.strip().splitlines()[-1])["tokens_per_s"])
        lines.append(f"{count:>9} {sum(rates):>16,.0f} {sum(rates) / count:>12,.0f}")
    return lines


def _section(title: str, lines: list[str]) -> None:
    print(f"\n{title}\n" + "\n".join(lines), flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument(
        "--quick", action="store_true", help="toy lengths: checks every part runs (seconds)"
    )
    parser.add_argument(
        "--skip-compile",
        action="store_true",
        help="leave out the --compile rows (on a CPU, compiling takes minutes)",
    )
    parser.add_argument("--data-dir", help="dataset cache (default: $CHARLM_DATA_DIR)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available: use --device cpu.")
    if args.worker:
        torch.set_num_threads(1)
        trial = baseline("notebook", args.device, args.data_dir)
        batch = 2 if args.quick else None
        print(json.dumps({"tokens_per_s": training_rate(trial, args.steps or 200, False, batch)}))
        return
    torch.set_num_threads(int(os.environ.get("CHARLM_BENCH_THREADS", os.cpu_count() or 1)))
    quick = args.quick
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    peak, precision = peak_flops(args.device)
    print(f"device {name}; torch {torch.__version__}; load {os.getloadavg()[0]:.2f}")
    print(f"measured {precision} matmul peak: {peak / 1e12:.1f} TFLOP/s")
    started = time.perf_counter()
    vocab = load_dataset(TrainConfig().dataset, args.data_dir).vocab_size
    steps, batch = (4, 2) if quick else (400, None)
    _section(
        "training",
        training_rows(args.device, steps, peak, args.data_dir, batch, not args.skip_compile),
    )
    _section("generation", generation_rows(args.device, 16 if quick else 500, vocab))
    quick_steps = 8 if quick else None
    _section("notebook grid", [baseline_trial_seconds(args.device, quick_steps, args.data_dir)])
    counts, share_steps = ((1, 2), 8) if quick else ((1, 2, 4, 8), 600)
    _section("sharing the device", sharing_rows(args.device, counts, share_steps, args.data_dir))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
