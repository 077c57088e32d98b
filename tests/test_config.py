"""The config dataclasses are the one source of the schema: field types, store columns, grids."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from charlm.config import ModelConfig, TrainConfig, field_types
from sweeps.schema import SCHEMAS

REPO = Path(__file__).resolve().parents[1]


def test_field_types_come_from_the_annotations():
    assert field_types(ModelConfig)["vocab_size"] is int  # int | None
    assert field_types(ModelConfig)["bias"] is bool
    assert field_types(TrainConfig)["min_lr"] is float
    assert field_types(TrainConfig)["data_dir"] is str
    trials = SCHEMAS["trials"]
    for name, kind in {**field_types(ModelConfig), **field_types(TrainConfig)}.items():
        column = "requested_device" if name == "device" else name
        expected = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
        assert trials.field(column).type == expected[kind], name


def test_a_field_that_is_not_a_plain_scalar_is_refused():
    @dataclass(frozen=True)
    class Odd(TrainConfig):
        schedule: list[int] | None = None

    with pytest.raises(TypeError, match=r"Odd\.schedule"):
        field_types(Odd)


# A new field is one edit to TrainConfig: here a subclass patched in before sweeps is imported.
_ADD_FIELD = """
import dataclasses, json, sys
import charlm.config as config

@dataclasses.dataclass(frozen=True)
class TrainConfig(config.TrainConfig):
    label_smoothing: float = 0.0

config.TrainConfig = TrainConfig

from sweeps import ablation, schema
from sweeps.grid import load_grid
from sweeps.store import ResultStore

grid_path, store_path = sys.argv[1], sys.argv[2]
spec = load_grid(grid_path)
grid = ablation.plan_trials(ablation.parse_args(["--grid", grid_path, "--seeds", "1"]))
overridden = ablation.plan_trials(ablation.parse_args(
    ["--grid", grid_path, "--seeds", "1", "--factors", "n_head", "--set", "label_smoothing=5e-2"]
))
store = ResultStore(store_path)
for trial in grid:
    store.write_rows("trials", trial.trial_id, [{"trial_id": trial.trial_id,
                                                 **trial.params()["columns"]}])
read = schema.read_table(store_path, "trials", columns=["trial_id", "label_smoothing"])
print(json.dumps({
    "column_type": str(schema.SCHEMAS["trials"].field("label_smoothing").type),
    "baseline": spec.baseline["label_smoothing"],
    "levels": [level["label_smoothing"] for level in spec.factors["label_smoothing"]],
    "grid": [trial.train.label_smoothing for trial in grid],
    "ids": len({trial.trial_id for trial in grid}),
    "params": [trial.params()["params"]["label_smoothing"] for trial in grid],
    "set": [trial.train.label_smoothing for trial in overridden],
    "stored": sorted(read.table.column("label_smoothing").to_pylist()),
}))
"""


def test_a_new_config_field_reaches_the_store_the_grid_and_set(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "baseline: {n_layer: 1, label_smoothing: 0}\n"
        "factors: {n_head: [2], label_smoothing: [0.1, 2e-1]}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", _ADD_FIELD, str(grid), str(tmp_path / "store")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["column_type"] == "double"
    # YAML's int 0 and string '2e-1' become the field's float type
    assert seen["baseline"] == 0.0 and isinstance(seen["baseline"], float)
    assert seen["levels"] == [0.1, 0.2]
    assert seen["grid"] == [0.0, 0.0, 0.1, 0.2]  # baseline, n_head=2, then the two levels
    assert seen["ids"] == 4  # the field is part of the trial's identity
    assert seen["params"] == seen["grid"]  # Ray's param_space carries it
    assert seen["set"] == [0.05, 0.05]  # --set FIELD=VALUE reaches every trial
    assert seen["stored"] == [0.0, 0.0, 0.1, 0.2]  # and the store has a column for it
