"""The Ray Tune function trainable around ``charlm.train.train_steps``.

Its ``config`` is ``{"trial": {"trial_id": ..., "params": {flat ModelConfig+TrainConfig}}}``
(whole dicts through ``tune.grid_search``); an Optuna search trial (``sweeps/search.py``)
passes its seeds' params to ``run_members``, which trains them in lockstep. Params become
dataclasses once, the device and thread count come from the resources Ray assigned, a
retried trial resumes from Tune's checkpoint, and every evaluation is reported with one. A
retry that fails with the error of the attempt before it, at the same step (the driver puts
that failure in the config as ``PREVIOUS_FAILURE``), is not retried again: the error is
deterministic, so the trial ends as failed (``_give_up``).
"""

from __future__ import annotations

import time

_IMPORTS_START = time.perf_counter()

import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from charlm.config import split_config  # noqa: E402
from charlm.data import DatasetChangedError  # noqa: E402
from charlm.train import CHECKPOINT_FILE, train_steps  # noqa: E402
from sweeps.schema import remove_dead_dirs  # noqa: E402
from sweeps.storage import redact  # noqa: E402

# What this process paid to import torch and charlm: charged to its first trial only (a
# reused Ray actor runs later trials without importing anything again).
_IMPORT_S = time.perf_counter() - _IMPORTS_START
_trials_run = 0


# A trial's working directory (its latest checkpoint before Tune takes it), named for its
# process: a trial process killed outright leaves it, and the next trial in the same pid
# namespace removes it. A pid names one process only within its host and pid namespace (Ray
# nodes in containers may share a temp dir, each with its own pids).
_PID_NS = "/proc/self/ns/pid"  # no /proc: one namespace per host
_PID_SPACE = f"{socket.gethostname()}-{os.stat(_PID_NS).st_ino if os.path.exists(_PID_NS) else 0}"
_TRIAL_PREFIX = f"charlm-trial-{_PID_SPACE}-"
_TRIAL_DIR = re.compile(re.escape(_TRIAL_PREFIX) + r"(\d+)-.+")

# Config key of the failure a retried trial had before: {"error": line, "step": int | None}.
PREVIOUS_FAILURE = "previous_failure"


