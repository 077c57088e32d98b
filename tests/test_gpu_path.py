"""The CUDA path's pieces, exercised on the CPU: device-side batches, the deferred non-finite
check, the opt-in compile, and benchmarks/gpu.py at toy length."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.config import TrainConfig
from charlm.data import BatchSampler, get_batch
from charlm.train import _NonFiniteWatch, train
from testkit.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_device_side_batches_equal_get_batch_for_the_same_generator(dtype) -> None:
    data = np.random.default_rng(0).integers(0, 200, size=5_000).astype(dtype)
    resident = BatchSampler(data, batch_size=8, block_size=16, resident=True)
    on_host = BatchSampler(data, batch_size=8, block_size=16)
    assert resident.resident and not on_host.resident
    gen_a, gen_b, gen_c = (torch.Generator().manual_seed(3) for _ in range(3))
    for _ in range(5):
        x, y = resident(gen_a)
        x_ref, y_ref = get_batch(data, 8, 16, gen_b)
        x_host, _ = on_host(gen_c)
        assert x.dtype == torch.int64 and x.shape == (8, 16) and x.is_contiguous()
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref) and torch.equal(x_host, x_ref)


def test_deferred_watch_reports_the_first_bad_step_only_when_asked() -> None:
    watch = _NonFiniteWatch("cuda", "cpu")  # the CUDA behaviour, on CPU tensors
    assert watch.observe(torch.tensor(1.5), 1) is None
    assert watch.observe(torch.tensor(math.nan), 5) is None
    assert watch.observe(torch.tensor(math.inf), 7) is None
    assert watch.pending() == 5

    eager = _NonFiniteWatch("cpu", "cpu")
    assert eager.observe(torch.tensor(2.0), 3) is None
    assert eager.observe(torch.tensor(math.nan), 4) == 4
    assert eager.pending() is None


def test_deferred_check_fails_the_run_at_the_evaluation_naming_the_step(monkeypatch) -> None:
    """A diverging run on the deferred (CUDA-style) check still fails, naming the first bad
    step, though it learns of it only at the next evaluation."""
    import charlm.train as train_module

    monkeypatch.setattr(
        train_module, "_NonFiniteWatch",
        lambda device_type, device: _NonFiniteWatch("cuda", device),
    )  # fmt: skip
    model = tiny_model()
    cfg = TrainConfig(
        batch_size=4, max_iters=40, eval_interval=20, eval_iters=2, learning_rate=1e4,
        warmup_iters=0, grad_clip=1e9, sample_tokens=0, device="cpu",
    )  # fmt: skip
    reports: list[dict] = []
    result = train(model, cfg, reports.append)
    assert result.status == "failed"
    bad_step = int(re.search(r"non-finite loss at step (\d+)", result.error).group(1))
    assert 1 <= bad_step <= 40
    assert reports[-1]["final"] and reports[-1]["step"] == bad_step


def test_compile_is_off_by_default_and_opt_in_trains_the_same_model() -> None:
    model = tiny_model()
    cfg = TrainConfig(
        batch_size=4, max_iters=4, eval_interval=4, eval_iters=2, warmup_iters=0,
        sample_tokens=0, device="cpu",
    )  # fmt: skip
    assert cfg.compile is False
    eager = train(model, cfg)
    compiled = train(model, dataclasses.replace(cfg, compile=True))
    assert compiled.status == "ok"
    assert compiled.final_val_loss == pytest.approx(eager.final_val_loss, abs=1e-3)


def test_gpu_benchmark_runs_quick_on_cpu() -> None:
    """Every section at toy length; the compile rows are left out (compiling on a CPU takes
    minutes; the test above trains a compiled model)."""
    env = {**os.environ, "CHARLM_BENCH_THREADS": "1"}
    command = ["--device", "cpu", "--quick", "--skip-compile"]
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *command],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert re.search(r"measured float32 matmul peak: [\d.]+ TFLOP/s", out)
    rows = re.findall(r"^(notebook baseline|nanoGPT shakespeare)\s+(no|yes)\s+([\d,]+)\s+([\d.]+)%",
                      out, re.M)  # fmt: skip
    assert {(name, compiled) for name, compiled, _, _ in rows} == {
        ("notebook baseline", "no"), ("nanoGPT shakespeare", "no"),
    }  # fmt: skip
    assert all(float(rate.replace(",", "")) > 0 for _, _, rate, _ in rows)
    assert re.search(r"tok/s uncached, [\d,]+ tok/s with the KV cache", out)
    assert re.search(r"notebook baseline trial \(8 steps.*\): [\d.]+ s wall", out)
    sharing = re.findall(r"^\s+(\d) +([\d,]+) +([\d,]+)$", out, re.M)
    assert [count for count, _, _ in sharing] == ["1", "2"]


def test_gpu_benchmark_without_cuda_says_so_in_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be shown here")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode != 0
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: --device cuda") and "CUDA is not available" in line
    assert "use --device cpu" in line  # the fix
