"""Frozen, validated configurations for the model and its training run.

Every error is raised on construction, before any work, as a ``ConfigError`` whose message
names the field, the value and the fix. Variants are made with ``dataclasses.replace``;
at the boundaries (Ray's param_space, Parquet columns, checkpoint metadata) a config
becomes a flat dict with ``to_dict`` and comes back with ``split_config``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from charlm.text import short_repr

KNOWN_DATASETS = ("shakespeare_char", "enwik8", "text8")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names field, value and fix."""


# The limits further down the path that a value must respect.
INT64_MAX = 2**63 - 1  # the store's integer columns are int64
SEED_MAX = 2**32 - 1  # numpy (and so Optuna's TPE and Ray) seeds are below 2**32
# Sampling divides the logits by the temperature; below this it is greedy (argmax), since
# float32 logits / temperature would overflow (charlm.model's sampler).
GREEDY_TEMPERATURE = 1e-30


@dataclass(frozen=True)
class Domain:
    """What values one field (or option) takes: its type, bounds and whether None is allowed.

    Integers are always bounded by ``INT64_MAX`` (the store's columns) unless ``high`` is
    lower; floats are always finite. ``high_reason`` says where an upper bound comes from.
    Both the configs' checks and the fuzz tests' strategies are derived from these.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    example: str = ""
    high_reason: str = "the store's 64-bit integer columns"
    fix: str = ""  # the whole answer to a value outside the domain, when the default won't do

    @property
    def upper(self) -> float | None:
        """The upper bound in force: ``high``, or INT64_MAX for an integer."""
        return INT64_MAX if self.kind is int and self.high is None else self.high

    def describe(self) -> str:
        """'a positive integer', 'a number in [0, 1)', 'a finite number > 0', ..."""
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "a non-empty text"
        if self.kind is int:
            if self.high is not None:
                return f"an integer in [{self.low:,.0f}, {self.high:,.0f}]"
            if self.low is None:
                return "an integer"
            return "a positive integer" if self.low == 1 else f"an integer >= {self.low:g}"
        if self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"a number in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is None:
            return "a finite number"
        return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is in the domain, else what is wrong ('must be ...')."""
        if value is None:
            return None if self.optional else f"must be {self.describe()}"
        if self.kind is bool or self.kind is str:
            ok = isinstance(value, self.kind) and (self.kind is bool or bool(value))
            return None if ok else f"must be {self.describe()}"
        numeric = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return f"must be {self.describe()}"
        try:
            number = float(value)
        except OverflowError:
            number = math.inf if value > 0 else -math.inf
        if self.kind is float and not math.isfinite(number):
            return f"must be {self.describe()}"
        low_fails = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        if low_fails:
            return f"must be {self.describe()}"
        upper = self.upper
        if upper is not None and (value >= upper if self.high_open else value > upper):
            if self.kind is int:
                return f"is too large: it must be at most {upper:,} ({self.high_reason})"
            return f"must be {self.describe()}"
        return None

    def check(self, name: str, value: Any) -> None:
        """Raise ConfigError naming ``name`` (a field, or an option such as --seeds), the
        value (shortened) and the domain."""
        problem = self.problem(value)
        if problem is None:
            return
        shown = f"{name}={short_repr(value)}"
        if name.startswith("--"):  # an option's float as typed: --reduction-factor 1, not 1.0
            shown = (
                f"{name} {value:g}" if isinstance(value, float) else f"{name} {short_repr(value)}"
            )
        if self.fix and not problem.startswith("is too large"):
            raise ConfigError(f"{shown}: {self.fix}.")
        if not problem.startswith("is "):
            problem = f"is invalid: it {problem}"
        example = f", e.g. {self.example}" if self.example and "must be" in problem else ""
        raise ConfigError(f"{shown} {problem}{example}.")


def _field(default: Any, kind: type, **domain: Any) -> Any:
    """A dataclass field whose metadata declares its Domain."""
    return dataclasses.field(default=default, metadata={"domain": Domain(kind, **domain)})


def domains(cls: type[ModelConfig] | type[TrainConfig]) -> dict[str, Domain]:
    """Each field's declared Domain, by name (a field declared without one gets its type's:
    any int64, any finite float, any text, true or false; None when its default is None)."""
    types = field_types(cls)
    return {
        f.name: f.metadata.get("domain") or Domain(types[f.name], optional=f.default is None)
        for f in dataclasses.fields(cls)
    }


