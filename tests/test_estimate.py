"""sweeps.estimate: token and FLOP arithmetic, step timing, totals and the dry-run table."""

from __future__ import annotations

import pytest
import torch

from charlm.config import ModelConfig, TrainConfig
from sweeps.estimate import (
    estimate,
    eval_passes,
    eval_tokens_per_pass,
    format_duration,
    format_table,
    time_train_step,
)
from sweeps.grid import GridSpec, expand
from testkit.tiny import tiny_model

TINY = {
    "n_layer": 2, "n_head": 2, "n_embed": 16, "block_size": 16, "dropout": 0.0,
    "batch_size": 4, "max_iters": 100, "eval_interval": 25, "eval_iters": 500, "warmup_iters": 2,
}  # fmt: skip


def tiny_trials(seeds: int = 2):
    spec = GridSpec("tiny", TINY, {"n_layer": [1], "n_embed": [32]}, seeds=seeds)
    return expand(spec)


def by_hand_params(n_layer: int, n_embed: int, vocab: int) -> int:
    """Non-embedding params without biases: per layer qkv 3C^2 + proj C^2 + MLP 8C^2 and two
    LayerNorm gains; the final LayerNorm; the token embedding (tied to the LM head)."""
    return n_layer * (12 * n_embed**2 + 2 * n_embed) + n_embed + vocab * n_embed


def test_eval_passes_count_step_zero_every_interval_and_the_end():
    assert eval_passes(TrainConfig(max_iters=100, eval_interval=25)) == 5  # 0 25 50 75 100
    assert eval_passes(TrainConfig(max_iters=100, eval_interval=30)) == 5  # 0 30 60 90 100
    assert eval_passes(TrainConfig(max_iters=3000, eval_interval=500)) == 7
    assert eval_passes(TrainConfig(max_iters=10, eval_interval=10)) == 2


def test_eval_tokens_follow_the_evaluation_plan():
    model = ModelConfig(block_size=16)
    # shakespeare_char: 1,115,394 characters, 90% train (1,003,854), 10% val (111,540)
    val_windows = (111_540 - 1) // 16  # 6,971
    # 30,000 steps, 7 evaluations: a budget of 45,714 windows each; val exact, train capped
    # by eval_iters (16,000 windows)
    long = TrainConfig(batch_size=32, eval_iters=500, max_iters=30_000, eval_interval=5_000)
    assert eval_tokens_per_pass(model, long) == (16_000 + val_windows) * 16
    # 3,000 steps: 4,571 windows per evaluation, val sampled on half, train the rest
    short = TrainConfig(batch_size=32, eval_iters=500, max_iters=3_000, eval_interval=500)
    assert eval_tokens_per_pass(model, short) == 4_571 * 16


def test_tokens_and_flops_of_known_configs():
    trials = tiny_trials()
    result = estimate(trials, cpus_per_trial=1, concurrent=2, vocab_size_by_dataset={
        "shakespeare_char": 65
    }, measure=False)  # fmt: skip
    assert [(row.factor, row.level, row.n_trials) for row in result.rows] == [
        ("baseline", "baseline", 2), ("n_layer", "1", 2), ("n_embed", "32", 2),
    ]  # fmt: skip
    for row, (n_layer, n_embed) in zip(result.rows, [(2, 16), (1, 16), (2, 32)], strict=True):
        params = by_hand_params(n_layer, n_embed, 65)
        assert row.n_params == params
        assert row.flops_per_token == 6 * params + 12 * n_layer * n_embed * 16
        assert row.train_tokens == 100 * 4 * 16
        assert row.eval_passes == 5
        # 100 steps x 4 windows / 3 / 5 evaluations: 26 windows per evaluation, both splits
        assert row.eval_tokens == 5 * 26 * 16
        assert row.flops == pytest.approx(row.flops_per_token * (6_400 + row.eval_tokens / 3))
    assert result.rows[0].n_params == 7_264
    assert result.n_trials == 6
    assert result.total_tokens == 6 * 6_400
    assert result.total_flops == pytest.approx(sum(2 * row.flops for row in result.rows))
    assert result.wall_seconds is None and result.rows[0].timing is None


def test_vocab_size_comes_from_the_dataset_mapping():
    trials = tiny_trials(seeds=1)
    small = estimate(trials, vocab_size_by_dataset={"shakespeare_char": 10}, measure=False)
    large = estimate(trials, vocab_size_by_dataset={"shakespeare_char": 100}, measure=False)
    assert large.rows[0].n_params - small.rows[0].n_params == 90 * 16


def test_time_train_step_returns_positive_seconds_and_leaves_torch_state_alone():
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    model = tiny_model(n_layer=2, dropout=0.1, vocab_size=65)
    timing, n_params, flops_per_token = time_train_step(model, 8, threads=1, budget_s=0.3)
    assert timing.seconds_per_step > 0
    assert 1 <= timing.timed_batch_size <= 8 and timing.timed_steps >= 1
    assert (timing.threads, timing.device, timing.method) == (1, "cpu", "timed")
    assert (n_params, flops_per_token) == (7_264, 49_728)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)


def test_measured_estimate_totals():
    trials = tiny_trials()
    result = estimate(trials, cpus_per_trial=1, concurrent=2, overhead_s=1.3, budget_s=0.3)
    assert all(row.timing is not None and row.timing.seconds_per_step > 0 for row in result.rows)
    for row in result.rows:
        train_s = row.timing.seconds_per_step * 100
        assert row.seconds == pytest.approx(train_s * (1 + row.eval_tokens / 6_400 / 3))
    total = sum((row.seconds + 1.3) * row.n_trials for row in result.rows)
    assert result.trial_seconds == pytest.approx(total)
    longest = max(row.seconds for row in result.rows) + 1.3
    assert result.wall_seconds == pytest.approx(max(total / 2, longest))
    serial = estimate(trials, concurrent=1, measure=False)
    assert serial.concurrent == 1 and serial.measured_on == ""


def test_out_of_budget_configs_are_priced_by_flops():
    result = estimate(tiny_trials(seeds=1), budget_s=0.2, total_budget_s=0.0)
    first, *rest = result.rows
    assert first.timing.method == "timed"  # the first one is always measured
    for row in rest:
        assert row.timing.method == "flops"
        expected = first.timing.seconds_per_step * row.flops_per_token / first.flops_per_token
        assert row.timing.seconds_per_step == pytest.approx(expected)


def test_format_table_lists_every_trial_and_the_count():
    trials = tiny_trials()
    text = format_table(trials, estimate(trials, budget_s=0.2))
    for trial in trials:
        assert trial.trial_id in text
    assert "6 trials: 3 configs x 2 seeds x 1 dataset" in text
    assert "7,264" in text  # the baseline's params
    assert "total: 6 trials" in text and "wall time" in text
    lines = text.splitlines()
    assert lines[0].split() == ["trial_id", "dataset", "factor", "level", "seed", "params"]
    unmeasured = format_table(trials, estimate(trials, measure=False))
    assert "not timed" in unmeasured and "wall time - " in unmeasured


def test_format_duration():
    assert format_duration(None) == "-"
    assert format_duration(4.25) == "4.2 s"
    assert format_duration(42) == "42 s"
    assert format_duration(600) == "10.0 min"
    assert format_duration(3 * 3600) == "3.0 h"
    assert format_duration(3 * 86400) == "3.0 d"
