"""The one tiny configuration the tests train: a CI machine runs a trial of it in about a second.

``tiny_params`` is the flat dict a grid baseline or ``--set`` takes; ``tiny_model`` and
``tiny_train`` are the same values as config dataclasses. A test that needs another size or
length passes only what differs (``tiny_model(n_layer=2)``), so the shared values live here once.
"""

from __future__ import annotations

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