def _check_domains(config: ModelConfig | TrainConfig) -> None:
    for name, domain in domains(type(config)).items():
        domain.check(name, getattr(config, name))


def is_regular_file(path: str | os.PathLike[str], shown: str, what: str) -> bool:
    """True for a regular file (or a link to one), False when nothing is there; a directory,
    FIFO, device or socket raises ConfigError ('``shown``: is a directory, not a regular
    file; give the path of ``what``'). Only stat is used: a FIFO is never opened."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError) as error:
        raise ConfigError(f"{shown}: cannot be read ({error}); give the path of {what}.") from None
    if stat.S_ISREG(mode):
        return True
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))  # fmt: skip
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    raise ConfigError(f"{shown}: is {kind}, not a regular file; give the path of {what}.")


def _check_dataset(dataset: str) -> None:
    shown = f"dataset={short_repr(dataset, 300)}"
    if is_regular_file(dataset, shown, "a UTF-8 text file"):
        return
    looks_like_path = os.sep in dataset or "." in os.path.basename(dataset)
    if looks_like_path:
        raise ConfigError(f"{shown}: no such file; give the path of an existing UTF-8 text file.")
    raise ConfigError(
        f"{shown} is unknown: use one of {', '.join(KNOWN_DATASETS)} or the path of a UTF-8 "
        "text file."
    )


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the GPT. ``vocab_size`` None means: take it from the dataset."""

    n_layer: int = _field(4, int, low=1)
    n_head: int = _field(4, int, low=1)
    n_embed: int = _field(64, int, low=1)
    block_size: int = _field(128, int, low=1)
    dropout: float = _field(0.1, float, low=0.0, high=1.0, high_open=True, example="0.1")
    bias: bool = _field(False, bool)
    vocab_size: int | None = _field(None, int, low=1, optional=True)

    def __post_init__(self) -> None:
        _check_domains(self)
        if self.n_embed % self.n_head != 0:
            nearest = self.n_head * max(1, round(self.n_embed / self.n_head))
            raise ConfigError(
                f"n_embed={self.n_embed} is not divisible by n_head={self.n_head}: "
                f"choose n_embed as a multiple of n_head (e.g. {nearest})."
            )

    @property
    def head_size(self) -> int:
        return self.n_embed // self.n_head


