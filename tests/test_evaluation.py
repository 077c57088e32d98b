"""charlm.evaluation: the evaluation budget, exact and sampled losses, standard errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

import charlm.evaluation as evaluation
from charlm.config import TrainConfig
from charlm.data import load_dataset, n_windows
from charlm.evaluation import (
    EVAL_SEED,
    Evaluator,
    n_evaluations,
    plan_evaluation,
)
from charlm.model import GPT
from charlm.train import train
from testkit.tiny import split_loss, tiny_model

SHAKESPEARE = {"train": 1_003_854, "val": 111_540}
TINY_MODEL = tiny_model(n_layer=2)


def window_losses(model: GPT, split: np.ndarray, starts: np.ndarray, block: int) -> np.ndarray:
    """Per-window mean token loss, computed here without the Evaluator."""
    rows = np.stack([split[s : s + block + 1] for s in starts]).astype(np.int64)
    tokens = torch.from_numpy(rows)
    with torch.no_grad():
        logits, _ = model.eval()(tokens[:, :-1])
        losses = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return losses.view(len(starts), block).double().mean(dim=1).numpy()


def test_notebook_preset_at_full_length_val_exact_train_sampled_to_a_target():
    cfg = TrainConfig(max_iters=3000, eval_interval=500, batch_size=32, eval_iters=200)
    plan = plan_evaluation(SHAKESPEARE, 128, cfg)
    assert plan.budget_windows == 3000 * 32 // (3 * 7)  # 4,571
    assert plan.splits["val"].mode == "exact"
    assert plan.splits["val"].windows == n_windows(111_540, 128) == 871
    assert plan.splits["train"].mode == "sampled"
    assert plan.splits["train"].windows == 4571 - 871
    assert plan.splits["train"].target_stderr == 0.01


def test_short_runs_read_fewer_windows():
    cfg = TrainConfig(max_iters=30, eval_interval=500, batch_size=32, eval_iters=200)
    plan = plan_evaluation(SHAKESPEARE, 128, cfg)
    assert n_evaluations(cfg) == 2
    assert plan.budget_windows == 160  # 30 * 32 / 3 / 2
    assert plan.splits["val"] == evaluation.SplitPlan("sampled", 80)
    assert plan.splits["train"] == evaluation.SplitPlan("sampled", 80, 0.01)


@pytest.mark.parametrize("max_iters", [1, 7, 30, 100, 400, 3000, 20_000])
@pytest.mark.parametrize("block_size", [16, 128, 256])
@pytest.mark.parametrize("eval_interval", [5, 250])
def test_evaluation_reads_at_most_a_third_of_the_training_tokens(
    max_iters: int, block_size: int, eval_interval: int
):
    cfg = TrainConfig(max_iters=max_iters, eval_interval=eval_interval, batch_size=32)
    plan = plan_evaluation(SHAKESPEARE, block_size, cfg)
    evaluated = plan.max_windows() * n_evaluations(cfg)
    trained = max_iters * cfg.batch_size
    # The floor: one batch per split per evaluation, however short the run.
    assert evaluated <= max(trained / 3, 2 * cfg.batch_size * n_evaluations(cfg))
    for split in plan.splits.values():
        assert split.windows <= cfg.eval_iters * cfg.batch_size


def test_sampled_loss_and_stderr_match_scipy_on_the_same_windows(monkeypatch):
    monkeypatch.setattr(evaluation, "TRAIN_LOSS_TARGET_STDERR", 0.0)  # read every window
    data = load_dataset("shakespeare_char")
    cfg = TrainConfig(max_iters=30, eval_interval=30, batch_size=8, eval_iters=50)
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(TINY_MODEL, vocab_size=65))
    evaluate = Evaluator(data, 16, cfg, "cpu")
    assert evaluate.modes == {"train": "sampled", "val": "sampled"}
    result = evaluate(model, torch.autocast("cpu", enabled=False))
    assert model.training  # left in training mode
    for index, split in enumerate(("train", "val")):
        windows = evaluate.plan.splits[split].windows
        generator = torch.Generator().manual_seed(EVAL_SEED + index)
        starts = torch.randint(len(data.splits[split]) - 16, (windows,), generator=generator)
        by_hand = window_losses(model, data.splits[split], starts.numpy(), 16)
        assert result[split].windows == windows == 20  # 30 * 8 / 3 / 2 evaluations / 2 splits
        assert result[split].loss == pytest.approx(by_hand.mean(), rel=1e-9)
        assert result[split].stderr == pytest.approx(scipy.stats.sem(by_hand), rel=1e-6)
    assert evaluate.seconds > 0


def test_train_sample_stops_at_its_target_stderr(monkeypatch):
    data = load_dataset("shakespeare_char")
    cfg = TrainConfig(max_iters=3000, eval_interval=1000, batch_size=8, eval_iters=200)
    torch.manual_seed(0)
    model = GPT(tiny_model(dropout=0.1, vocab_size=65))
    autocast = torch.autocast("cpu", enabled=False)
    monkeypatch.setattr(evaluation, "TRAIN_LOSS_TARGET_STDERR", 0.05)
    loose = Evaluator(data, 16, cfg, "cpu")(model, autocast)["train"]
    monkeypatch.setattr(evaluation, "TRAIN_LOSS_TARGET_STDERR", 0.002)
    strict = Evaluator(data, 16, cfg, "cpu")(model, autocast)["train"]
    # Whole batches of 8 windows, stopped at the first batch that reaches the target.
    assert loose.stderr <= 0.05 and loose.windows % 8 == 0
    assert strict.stderr <= 0.002 and strict.windows > loose.windows
    # Both are prefixes of the same windows: their estimates agree within their errors.
    assert abs(loose.loss - strict.loss) < 3 * loose.stderr


def test_sampled_train_loss_agrees_with_an_exact_pass(tmp_path: Path):
    """The sampled train loss estimates what an exact pass over the split measures."""
    text = tmp_path / "text.txt"
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis"]
    text.write_text(" ".join(rng.choice(words, size=12_000)))  # ~50k characters
    cfg = TrainConfig(dataset=str(text), max_iters=60, eval_interval=60, batch_size=8,
                      eval_iters=400, learning_rate=3e-3, sample_tokens=0, num_threads=1,
                      device="cpu")  # fmt: skip
    result = train(TINY_MODEL, cfg, checkpoint_dir=tmp_path / "run")
    assert result.train_eval_mode == "sampled"
    assert 0 < result.final_train_loss_stderr <= 0.01
    exact, _ = split_loss(tmp_path / "run", str(text), "train", 64)
    assert abs(result.final_train_loss - exact) < 4 * result.final_train_loss_stderr


def test_train_result_records_the_estimates_and_where_time_went():
    cfg = TrainConfig(max_iters=20, eval_interval=10, batch_size=8, eval_iters=4,
                      sample_tokens=20, num_threads=1, device="cpu")  # fmt: skip
    result = train(TINY_MODEL, cfg)
    summary = result.summary()
    assert summary["eval_mode"] == "sampled" and summary["train_eval_mode"] == "sampled"
    # 20 steps x 8 windows / 3 / 3 evaluations = 17 windows: the floor of one batch each
    assert summary["val_eval_windows"] == 8
    assert summary["train_loss_target_stderr"] == 0.01
    assert summary["final_val_loss_stderr"] > 0 and summary["final_train_loss_stderr"] > 0
    assert summary["num_threads"] == 1
    for key in ("setup_s", "steps_s", "eval_s", "probe_s", "sample_s"):
        assert summary[key] > 0, key
    assert summary["steps_s"] + summary["eval_s"] <= summary["train_time_s"] + summary["setup_s"]
    point = result.curve[-1]
    assert point["val_eval_windows"] == 8 and point["train_eval_windows"] == 8
