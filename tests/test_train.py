from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from charlm.config import ConfigError, ModelConfig, TrainConfig
from charlm.results import curve_types
from charlm.train import CHECKPOINT_FILE, MODEL_FILE, load_model, lr_at, main, train
from testkit import tiny

TINY_MODEL = tiny.tiny_model(n_layer=2, dropout=0.1)


def tiny_train(**overrides) -> TrainConfig:
    """The shared tiny run at this file's length and evaluation, on one CPU thread."""
    here = {"max_iters": 20, "eval_interval": 10, "eval_iters": 4, "sample_tokens": 40,
            "num_threads": 1, "device": "cpu"}  # fmt: skip
    return tiny.tiny_train(**{**here, **overrides})


def losses(result) -> list[tuple[int, float, float]]:
    return [(p["step"], p["train_loss"], p["val_loss"]) for p in result.curve]


@pytest.fixture
def small_text(tmp_path: Path) -> Path:
    """A 2,000-character text file: its val split (200 chars) is evaluated exactly."""
    path = tmp_path / "small.txt"
    path.write_text(("to be or not to be, that is the question. " * 60)[:2000])
    return path


def test_reports_every_eval_and_returns_all_metrics():
    reports = []
    result = train(TINY_MODEL, tiny_train(), reports.append)
    assert [r["step"] for r in reports] == [0, 10, 20]
    for report in reports:  # each curve point as declared, in column order, then the rest
        assert list(report)[: len(curve_types())] == list(curve_types())
        assert "attention" in report and "final" in report
    assert [list(point) for point in result.curve] == [list(curve_types())] * 3
    assert reports[1]["tokens_seen"] == 10 * 8 * 16
    assert [r["final"] for r in reports] == [False, False, True]
    final = reports[-1]
    for key in ("final_train_loss", "final_val_loss", "n_params", "train_time_s",
                "inference_tokens_per_s", "train_tokens_per_s", "sample", "device"):  # fmt: skip
        assert final[key] is not None
    assert result.status == "ok" and result.device == "cpu"
    assert result.best_val_loss == min(p["val_loss"] for p in result.curve)
    assert result.final_val_loss == result.curve[-1]["val_loss"]
    # Probes ran at every evaluation: 2 layers x 2 heads per eval step.
    assert len(result.attention) == 3 * 2 * 2
    assert {row["step"] for row in result.attention} == {0, 10, 20}
    # Loss at initialisation is about ln(vocab) for a GPT-2-initialised model.
    assert result.curve[0]["val_loss"] == pytest.approx(math.log(65), abs=0.3)
    assert result.sample["n_chars"] == len(result.sample["text"]) == 40
    assert 0 <= result.sample["distinct_1"] <= 1
    # 40 characters: too short for two 64-character coherence segments
    assert math.isnan(result.sample["coherence"])
    # the model's attention on its own sample, one value per layer
    assert len(result.sample["attention_entropy"]) == len(result.sample["effective_span"]) == 2
    assert all(0 <= e <= math.log(16) for e in result.sample["attention_entropy"])
    assert all(0 <= s <= 15 for s in result.sample["effective_span"])
    assert all(-1 <= row["silhouette"] <= 1 for row in result.attention)


def test_same_seed_gives_identical_losses_and_other_seed_differs():
    first = train(TINY_MODEL, tiny_train())
    second = train(TINY_MODEL, tiny_train())
    other = train(TINY_MODEL, tiny_train(seed=1))
    assert losses(first) == losses(second)
    assert losses(first) != losses(other)
    assert first.sample["text"] == second.sample["text"]


class Stop(Exception):
    pass


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path: Path):
    reference = train(TINY_MODEL, tiny_train(max_iters=30))

    def stop_at_10(metrics):
        if metrics["step"] == 10:
            raise Stop

    with pytest.raises(Stop):
        train(TINY_MODEL, tiny_train(max_iters=30), stop_at_10, checkpoint_dir=tmp_path)
    checkpoint = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["step"] == 10
    resumed_reports = []
    resumed = train(
        TINY_MODEL, tiny_train(max_iters=30), resumed_reports.append,
        checkpoint_dir=tmp_path, resume_from=tmp_path,
    )  # fmt: skip
    assert [r["step"] for r in resumed_reports] == [20, 30]
    assert losses(resumed) == losses(reference)
    assert resumed.sample["text"] == reference.sample["text"]


