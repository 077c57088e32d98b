"""Run options the sweep CLIs check before anything starts: per-trial resources and the
cluster file. No Ray at import (Ray's launcher schema is imported only to check a cluster
file), so bad input answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from charlm.config import ConfigError

__all__ = ["ClusterError", "Resources", "load_cluster_config"]


class ClusterError(ConfigError):
    """A cluster.yaml that is malformed or names a head we cannot reach."""


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """Read a Ray cluster-launcher YAML and check it against Ray's own launcher schema."""
    path = Path(path)
    if not path.is_file():
        raise ClusterError(f"--cluster {path}: no such file; give the path of a cluster.yaml.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ClusterError(f"--cluster {path}: not valid YAML{at}; fix the file.") from None
    if not isinstance(raw, dict):
        raise ClusterError(f"--cluster {path}: not a cluster-launcher config (a YAML mapping).")
    # Private API, pinned by tests/test_cluster.py: the launcher's own offline validation.
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(dict(raw)))
    except Exception as exc:  # jsonschema.ValidationError, ValueError, KeyError...
        message = getattr(exc, "message", None) or str(exc)
        first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        raise ClusterError(
            f"--cluster {path}: rejected by Ray's cluster-launcher schema: {first}; "
            "see https://docs.ray.io/en/latest/cluster/vms/references/ray-cluster-configuration.html"
        ) from None
    return raw


@dataclass(frozen=True)
class Resources:
    """What each trial asks Ray for; fractional GPUs share one device between trials."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        if not self.cpus_per_trial > 0:
            raise ConfigError(
                f"cpus_per_trial={self.cpus_per_trial} is invalid: give a number > 0, e.g. 1."
            )
        if self.gpus_per_trial < 0 or (
            self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial)
        ):
            raise ConfigError(
                f"gpus_per_trial={self.gpus_per_trial} is invalid: give a fraction in [0, 1] "
                "(e.g. 0.25 packs four trials on a GPU) or a whole number."
            )
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(
                f"max_concurrent={self.max_concurrent} is invalid: give an integer >= 1."
            )

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}
