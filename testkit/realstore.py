"""A small real result store, made in this process in seconds: real training runs
(charlm.train) written by the store's own writer (sweeps.store), as the sweep's Tune
callback writes them, with each trial's model file and a run record. No Ray: the browser
test and the screenshot script need a real store, not a real scheduler."""

from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

from charlm.train import MODEL_FILE, train
from sweeps.ablation import planned_grid
from sweeps.grid import TrialSpec, expand, load_grid
from sweeps.launch import run_info
from sweeps.options import Resources
from sweeps.store import ResultStore, TrialRecord
from testkit.tiny import tiny_params

BASELINE = tiny_params(n_layer=2, block_size=32, max_iters=30, eval_interval=10,
                       sample_tokens=40, num_threads=1)  # fmt: skip
TINY_GRID = f"""\
name: tiny
datasets: [shakespeare_char]
seeds: 2
baseline: {json.dumps(BASELINE)}
factors:
  n_layer: [1, 3]
"""


def build_real_store(
    root: Path, grid_text: str = TINY_GRID, state: Callable[[TrialSpec], str] | None = None
) -> Path:
    """Train the trials of ``grid_text`` and write them into a new store at ``root``, with
    the run record (and its planned grid) a sweep writes. ``state`` (default: all
    'finished') says what the store holds of each trial: 'finished' (its trials row),
    'running' (only its curves, as a sweep writes a running trial) or 'pending' (nothing):
    a store as a report taken mid-sweep sees it."""
    grid = root.parent / f"{root.name}-grid.yaml"
    grid.write_text(textwrap.dedent(grid_text))
    trials = expand(load_grid(grid))
    store = ResultStore(root)
    info = run_info(trials[0].sweep, "ablation", "this process (no Ray)", Resources(), len(trials))
    store.write_run({**info, **planned_grid(trials, {})})
    for trial in trials:
        kept = state(trial) if state is not None else "finished"
        if kept == "pending":
            continue
        record = TrialRecord(trial.trial_id, trial.params()["columns"])
        with tempfile.TemporaryDirectory(prefix="charlm-trial-") as work:
            result = train(trial.model, trial.train, record.add_report, checkpoint_dir=work)
            source = Path(work) / MODEL_FILE

            def copy_model(destination: Path, source: Path = source) -> None:
                shutil.copyfile(source, destination)

            if kept == "finished":
                store.write_trial(record, result.status, result.error, copy_model)
            else:
                store.write_progress(record)
    return root
