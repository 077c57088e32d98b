"""The one tiny configuration the tests train: a CI machine runs a trial of it in about a second.

``tiny_params`` is the flat dict a grid baseline or ``--set`` takes; ``tiny_model`` and
``tiny_train`` are the same values as config dataclasses. A test that needs another size or
length passes only what differs (``tiny_model(n_layer=2)``), so the shared values live here once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charlm.config import ModelConfig, TrainConfig, split_config

TINY_PARAMS: dict[str, Any] = {
    "n_layer": 1, "n_head": 2, "n_embed": 16, "block_size": 16, "dropout": 0.0,
    "batch_size": 8, "eval_iters": 2, "warmup_iters": 2, "sample_tokens": 20,
}  # fmt: skip


def tiny_params(**changes: Any) -> dict[str, Any]:
    """The tiny flat params, with ``changes`` on top."""
    return {**TINY_PARAMS, **changes}


def tiny_model(**changes: Any) -> ModelConfig:
    """The tiny ModelConfig, with ``changes`` on top."""
    return split_config(tiny_params(**changes))[0]


def tiny_train(**changes: Any) -> TrainConfig:
    """The tiny TrainConfig, with ``changes`` on top."""
    return split_config(tiny_params(**changes))[1]


def split_loss(run_dir: Path, dataset: str, split: str, batch_size: int) -> tuple[float, int]:
    """The mean token loss of the model ``charlm.train`` saved in ``run_dir`` over every
    non-overlapping window of ``split``, computed here without the Evaluator, and the
    number of tokens it averages."""
    import torch

    from charlm.data import iter_windows, load_dataset
    from charlm.train import MODEL_FILE, load_model

    model, _ = load_model(run_dir / MODEL_FILE)
    data = load_dataset(dataset)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in iter_windows(data.splits[split], model.cfg.block_size, batch_size, "cpu"):
            _, loss = model(x, y)
            total, count = total + loss.item() * y.numel(), count + y.numel()
    return total / count, count


def tiny_store(root: Path, **spec: Any) -> Path:
    """A synthetic store (``testkit.synthetic``) at ``root``: 2-layer, 2-head models on
    shakespeare_char and enwik8, with ``spec`` changing any ``SyntheticSpec`` field."""
    from testkit.synthetic import SyntheticSpec, build_store

    shared = {"datasets": ("shakespeare_char", "enwik8"), "n_layer": 2, "n_head": 2}
    return build_store(root, SyntheticSpec(**{**shared, **spec}), threads=2)
