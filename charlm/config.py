"""Frozen, validated configurations for the model and its training run.

Every error is raised on construction, before any work, as a ``ConfigError`` whose message
names the field, the value and the fix. Variants are made with ``dataclasses.replace``;
at the boundaries (Ray's param_space, Parquet columns, checkpoint metadata) a config
becomes a flat dict with ``to_dict`` and comes back with ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "KNOWN_DATASETS",
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "config_fields",
    "field_types",
    "from_dict",
    "shorten_schedule",
    "split_config",
    "to_dict",
]

KNOWN_DATASETS = ("shakespeare_char", "enwik8", "text8")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names field, value and fix."""


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} is invalid: it must be a positive integer.")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r} is invalid: it must be an integer >= 0.")


def _positive_float(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name}={value!r} is invalid: it must be a finite number > 0.")


def _non_negative_float(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"{name}={value!r} is invalid: it must be a finite number >= 0.")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the GPT. ``vocab_size`` None means: take it from the dataset."""

    n_layer: int = 4
    n_head: int = 4
    n_embed: int = 64
    block_size: int = 128
    dropout: float = 0.1
    bias: bool = False
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embed", "block_size"):
            _positive_int(name, getattr(self, name))
        if self.vocab_size is not None:
            _positive_int("vocab_size", self.vocab_size)
        if self.n_embed % self.n_head != 0:
            nearest = self.n_head * max(1, round(self.n_embed / self.n_head))
            raise ConfigError(
                f"n_embed={self.n_embed} is not divisible by n_head={self.n_head}: "
                f"choose n_embed as a multiple of n_head (e.g. {nearest})."
            )
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ConfigError(
                f"dropout={self.dropout!r} is invalid: it must be a number in [0, 1), e.g. 0.1."
            )
        if not isinstance(self.bias, bool):
            raise ConfigError(f"bias={self.bias!r} is invalid: it must be true or false.")

    @property
    def head_size(self) -> int:
        return self.n_embed // self.n_head


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, optimisation schedule, evaluation, probes and device.

    ``dataset`` is one of KNOWN_DATASETS or a path to a UTF-8 text file.
    ``min_lr`` None means learning_rate / 10; ``lr_decay_iters`` None means max_iters.
    ``eval_iters`` batches are sampled per split when a split is too large to evaluate
    exactly once in non-overlapping windows.
    ``probe_interval`` None means: run the probes at every evaluation.
    ``device`` is "auto" (CUDA if present, else CPU), "cpu" or "cuda[:N]".
    ``num_threads`` None leaves torch's thread count alone.
    ``compile`` runs the training steps through ``torch.compile`` (opt-in: it pays a
    compile time up front, worth it on CUDA for long runs).
    """

    dataset: str = "shakespeare_char"
    data_dir: str | None = None
    seed: int = 0
    batch_size: int = 32
    max_iters: int = 3000
    eval_interval: int = 500
    eval_iters: int = 200
    learning_rate: float = 3e-4
    min_lr: float | None = None
    warmup_iters: int = 100
    lr_decay_iters: int | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    probe_interval: int | None = None
    probe_batch_size: int = 4
    sample_tokens: int = 300
    temperature: float = 0.8
    top_k: int | None = 40
    device: str = "auto"
    num_threads: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(
                f"dataset={self.dataset!r} is invalid: name one of {', '.join(KNOWN_DATASETS)} "
                "or the path of a UTF-8 text file."
            )
        if self.dataset not in KNOWN_DATASETS and not os.path.isfile(self.dataset):
            looks_like_path = os.sep in self.dataset or "." in os.path.basename(self.dataset)
            if looks_like_path:
                raise ConfigError(
                    f"dataset={self.dataset!r}: no such file; give the path of an existing "
                    "UTF-8 text file."
                )
            raise ConfigError(
                f"dataset={self.dataset!r} is unknown: use one of {', '.join(KNOWN_DATASETS)} "
                "or the path of a UTF-8 text file."
            )
        _non_negative_int("seed", self.seed)
        for name in ("batch_size", "max_iters", "eval_interval", "eval_iters", "probe_batch_size"):
            _positive_int(name, getattr(self, name))
        _non_negative_int("warmup_iters", self.warmup_iters)
        _non_negative_int("sample_tokens", self.sample_tokens)
        if self.lr_decay_iters is not None:
            _positive_int("lr_decay_iters", self.lr_decay_iters)
        if self.probe_interval is not None:
            _positive_int("probe_interval", self.probe_interval)
        if self.num_threads is not None:
            _positive_int("num_threads", self.num_threads)
        if self.top_k is not None:
            _positive_int("top_k", self.top_k)
        _positive_float("learning_rate", self.learning_rate)
        if self.min_lr is not None:
            _non_negative_float("min_lr", self.min_lr)
            if self.min_lr > self.learning_rate:
                raise ConfigError(
                    f"min_lr={self.min_lr} is above learning_rate={self.learning_rate}: "
                    "make min_lr <= learning_rate."
                )
        _non_negative_float("weight_decay", self.weight_decay)
        _positive_float("grad_clip", self.grad_clip)
        _positive_float("temperature", self.temperature)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ConfigError(f"{name}={value!r} is invalid: it must be in [0, 1), e.g. 0.9.")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile={self.compile!r} is invalid: it must be true or false.")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(
                f"device={self.device!r} is invalid: use 'auto', 'cpu' or 'cuda' (or 'cuda:N')."
            )

    @property
    def resolved_min_lr(self) -> float:
        return self.learning_rate / 10 if self.min_lr is None else self.min_lr

    @property
    def resolved_lr_decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters


Config = TypeVar("Config", ModelConfig, TrainConfig)


def config_fields(cls: type[ModelConfig] | type[TrainConfig]) -> tuple[str, ...]:
    """The field names of a config class, in declaration order."""
    return tuple(field.name for field in dataclasses.fields(cls))


def field_types(cls: type[ModelConfig] | type[TrainConfig]) -> dict[str, type]:
    """Each field's value type (int, float, bool or str; ``None`` aside), from its annotation.

    The one source of the store's column types and the grid's value parsing.
    """
    hints = typing.get_type_hints(cls)
    types = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
        if len(members) != 1 or members[0] not in (int, float, bool, str):
            raise TypeError(f"{cls.__name__}.{field.name}: {hint} is not a plain scalar type")
        types[field.name] = members[0]
    return types


def to_dict(config: ModelConfig | TrainConfig) -> dict[str, Any]:
    """A flat dict of the config's fields."""
    return dataclasses.asdict(config)


def from_dict(cls: type[Config], values: dict[str, Any]) -> Config:
    """Build ``cls`` from the keys of ``values`` that are its fields; reject unknown ones."""
    unknown = sorted(set(values) - set(config_fields(cls)))
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {', '.join(unknown)}: "
            f"valid fields are {', '.join(config_fields(cls))}."
        )
    return cls(**values)


def shorten_schedule(values: dict[str, Any], max_iters: int) -> dict[str, Any]:
    """Set ``max_iters`` in a flat config dict; scale warm-up and an explicit lr_decay_iters
    with it (the learning-rate schedule keeps its shape: 100 warm-up steps of a 3000-step
    run become 3 of a 100-step run, never the whole run), and cap eval_interval so the run
    still evaluates on the way. Fields absent from ``values`` take TrainConfig's defaults.
    The one rule for short runs: the sweep CLIs' --max-iters and charlm.train's use it."""
    defaults = TrainConfig()
    old = values.get("max_iters", defaults.max_iters)
    scale = max_iters / old if isinstance(old, int) and old > 0 else 1.0
    warmup = values.get("warmup_iters", defaults.warmup_iters)
    if isinstance(warmup, int) and not isinstance(warmup, bool):
        values["warmup_iters"] = min(round(warmup * scale), max(0, max_iters - 1))
    decay = values.get("lr_decay_iters", defaults.lr_decay_iters)
    if isinstance(decay, int) and not isinstance(decay, bool):
        values["lr_decay_iters"] = max(1, round(decay * scale))
    interval = values.get("eval_interval", defaults.eval_interval)
    if isinstance(interval, int) and not isinstance(interval, bool):
        values["eval_interval"] = min(interval, max_iters)
    values["max_iters"] = max_iters
    return values


def split_config(values: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Split one flat dict (e.g. a Ray Tune config) into ModelConfig and TrainConfig.

    Keys that belong to neither are an error naming them and the valid fields.
    """
    model_names, train_names = set(config_fields(ModelConfig)), set(config_fields(TrainConfig))
    unknown = sorted(set(values) - model_names - train_names)
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {', '.join(unknown)}: valid fields are "
            f"{', '.join(config_fields(ModelConfig) + config_fields(TrainConfig))}."
        )
    model = ModelConfig(**{k: v for k, v in values.items() if k in model_names})
    train = TrainConfig(**{k: v for k, v in values.items() if k in train_names})
    return model, train