def test_model_file_loads_with_weights_only_and_reproduces_logits(tmp_path: Path):
    result = train(TINY_MODEL, tiny_train(sample_tokens=0), checkpoint_dir=tmp_path)
    model, vocab = load_model(tmp_path / MODEL_FILE)
    assert len(vocab) == 65 and model.cfg.vocab_size == 65
    assert result.sample is None and result.inference_tokens_per_s is None
    idx = torch.zeros((1, 8), dtype=torch.long)
    full_model, _ = load_model(tmp_path / CHECKPOINT_FILE)
    assert torch.equal(model(idx)[0], full_model(idx)[0])


def test_non_finite_loss_fails_with_the_step():
    result = train(TINY_MODEL, tiny_train(learning_rate=1e6, grad_clip=1e12, max_iters=200,
                                          eval_interval=100, warmup_iters=0))  # fmt: skip
    assert result.status == "failed"
    assert re.fullmatch(r"non-finite loss at step \d+", result.error)
    assert 0 < result.last_step <= 200


def test_small_split_is_evaluated_exactly(small_text: Path, tmp_path: Path):
    # 20 steps of 8 windows, 2 evaluations: 26 windows per evaluation, room for val's 12
    cfg = tiny_train(dataset=str(small_text), max_iters=20, eval_interval=20, sample_tokens=0)
    result = train(TINY_MODEL, cfg, checkpoint_dir=tmp_path / "run")
    assert result.eval_mode == "exact"
    # The reported val loss is the mean over every non-overlapping window of the split.
    exact, count = tiny.split_loss(tmp_path / "run", str(small_text), "val", 8)
    assert count == (200 - 1) // 16 * 16
    assert result.final_val_loss == pytest.approx(exact, rel=1e-6)


def test_large_split_is_sampled_the_same_way_each_time():
    result = train(TINY_MODEL, tiny_train(learning_rate=1e-9, warmup_iters=0))
    assert result.eval_mode == "sampled"
    # A learning rate of ~0 leaves the weights as they were: the fixed sample gives one loss.
    vals = [p["val_loss"] for p in result.curve]
    assert max(vals) - min(vals) < 1e-4


def test_block_size_longer_than_val_split_is_caught_before_training(small_text: Path):
    with pytest.raises(ConfigError, match=r"block_size=512 is longer than the val split"):
        train(ModelConfig(n_layer=1, n_head=1, n_embed=8, block_size=512),
              tiny_train(dataset=str(small_text)))  # fmt: skip


def test_lr_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 11)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(110, cfg) == pytest.approx(1e-4)


def test_cli_writes_result_and_checkpoint(tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = main(["--n-layer", "2", "--n-head", "2", "--n-embed", "16", "--block-size", "16",
                 "--batch-size", "8", "--max-iters", "10", "--eval-interval", "5",
                 "--eval-iters", "2", "--sample-tokens", "20", "--threads", "1",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "step      5/10" in printed and "done: best val" in printed
    result = json.loads((out / "result.json").read_text())
    for key in ("step", "tokens_seen", "elapsed_s", "lr", "train_loss", "val_loss",
                "best_val_loss", "tokens_per_s"):  # fmt: skip
        assert key in result["curve"][-1]
    final_keys = (
        "final_train_loss", "final_val_loss", "best_val_loss", "n_params", "train_time_s",
        "inference_tokens_per_s", "train_tokens_per_s", "eval_mode",
    )  # fmt: skip
    for key in final_keys:
        assert result[key] is not None
    assert result["model_config"]["n_embed"] == 16
    assert (out / CHECKPOINT_FILE).is_file() and (out / MODEL_FILE).is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-embed", "30", "--n-head", "4"], "n_embed=30 is not divisible by n_head=4"),
        (["--dropout", "1.5"], "dropout=1.5 is invalid"),
        (["--block-size", "0"], "block_size=0 is invalid"),
        (["--dataset", "wikitext"], "dataset='wikitext' is unknown"),
        (["--dataset", "missing/file.txt"], "no such file"),
        (["--n-layer", "x"], "invalid int value"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path: Path, capsys, args, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        code = main([*args, "--out", str(out)])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("error: ")
    assert not out.exists()


def test_cli_block_size_too_long_writes_nothing(tmp_path: Path, small_text: Path, capsys):
    out = tmp_path / "run"
    code = main(["--dataset", str(small_text), "--block-size", "512", "--out", str(out)])
    assert code == 2
    assert "block_size=512 is longer than the val split" in capsys.readouterr().err
    assert not out.exists()
