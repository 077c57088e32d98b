"""The Ray Tune function trainable around ``charlm.train.train``.

Its ``config`` is ``{"trial": {"trial_id": ..., "params": {flat ModelConfig+TrainConfig}}}``
(whole dicts through ``tune.grid_search``) or, for Optuna searches, the sampled values
merged into a base ``params``. It turns that into dataclasses once, picks the device and
thread count from the resources Ray assigned, resumes from Tune's checkpoint when the
trial is a retry, and reports every evaluation with a checkpoint.
"""

from __future__ import annotations

import time

_IMPORTS_START = time.perf_counter()

import math  # noqa: E402
import tempfile  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from charlm.config import split_config  # noqa: E402
from charlm.train import CHECKPOINT_FILE, train  # noqa: E402

# What this process paid to import torch and charlm: charged to its first trial only (a
# reused Ray actor runs later trials without importing anything again).
_IMPORT_S = time.perf_counter() - _IMPORTS_START
_trials_run = 0

__all__ = ["run_trial", "trial_device", "trial_threads"]


def trial_threads() -> int:
    """Torch threads for this trial: the CPUs Ray assigned to it (at least one)."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    return max(1, math.floor(assigned.get("CPU", 1)))


def trial_device() -> str:
    """'cuda' when Ray assigned a GPU and CUDA really works here, else 'cpu'."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    return "cuda" if assigned.get("GPU", 0) > 0 and torch.cuda.is_available() else "cpu"


def _sanitize(metrics: dict[str, Any]) -> dict[str, Any]:
    # Tune treats 'done' specially and our non-finite floats would break JSON loggers.
    return {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value)
        for key, value in metrics.items()
    }


def run_trial(config: dict[str, Any]) -> None:
    """Train one trial; each evaluation is a ``tune.report`` with a checkpoint."""
    global _trials_run
    started_at = time.time()
    import_s = _IMPORT_S if _trials_run == 0 else 0.0
    _trials_run += 1
    spec = config["trial"]
    params = dict(spec["params"])
    params["num_threads"] = trial_threads()
    params["device"] = trial_device()
    model_cfg, train_cfg = split_config(params)
    checkpoint = tune.get_checkpoint()
    with (
        tempfile.TemporaryDirectory(prefix="charlm-trial-") as work,
        checkpoint.as_directory() if checkpoint is not None else nullcontext() as resume_dir,
    ):
        resume_from = Path(resume_dir) / CHECKPOINT_FILE if resume_dir is not None else None

        def report(metrics: dict[str, Any]) -> None:
            metrics = {**metrics, "started_at": started_at, "reported_at": time.time(),
                       "import_s": import_s}  # fmt: skip
            tune.report(_sanitize(metrics), checkpoint=tune.Checkpoint.from_directory(work))

        train(model_cfg, train_cfg, report, checkpoint_dir=work, resume_from=resume_from)
