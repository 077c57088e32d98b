"""Training and generation throughput of charlm's GPT on this machine.

For two model shapes, the small default (4 layers, 4 heads, 64 wide, block 128, batch 32,
dropout 0.1) and nanoGPT's shakespeare-char (6 layers, 6 heads, 384 wide, block 256, batch 64,
dropout 0.2), it times full training steps (forward, backward, AdamW step) on random tokens with:

- torch:  torch's own dropout (``nn.functional.dropout`` and SDPA's dropout_p): the nanoGPT baseline
- fast:   charlm's CPU dropout (cheap 16-bit masks, causal-blocked attention with dropout)
- p=0:    dropout off, SDPA's fused kernel (an upper bound; different training semantics)

and reports tokens/s (median step; best step in brackets) and model-FLOPs utilisation:
flops_per_token x tokens/s / the float32 matmul peak measured in the same run; the share of
training time the probes take when they run at every evaluation (the default) at the preset's
eval_interval (attention metrics and the per-layer k-means silhouette of the hidden states;
the first pass of a process also imports scikit-learn, timed apart); the cost of the sample
metrics once per trial (coherence and the model's attention while generating, for the
default 300 sample tokens); then generation at the 384-wide shape with and without the KV
cache.

The numbers move with the machine's load (the load average is printed): on a shared box run it
a few times and read ranges. Example:

    python benchmarks/throughput.py --threads 2
    python benchmarks/throughput.py --configs small --steps 40

"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from charlm.config import ModelConfig, TrainConfig
from charlm.model import GPT
from charlm.sample import coherence, sample_attention
from charlm.text import text_table
from charlm.train import probe_model
from sweeps.grid import PRESETS

VOCAB_SIZE = 65  # shakespeare_char


@dataclass(frozen=True)
class Workload:
    """One model shape and batch to time, and the preset's evaluation interval (probes run at
    every evaluation by default)."""

    name: str
    model: ModelConfig
    batch_size: int
    eval_interval: int
    max_iters: int


def preset_workload(name: str, preset: str) -> Workload:
    """The baseline of grid preset ``preset`` as a workload (shakespeare_char's vocabulary)."""
    model, train = PRESETS[preset].baseline_configs()
    return Workload(
        name,
        dataclasses.replace(model, vocab_size=VOCAB_SIZE),
        batch_size=train.batch_size,
        eval_interval=train.eval_interval,
        max_iters=train.max_iters,
    )


WORKLOADS = {
    "small": preset_workload("small", "notebook"),
    "shakespeare": preset_workload("shakespeare", "nanogpt"),
}


@dataclass(frozen=True)
class TrainingRow:
    """Throughput of one (workload, dropout implementation)."""

    workload: str
    implementation: str  # "torch", "fast" or "p=0"
    dropout: float
    tokens_per_s: float  # median step
    best_tokens_per_s: float
    mfu: float  # fraction of the measured matmul peak, from the median step
    step_s: float  # median step


@dataclass(frozen=True)
class ProbeRow:
    """Cost of the probes for one workload at its default probe interval."""

    workload: str
    probe_s: float  # median of one probe pass (capture + metrics)
    interval: int  # training steps between probe passes
    step_s: float  # median training step (charlm's dropout)
    first_s: float  # the process's first pass (imports scikit-learn for the silhouette)
    sample_s: float  # sample metrics, once per trial (coherence + attention on the sample)
    max_iters: int  # the preset run length the sample cost is compared with

    @property
    def share(self) -> float:
        """Share of training time spent in probes: one pass per ``interval`` steps."""
        return self.probe_s / (self.interval * self.step_s + self.probe_s)

    @property
    def sample_share(self) -> float:
        """Share of a ``max_iters``-step run spent on the sample metrics (once per trial)."""
        return self.sample_s / (self.max_iters * self.step_s + self.sample_s)


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """Float32 FLOP/s of a (size x size) @ (size x size) torch.mm, best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def step_times(
    model_cfg: ModelConfig, batch_size: int, steps: int, warmup: int, fast_dropout: bool
) -> list[float]:
    """Seconds per training step (forward, backward, AdamW) on random tokens, after warm-up."""
    torch.manual_seed(0)
    model = GPT(model_cfg, fast_dropout=fast_dropout).train()
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), "cpu")
    shape = (batch_size, model_cfg.block_size)
    idx = torch.randint(0, VOCAB_SIZE, shape)
    targets = torch.randint(0, VOCAB_SIZE, shape)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        _, loss = model(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def training_rows(
    workload: Workload, steps: int, warmup: int, peak_flops: float, reference: bool = True
) -> list[TrainingRow]:
    """Time the workload with torch's dropout (if ``reference``), charlm's, and dropout 0."""
    variants = [("fast", workload.model, True)]
    if reference:
        variants.insert(0, ("torch", workload.model, False))
    variants.append(("p=0", dataclasses.replace(workload.model, dropout=0.0), True))
    tokens_per_step = workload.batch_size * workload.model.block_size
    flops_per_token = GPT(workload.model).flops_per_token()
    rows = []
    for implementation, model_cfg, fast in variants:
        times = step_times(model_cfg, workload.batch_size, steps, warmup, fast)
        tokens_per_s = tokens_per_step / statistics.median(times)
        rows.append(
            TrainingRow(
                workload=workload.name,
                implementation=implementation,
                dropout=model_cfg.dropout,
                tokens_per_s=tokens_per_s,
                best_tokens_per_s=tokens_per_step / min(times),
                mfu=flops_per_token * tokens_per_s / peak_flops,
                step_s=statistics.median(times),
            )
        )
    return rows


def probe_seconds(model_cfg: ModelConfig, repeats: int = 5) -> tuple[float, float]:
    """Seconds of one probe pass as training runs it (capture and metrics on a
    (probe_batch_size, block_size) batch): the first pass of this process (it imports
    scikit-learn once, for the silhouette) and the median of ``repeats`` later ones."""
    torch.manual_seed(0)
    model = GPT(model_cfg).train()
    batch = (TrainConfig().probe_batch_size, model_cfg.block_size)
    idx = torch.randint(0, VOCAB_SIZE, batch)
    start = time.perf_counter()
    probe_model(model, idx)  # warm-up
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        probe_model(model, idx)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def sample_metric_seconds(model_cfg: ModelConfig, tokens: int, repeats: int = 3) -> float:
    """Median seconds of the sample metrics training adds once per trial: coherence of a
    ``tokens``-character text and the model's attention on a sample of ``tokens`` tokens
    after a one-token prompt (windows of block_size past the first block)."""
    torch.manual_seed(0)
    model = GPT(model_cfg).train()
    ids = torch.randint(0, VOCAB_SIZE, (tokens + 1,)).tolist()
    text = "".join(chr(97 + i % 26) for i in ids[1:])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        coherence(text)
        sample_attention(model, ids, 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation_tokens_per_s(
    model_cfg: ModelConfig,
    new_tokens: int,
    use_cache: bool,
    repeats: int = 2,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[float, torch.Tensor]:
    """Tokens/s generating ``new_tokens`` after a one-token prompt (batch 1) on ``device``,
    best of ``repeats`` runs; and the generated tokens (the same every run: fixed generator
    seed)."""
    torch.manual_seed(seed)
    model = GPT(model_cfg).to(device).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    model.generate(prompt, 4, use_cache=use_cache)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(
            prompt,
            new_tokens,
            top_k=40,
            use_cache=use_cache,
            generator=torch.Generator(device=device).manual_seed(seed),
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return new_tokens / best, out


def format_training_table(rows: Sequence[TrainingRow]) -> str:
    """The training rows as a text table with ratios to torch's dropout and to dropout 0."""
    header = ("workload", "impl", "dropout", "tokens/s (best)", "MFU", "vs torch", "vs p=0")
    by_key = {(r.workload, r.implementation): r for r in rows}
    lines = []
    for row in rows:
        torch_row = by_key.get((row.workload, "torch"))
        zero_row = by_key.get((row.workload, "p=0"))
        vs_torch = f"{row.tokens_per_s / torch_row.tokens_per_s:.2f}x" if torch_row else "-"
        vs_zero = f"{row.tokens_per_s / zero_row.tokens_per_s:.2f}x" if zero_row else "-"
        throughput = f"{row.tokens_per_s:,.0f} ({row.best_tokens_per_s:,.0f})"
        lines.append(
            (row.workload, row.implementation, f"{row.dropout:.2f}", throughput,
             f"{row.mfu:.1%}", vs_torch, vs_zero)
        )  # fmt: skip
    return "\n".join(text_table(header, lines, right={2, 3, 4, 5, 6}))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training tokens/s, MFU and KV-cache generation speed of charlm's GPT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads"
    )
    parser.add_argument(
        "--configs",
        default="small,shakespeare",
        help=f"comma-separated workloads among {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps, small workload")
    parser.add_argument(
        "--big-steps", type=int, default=3, help="timed steps, shakespeare workload"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the torch-dropout baseline rows"
    )
    parser.add_argument(
        "--gen-tokens",
        type=int,
        default=200,
        help="tokens to generate at the 384-wide shape (0 skips)",
    )
    parser.add_argument(
        "--gen-repeats", type=int, default=2, help="generation runs per mode (best counts)"
    )
    parser.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="matrix size of the matmul that measures the FLOP/s peak",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """Measure and print everything ``args`` asks for."""
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    peak = matmul_peak_flops(args.peak_size)
    print(f"float32 matmul peak ({args.peak_size}^2 torch.mm): {peak / 1e9:.1f} GFLOP/s\n")

    rows: list[TrainingRow] = []
    probes: list[ProbeRow] = []
    for name in [n.strip() for n in args.configs.split(",") if n.strip()]:
        if name not in WORKLOADS:
            raise SystemExit(f"--configs: unknown workload {name!r}; use {', '.join(WORKLOADS)}")
        steps = args.big_steps if name == "shakespeare" else args.steps
        warmup = min(args.warmup, 1) if name == "shakespeare" else args.warmup
        workload = WORKLOADS[name]
        workload_rows = training_rows(workload, steps, warmup, peak, not args.no_reference)
        rows += workload_rows
        fast = next(r for r in workload_rows if r.implementation == "fast")
        first, probe = probe_seconds(workload.model)
        sample = sample_metric_seconds(workload.model, TrainConfig().sample_tokens)
        probes.append(
            ProbeRow(
                name, probe, workload.eval_interval, fast.step_s, first, sample,
                workload.max_iters,
            )
        )  # fmt: skip
    if rows:
        print("training (forward + backward + AdamW, random tokens), tokens/s of the median step")
        print(format_training_table(rows))
        print("\nprobes (every evaluation, the default), share of training time (target < 3%)")
        for probe in probes:
            print(
                f"{probe.workload:<12} {probe.probe_s * 1e3:,.0f} ms per pass, every "
                f"{probe.interval} steps of {probe.step_s * 1e3:,.0f} ms: {probe.share:.2%} "
                f"(first pass of a process, importing scikit-learn: "
                f"{probe.first_s * 1e3:,.0f} ms)"
            )
        print("sample metrics (once per trial, 300 sample tokens), share of a preset run")
        for probe in probes:
            print(
                f"{probe.workload:<12} {probe.sample_s * 1e3:,.0f} ms, against "
                f"{probe.max_iters:,} steps of {probe.step_s * 1e3:,.0f} ms: "
                f"{probe.sample_share:.2%}"
            )

    if args.gen_tokens > 0:
        model_cfg = WORKLOADS["shakespeare"].model
        cached, cached_out = generation_tokens_per_s(
            model_cfg, args.gen_tokens, True, args.gen_repeats
        )
        uncached, uncached_out = generation_tokens_per_s(
            model_cfg, args.gen_tokens, False, args.gen_repeats
        )
        same = "same tokens" if torch.equal(cached_out, uncached_out) else "TOKENS DIFFER"
        print(
            f"\ngeneration, {model_cfg.n_embed}-wide, batch 1, {args.gen_tokens} tokens "
            f"(best of {args.gen_repeats}): "
            f"no cache {uncached:,.0f} tokens/s, KV cache {cached:,.0f} tokens/s, "
            f"speedup {cached / uncached:.1f}x ({same})"
        )

    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
