"""The arguments of ``python -m charlm.train``, parsed and checked without importing torch.

charlm.train imports torch (seconds on a busy machine) at the top; it calls ``parse`` before
that import when run as a script, so bad input answers at once: one line, exit 2.
"""

from __future__ import annotations

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
    field_types,
    shorten_schedule,
    split_config,
    to_dict,
)

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
    full = TrainConfig().max_iters
    parser = OneLineParser(
        prog="python -m charlm.train",
        description="Train one character-level GPT, print progress, write DIR/result.json "
        "and a checkpoint. Runs on CUDA when present (bf16 autocast), else CPU. "
        f"--max-iters other than {full} scales the warm-up, the lr decay and the eval "
        "interval that are not given with it (as the sweeps' --max-iters does).",
    )
    defaults = {**to_dict(ModelConfig()), **to_dict(TrainConfig())}
    types = {**field_types(ModelConfig), **field_types(TrainConfig)}

    def add(name: str, help: str, *flags: str, **kwargs: Any) -> None:
        """The option of config field ``name`` (flag --name unless ``flags``), with the
        field's type and default (a schedule field's is scaled: None); a bool is a flag."""
        if types[name] is bool:
            kwargs["action"] = "store_true"
        else:
            scaled = name in SCHEDULE_FIELDS or name == "max_iters"  # default in the help
            kwargs = {"type": types[name], "default": None if scaled else defaults[name], **kwargs}
        flags = flags or (f"--{name.replace('_', '-')}",)
        parser.add_argument(*flags, dest=name, help=help, **kwargs)

    add("dataset", "shakespeare_char, enwik8, text8, or the path of a UTF-8 text file")
    add(
        "data_dir", "where datasets are cached (default: $CHARLM_DATA_DIR, else the user cache dir)"
    )
    add("n_layer", "transformer blocks")
    add("n_head", "attention heads per block")
    add("n_embed", "embedding width")
    add("block_size", "context length")
    add("dropout", "dropout probability")
    add("bias", "biases in Linear and LayerNorm layers")
    add("batch_size", "sequences per step")
    add("max_iters", f"training steps (default: {full})")
    add(
        "eval_interval",
        f"steps between evaluations (default: {defaults['eval_interval']}, at most --max-iters)",
    )
    add("eval_iters", "batches per evaluation when a split is too large to evaluate exactly")
    warmup = f"{defaults['warmup_iters']} x max-iters / {full}, below max-iters"
    add("warmup_iters", f"linear warm-up steps (default: {warmup})")
    add("lr_decay_iters", "step where the cosine decay reaches min-lr (default: max-iters)")
    add("learning_rate", "peak learning rate", "--learning-rate", "--lr")
    add("min_lr", "default: learning-rate / 10")
    add("weight_decay", "AdamW")
    add("beta1", "AdamW")
    add("beta2", "AdamW")
    add("grad_clip", "gradient norm clip")
    add("seed", "initialisation and data order")
    add("probe_interval", "steps between attention probes (default: at every evaluation)")
    add("probe_batch_size", "sequences the probes look at")
    add("sample_tokens", "characters generated at the end")
    add("temperature", "sampling")
    add("top_k", "sampling")
    add("device", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    add("num_threads", "torch threads (default: torch's own choice)", "--threads")
    add("compile", "run training steps through torch.compile (opt-in; pays off on CUDA)")
    option = parser.add_argument
    option("--out", required=True, help="output directory for result.json and the checkpoint")
    option("--resume", action="store_true", help="continue from OUT/ckpt.pt if it exists")
    option("--quiet", action="store_true", help="no progress lines")
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
        defaults = to_dict(TrainConfig())
        unscaled = {name: defaults[name] for name in SCHEDULE_FIELDS if name not in schedule}
        schedule = {**shorten_schedule(dict(unscaled), max_iters), **schedule}
        scaled = tuple(name for name in SCHEDULE_FIELDS if name in unscaled and (
            schedule[name] != defaults[name]))  # fmt: skip
    return (*split_config({**values, **schedule}), scaled)