def error_line(text: str) -> str:
    """A failure's one line: the last line of its traceback (the exception), redacted."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return redact(lines[-1]) if lines else "trial failed (no error text)"


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
    run_members([config["trial"]["params"]], previous_failure=config.get(PREVIOUS_FAILURE),
                dataset_sha256=config["trial"]["columns"].get("dataset_sha256"))  # fmt: skip


def member_dir(index: int) -> str:
    """The checkpoint subdirectory of member ``index`` of a multi-seed trial."""
    return f"seed-{index}"


def run_members(
    members: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    previous_failure: dict[str, Any] | None = None,
    dataset_sha256: str | None = None,
) -> None:
    """Train the flat ``params`` of each member in lockstep in this one Tune trial.

    One member: its metrics are the report. Several (a search trial's seeds): every report
    carries ``val_loss`` = their mean (what ASHA and TPE see) and ``members``, each one's
    own metrics, all at the same step. Each member checkpoints into its ``member_dir``, so
    a retried trial resumes them all from one Tune checkpoint. A member that fails
    (non-finite loss) ends the trial: the others stop there too, their rows marked so.
    ``extra`` is added to every report. ``previous_failure``: see ``_give_up``. A dataset
    whose content is not ``dataset_sha256`` (the sweep's record) fails the trial before it
    trains, without a retry.
    """
    reached: list[int] = []  # the steps this attempt reported
    try:
        _train_members(members, extra, reached, dataset_sha256)
    except DatasetChangedError as exc:
        _report_failed(members, None, f"{type(exc).__name__}: {exc}")
    except Exception:
        line = error_line(traceback.format_exc())
        if not _same_failure(previous_failure, line, reached):
            raise
        _give_up(members, previous_failure or {}, line)


def _same_failure(previous: dict[str, Any] | None, line: str, reached: list[int]) -> bool:
    """Whether this attempt failed as the one before: the same error line, and no step
    reported past the step where that one failed."""
    if not previous or previous.get("error") != line:
        return False
    step = previous.get("step")
    return not reached if step is None else max(reached, default=step) <= step


def _give_up(members: list[dict[str, Any]], previous: dict[str, Any], line: str) -> None:
    """End the trial as failed with ``line``: the retry met the same error at the same
    step, so another retry would too (a failed final report ends it without a retry)."""
    step = previous.get("step")
    where = f"after step {step}" if step is not None else "before its first evaluation"
    _report_failed(members, step, f"{line} (again {where} on retry: deterministic, not "
                   "retried again)")  # fmt: skip


def _report_failed(members: list[dict[str, Any]], step: int | None, error: str) -> None:
    """The trial's last report: every member failed at ``step`` with ``error``."""
    failed = {"step": step, "status": "failed", "error": redact(error), "final": True}
    tune.report({**failed, "members": [dict(failed) for _ in members]} if len(members) > 1
                else failed)  # fmt: skip


def _train_members(
    members: list[dict[str, Any]],
    extra: dict[str, Any] | None,
    reached: list[int],
    dataset_sha256: str | None,
) -> None:
    global _trials_run
    started_at = time.time()
    import_s = _IMPORT_S if _trials_run == 0 else 0.0
    _trials_run += 1
    remove_dead_dirs(Path(tempfile.gettempdir()), _TRIAL_DIR)
    checkpoint = tune.get_checkpoint()
    with (
        tempfile.TemporaryDirectory(prefix=f"{_TRIAL_PREFIX}{os.getpid()}-") as work,
        checkpoint.as_directory() if checkpoint is not None else nullcontext() as resume_dir,
    ):
        single = len(members) == 1
        loops = []
        for index, member in enumerate(members):
            params = {**member, "num_threads": trial_threads(), "device": trial_device()}
            model_cfg, train_cfg = split_config(params)
            subdir = "" if single else member_dir(index)
            resume = Path(resume_dir) / subdir / CHECKPOINT_FILE if resume_dir else None
            loop = train_steps(
                model_cfg,
                train_cfg,
                checkpoint_dir=Path(work) / subdir,
                resume_from=resume,
                dataset_sha256=dataset_sha256,
            )
            loops.append(loop)

        def report(metrics: dict[str, Any]) -> None:
            metrics = {**metrics, **(extra or {}), "started_at": started_at,
                       "reported_at": time.time(), "import_s": import_s}  # fmt: skip
            tune.report(_sanitize(metrics), checkpoint=tune.Checkpoint.from_directory(work))
            reached.append(metrics["step"])

        while True:
            step_metrics: list[Any] = [next(loop, None) for loop in loops]
            if step_metrics[0] is None:
                return
            if single:
                report(step_metrics[0])
                continue
            report(_combine(step_metrics, [member["seed"] for member in members]))
            if any(metrics.get("final") for metrics in step_metrics):
                return


def _combine(members: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One report of several members at the same evaluation: the mean val_loss, train_loss
    and best_val_loss over members, the per-member metrics under ``members``."""
    failed = [
        (m, seed) for m, seed in zip(members, seeds, strict=True) if m.get("status") == "failed"
    ]
    if failed:
        step = failed[0][0]["step"]
        reason = f"seed {failed[0][1]} of this config failed: {failed[0][0]['error']}"
        members = [
            m if m.get("status") == "failed"
            else {**m, "final": True, "status": "failed", "error": reason}
            for m in members
        ]  # fmt: skip
        return {"step": step, "status": "failed", "error": reason, "final": True,
                "members": [_sanitize(m) for m in members]}  # fmt: skip
    combined: dict[str, Any] = {"step": members[0]["step"], "final": members[0].get("final")}
    for key in ("val_loss", "train_loss", "best_val_loss", "elapsed_s", "tokens_seen"):
        values: list[Any] = [m.get(key) for m in members]
        if all(isinstance(v, (int, float)) for v in values):
            combined[key] = sum(values) / len(values)
    combined["val_losses"] = [m.get("val_loss") for m in members]
    combined["members"] = [_sanitize(m) for m in members]
    return combined
