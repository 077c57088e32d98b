"""The Optuna side of a search: Ray's OptunaSearch whose trials carry the store's ids.

Imported by ``sweeps/search.py`` only once it runs (it imports Ray and Optuna).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from sweeps import interrupt
from sweeps.study import DRIVER_ATTR, driver_tag


class StoreIdSearch(OptunaSearch):
    """OptunaSearch whose Optuna trials carry, as user attributes (what optuna-dashboard
    shows), the store's ``store_trial_ids`` (one per seed), the ``config_id`` they share
    and the per-seed ``seed_val_losses`` whose mean is the trial's value. A trial whose
    seeds failed is told to Optuna as failed (not pruned), and so is one stopped by
    SIGINT/SIGTERM before its end. Each trial carries its driver (``DRIVER_ATTR``), so a
    later run knows which RUNNING trials nobody will finish (``sweeps.study``)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None and DRIVER_ATTR not in trial.user_attrs:
            trial.set_user_attr(DRIVER_ATTR, driver_tag())
        return params

    def _tag(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self._ot_trials.get(trial_id)
        if trial is None or "store_trial_ids" not in result:
            return
        trial.set_user_attr("store_trial_ids", list(result["store_trial_ids"]))
        trial.set_user_attr("config_id", result["config_id"])
        values = result.get("val_losses")
        if values is None and result.get(self.metric) is not None:
            values = [result[self.metric]]
        if values is not None:
            trial.set_user_attr("seed_val_losses", list(values))
            trial.set_user_attr("step", result.get("step"))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._tag(trial_id, result)
        if result.get(self.metric) is not None:  # a failure's last report has none
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if result:  # an ASHA-stopped trial's last result reaches the searcher only here
            self._tag(trial_id, result)
        stopped = interrupt.requested() and not (result or {}).get("final")
        failed = error or stopped or (result or {}).get("status") == "failed"
        if result and failed:
            result = {key: value for key, value in result.items() if key != self.metric}
        super().on_trial_complete(trial_id, result, error=failed)
