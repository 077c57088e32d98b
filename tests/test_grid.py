"""sweeps.grid: presets, YAML grids, expansion, stable trial ids and validation."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from charlm.config import ConfigError, ModelConfig, TrainConfig, split_config
from sweeps.grid import (
    PRESETS,
    GridError,
    GridSpec,
    expand,
    load_grid,
    trial_id,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_LEVELS = [
    ("baseline", "baseline"),
    ("n_head", "1"),
    ("n_head", "8"),
    ("n_layer", "1"),
    ("n_layer", "8"),
    ("n_embed", "32"),
    ("n_embed", "128"),
    ("dropout", "0.0"),
    ("dropout", "0.3"),
    ("block_size", "32"),
    ("block_size", "256"),
]


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_notebook_preset_expands_to_baseline_plus_ten_levels_per_seed():
    spec = PRESETS["notebook"]
    assert spec.baseline == {
        "n_layer": 4, "n_head": 4, "n_embed": 64, "block_size": 128, "dropout": 0.1,
        "batch_size": 32, "learning_rate": 3e-4, "max_iters": 3000, "eval_interval": 500,
    }  # fmt: skip
    trials = expand(spec, seeds=2)
    assert len(trials) == 11 * 2
    assert [(t.factor, t.level) for t in trials[:11]] == NOTEBOOK_LEVELS
    assert [t.seed for t in trials] == [0] * 11 + [1] * 11
    assert len({t.trial_id for t in trials}) == 22
    by_label = {(t.factor, t.level): t for t in trials if t.seed == 0}
    assert by_label["n_head", "8"].model.n_head == 8
    assert by_label["n_head", "8"].model.n_embed == 64  # everything else is the baseline
    assert by_label["dropout", "0.3"].model.dropout == 0.3
    assert by_label["block_size", "256"].model.block_size == 256
    baseline = by_label["baseline", "baseline"]
    assert (baseline.model.n_layer, baseline.train.max_iters, baseline.train.batch_size) == (
        4, 3000, 32,
    )  # fmt: skip
    assert all(t.sweep == "notebook" and t.dataset == "shakespeare_char" for t in trials)
    assert len(expand(spec)) == 11 * 3  # the preset's default: 3 seeds


def test_nanogpt_preset_is_valid_and_matches_nanogpt():
    spec = PRESETS["nanogpt"]
    trials = expand(spec, seeds=1)
    assert len(trials) == 11
    base = trials[0]
    assert (base.model.n_layer, base.model.n_head, base.model.n_embed) == (6, 6, 384)
    assert (base.model.block_size, base.model.dropout) == (256, 0.2)
    assert (base.train.batch_size, base.train.learning_rate, base.train.max_iters) == (
        64, 1e-3, 5000,
    )  # fmt: skip
    assert (base.train.warmup_iters, base.train.min_lr, base.train.beta2) == (100, 1e-4, 0.99)
    assert base.train.eval_interval == 250
    for factor, levels in spec.factors.items():
        assert len(levels) == 2, factor
    assert all(t.model.n_embed % t.model.n_head == 0 for t in trials)


def test_ids_are_stable_across_calls_and_sweep_names():
    first = [t.trial_id for t in expand(PRESETS["notebook"])]
    again = [t.trial_id for t in expand(PRESETS["notebook"])]
    renamed = dataclasses.replace(PRESETS["notebook"], name="another_sweep")
    assert first == again == [t.trial_id for t in expand(renamed)]
    assert all(re.fullmatch("[0-9a-f]{16}", i) for i in first)
    assert len(set(first)) == len(first)  # one id per trial: no two specs collide


def test_ids_are_stable_across_processes():
    ids = [t.trial_id for t in expand(PRESETS["notebook"])]
    code = (
        "import json; from sweeps.grid import PRESETS, expand; "
        "print(json.dumps([t.trial_id for t in expand(PRESETS['notebook'])]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # no reliance on hash() randomisation
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env
    )
    assert json.loads(out.stdout) == ids


def test_id_depends_on_content_not_on_factor_or_machine():
    model, train = ModelConfig(), TrainConfig()
    base = trial_id(model, train)
    assert trial_id(model, dataclasses.replace(train, seed=1)) != base
    assert trial_id(dataclasses.replace(model, n_head=8), train) != base
    assert trial_id(model, dataclasses.replace(train, learning_rate=1e-3)) != base
    # where a trial runs is not part of what it is
    machine = dataclasses.replace(train, device="cpu", num_threads=2, data_dir="/somewhere")
    assert trial_id(model, machine) == base
    # numbers that are equal hash equally however they were written
    assert trial_id(dataclasses.replace(model, dropout=0.10), train) == base
    assert trial_id(dataclasses.replace(model, dropout=1e-1), train) == base
    assert trial_id(model, dataclasses.replace(train, learning_rate=0.0003)) == base
    zero = trial_id(dataclasses.replace(model, dropout=0.0), train)
    assert trial_id(dataclasses.replace(model, dropout=0), train) == zero


def test_yaml_numbers_are_normalised_before_hashing(tmp_path):
    notebook_baseline = expand(PRESETS["notebook"], seeds=1, factors=[])[0].trial_id
    # YAML 1.1 reads 3e-4 and 1e-1 as strings; 0.10 is the float 0.1.
    for dropout, lr in (("0.10", "3e-4"), ("1e-1", "0.0003"), ("0.1", "3.0e-4")):
        baseline = f"{{dropout: {dropout}, learning_rate: {lr}, max_iters: 3e3}}"
        path = write(tmp_path, f"baseline: {baseline}\nfactors: {{}}\n")
        (trial,) = expand(load_grid(path), seeds=1)
        assert trial.model.dropout == 0.1 and isinstance(trial.model.dropout, float)
        assert trial.train.max_iters == 3000 and isinstance(trial.train.max_iters, int)
        assert trial.trial_id == notebook_baseline, (dropout, lr)


def test_level_equal_to_baseline_is_not_a_separate_trial():
    spec = GridSpec(
        name="dup",
        baseline={"n_layer": 2, "n_head": 2, "n_embed": 16, "block_size": 16},
        factors={"n_head": [2, 4], "width": [{"n_embed": 16}, {"n_embed": 32}]},
        seeds=2,
    )
    trials = expand(spec)
    labels = [(t.factor, t.level) for t in trials if t.seed == 0]
    assert labels == [("baseline", "baseline"), ("n_head", "4"), ("width", "n_embed=32")]
    assert len(trials) == 6 and len({t.trial_id for t in trials}) == 6


def test_linked_factor_from_yaml(tmp_path):
    path = write(
        tmp_path,
        """
