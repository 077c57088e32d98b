"""What every command shows a user: defaults in --help, no abbreviations, short runs that
are not all warm-up, bad input answered before Ray or torch is imported, progress lines,
and no foreign log lines."""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis import cli as analysis_cli
from charlm import train_args
from sweeps import ablation, launch, search

REPO = Path(__file__).resolve().parents[1]


def _parsers(monkeypatch) -> dict[str, argparse.ArgumentParser]:
    captured: dict[str, argparse.ArgumentParser] = {}

    def keep(self, argv=None, namespace=None):
        captured[self.prog] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", keep)
    for parse in (ablation.parse_args, search._parse):
        with pytest.raises(SystemExit):
            parse([])
    captured["python -m charlm.train"] = train_args.parser()
    captured["python -m analysis"] = analysis_cli.parser()
    return captured


def test_every_option_of_every_command_shows_its_default(monkeypatch):
    parsers = _parsers(monkeypatch)
    assert len(parsers) == 4
    for prog, parser in parsers.items():
        text = parser.format_help()
        assert "%%" not in text and "%(" not in text, prog
        for action in parser._actions:
            if (
                not action.option_strings
                or action.nargs == 0
                or action.required
                or action.help == argparse.SUPPRESS
            ):
                continue  # positional, flag (store_true, --help), required, or hidden
            help_text = parser._get_formatter()._format_action(action)
            assert "default" in help_text, f"{prog} {action.option_strings[0]}: {help_text}"


def test_help_texts_read_as_written():
    text = analysis_cli.parser().format_help()
    assert "95% CI" in text and "95%%" not in text
    assert "(default: png,svg)" in text
    train_help = " ".join(train_args.parser().format_help().split())
    assert "--batch-size BATCH_SIZE sequences per step (default: 32)" in train_help
    assert "linear warm-up steps (default: 100 x max-iters / 3000, below max-iters)" in train_help