_BETA = {"low": 0.0, "high": 1.0, "high_open": True, "example": "0.9"}


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, optimisation schedule, evaluation, probes and device.

    ``dataset`` is one of KNOWN_DATASETS or a path to a UTF-8 text file.
    ``min_lr`` None means learning_rate / 10; ``lr_decay_iters`` None means max_iters.
    ``eval_iters`` batches are sampled per split when a split is too large to evaluate
    exactly once in non-overlapping windows.
    ``probe_interval`` None means: run the probes at every evaluation.
    ``temperature`` below GREEDY_TEMPERATURE samples greedily (argmax).
    ``device`` is "auto" (CUDA if present, else CPU), "cpu" or "cuda[:N]".
    ``num_threads`` None leaves torch's thread count alone.
    ``compile`` runs the training steps through ``torch.compile`` (opt-in: it pays a
    compile time up front, worth it on CUDA for long runs).
    The relations between fields (warm-up within the run, ...) are ``check_schedule``'s.
    """

    dataset: str = _field("shakespeare_char", str)
    data_dir: str | None = _field(None, str, optional=True)
    seed: int = _field(0, int, low=0, high=SEED_MAX, high_reason="numpy's seed range")
    batch_size: int = _field(32, int, low=1)
    max_iters: int = _field(3000, int, low=1)
    eval_interval: int = _field(500, int, low=1)
    eval_iters: int = _field(200, int, low=1)
    learning_rate: float = _field(3e-4, float, low=0.0, low_open=True, example="3e-4")
    min_lr: float | None = _field(None, float, low=0.0, optional=True)
    warmup_iters: int = _field(100, int, low=0)
    lr_decay_iters: int | None = _field(None, int, low=1, optional=True)
    weight_decay: float = _field(0.1, float, low=0.0)
    beta1: float = _field(0.9, float, **_BETA)
    beta2: float = _field(0.99, float, **_BETA)
    grad_clip: float = _field(1.0, float, low=0.0, low_open=True)
    probe_interval: int | None = _field(None, int, low=1, optional=True)
    probe_batch_size: int = _field(4, int, low=1)
    sample_tokens: int = _field(300, int, low=0)
    temperature: float = _field(0.8, float, low=0.0, low_open=True, example="0.8")
    top_k: int | None = _field(40, int, low=1, optional=True)
    device: str = _field("auto", str)
    num_threads: int | None = _field(None, int, low=1, optional=True)
    compile: bool = _field(False, bool)

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(
                f"dataset={short_repr(self.dataset)} is invalid: name one of "
                f"{', '.join(KNOWN_DATASETS)} or the path of a UTF-8 text file."
            )
        if self.dataset not in KNOWN_DATASETS:
            _check_dataset(self.dataset)
        _check_domains(self)
        if self.min_lr is not None and self.min_lr > self.learning_rate:
            raise ConfigError(
                f"min_lr={self.min_lr} is above learning_rate={self.learning_rate}: "
                "make min_lr <= learning_rate."
            )
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(
                f"device={short_repr(self.device)} is invalid: use 'auto', 'cpu' or 'cuda' "
                "(or 'cuda:N')."
            )

    @property
    def resolved_min_lr(self) -> float:
        return self.learning_rate / 10 if self.min_lr is None else self.min_lr

    @property
    def resolved_lr_decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters


def check_schedule(train: TrainConfig, flags: bool = False) -> None:
    """The relations between TrainConfig's fields that the run needs: warm-up below
    ``max_iters``, an evaluation interval and a probe interval that occur within the run,
    a decay that ends after the warm-up. Every door checks the final values (after
    ``shorten_schedule``); ``flags`` names them as charlm.train's options (--max-iters)."""

    def name(field: str) -> str:
        return "--" + field.replace("_", "-") + " " if flags else field + "="

    steps, warmup = train.max_iters, train.warmup_iters
    if warmup and warmup >= steps:
        raise ConfigError(
            f"{name('warmup_iters')}{warmup} is not below {name('max_iters')}{steps}: the "
            f"whole run would be warm-up; give fewer warm-up steps (e.g. {steps // 10})"
            + (", or leave --warmup-iters out to scale it with --max-iters." if flags else ".")
        )
    if train.eval_interval > steps:
        raise ConfigError(
            f"{name('eval_interval')}{train.eval_interval} is above {name('max_iters')}{steps}: "
            f"no evaluation would fall within the run; give at most {steps}."
        )
    probe = train.probe_interval
    if probe is not None and math.lcm(probe, train.eval_interval) > steps:
        raise ConfigError(
            f"{name('probe_interval')}{probe}: probes run at evaluations (every "
            f"{train.eval_interval} steps) whose step is a multiple of it, and none falls "
            f"within {name('max_iters')}{steps}; give a multiple of eval_interval up to {steps}."
        )
    decay = train.lr_decay_iters
    if decay is not None and decay < warmup:
        raise ConfigError(
            f"{name('lr_decay_iters')}{decay} is below {name('warmup_iters')}{warmup}: the "
            "decay would end before the warm-up does; give lr_decay_iters >= warmup_iters."
        )


def config_fields(cls: type[ModelConfig] | type[TrainConfig]) -> tuple[str, ...]:
    """The field names of a config class, in declaration order."""
    return tuple(field.name for field in dataclasses.fields(cls))


def field_types(cls: type, names: Iterable[str] | None = None) -> dict[str, type]:
    """Each field's value type (int, float, bool or str; ``None`` aside), from its annotation,
    for a dataclass or TypedDict ``cls`` (``names``: only those fields), in declaration order.

    The one source of the store's column types and the grid's value parsing.
    """
    hints = typing.get_type_hints(cls)
    if names is None:
        names = (
            [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else hints
        )
    types = {}
    for name in names:
        hint = hints[name]
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
        if len(members) != 1 or members[0] not in (int, float, bool, str):
            raise TypeError(f"{cls.__name__}.{name}: {hint} is not a plain scalar type")
        types[name] = members[0]
    return types


def to_dict(config: ModelConfig | TrainConfig) -> dict[str, Any]:
    """A flat dict of the config's fields."""
    return dataclasses.asdict(config)


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