name: linked
baseline: {n_layer: 2, max_iters: 100, warmup_iters: 10, eval_interval: 50}
factors:
  width:
    - {n_embed: 32, n_head: 2}
    - {n_embed: 128, n_head: 8}
  n_layer: [1, 3]
seeds: [0, 5]
""",
    )
    spec = load_grid(path)
    assert spec.factors["width"] == ({"n_embed": 32, "n_head": 2}, {"n_embed": 128, "n_head": 8})
    assert spec.factors["n_layer"] == ({"n_layer": 1}, {"n_layer": 3})
    trials = expand(spec)
    assert {t.seed for t in trials} == {0, 5}
    first_seed = [t for t in trials if t.seed == 0]
    assert [t.level for t in first_seed] == [
        "baseline", "n_embed=32,n_head=2", "n_embed=128,n_head=8", "1", "3",
    ]  # fmt: skip
    wide = first_seed[2]
    assert (wide.factor, wide.model.n_embed, wide.model.n_head, wide.model.n_layer) == (
        "width", 128, 8, 2,
    )  # fmt: skip
    assert all(t.sweep == "linked" and t.train.max_iters == 100 for t in trials)
    # the rest of the baseline comes from the notebook preset
    assert wide.model.block_size == 128 and wide.model.dropout == 0.1


def test_only_factors_inherits_the_notebook_baseline_and_file_name(tmp_path):
    spec = load_grid(write(tmp_path, "factors:\n  n_head: [2]\n", name="heads.yaml"))
    assert spec.name == "heads"
    assert spec.baseline == PRESETS["notebook"].baseline
    assert spec.seeds == PRESETS["notebook"].seeds
    assert spec.datasets == ("shakespeare_char",)
    nano = load_grid(write(tmp_path, "extends: nanogpt\nfactors: {}\n", name="nano.yaml"))
    assert nano.baseline == PRESETS["nanogpt"].baseline


def test_example_grid_loads_and_expands():
    spec = load_grid(REPO / "examples" / "linked_grid.yaml")
    trials = expand(spec, seeds=1)
    assert len(trials) == 9
    assert {t.factor for t in trials} == {"baseline", "dropout", "width", "shape", "context"}
    context = [t for t in trials if t.factor == "context"]
    assert all(t.model.block_size * t.train.batch_size == 4096 for t in context)


def test_factors_filter_keeps_the_baseline_and_grid_order():
    trials = expand(PRESETS["notebook"], factors=["dropout", "n_head"], seeds=1)
    assert [(t.factor, t.level) for t in trials] == [
        ("baseline", "baseline"), ("n_head", "1"), ("n_head", "8"),
        ("dropout", "0.0"), ("dropout", "0.3"),
    ]  # fmt: skip
    assert [t.factor for t in expand(PRESETS["notebook"], factors=[], seeds=1)] == ["baseline"]


def test_unknown_factor_lists_the_valid_ones():
    with pytest.raises(GridError) as info:
        expand(PRESETS["notebook"], factors=["n_heads"])
    message = str(info.value)
    assert "n_heads" in message and "did you mean n_head?" in message
    assert "n_head, n_layer, n_embed, dropout, block_size" in message
    assert "\n" not in message


def test_max_iters_shortens_every_trial():
    trials = expand(PRESETS["notebook"], max_iters=40, seeds=1)
    assert all(t.train.max_iters == 40 for t in trials)
    assert all(t.train.eval_interval == 40 for t in trials)  # capped: still evaluates at the end
    assert all(t.train.warmup_iters < 40 for t in trials)
    nano = expand(PRESETS["nanogpt"], max_iters=500, seeds=1)[0].train
    assert (nano.max_iters, nano.eval_interval, nano.warmup_iters) == (500, 250, 10)
    assert nano.resolved_lr_decay_iters == 500
    # shortened trials are different trials
    full = {t.trial_id for t in expand(PRESETS["notebook"], seeds=1)}
    assert full.isdisjoint(t.trial_id for t in trials)
    with pytest.raises(GridError, match="max_iters=0 is invalid"):
        expand(PRESETS["notebook"], max_iters=0)


def test_overrides_apply_to_every_trial_and_machine_fields_keep_ids():
    plain = expand(PRESETS["notebook"], seeds=1)
    on_cpu = expand(PRESETS["notebook"], seeds=1, overrides={"device": "cpu", "num_threads": 1})
    assert [t.trial_id for t in on_cpu] == [t.trial_id for t in plain]
    assert all(t.train.device == "cpu" and t.train.num_threads == 1 for t in on_cpu)
    smaller = expand(PRESETS["notebook"], seeds=1, overrides={"batch_size": 8})
    assert all(t.train.batch_size == 8 for t in smaller)
    with pytest.raises(GridError, match="which factor n_head varies"):
        expand(PRESETS["notebook"], overrides={"n_head": 2})
    with pytest.raises(GridError, match="unknown config field"):
        expand(PRESETS["notebook"], overrides={"batchsize": 8})


def test_all_invalid_levels_are_reported_together():
    spec = GridSpec(
        name="broken",
        baseline=PRESETS["notebook"].baseline,
        factors={
            "n_head": [3, 8],
            "dropout": [0.0, 1.5],
            "width": [{"n_embed": 30, "n_head": 4}],
            "max_iters": [0],
        },
    )
    with pytest.raises(GridError) as info:
        expand(spec)
    message = str(info.value)
    assert message.startswith("4 invalid grid levels in grid 'broken': ")
    assert "\n" not in message
    parts = message.split(": ", 1)[1].split("; ")
    assert len(parts) == 4
    assert parts[0].startswith("n_head=3: n_embed=64 is not divisible by n_head=3")
    assert parts[1].startswith("dropout=1.5: dropout=1.5 is invalid")
    assert parts[2].startswith("width=(n_embed=30,n_head=4): n_embed=30 is not divisible")
    assert parts[3].startswith("max_iters=0: max_iters=0 is invalid")
    assert isinstance(info.value, ConfigError)


def test_invalid_baseline_is_reported_once():
    spec = GridSpec("b", {"n_embed": 64, "n_head": 3}, {"dropout": [0.0], "n_head": [4]})
    with pytest.raises(GridError) as info:
        expand(spec)
    assert str(info.value).startswith("1 invalid grid level in grid 'b': baseline: n_embed=64")


def test_unknown_dataset_is_an_error_naming_it(tmp_path):
    with pytest.raises(GridError, match=r"1 invalid dataset .*dataset='shakespeare' is unknown"):
        expand(PRESETS["notebook"], datasets=["shakespeare_char", "shakespeare"])
    text = tmp_path / "tiny.txt"
    text.write_text("hello world\n" * 100)
    trials = expand(PRESETS["notebook"], datasets=["shakespeare_char", str(text)], seeds=1)
    assert len(trials) == 22 and len({t.trial_id for t in trials}) == 22
    assert [t.dataset for t in trials] == ["shakespeare_char"] * 11 + [str(text)] * 11


def test_unknown_fields_list_the_valid_fields(tmp_path):
    with pytest.raises(GridError) as info:
        GridSpec("x", {"n_heads": 2}, {"width": [{"n_embd": 32}]})
    message = str(info.value)
    assert "n_heads (baseline; did you mean n_head?)" in message
    assert "valid fields are n_layer, n_head, n_embed" in message
    path = write(tmp_path, "factors:\n  width:\n    - {n_embd: 32, n_head: 2}\n")
    with pytest.raises(GridError, match=r"grid.yaml: unknown config field\(s\) n_embd"):
        load_grid(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("factors: {n_head: [1, 8]\n", "not valid YAML"),
        ("- n_head\n- 8\n", "the top level is a list, not a mapping"),
        ("factor: {n_head: [1, 8]}\n", "unknown key(s) 'factor' (did you mean factors?)"),
        ("baseline: {n_layer: 2}\n", "no factors"),
        ("factors: {n_head: 8}\n", "is not a list of levels"),
        ("factors: {width: [32, 64]}\n", "is a bare value but width is not a config field"),
        ("factors: {n_head: []}\n", "has no levels"),
        ("factors: {n_head: [2, 2]}\n", "lists level 2 more than once"),
        ("factors: {}\nbaseline: [1]\n", "baseline is a list, not a mapping"),
        ("factors: {}\nbaseline: {seed: 3}\n", "baseline sets seed"),
        ("factors: {seed: [1, 2]}\n", "factor seed sets seed"),
        ("factors: {device: [cpu]}\n", "factor device sets device"),
        ("factors: {}\nseeds: 0\n", "seeds=0 is invalid"),
        ("factors: {}\nseeds: [1, -1]\n", "seed=-1 is invalid"),
        ("factors: {}\ndatasets: []\n", "datasets=[] is invalid"),
        ("factors: {}\nextends: gpt2\n", "extends='gpt2' is not a preset"),
    ],
)
def test_malformed_grid_files(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(GridError) as info:
        load_grid(path)
    message = str(info.value)
    assert message.startswith(f"grid file {path}: ")
    assert expected in message
    assert "\n" not in message


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(GridError, match="no such file"):
        load_grid(tmp_path / "absent.yaml")
    from sweeps.ablation import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--preset", "notbook"])
    assert exit_info.value.code == 2
    path = write(tmp_path, "factors: {}\n")
    assert load_grid(path).name == "grid"


def test_python_tags_are_rejected(tmp_path):
    marker = tmp_path / "pwned"
    path = write(
        tmp_path,
        f"name: !!python/object/apply:os.system ['touch {marker}']\nfactors: {{}}\n",
    )
    with pytest.raises(GridError, match=r"not valid YAML: .*python.*remove the !! tag"):
        load_grid(path)
    assert not marker.exists()
    path = write(tmp_path, "factors: !!python/object:collections.OrderedDict {}\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(path)


def test_params_are_flat_and_round_trip():
    trial = expand(PRESETS["notebook"], seeds=1)[2]
    entry = trial.params()  # what Ray's param_space holds for this trial
    params, columns = entry["params"], entry["columns"]
    assert entry["trial_id"] == trial.trial_id
    assert {"dataset", "seed", "n_head"} <= set(params)
    assert {"sweep", "factor", "level", "dataset", "seed", "n_head", "requested_device"} <= set(
        columns
    )
    assert (columns["factor"], columns["level"], params["n_head"]) == ("n_head", "8", 8)
    assert all(not isinstance(v, dict | list) for v in {**params, **columns}.values())
    model, train = split_config(params)
    assert (model, train) == (trial.model, trial.train)
    assert trial_id(model, train) == trial.trial_id


def test_a_relative_dataset_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ray's workers run in another directory: the path the user gave must still name the file."""
    (tmp_path / "corpus.txt").write_text("hello world\n" * 50)
    monkeypatch.chdir(tmp_path)
    trials = expand(PRESETS["notebook"], factors=["n_head"], datasets="corpus.txt")
    assert {t.train.dataset for t in trials} == {str(tmp_path / "corpus.txt")}
    named = expand(PRESETS["notebook"], factors=["n_head"], datasets="shakespeare_char")
    assert {t.train.dataset for t in named} == {"shakespeare_char"}