@pytest.mark.parametrize("argv", [["--stric"], ["--form", "png"], ["--out=x", "--jobs", "0"]])
def test_analysis_refuses_abbreviations_and_bad_values_in_one_line(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as info:
        analysis_cli.main([str(tmp_path), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith("error: ")
        and "(see python -m analysis --help)" in err
    )


def test_short_training_runs_scale_warm_up_and_evaluation_like_the_sweeps(tmp_path):
    args = train_args.parse(["--max-iters", "100", "--out", str(tmp_path / "run")])
    train = args.train
    assert (train.max_iters, train.warmup_iters, train.eval_interval) == (100, 3, 100)
    assert args.train.resolved_lr_decay_iters == 100
    assert args.scaled == ("warmup_iters", "eval_interval")
    from sweeps.grid import PRESETS, expand

    (swept,) = expand(PRESETS["notebook"], factors=[], seeds=1, max_iters=100)
    assert swept.train.warmup_iters == args.train.warmup_iters  # one rule for both
    given = train_args.parse(["--max-iters", "100", "--warmup-iters", "10", "--eval-interval",
                              "25", "--out", str(tmp_path / "run")])  # fmt: skip
    assert (given.train.warmup_iters, given.train.eval_interval, given.scaled) == (10, 25, ())
    full = train_args.parse(["--out", str(tmp_path / "run")])
    assert (full.train.max_iters, full.train.warmup_iters, full.scaled) == (3000, 100, ())


def test_a_run_that_would_be_all_warm_up_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_args.parse(["--max-iters", "100", "--warmup-iters", "100", "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "--warmup-iters 100" in err and "--max-iters 100" in err  # the flags and values
    assert "fewer warm-up steps (e.g. 10)" in err and "leave --warmup-iters out" in err  # fixes


_PROBE = """
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_{kind}({target!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("ray", "torch", "optuna", "scipy", "matplotlib") if m in sys.modules)
print("RESULT", code, ",".join(heavy))
"""


@pytest.mark.parametrize(
    ("kind", "target", "argv"),
    [
        ("path", "sweeps/ablation.py", ["--seed", "3"]),
        ("path", "sweeps/ablation.py", ["--set", "n_embed=10", "--factors", "dropout"]),
        ("path", "sweeps/ablation.py", ["--set", "block_size=200000", "--factors", "n_head"]),
        ("path", "sweeps/search.py", ["--n-trials", "0"]),
        ("module", "charlm.train", ["--n-head", "3", "--out", "{tmp}/run"]),
        ("module", "charlm.train", ["--max-iters", "10", "--warmup-iters", "10", "--out", "x"]),
        ("module", "analysis", ["{tmp}/nothing-here"]),
        ("module", "analysis", ["{tmp}", "--stric"]),
    ],
)
def test_bad_input_is_answered_before_heavy_imports(tmp_path, kind, target, argv):
    argv = [target, *[arg.format(tmp=tmp_path) for arg in argv]]
    target = str(REPO / target) if kind == "path" else target
    code = _PROBE.format(argv=argv, kind=kind, target=target)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)  # fmt: skip
    result = done.stdout.strip().splitlines()[-1].split(" ")
    assert result[:2] == ["RESULT", "2"], (done.stdout, done.stderr)
    assert result[2:] in ([], [""]), f"imported before answering: {result[2:]}"
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert not (tmp_path / "run").exists()


class _Trial(SimpleNamespace):
    pass


def test_progress_lines_never_share_a_timestamp(monkeypatch, capsys):
    from sweeps import runner

    clock = {"now": 100.0}
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock["now"])
    progress = runner._ProgressCallback(runner.RunSettings("x", 3, default_max_iters=10))
    trials = [
        _Trial(status="RUNNING", trial_id=f"t{i}", config={"trial": {
            "trial_id": f"t{i}", "columns": {"factor": "n_layer", "level": str(i)}}})
        for i in range(3)
    ]  # fmt: skip
    clock["now"] = 112.2
    progress.on_trial_result(0, trials, trials[0], {"step": 5, "val_loss": 3.0})  # printed
    clock["now"] = 112.6
    progress.on_trial_complete(0, trials, trials[0])  # same second: waits
    progress.on_trial_complete(0, trials, trials[1])  # same second: replaces the waiting one
    progress.on_step_end(0, trials)  # still the same second: nothing
    clock["now"] = 113.1
    progress.on_step_end(0, trials)  # next second: the newest state
    trials[2].status = "TERMINATED"
    clock["now"] = 113.5
    progress.on_trial_complete(0, trials, trials[2])  # waits...
    progress.on_experiment_end(trials)  # ...and is dropped: its second is taken
    lines = capsys.readouterr().out.splitlines()
    stamps = [line.split("]")[0] for line in lines]
    assert stamps == ["[12s", "[13s"], lines
    assert "2 done" in lines[1] and "best val 3.0000" in lines[0]


def test_best_config_reads_baseline_not_baseline_equals_baseline(monkeypatch, capsys):
    from sweeps import runner

    progress = runner._ProgressCallback(
        runner.RunSettings("x", 1, default_max_iters=10, progress_period_s=0.0)
    )
    columns = {"factor": "baseline", "level": "baseline"}
    config = {"trial": {"trial_id": "t0", "columns": columns}}
    trial = _Trial(status="RUNNING", trial_id="t0", config=config)
    progress.on_trial_result(0, [trial], trial, {"step": 5, "val_loss": 2.5})
    line = capsys.readouterr().out
    assert "best val 2.5000 (baseline)" in line and "baseline=baseline" not in line


def test_optuna_says_nothing_of_its_own(tmp_path, capfd):
    import optuna

    search.quiet_optuna()
    try:
        optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
        captured = capfd.readouterr()
        assert "A new study created" not in captured.err + captured.out
    finally:
        optuna.logging.set_verbosity(logging.INFO)


def test_the_sweep_records_its_code_and_settings(tmp_path):
    from charlm.provenance import git_commit
    from sweeps.options import Resources
    from sweeps.schema import read_runs
    from sweeps.store import ResultStore

    store = ResultStore(tmp_path / "results")
    store.write_run(launch.run_info("grid", "ablation", "embedded local Ray", Resources(), 4))
    (run,) = read_runs(store.root)
    assert run["sweep"] == "grid" and run["trials_to_run"] == 4
    assert run["git_commit"] == git_commit()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    if commit:  # a git checkout (CI and development): the commit is HEAD's
        assert run["git_commit"].removesuffix("+dirty") == commit
    assert json.loads(next((store.root / "sweep_runs").glob("*.json")).read_text()) == run


def test_the_commands_page_shows_the_example_grid_verbatim():
    readme = (REPO / "docs" / "commands.md").read_text()
    example = (REPO / "examples" / "linked_grid.yaml").read_text()
    start = readme.index("`examples/linked_grid.yaml`, verbatim")
    block = readme[readme.index("```yaml\n", start) + len("```yaml\n") :]
    assert block[: block.index("```")] == example


def test_the_readme_is_short_and_maps_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    pages = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))
    assert pages and all(f"]({page})" in readme for page in pages), pages
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (REPO / link).exists(), link


def test_the_architecture_lists_every_module():
    """docs/ARCHITECTURE.md's layout names each module of the three packages and testkit."""
    layout = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    for package in ("charlm", "sweeps", "analysis", "testkit"):
        for module in sorted((REPO / package).glob("*.py")):
            if module.name not in ("__init__.py", "__main__.py"):
                assert f"  {module.name} " in layout, f"{package}/{module.name}"


