"""The arguments of ``python -m charlm.train``, parsed and checked without importing torch.

charlm.train imports torch (seconds on a busy machine) at the top; it calls ``parse`` before
that import when run as a script, so bad input answers at once: one line, exit 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.cli import OneLineParser, check_writable_dir, fail
from charlm.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    check_schedule,
    domains,
    shorten_schedule,
)

__all__ = ["TrainArgs", "parse", "parser"]

# Scaled with --max-iters unless given (charlm.config.shorten_schedule: the sweeps' rule).
SCHEDULE_FIELDS = ("warmup_iters", "lr_decay_iters", "eval_interval")


@dataclass(frozen=True)
class TrainArgs:
    """A checked command line: both configs, where to write, and what was scaled."""

    model: ModelConfig
    train: TrainConfig
    out: Path
    resume: bool
    quiet: bool
    scaled: tuple[str, ...]  # schedule fields scaled with --max-iters (not given)


def parser() -> OneLineParser:
    model_defaults, train_defaults = ModelConfig(), TrainConfig()
    full = train_defaults.max_iters
    parser = OneLineParser(
        prog="python -m charlm.train",
        description="Train one character-level GPT, print progress, write DIR/result.json "
        "and a checkpoint. Runs on CUDA when present (bf16 autocast), else CPU. "
        f"--max-iters other than {full} scales the warm-up, the lr decay and the eval "
        "interval that are not given with it (as the sweeps' --max-iters does).",
    )
    add = parser.add_argument
    add(
        "--dataset",
        default=train_defaults.dataset,
        help="shakespeare_char, enwik8, text8, or the path of a UTF-8 text file",
    )
    add(
        "--data-dir",
        default=None,
        help="where datasets are cached (default: $CHARLM_DATA_DIR, else the user cache dir)",
    )
    add("--n-layer", type=int, default=model_defaults.n_layer, help="transformer blocks")
    add("--n-head", type=int, default=model_defaults.n_head, help="attention heads per block")
    add("--n-embed", type=int, default=model_defaults.n_embed, help="embedding width")
    add("--block-size", type=int, default=model_defaults.block_size, help="context length")
    add("--dropout", type=float, default=model_defaults.dropout, help="dropout probability")
    add("--bias", action="store_true", help="biases in Linear and LayerNorm layers")
    add("--batch-size", type=int, default=train_defaults.batch_size, help="sequences per step")
    add("--max-iters", type=int, default=None, help=f"training steps (default: {full})")
    add(
        "--eval-interval",
        type=int,
        default=None,
        help=f"steps between evaluations (default: {train_defaults.eval_interval}, at most "
        "--max-iters)",
    )
    add(
        "--eval-iters",
        type=int,
        default=train_defaults.eval_iters,
        help="batches per evaluation when a split is too large to evaluate exactly",
    )
    add(
        "--warmup-iters",
        type=int,
        default=None,
        help=f"linear warm-up steps (default: {train_defaults.warmup_iters} x max-iters / "
        f"{full}, below max-iters)",
    )
    add(
        "--lr-decay-iters",
        type=int,
        default=None,
        help="step where the cosine decay reaches min-lr (default: max-iters)",
    )
    add("--learning-rate", "--lr", type=float, default=train_defaults.learning_rate,
        help="peak learning rate")  # fmt: skip
    add("--min-lr", type=float, default=None, help="default: learning-rate / 10")
    add("--weight-decay", type=float, default=train_defaults.weight_decay, help="AdamW")
    add("--beta1", type=float, default=train_defaults.beta1, help="AdamW")
    add("--beta2", type=float, default=train_defaults.beta2, help="AdamW")
    add("--grad-clip", type=float, default=train_defaults.grad_clip, help="gradient norm clip")
    add("--seed", type=int, default=train_defaults.seed, help="initialisation and data order")
    add(
        "--probe-interval",
        type=int,
        default=None,
        help="steps between attention probes (default: at every evaluation)",
    )
    add(
        "--probe-batch-size",
        type=int,
        default=train_defaults.probe_batch_size,
        help="sequences the probes look at",
    )
    add(
        "--sample-tokens",
        type=int,
        default=train_defaults.sample_tokens,
        help="characters generated at the end",
    )
    add("--temperature", type=float, default=train_defaults.temperature, help="sampling")
    add("--top-k", type=int, default=train_defaults.top_k, help="sampling")
    add("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    add(
        "--threads",
        dest="num_threads",
        type=int,
        default=None,
        help="torch threads (default: torch's own choice)",
    )
    add(
        "--compile",
        action="store_true",
        help="run training steps through torch.compile (opt-in; pays off on CUDA)",
    )
    add("--out", required=True, help="output directory for result.json and the checkpoint")
    add("--resume", action="store_true", help="continue from OUT/ckpt.pt if it exists")
    add("--quiet", action="store_true", help="no progress lines")
    return parser


def parse(argv: list[str] | None = None) -> TrainArgs:
    """Parse and check the command line; bad input prints one line and exits with 2."""
    values = vars(parser().parse_args(argv))
    out, resume, quiet = Path(values.pop("out")), values.pop("resume"), values.pop("quiet")
    max_iters = values.pop("max_iters")
    given = {name: values.pop(name) for name in SCHEDULE_FIELDS}
    schedule = {name: value for name, value in given.items() if value is not None}
    try:
        model, train, scaled = _configs(values, schedule, max_iters)
        check_schedule(train, flags=True)
        check_writable_dir(out, "--out")
    except ConfigError as exc:
        fail(str(exc))
    return TrainArgs(model, train, out, resume, quiet, scaled)


def _configs(
    values: dict[str, Any], schedule: dict[str, Any], max_iters: int | None
) -> tuple[ModelConfig, TrainConfig, tuple[str, ...]]:
    """Both configs, the schedule fields not given scaled with ``max_iters``; and which."""
    scaled: tuple[str, ...] = ()
    if max_iters is not None:
        domains(TrainConfig)["max_iters"].check("max_iters", max_iters)  # before scaling
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        unscaled = {name: defaults[name] for name in SCHEDULE_FIELDS if name not in schedule}
        schedule = {**shorten_schedule(dict(unscaled), max_iters), **schedule}
        scaled = tuple(name for name in SCHEDULE_FIELDS if name in unscaled and (
            schedule[name] != defaults[name]))  # fmt: skip
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    model = ModelConfig(**{k: v for k, v in values.items() if k in model_names})
    train = TrainConfig(**{k: v for k, v in values.items() if k not in model_names}, **schedule)
    return model, train, scaled
