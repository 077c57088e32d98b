"""The search's Optuna study: the settings it was run with, trials left RUNNING, what it lacks.

A study is one search: every trial trains under the same settings (the preset's fixed
fields, the dataset's content, its length, seeds per trial, ASHA's rungs), recorded as the
study's user attribute ``settings`` when it is created; a run with other settings is
refused (``check_settings``), so "best of N configs" never compares runs of different
lengths. Each Optuna trial carries the driver that asked for it (``DRIVER_ATTR``): a
trial still RUNNING when that driver is gone (SIGINT/SIGTERM, SIGKILL, a crash) is told
FAILED, at the interrupt or when the study is opened again. ``--n-trials`` is the study's
total: the same command again runs only the trials it lacks.

Optuna only (no Ray): ``sweeps/search.py`` imports it once its arguments are checked.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from charlm.config import ConfigError
from sweeps.schema import pid_alive

SETTINGS_ATTR = "settings"
DRIVER_ATTR = "driver"
_DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class StudySettingsError(ConfigError):
    """An existing study ran with other settings than this run's."""


def optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage of ``url``: a journal file for a ``.log`` path, else a database."""
    from optuna.storages.journal import JournalFileBackend

    if url.endswith(".log") and "://" not in url:
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    return optuna.storages.RDBStorage(url)


def driver_tag() -> dict[str, Any]:
    """This process as the driver of the trials it asks for: host and pid."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _exists(url: str) -> bool:
    """Whether the storage at ``url`` may hold studies (a file storage that is not there
    holds none: checking must not create it)."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).is_file()
    if "://" not in url:
        return Path(url).is_file()
    return True


def _load(url: str, name: str) -> optuna.Study | None:
    if not _exists(url):
        return None
    try:
        return optuna.load_study(study_name=name, storage=optuna_storage(url))
    except KeyError:  # no study of that name
        return None


def _differences(recorded: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    names = [*settings, *(name for name in recorded if name not in settings)]
    return [
        f"{name} {recorded.get(name)!r} (study) vs {settings.get(name)!r} (this run)"
        for name in names
        if recorded.get(name) != settings.get(name)
    ]


def check_settings(url: str, shown: str, name: str, settings: dict[str, Any]) -> None:
    """StudySettingsError (one line naming every difference) when study ``name`` in ``url``
    exists with other settings; nothing is written. ``settings`` must be JSON values."""
    study = _load(url, name)
    if study is None:
        return
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        if not study.trials:
            return
        raise StudySettingsError(
            f"study {name!r} in {shown} has {len(study.trials)} trials but no recorded "
            "settings (an older charlm-sweeps ran it), so its trials cannot be compared "
            "with this run's: start a new study with --name."
        )
    settings = json.loads(json.dumps(settings))  # as stored: tuples become lists
    differences = _differences(recorded, settings)
    if differences:
        raise StudySettingsError(
            f"study {name!r} in {shown} ran with other settings: {'; '.join(differences)}; "
            "its configs would be compared with runs of another setup: run it with the "
            "study's settings (same --preset, --datasets, --max-iters, --set, --first-seed, "
            "--seeds, ASHA options), or start a new study with --name."
        )


def _dead(driver: Any, host: str) -> bool:
    """Whether the driver ``driver`` (a DRIVER_ATTR value) is surely gone: a process of this
    host that no longer exists, or no driver recorded (trials of other hosts are left)."""
    if not isinstance(driver, dict):
        return True
    if driver.get("host") != host:
        return False
    pid = driver.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid)


def fail_abandoned(study: optuna.Study, *, own: bool = False) -> int:
    """Tell FAILED to the RUNNING trials nobody will finish: those of drivers that are gone,
    and with ``own`` this process's (after SIGINT/SIGTERM). Returns how many."""
    me = driver_tag()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver = trial.user_attrs.get(DRIVER_ATTR)
        if (own and driver == me) or _dead(driver, me["host"]):
            study.tell(trial.number, state=TrialState.FAIL)
            failed += 1
    return failed


def finished_trials(study: optuna.Study) -> int:
    """How many trials of ``study`` ran to their end or were pruned by ASHA."""
    return len(study.get_trials(deepcopy=False, states=_DONE))


def open_study(url: str, name: str, settings: dict[str, Any]) -> tuple[optuna.Study, int, int]:
    """Study ``name`` in ``url``, created with ``settings`` if new (call ``check_settings``
    first); its abandoned RUNNING trials told FAILED. Returns (study, trials finished
    (complete or pruned), trials failed just now)."""
    study = optuna.create_study(study_name=name, storage=optuna_storage(url),
                                direction="minimize", load_if_exists=True)  # fmt: skip
    if SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(SETTINGS_ATTR, json.loads(json.dumps(settings)))
    failed = fail_abandoned(study)
    return study, finished_trials(study), failed