def test_no_function_in_the_packages_is_longer_than_80_lines():
    """Issue 24's limit: ruff holds complexity and argument counts, but has no rule for length."""
    import ast

    long = []
    for package in ("charlm", "sweeps", "analysis"):
        for module in sorted((REPO / package).glob("*.py")):
            for node in ast.walk(ast.parse(module.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > 80:
                        long.append(f"{package}/{module.name}:{node.lineno} {node.name} ({lines})")
    assert long == []


def test_the_readme_points_at_what_ships():
    readme = (REPO / "README.md").read_text()
    assert "index.html" not in readme and "report/report.html" in readme
    for link in ("docs/ARCHITECTURE.md", "examples/linked_grid.yaml", "cluster.yaml"):
        assert link in readme and (REPO / link).is_file(), link
    assert "../shared" not in readme
    assert '".[dev,dashboard]"' in readme and "dashboard" in (REPO / "pyproject.toml").read_text()
    ignored = (REPO / ".gitignore").read_text().split()
    assert "runs/" in ignored and "results/" in ignored


@pytest.mark.parametrize(
    ("parse", "argv", "hint"),
    [
        (ablation.parse_args, ["--seed", "3"], "did you mean --seeds?"),
        (ablation.parse_args, ["--dataset=text8"], "did you mean --datasets?"),
        (search._parse, ["--seed-per-trial", "2"], "did you mean --seeds?"),  # old spelling's new
        (search._parse, ["--datset", "x", "--nam", "y"],
         "did you mean --datasets for --datset, --name for --nam?"),
        (lambda argv: train_args.parser().parse_args(argv), ["--out", "x", "--max-iter", "3"],
         "did you mean --max-iters?"),
        (lambda argv: analysis_cli.parser().parse_args(argv), ["results", "--stric"],
         "did you mean --strict?"),
    ],
)  # fmt: skip
def test_a_misspelled_option_gets_the_closest_one_in_one_line(capsys, parse, argv, hint):
    with pytest.raises(SystemExit) as info:
        parse(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert hint in err and "unrecognized arguments" in err


def test_an_option_far_from_every_other_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        ablation.parse_args(["--zzzz"])
    assert "did you mean" not in capsys.readouterr().err


def test_both_sweep_clis_spell_datasets_and_seeds_alike(capsys):
    args = search._parse(["--datasets", "text8", "--seeds", "2", "--first-seed", "4"])
    assert (args.dataset, args.seeds_per_trial, args.seed) == ("text8", 2, 4)
    assert capsys.readouterr().err == ""
    parsers = {}
    for name, parse in (("ablation", ablation.parse_args), ("search", search._parse)):
        with pytest.raises(SystemExit):
            parse(["--help"])
        parsers[name] = capsys.readouterr().out
    for flag in ("--datasets", "--seeds", "--results", "--name", "--data-dir", "--max-iters"):
        assert all(f"{flag} " in text for text in parsers.values()), flag
    assert "--dataset " not in parsers["search"] and "--seeds-per-trial" not in parsers["search"]


def test_the_search_takes_its_old_spellings_with_a_note(capsys):
    args = search._parse(["--dataset", "text8", "--seeds-per-trial", "3", "--seed", "1"])
    assert (args.dataset, args.seeds_per_trial, args.seed) == ("text8", 3, 1)
    notes = capsys.readouterr().err.splitlines()
    assert notes == [
        "note: --dataset is now spelled --datasets; --dataset will go away.",
        "note: --seeds-per-trial is now spelled --seeds; --seeds-per-trial will go away.",
        "note: --seed is now spelled --first-seed; --seed will go away.",
    ]


def test_a_search_runs_on_one_dataset(capsys):
    with pytest.raises(SystemExit) as info:
        search._parse(["--datasets", "text8,enwik8"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "a search runs on one dataset" in err and "--datasets" in err


def test_the_architecture_names_every_store_column_and_what_analysis_imports():
    """The store section names each column that is not a config field, and the dependency
    paragraph names each sweeps module analysis imports."""
    import ast

    from charlm.config import ModelConfig, TrainConfig, config_fields
    from sweeps.schema import SCHEMAS

    layout = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    fields = set(config_fields(ModelConfig)) | set(config_fields(TrainConfig))
    for table, schema in SCHEMAS.items():
        for name in schema.names:
            if name not in fields:
                assert re.search(rf"\b{name}\b", layout), f"{table}.{name}"
    imported = set()
    for module in (REPO / "analysis").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sweeps."):
                imported.add(node.module)
    assert imported and all(f"`{name}`" in layout for name in imported), imported
    assert "ray" not in {name.split(".")[0] for name in imported}
