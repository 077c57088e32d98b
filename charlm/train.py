"""The training loop: ``train(model_cfg, train_cfg, report) -> TrialResult``, and its CLI.

A plain function (no Ray): AdamW, linear warm-up then cosine decay, gradient clipping.
Every ``eval_interval`` steps (and at step 0 and the last step) it measures train and val
loss, runs the attention probes, saves a checkpoint when asked to, and calls
``report(metrics)``. The last report also carries the final metrics and the sample.

Evaluation (``charlm.evaluation``) takes at most ~10% of a run: val exactly where the
split is small enough, else on a fixed sample; train on a fixed sample stopped at a 0.01-nat
standard error. Every loss is reported with its standard error and window count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # As a script: check the arguments before torch is imported (seconds on a busy
    # machine), so bad input answers at once.
    from charlm.train_args import parse as _parse_first

    _parse_first(sys.argv[1:])

import torch

from charlm.config import ConfigError, ModelConfig, TrainConfig, to_dict
from charlm.data import (
    BatchSampler,
    Dataset,
    DatasetChangedError,
    check_block_size,
    get_batch,
    load_dataset,
)
from charlm.evaluation import Evaluator, SplitLoss
from charlm.fsio import atomic_write, atomic_write_bytes
from charlm.model import GPT
from charlm.probes import probe_metrics
from charlm.results import CurvePoint, TrialResult
from charlm.sample import generate_text, quality_metrics, sample_attention, word_set
from charlm.train_args import parse as parse_train_args
from charlm.versions import upgrade

CHECKPOINT_FILE = "ckpt.pt"
MODEL_FILE = "model.pt"
CHECKPOINT_FORMAT = 1  # checkpoints and model files; bump it with a CHECKPOINT_UPGRADES step
# format v -> the function (the dict format v wrote) -> the dict format v + 1 writes
CHECKPOINT_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
# Fixed seed: every trial probes the same text, whatever its own seed.
PROBE_SEED = 7
SAMPLE_PROMPT = "\n"  # or the text's first character when it has no newline
# What may differ between a checkpoint and the run resuming it: when to evaluate, probe and
# sample, and where it runs. Anything else would change what the run trains (and what the
# store records for the whole run), so --resume refuses it; max_iters may not go below the
# checkpoint's step.
RESUMABLE_FIELDS = (
    "max_iters", "eval_interval", "probe_interval", "sample_tokens", "temperature", "top_k",
    "device", "num_threads", "data_dir", "compile",
)  # fmt: skip

Report = Callable[[dict[str, Any]], None]


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when CUDA is really usable, else 'cpu'; explicit CUDA without CUDA fails."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={requested!r} but CUDA is not available here: use device 'auto' or 'cpu'."
        )
    return requested


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_iters``, cosine decay to ``min_lr`` at ``lr_decay_iters``."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    decay_iters = cfg.resolved_lr_decay_iters
    if step >= decay_iters:
        return cfg.resolved_min_lr
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.resolved_min_lr + coeff * (cfg.learning_rate - cfg.resolved_min_lr)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_write(path) as file:
        torch.save(obj, file)


def read_checkpoint(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """A checkpoint or model file's dict, upgraded to ``CHECKPOINT_FORMAT``.

    A newer format (or a file without one) is a FormatVersionError naming the file.
    """
    state = torch.load(path, map_location=device, weights_only=True)
    version = state.get("format") if isinstance(state, dict) else None
    return upgrade(
        state, version, current=CHECKPOINT_FORMAT, upgrades=CHECKPOINT_UPGRADES,
        where=str(path), what="checkpoint format",
    )  # fmt: skip


def load_model(path: str | Path, device: str = "cpu") -> tuple[GPT, list[str]]:
    """Load a model file (``model.pt``) or a full checkpoint: the GPT in eval mode and its vocab."""
    state = read_checkpoint(path, device)
    model = GPT(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, list(state["vocab"])


class _NonFiniteWatch:
    """Catches the first training step whose loss is not finite, without a host sync on CUDA.

    On the CPU the check is free, so a step is checked as it happens and the run stops
    before its backward pass. On CUDA, ``observe`` only records the first bad step in a
    device tensor and the run learns of it at the next evaluation (which syncs anyway):
    the steps in between train on NaNs and are discarded with the failed run.
    """

    def __init__(self, device_type: str, device: str) -> None:
        self.deferred = device_type == "cuda"
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def observe(self, loss: torch.Tensor, step: int) -> int | None:
        """Record ``loss`` of ``step``; the failing step now if this device checks at once."""
        if not self.deferred:
            return None if torch.isfinite(loss) else step
        bad = (~torch.isfinite(loss.detach())) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, step, self.first_bad)
        return None

    def pending(self) -> int | None:
        """The first non-finite step not yet acted on (a host sync on CUDA)."""
        if not self.deferred:
            return None
        first = int(self.first_bad.item())
        return first if first >= 0 else None


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    report: Report | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> TrialResult:
    """Train one model and return its TrialResult: ``train_steps`` run to the end, each
    evaluation's metrics passed to ``report``.

    ``report(metrics)`` gets one flat dict per evaluation: its curve point
    (``charlm.results.CurvePoint``), attention (per layer/head rows, when probed), final;
    the last one also carries the final metrics (``TrialResult.summary``) and the sample.
    With ``checkpoint_dir``, a checkpoint (``ckpt.pt``: model, optimizer, step, RNG states,
    history) is written at every evaluation before reporting, and ``model.pt`` (weights,
    config and vocab) at the end. ``resume_from`` (a checkpoint file or directory) continues
    a stopped run exactly: same losses as a run that never stopped.

    Config problems (unknown dataset, block_size longer than a split, ...) raise
    ConfigError before any training; a non-finite loss ends the run with status 'failed'.
    """
    steps = train_steps(
        model_cfg, train_cfg, checkpoint_dir=checkpoint_dir, resume_from=resume_from
    )
    while True:
        try:
            metrics = next(steps)
        except StopIteration as stop:
            return stop.value
        if report is not None:
            report(metrics)


def train_steps(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    dataset_sha256: str | None = None,
) -> Generator[dict[str, Any], None, TrialResult]:
    """The training loop as a generator: it yields each evaluation's metrics (what ``train``
    reports, the checkpoint already written) and returns the TrialResult. Driving several
    of these in turn trains them in lockstep: at every yield all have trained to the same
    step (``sweeps.trainable`` trains a search trial's seeds so). Arguments as ``train``'s;
    ``dataset_sha256``: the content the caller expects (a sweep's record), else
    DatasetChangedError before any training.
    """
    wall_start = time.perf_counter()
    device = resolve_device(train_cfg.device)
    if train_cfg.num_threads is not None:
        torch.set_num_threads(train_cfg.num_threads)
    data, model_cfg = _checked_data(model_cfg, train_cfg, dataset_sha256)
    state = None
    if resume_from is not None:
        state = _load_checkpoint(resume_from, device)
        check_resumable(state, model_cfg, train_cfg, data, resume_from)
    run = _Run(model_cfg, train_cfg, data, device, checkpoint_dir, wall_start)
    if state is not None:
        run.resume(state)

    # The steps run on locals: nothing but the step's own work between two steps.
    model, optimizer, autocast = run.model, run.optimizer, run.autocast
    batch_generator, nonfinite, step = run.batch_generator, run.nonfinite, run.step
    # Training steps may run compiled; evaluation, probes and sampling use the eager model.
    step_model = torch.compile(model) if train_cfg.compile else model
    next_batch = BatchSampler(
        data.splits["train"], train_cfg.batch_size, model_cfg.block_size, device
    )
    tokens_per_step = run.tokens_per_step
    run.run_start = run.window_start = time.perf_counter()
    run.result.setup_s = run.run_start - wall_start
    window_tokens = 0
    skip_eval_at = step if state is not None else None
    model.train()
    while True:
        if (step % train_cfg.eval_interval == 0 or step == train_cfg.max_iters) and (
            step != skip_eval_at
        ):
            if (yield from run.evaluation(step, window_tokens)):
                return run.result
            window_tokens = 0
        if step == train_cfg.max_iters:  # resumed from the final checkpoint
            break

        lr = lr_at(step, train_cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next_batch(batch_generator)
        with autocast:
            _, loss = step_model(x, y)
        bad_step = nonfinite.observe(loss, step + 1)
        if bad_step is not None:
            yield _fail(run.result, bad_step, wall_start)
            return run.result
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_tokens += tokens_per_step
        step += 1
    run.finish()
    run.result.train_time_s = run.prior_elapsed
    return run.result


def _checked_data(
    model_cfg: ModelConfig, train_cfg: TrainConfig, dataset_sha256: str | None
) -> tuple[Dataset, ModelConfig]:
    """The run's dataset, checked against ``dataset_sha256`` and the model's vocabulary and
    block size; ``model_cfg`` with the dataset's vocab_size when it had none."""
    data = load_dataset(train_cfg.dataset, train_cfg.data_dir)
    if dataset_sha256 is not None and data.source_sha256 != dataset_sha256:
        raise DatasetChangedError(
            f"dataset {train_cfg.dataset} changed since the sweep started (its content has "
            f"sha256 {data.source_sha256[:12]}..., the sweep recorded {dataset_sha256[:12]}...): "
            "this trial is not run on other text than its sweep; restore the file, or run "
            "the sweep again (an edited file makes new trials)."
        )
    if model_cfg.vocab_size is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=data.vocab_size)
    elif model_cfg.vocab_size != data.vocab_size:
        raise ConfigError(
            f"vocab_size={model_cfg.vocab_size} does not match {data.name}'s vocabulary "
            f"of {data.vocab_size}: leave vocab_size unset to take it from the dataset."
        )
    check_block_size(data, model_cfg.block_size)
    return data, model_cfg


@contextmanager
def _timed(result: TrialResult, field: str) -> Iterator[None]:
    """Add the block's wall time to ``result``'s time field ``field`` (probe_s, ...)."""
    start = time.perf_counter()
    yield
    setattr(result, field, getattr(result, field) + time.perf_counter() - start)


class _Run:
    """One run's state between its training steps: the model, optimizer and RNGs, the
    history, the clocks; and the phases around the steps (evaluate, probe, checkpoint,
    report, finish). The steps themselves are ``train_steps``'."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        data: Dataset,
        device: str,
        checkpoint_dir: str | Path | None,
        wall_start: float,
    ) -> None:
        self.cfg, self.data, self.device, self.wall_start = cfg, data, device, wall_start
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        torch.manual_seed(cfg.seed)
        self.model = GPT(model_cfg).to(device)
        if self.device_type == "cuda":  # TF32 matmuls: what users expect on Ampere and later
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.optimizer = self.model.configure_optimizer(
            cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), self.device_type
        )
        self.autocast: AbstractContextManager[Any] = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if self.device_type == "cuda"
            else nullcontext()
        )
        self.batch_generator = torch.Generator().manual_seed(cfg.seed)
        self.nonfinite = _NonFiniteWatch(self.device_type, device)
        self.evaluate = Evaluator(data, model_cfg.block_size, cfg, device)
        self.probe_x, _ = get_batch(
            data.splits["val"], cfg.probe_batch_size, model_cfg.block_size,
            torch.Generator().manual_seed(PROBE_SEED), device,
        )  # fmt: skip
        plan = self.evaluate.plan.splits
        self.result = TrialResult(
            model_config=model_cfg,
            train_config=cfg,
            device=device,
            eval_mode=plan["val"].mode,
            train_eval_mode=plan["train"].mode,
            val_eval_windows=plan["val"].windows,
            train_eval_windows=plan["train"].windows,
            train_loss_target_stderr=plan["train"].target_stderr,
            num_threads=torch.get_num_threads() if self.device_type == "cpu" else None,
            n_params=self.model.num_params(),
        )
        self.checkpoint_path = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.checkpoint_path is not None:
            self.checkpoint_path.mkdir(parents=True, exist_ok=True)
        self.tokens_per_step = cfg.batch_size * model_cfg.block_size
        self.step, self.train_seconds, self.prior_elapsed = 0, 0.0, 0.0
        self.best_val = math.inf
        # Training time is measured per window of steps between evaluations (a synced
        # boundary), so no step waits for the device.
        self.run_start = self.window_start = wall_start

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from checkpoint ``state``: weights, optimizer, RNG states, step, history."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _restore_rng_states((state["rng_cpu"], state.get("rng_cuda")), self.device_type)
        self.batch_generator.set_state(state["rng_batches"])
        self.step = state["step"]
        self.train_seconds, self.prior_elapsed = state["train_seconds"], state["elapsed_s"]
        self.best_val = state["best_val_loss"]
        self.result.curve, self.result.attention = list(state["curve"]), list(state["attention"])

    def evaluation(self, step: int, window_tokens: int) -> Generator[dict[str, Any], None, bool]:
        """The evaluation at ``step``, ``window_tokens`` trained since the last one: it
        yields its metrics (probes run, checkpoint written); True when the run is over."""
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        window_seconds = time.perf_counter() - self.window_start if window_tokens else 0.0
        self.train_seconds += window_seconds
        bad_step = self.nonfinite.pending()
        losses = self.evaluate(self.model, self.autocast) if bad_step is None else {}
        self.result.eval_s = self.evaluate.seconds
        if bad_step is None and not all(math.isfinite(v.loss) for v in losses.values()):
            bad_step = step
        if bad_step is not None:
            yield _fail(self.result, bad_step, self.wall_start)
            return True
        self.best_val = min(self.best_val, losses["val"].loss)
        speed = window_tokens / window_seconds if window_seconds > 0 else None
        point = self._point(step, losses, speed)
        metrics: dict[str, Any] = dict(point)
        last = step == self.cfg.max_iters
        if last or self.cfg.probe_interval is None or step % self.cfg.probe_interval == 0:
            with _timed(self.result, "probe_s"):
                metrics["attention"] = probe_model(self.model, self.probe_x, self.autocast, step)
            self.result.attention.extend(metrics["attention"])
        if self.checkpoint_path is not None:
            with _timed(self.result, "checkpoint_s"):
                self._save_checkpoint(self.checkpoint_path / CHECKPOINT_FILE, point)
        if last:
            self._finish_last()
            metrics.update(self.result.summary(), sample=self.result.sample, final=True)
            yield metrics
            return True
        metrics["final"] = False
        rng = _rng_states(self.device_type)
        yield metrics
        _restore_rng_states(rng, self.device_type)  # others may have drawn from it meanwhile
        self.window_start = time.perf_counter()
        return False

    def _point(self, step: int, losses: dict[str, SplitLoss], speed: float | None) -> CurvePoint:
        """The curve point of the evaluation at ``step`` (appended to the result's curve)."""
        point: CurvePoint = {
            "step": step,
            "tokens_seen": step * self.tokens_per_step,
            "elapsed_s": self.prior_elapsed + time.perf_counter() - self.run_start,
            "lr": lr_at(min(step, self.cfg.max_iters - 1), self.cfg),
            "train_loss": losses["train"].loss,
            "val_loss": losses["val"].loss,
            "best_val_loss": self.best_val,
            "tokens_per_s": speed,
            "train_loss_stderr": losses["train"].stderr,
            "val_loss_stderr": losses["val"].stderr,
            "train_eval_windows": losses["train"].windows,
            "val_eval_windows": losses["val"].windows,
        }
        self.result.curve.append(point)
        return point

    def _finish_last(self) -> None:
        """The last evaluation's end: final metrics, sample, model file, run time."""
        self.finish()
        if self.checkpoint_path is not None:
            with _timed(self.result, "checkpoint_s"):
                save_model(
                    self.checkpoint_path / MODEL_FILE, self.model, self.data.vocab, self.data.name
                )
        self.result.train_time_s = self.prior_elapsed + time.perf_counter() - self.run_start

    def finish(self) -> None:
        """Fill the final metrics and the generated sample into the result."""
        result, cfg, data = self.result, self.cfg, self.data
        last = result.curve[-1]
        result.last_step = last["step"]
        result.tokens_seen = last["tokens_seen"]
        result.best_val_loss = self.best_val
        result.final_train_loss = last["train_loss"]
        result.final_val_loss = last["val_loss"]
        result.final_train_loss_stderr = last.get("train_loss_stderr")
        result.final_val_loss_stderr = last.get("val_loss_stderr")
        result.steps_s = seconds = self.train_seconds
        result.train_tokens_per_s = last["tokens_seen"] / seconds if seconds > 0 else None
        if cfg.sample_tokens <= 0:
            return
        with _timed(result, "sample_s"):
            prompt = sample_prompt(data)
            text, result.inference_tokens_per_s = generate_text(
                self.model, data, prompt, cfg.sample_tokens, cfg.temperature, cfg.top_k,
                cfg.seed, self.device,
            )  # fmt: skip
            result.sample = {
                "prompt": prompt,
                "text": text,
                "n_chars": len(text),
                **quality_metrics(text, _known_words(data)),
                **sample_attention(
                    self.model, data.encode(prompt + text), len(prompt), self.device
                ),
            }

    def _save_checkpoint(self, path: Path, point: CurvePoint) -> None:
        _atomic_torch_save(
            {
                **_model_file(self.model, self.data.vocab, self.data.name),
                "optimizer": self.optimizer.state_dict(),
                "step": point["step"],
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state() if self.device_type == "cuda" else None,
                "rng_batches": self.batch_generator.get_state(),
                "train_seconds": self.train_seconds,
                "elapsed_s": point["elapsed_s"],
                "best_val_loss": self.best_val,
                "curve": self.result.curve,
                "attention": self.result.attention,
                "train_config": to_dict(self.cfg),
                "dataset_sha256": self.data.source_sha256,
            },
            path,
        )


def _rng_states(device_type: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch's global RNG states (CPU, and CUDA when used): dropout draws from them."""
    cuda = torch.cuda.get_rng_state() if device_type == "cuda" else None
    return torch.get_rng_state(), cuda


def _restore_rng_states(states: tuple[torch.Tensor, torch.Tensor | None], device_type: str) -> None:
    torch.set_rng_state(states[0])
    if device_type == "cuda" and states[1] is not None:
        torch.cuda.set_rng_state(states[1])


def probe_model(
    model: GPT, probe_x: torch.Tensor, autocast: Any = None, step: int = 0
) -> list[dict[str, Any]]:
    """The probe rows (``probe_metrics`` plus ``step``) of ``model`` on the batch probe_x (B, T),
    captured in eval mode under ``autocast`` (a context manager; None for none); the model is
    left in training mode, as the training loop needs it."""
    with autocast or nullcontext():
        capture = model.capture(probe_x)  # in eval mode
    model.train()
    attentions = [a.float() for a in capture.attentions]
    hidden = [h.float() for h in capture.hidden_states]
    return [{"step": step, **row} for row in probe_metrics(attentions, hidden)]


def _known_words(data: Dataset) -> set[str]:
    """The words of the training text (its first 2M characters), computed once per encoded
    dataset file and process: the trials a reused Ray actor runs one after another share it."""
    train = data.splits["train"]
    key = (data.name, getattr(train, "filename", None), len(train))
    if key[1] is None or key not in _KNOWN_WORDS:
        _KNOWN_WORDS[key] = word_set(data.decode(train[:2_000_000]))
    return _KNOWN_WORDS[key]


_KNOWN_WORDS: dict[tuple[str, str | None, int], set[str]] = {}


def _fail(result: TrialResult, step: int, wall_start: float) -> dict[str, Any]:
    """Mark ``result`` failed; its last report (the failure, final)."""
    result.status = "failed"
    result.error = f"non-finite loss at step {step}"
    result.last_step = step
    result.train_time_s = time.perf_counter() - wall_start
    if result.curve:
        result.best_val_loss = min(p["val_loss"] for p in result.curve)
    return {"step": step, **result.summary(), "final": True}


def sample_prompt(data: Dataset) -> str:
    """The prompt of the final sample: a newline, or the training text's first character
    when the text has none (so it is always in the vocabulary)."""
    return SAMPLE_PROMPT if SAMPLE_PROMPT in data.vocab else data.decode(data.splits["train"][:1])


def _text(value: Any) -> str:
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def _flag(name: str, value: Any) -> str:
    flag = f"--{name.replace('_', '-')}"
    if name == "bias" or value is None:
        return flag if value else f"no {flag}"
    return f"{flag} {_text(value)}"


def check_resumable(
    state: dict[str, Any],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: Dataset,
    path: str | Path,
) -> None:
    """Raise ConfigError unless the run (model_cfg, train_cfg on data) continues the one that
    wrote checkpoint ``state``: only RESUMABLE_FIELDS may differ, and max_iters may not be
    below its step. The one-line message names each field, both values and the flag."""
    old_model, old_train = state["model_config"], state["train_config"]
    new_values = {**to_dict(model_cfg), **to_dict(train_cfg)}
    # A field newer than the checkpoint had its default then.
    old_values = {**to_dict(ModelConfig()), **to_dict(TrainConfig()), **old_model, **old_train}
    # The schedule as it runs: an unset lr_decay_iters follows max_iters (resumable).
    old = dataclasses.replace(
        train_cfg, **{k: old_values[k] for k in ("max_iters", "lr_decay_iters")}
    )
    new_values["lr_decay_iters"] = train_cfg.resolved_lr_decay_iters
    old_values["lr_decay_iters"] = old.resolved_lr_decay_iters
    same_data = (
        state.get("dataset_sha256") == data.source_sha256
        if state.get("dataset_sha256") and data.source_sha256
        else old_values.get("dataset") == new_values["dataset"]
    )
    changed = [
        name
        for name in new_values
        if name not in RESUMABLE_FIELDS
        and (not same_data if name == "dataset" else old_values.get(name) != new_values[name])
    ]
    problems = [
        f"{name} {_text(old_values.get(name))} (this run: {_text(new_values[name])})"
        for name in changed
    ]
    if "dataset" in changed and old_values.get("dataset") == new_values["dataset"]:
        problems.append("the dataset file's content changed since the checkpoint")
    fixes = [_flag(name, old_values.get(name)) for name in changed if name != "vocab_size"]
    step = state["step"]
    if train_cfg.max_iters < step:
        problems.append(f"max_iters {train_cfg.max_iters} is below its step {step}")
        fixes.append(f"--max-iters {step} or more")
    if problems:
        raise ConfigError(
            f"--resume: the checkpoint {path} cannot be resumed by this run: "
            f"{'; '.join(problems)}: pass {' '.join(fixes) or 'the same settings'} to resume "
            "it, or give a new --out to start afresh."
        )


def save_model(path: Path, model: GPT, vocab: list[str], dataset: str) -> None:
    """Write ``model`` as a model file (what ``load_model`` reads), atomically: its weights,
    config, and the vocabulary and dataset name it was trained with."""
    _atomic_torch_save(_model_file(model, vocab, dataset), path)


def _model_file(model: GPT, vocab: list[str], dataset: str) -> dict[str, Any]:
    """What a model file holds (a checkpoint holds it too)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(model.cfg),
        "vocab": vocab,
        "dataset": dataset,
    }


def _load_checkpoint(path: str | Path, device: str) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(f"resume_from={str(path)!r}: no checkpoint there; train without it.")
    return read_checkpoint(path, device)


# ---------------------------------------------------------------- CLI


def _progress_line(metrics: dict[str, Any], max_iters: int) -> str:
    if "val_loss" not in metrics:
        return f"step {metrics['step']}: {metrics.get('status')}: {metrics.get('error')}"
    speed = metrics.get("tokens_per_s")
    speed_text = f"{speed:,.0f} tok/s" if speed else "-"
    return (
        f"step {metrics['step']:>6}/{max_iters}  train {metrics['train_loss']:.4f}  "
        f"val {metrics['val_loss']:.4f}  best {metrics['best_val_loss']:.4f}  "
        f"lr {metrics['lr']:.2e}  {speed_text}  {metrics['elapsed_s']:.1f}s"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 on success, 1 if training failed, 2 on bad input."""
    args = parse_train_args(argv)
    out, train_cfg, scaled = args.out, args.train, args.scaled
    try:
        checkpoint = out / CHECKPOINT_FILE
        resume_from = checkpoint if args.resume and checkpoint.is_file() else None
        if resume_from is not None and scaled:
            # A resumed run keeps the schedule it started with where none was given now:
            # scaling warm-up or decay to a new --max-iters would change the run midway.
            saved = _load_checkpoint(resume_from, "cpu").get("train_config", {})
            kept = {n: saved[n] for n in scaled if n not in RESUMABLE_FIELDS and n in saved}
            train_cfg = dataclasses.replace(train_cfg, **kept)
            scaled = tuple(name for name in scaled if name not in kept)
        if scaled and not args.quiet:
            print(
                f"{train_cfg.max_iters} steps: "
                + ", ".join(f"{name} {getattr(train_cfg, name)}" for name in scaled)
                + f" (scaled from the defaults for {TrainConfig().max_iters} steps)",
                flush=True,
            )

        def report(metrics: dict[str, Any]) -> None:
            if not args.quiet:
                print(_progress_line(metrics, train_cfg.max_iters), flush=True)

        result = train(args.model, train_cfg, report, checkpoint_dir=out, resume_from=resume_from)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    atomic_write_bytes(out / "result.json", text.encode())
    summary = result.summary()
    if result.status == "ok":
        print(
            f"done: best val {summary['best_val_loss']:.4f}, final train "
            f"{summary['final_train_loss']:.4f}, {summary['n_params']:,} params, "
            f"{summary['train_tokens_per_s']:,.0f} train tok/s, "
            f"{summary['inference_tokens_per_s'] or 0:,.0f} generated tok/s on {result.device}; "
            f"wrote {out / 'result.json'}"
        )
        if result.sample:
            print("sample:\n" + result.sample["text"][:200])
        return 0
    print(f"failed: {result.error}; wrote {out / 'result.json'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
