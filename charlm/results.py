"""What one run reports, declared once: ``TrialResult`` (the run's metrics) and ``CurvePoint``
(one evaluation's curve point). No torch: the store's format (``sweeps.schema``) builds its
trials and curves columns from these, and ``sweeps.store`` fills its rows by them.

Adding a per-trial metric is one field of ``TrialResult`` declared with ``metric``: it is
then in ``summary()``, a trials column (the Arrow type from its Python type) and the store's
row. Adding a curve key is one key of ``CurvePoint``. A new store column still needs a
schema version step (``sweeps.schema``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, TypedDict

from charlm.config import ModelConfig, TrainConfig, field_types, to_dict


class CurvePoint(TypedDict):
    """One evaluation's point of the curve (``TrialResult.curve``, each report, a row of the
    store's curves table), keys in column order."""

    step: int
    tokens_seen: int
    elapsed_s: float
    lr: float
    train_loss: float
    val_loss: float
    best_val_loss: float
    tokens_per_s: float | None
    train_loss_stderr: float | None  # None where the split is exact
    val_loss_stderr: float | None
    train_eval_windows: int  # windows read at this evaluation
    val_eval_windows: int


@dataclass(frozen=True)
class Metric:
    """How a ``TrialResult`` field reaches the store's trials row. ``column``: it has a
    column of its own (num_threads is a config column already, tokens_seen a curve key).
    ``stand_in``: the key of the trial's last report that stands in when the trial stopped
    before its final report (ASHA); None: only the final report carries it (null then)."""

    column: bool = True
    stand_in: str | None = None


def metric(default: Any, *, column: bool = True, stand_in: str | None = None) -> Any:
    """A ``TrialResult`` field that is one of the run's metrics (see ``Metric``)."""
    return field(default=default, metadata={"metric": Metric(column, stand_in)})


@dataclass
class TrialResult:
    """Everything one run produced. ``status`` is 'ok' or 'failed' (then ``error`` says why).

    The metrics are declared in the order of the store's trials columns."""

    model_config: ModelConfig
    train_config: TrainConfig
    n_params: int = metric(0, stand_in="n_params")
    status: str = metric("ok")  # the store's row takes it from the driver
    error: str | None = metric(None)
    best_val_loss: float | None = metric(None)  # stopped early: the curve's lowest val loss
    final_train_loss: float | None = metric(None, stand_in="train_loss")
    final_val_loss: float | None = metric(None, stand_in="val_loss")
    last_step: int = metric(0, stand_in="step")
    tokens_seen: int = metric(0, column=False)
    train_time_s: float = metric(0.0, stand_in="elapsed_s")
    train_tokens_per_s: float | None = metric(None)
    inference_tokens_per_s: float | None = metric(None)
    eval_mode: str = metric("sampled", stand_in="eval_mode")  # val loss: 'exact' | 'sampled'
    train_eval_mode: str = metric("sampled")
    val_eval_windows: int = metric(0)  # windows per evaluation (exact: all of the split's)
    train_eval_windows: int = metric(0)  # at most, per evaluation (sampled: stopped at the target)
    train_loss_target_stderr: float | None = metric(None)
    final_train_loss_stderr: float | None = metric(None)  # None: exact (no sampling error)
    final_val_loss_stderr: float | None = metric(None)
    # Where the run's time went: set-up (dataset, model, optimizer, resume), training steps,
    # evaluation, probes, checkpoint writes and the final sample (generation and metrics).
    setup_s: float = metric(0.0)
    steps_s: float = metric(0.0)
    eval_s: float = metric(0.0)
    probe_s: float = metric(0.0)
    checkpoint_s: float = metric(0.0)
    sample_s: float = metric(0.0)
    device: str = metric("cpu", stand_in="device")
    num_threads: int | None = metric(None, column=False)
    curve: list[CurvePoint] = field(default_factory=list)
    attention: list[dict[str, Any]] = field(default_factory=list)
    sample: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The scalar outcome of the run (no curve, attention rows or configs)."""
        return {name: getattr(self, name) for name in metrics()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: summary, both configs, curve, attention rows and sample."""
        return {
            **self.summary(),
            "model_config": to_dict(self.model_config),
            "train_config": to_dict(self.train_config),
            "curve": self.curve,
            "attention": self.attention,
            "sample": self.sample,
        }


@functools.cache
def metrics() -> dict[str, tuple[type, Metric]]:
    """Each metric of ``TrialResult`` in declaration order: name -> (value type, Metric)."""
    declared = {f.name: f.metadata["metric"] for f in dataclasses.fields(TrialResult)
                if "metric" in f.metadata}  # fmt: skip
    types = field_types(TrialResult, declared)
    return {name: (types[name], spec) for name, spec in declared.items()}


@functools.cache
def curve_types() -> dict[str, type]:
    """Each ``CurvePoint`` key's value type, in column order."""
    return field_types(CurvePoint)
