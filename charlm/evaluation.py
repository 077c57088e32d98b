"""Train and val loss during training, within a fixed share of the run's compute.

**Budget.** Over a run, evaluation reads at most ``EVAL_TOKEN_SHARE`` (a third) as many
tokens as training does. A forward pass without gradients costs about a third of a
training step per token (benchmarks/grid_wall.py measures the split), so evaluation stays
near a tenth of a trial's time whatever ``max_iters``. Per evaluation that is
``budget = max(2 * batch_size, max_iters * batch_size // (3 * evaluations))`` windows of
``block_size`` tokens for both splits together, and never more than ``eval_iters`` batches
per split.

**Val** (what ranks configs) is planned first: evaluated exactly, once over non-overlapping
windows (no sampling error), when the split has no more windows than the budget less one
batch; otherwise on a fixed sample of half the budget's windows (the same windows at every
evaluation).

**Train**: the rest of the budget, on a fixed sequence of random windows read batch by batch
and stopped as soon as the standard error of the mean reaches ``TRAIN_LOSS_TARGET_STDERR``
(0.01 nats): a sequential fixed-precision estimate (Chow and Robbins 1965). Every evaluation
reads a prefix of the same windows. Tiny train splits that fit are evaluated exactly.

A sampled loss is the mean of the windows' mean token losses, an unbiased estimate of the
split's loss (every window has ``block_size`` tokens); its standard error is the windows'
sample standard deviation (Bessel-corrected) over the square root of their number. An exact
loss has no sampling error (standard error None).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charlm.config import TrainConfig
from charlm.data import Dataset, iter_windows, n_windows, windows

# Fixed seed: every trial evaluates the same windows, whatever its own seed.
EVAL_SEED = 1337
EVAL_TOKEN_SHARE = 1 / 3
TRAIN_LOSS_TARGET_STDERR = 0.01
SPLITS = ("train", "val")


def n_evaluations(cfg: TrainConfig) -> int:
    """Evaluations in one run: at step 0, every eval_interval steps, and at max_iters."""
    passes = cfg.max_iters // cfg.eval_interval + 1
    return passes + (1 if cfg.max_iters % cfg.eval_interval else 0)


@dataclass(frozen=True)
class SplitPlan:
    """How one split is evaluated: ``mode`` 'exact' (every window once) or 'sampled' (at most
    ``windows`` fixed random windows, stopped early at ``target_stderr`` when that is set)."""

    mode: str
    windows: int
    target_stderr: float | None = None


@dataclass(frozen=True)
class EvalPlan:
    """The evaluation of one run: windows per evaluation for both splits, and each split's plan."""

    budget_windows: int
    splits: dict[str, SplitPlan]

    def max_windows(self) -> int:
        """Windows one evaluation reads at most (both splits)."""
        return sum(plan.windows for plan in self.splits.values())


def plan_evaluation(
    split_lengths: Mapping[str, int], block_size: int, cfg: TrainConfig
) -> EvalPlan:
    """The evaluation plan of a run (module docstring): ``split_lengths`` in tokens."""
    batch = cfg.batch_size
    budget = max(
        2 * batch, math.floor(EVAL_TOKEN_SHARE * cfg.max_iters * batch / n_evaluations(cfg))
    )
    cap = cfg.eval_iters * batch
    val_windows = n_windows(split_lengths["val"], block_size)
    if val_windows <= min(cap, budget - batch):
        val = SplitPlan("exact", val_windows)
    else:
        val = SplitPlan("sampled", min(cap, max(batch, budget // 2)))
    rest = min(cap, max(batch, budget - val.windows))
    train_windows = n_windows(split_lengths["train"], block_size)
    if train_windows <= rest:
        train = SplitPlan("exact", train_windows)
    else:
        train = SplitPlan("sampled", rest, TRAIN_LOSS_TARGET_STDERR)
    return EvalPlan(budget, {"train": train, "val": val})


def standard_error(window_losses: torch.Tensor) -> float:
    """Standard error of the mean of per-window losses: sample std (Bessel) / sqrt(n)."""
    if window_losses.numel() < 2:
        return math.inf
    return (window_losses.double().std(correction=1) / math.sqrt(window_losses.numel())).item()


@dataclass(frozen=True)
class SplitLoss:
    """One split's loss at one evaluation: the estimate, its standard error (None when
    exact) and the number of windows read."""

    loss: float
    stderr: float | None
    windows: int


class Evaluator:
    """Loss on each split by the run's ``EvalPlan``; ``seconds`` adds up the time it took."""

    def __init__(self, data: Dataset, block_size: int, cfg: TrainConfig, device: str):
        self.data, self.block_size, self.cfg, self.device = data, block_size, cfg, device
        lengths = {split: data.split_length(split) for split in SPLITS}
        self.plan = plan_evaluation(lengths, block_size, cfg)
        self.seconds = 0.0
        self._starts = {}
        for index, split in enumerate(SPLITS):
            plan = self.plan.splits[split]
            if plan.mode == "sampled":
                generator = torch.Generator().manual_seed(EVAL_SEED + index)
                high = lengths[split] - block_size
                self._starts[split] = torch.randint(high, (plan.windows,), generator=generator)

    @property
    def modes(self) -> dict[str, str]:
        return {split: plan.mode for split, plan in self.plan.splits.items()}

    def _batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        array = self.data.splits[split]
        if self.plan.splits[split].mode == "exact":
            yield from iter_windows(array, self.block_size, self.cfg.batch_size, self.device)
            return
        starts = self._starts[split].numpy()
        for first in range(0, len(starts), self.cfg.batch_size):
            batch = starts[first : first + self.cfg.batch_size]
            yield windows(array, batch, self.block_size, self.device)

    @torch.no_grad()
    def __call__(
        self, model: torch.nn.Module, autocast: AbstractContextManager
    ) -> dict[str, SplitLoss]:
        """Both splits' losses; the model is left in training mode."""
        start = time.perf_counter()
        model.eval()
        losses = {}
        for split in SPLITS:
            plan = self.plan.splits[split]
            window_losses = []
            for x, y in self._batches(split):
                with autocast:
                    logits, _ = model(x)
                token_losses = F.cross_entropy(
                    logits.float().flatten(0, 1), y.flatten(), reduction="none"
                )
                window_losses.append(token_losses.view(y.shape).double().mean(dim=1).cpu())
                if plan.target_stderr is not None and (
                    standard_error(torch.cat(window_losses)) <= plan.target_stderr
                ):
                    break
            per_window = torch.cat(window_losses)
            stderr = standard_error(per_window) if plan.mode == "sampled" else None
            losses[split] = SplitLoss(per_window.mean().item(), stderr, per_window.numel())
        model.train()
        self.seconds += time.perf_counter() - start
        return losses
