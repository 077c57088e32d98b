"""Fuzzing every command line's parse-and-validate path, in-process, with Hypothesis.

The values come from the same declarations the checks come from (``charlm.config.domains``,
``sweeps.options.OPTION_DOMAINS``): each field's edges, values just outside them, huge,
negative and non-finite numbers, wrong types and strings, and random combinations of flags.
The property: a command line is either refused (exit 2, at most two lines on stderr, each
starting ``error:``, nothing written) or accepted, and then every configuration it would run
is one the trial code can take: its store row fits the store's columns, its schedule works,
and (for a sample) the model builds, trains one step, probes and samples at a tiny size.

The CI run draws a bounded, derandomized number of examples (no example database, so a run
is reproducible); the ``slow`` variant draws many more (``pytest -m slow tests/test_fuzz.py``).
Sweeps never start Ray here: their ``_run`` is replaced by a recorder, so "accepted" means
"would have started".
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlm import train_args
from charlm.config import (
    INT64_MAX,
    Domain,
    ModelConfig,
    TrainConfig,
    check_schedule,
    domains,
    split_config,
)
from sweeps.grid import trial_columns
from sweeps.options import OPTION_DOMAINS
from sweeps.schema import SCHEMAS
from testkit.tiny import tiny_model

FIELDS = {**domains(ModelConfig), **domains(TrainConfig)}
# Examples per CLI: (CI, slow). CI's total stays near a minute on a 2-core machine.
EXAMPLES = {"train": (400, 5000), "ablation": (150, 2000), "search": (80, 1000),
            "analysis": (150, 2000)}  # fmt: skip
BUILD_EVERY = 4  # one accepted configuration in this many is built and trained a step
STATS: Counter[str] = Counter()


# ------------------------------------------------------------------ strategies


def _edges(domain: Domain) -> list[Any]:
    """The values at and just beyond a domain's bounds, and the ones further down the path
    (int64, numpy's seed range, float overflow, underflow)."""
    values: list[Any] = [0, -1, 2**63 - 1, 2**63, 2**64, 10**300, 10**400, 2**32 - 1, 2**32]
    for bound in (domain.low, domain.upper):
        if bound is not None:
            values += (
                [bound, bound + 1, bound - 1]
                if domain.kind is int
                else [bound, math.nextafter(bound, math.inf), math.nextafter(bound, -math.inf)]
            )
    if domain.kind is float:
        values += [math.nan, math.inf, -math.inf, 1e308, 1e-300, 5e-324, -0.0, 1e-30, 1e-31]
    return values


def values(domain: Domain) -> st.SearchStrategy[Any]:
    """Values for one field: edges, ordinary members, huge, wrong types and strings."""
    if domain.kind is int:
        member = st.integers(int(domain.low or 0), int(min(domain.upper or 64, 64)))
    elif domain.kind is float:
        high = domain.high if domain.high is not None else 10.0
        member = st.floats(domain.low or 0.0, high, allow_nan=False)
    else:
        member = st.just("x") if domain.kind is str else st.booleans()
    wrong = st.one_of(st.text(max_size=8), st.none(), st.booleans(), st.just([1, 2]))
    return st.one_of(member, member, member, st.sampled_from(_edges(domain)), wrong,
                     st.integers(), st.floats())  # fmt: skip


def as_text(value: Any) -> str:
    """A value as a user types it on a command line (and YAML reads it back)."""
    if isinstance(value, float):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan" if value != value
                                                           else repr(value))  # fmt: skip
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if not isinstance(value, list) else "[1, 2]"


def flag_text(value: Any) -> str:
    """A value as argparse sees it (type=int/float parse 'nan', 'inf', '1e+308')."""
    return repr(value) if isinstance(value, float) else as_text(value)


@st.composite
def set_options(draw: st.DrawFn) -> list[str]:
    """Zero to three ``--set FIELD=VALUE`` pairs, fields drawn from every config field."""
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=3, unique=True))
    argv: list[str] = []
    for name in names:
        argv += ["--set", f"{name}={as_text(draw(values(FIELDS[name])))}"]
    return argv


@st.composite
def option_flags(draw: st.DrawFn, flags: dict[str, str]) -> list[str]:
    """A random subset of ``flags`` (flag -> its OPTION_DOMAINS destination), each with a
    drawn value."""
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True))
    argv: list[str] = []
    for flag in chosen:
        domain = OPTION_DOMAINS[flags[flag]]
        value = draw(st.one_of(values(domain), st.sampled_from(["auto"] * (flags[flag] == "seeds")
                                                               or ["x"])))  # fmt: skip
        argv += [flag, flag_text(value)]
    return argv


def special_paths(root: Path) -> list[str]:
    """Paths where a regular file is expected but none is: a directory, a FIFO, a device,
    a missing file; and one real text file."""
    fifo = root / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    text = root / "text.txt"
    text.write_text("hello world\n" * 400)
    return [str(root), str(fifo), "/dev/null", str(root / "missing.txt"), str(text)]


# ------------------------------------------------------------------ the property


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        yield err


def refused_or_accepted(call: Callable[[], Any], written: Path) -> Any:
    """Run ``call``; a refusal must be exit 2 in at most two ``error:`` lines with nothing
    at ``written``. Returns what an accepted call returned (None when refused)."""
    assert not written.exists()
    with captured() as err:
        try:
            result = call()
        except SystemExit as exit_info:
            lines = err.getvalue().splitlines()
            assert exit_info.code == 2, err.getvalue()
            assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), err.getvalue()
            assert max(len(line) for line in lines) < 1000, lines[0][:200]
            assert not written.exists(), f"refused, yet {written} was written"
            STATS["refused"] += 1
            return None
    STATS["accepted"] += 1
    return result


def check_runnable(model: ModelConfig, train: TrainConfig, build: bool) -> None:
    """What a trial will do with an accepted configuration: write its store row, follow its
    schedule, and (``build``) build, step, probe and sample a model at a tiny size."""
    check_schedule(train)
    columns = trial_columns(sweep="s", kind="ablation", factor="f", level="l", model=model,
                            train=train)  # fmt: skip
    schema = pa.schema([SCHEMAS["trials"].field(name) for name in columns])
    pa.Table.from_pylist([columns], schema=schema)  # OverflowError if a column cannot hold it
    assert all(isinstance(v, str | bool) or v is None or abs(v) <= INT64_MAX or
               isinstance(v, float) for v in columns.values())  # fmt: skip
    if build:
        one_step(model, train)
        STATS["built"] += 1


def one_step(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """``charlm.train.train`` for one step with the configuration's optimiser, schedule,
    dropout, seed, probes and sampling settings, on tests/tiny.py's shape and batch (the
    shape itself is the memory check's business) on shakespeare_char, on the CPU, eagerly.
    It must end 'ok' or 'failed' (diverged) with a sample, never raise."""
    from charlm.train import lr_at, train

    for step in {0, train_cfg.warmup_iters, train_cfg.max_iters - 1}:
        assert math.isfinite(lr_at(step, train_cfg)), step
    shape = tiny_model(dropout=model_cfg.dropout, bias=model_cfg.bias)
    short = dataclasses.replace(
        train_cfg, dataset="shakespeare_char", data_dir=None, max_iters=1, eval_interval=1,
        eval_iters=2, batch_size=2, probe_interval=None,
        probe_batch_size=min(train_cfg.probe_batch_size, 2),
        sample_tokens=min(train_cfg.sample_tokens, 5), device="cpu", num_threads=None,
        compile=False,
    )  # fmt: skip
    result = train(shape, short)
    assert result.status in ("ok", "failed"), result.status
    if result.status == "ok" and short.sample_tokens:
        assert result.sample["n_chars"] == short.sample_tokens


# ------------------------------------------------------------------ one test per CLI


def _fuzz(name: str, strategy: st.SearchStrategy[Any], body: Callable[..., None]) -> None:
    ci, slow = EXAMPLES[name]
    examples = slow if os.environ.get("CHARLM_FUZZ") == "slow" else ci
    STATS.clear()
    run = settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))(given(strategy)(body))  # fmt: skip
    run()
    print(
        f"\nfuzz {name}: {sum(STATS[k] for k in ('refused', 'accepted'))} examples, "
        f"{STATS['refused']} refused, {STATS['accepted']} accepted, {STATS['built']} built"
    )
    assert STATS["refused"] and STATS["accepted"], STATS  # both sides were reached


TRAIN_FLAGS = {name: "--" + ("threads" if name == "num_threads" else name.replace("_", "-"))
               for name in FIELDS if name not in ("bias", "compile")}  # fmt: skip


@pytest.fixture(params=[pytest.param("ci"), pytest.param("slow", marks=pytest.mark.slow)])
def depth(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The run's length; the working directory is the test's (a relative --data-dir, --out
    or --results an accepted example names is written there, not into the repository)."""
    monkeypatch.chdir(tmp_path)
    if request.param == "slow":
        monkeypatch.setenv("CHARLM_FUZZ", "slow")
    return request.param


@pytest.mark.timeout(900)
def test_fuzz_charlm_train_arguments(tmp_path: Path, depth: str):
    paths = special_paths(tmp_path)

    @st.composite
    def argv(draw: st.DrawFn) -> list[str]:
        names = draw(st.lists(st.sampled_from(sorted(TRAIN_FLAGS)), max_size=5, unique=True))
        args: list[str] = []
        for name in names:
            if name == "dataset":
                value = draw(st.sampled_from([*paths, "shakespeare_char", "enwik9"]))
            else:
                value = draw(values(FIELDS[name]))
            args += [TRAIN_FLAGS[name], flag_text(value)]
        args += draw(st.sampled_from([[], ["--bias"], ["--compile"]]))
        return args

    def body(args: list[str]) -> None:
        out = tmp_path / f"out-{uuid.uuid4().hex}"
        parsed = refused_or_accepted(lambda: train_args.parse([*args, "--out", str(out)]), out)
        if parsed is not None:
            check_runnable(parsed.model, parsed.train, STATS["accepted"] % BUILD_EVERY == 1)

    _fuzz("train", argv(), body)


def _sweep_argv(flags: dict[str, str], extra: st.SearchStrategy[list[str]]):
    return st.tuples(option_flags(flags), set_options(), extra).map(lambda t: t[0] + t[1] + t[2])


@pytest.mark.timeout(900)
def test_fuzz_ablation_arguments(tmp_path: Path, depth: str, monkeypatch: pytest.MonkeyPatch):
    from sweeps import ablation

    paths = special_paths(tmp_path)
    planned: list[Any] = []
    monkeypatch.setattr(ablation, "_run", lambda opts, plan: planned.append(plan.trials) or 0)
    search_only = ("n_trials", "seeds_per_trial", "seed", "grace_period", "reduction_factor")
    flags = {"--" + dest.replace("_", "-"): dest for dest in OPTION_DOMAINS
             if dest not in search_only}  # fmt: skip
    extra = st.sampled_from([[], ["--factors", "n_head"], ["--factors", "dropout"],
                             *(["--datasets", path] for path in paths)])  # fmt: skip

    def body(args: list[str]) -> None:
        results = tmp_path / f"results-{uuid.uuid4().hex}"
        planned.clear()
        code = refused_or_accepted(lambda: ablation.main([*args, "--results", str(results)]),
                                   results)  # fmt: skip
        if code is not None:
            assert code == 0 and planned, args
            build = STATS["accepted"] % BUILD_EVERY == 1
            for index, trial in enumerate(planned[0][:3]):
                check_runnable(trial.model, trial.train, build and index == 0)

    _fuzz("ablation", _sweep_argv(flags, extra), body)


@pytest.mark.timeout(900)
def test_fuzz_search_arguments(tmp_path: Path, depth: str, monkeypatch: pytest.MonkeyPatch):
    from sweeps import search

    bases: list[Any] = []
    monkeypatch.setattr(search, "_run", lambda args, base, *rest: bases.append(base) or 0)
    flags = {"--n-trials": "n_trials", "--seeds": "seeds_per_trial", "--first-seed": "seed",
             "--grace-period": "grace_period", "--reduction-factor": "reduction_factor",
             "--max-iters": "max_iters", "--cpus-per-trial": "cpus_per_trial",
             "--gpus-per-trial": "gpus_per_trial", "--max-concurrent": "max_concurrent",
             "--num-cpus": "num_cpus", "--num-gpus": "num_gpus"}  # fmt: skip

    def body(args: list[str]) -> None:
        results = tmp_path / f"results-{uuid.uuid4().hex}"
        bases.clear()
        code = refused_or_accepted(lambda: search.main([*args, "--results", str(results)]),
                                   results)  # fmt: skip
        if code is not None:
            assert code == 0 and bases, args
            base = bases[0]
            for choice in (min, max):  # both ends of the search space, on this base
                sampled = {
                    name: choice(spec[0]) if kind == "choice" else
                    choice(spec[0], spec[1] - (kind == "randint"))
                    for name, (kind, *spec) in search.SEARCH_SPACE.items()
                }  # fmt: skip
                values = {**dataclasses.asdict(base.model), **dataclasses.asdict(base.train),
                          **sampled}  # fmt: skip
                model, train = split_config(values)
                check_runnable(model, train, STATS["accepted"] % BUILD_EVERY == 1)

    _fuzz("search", _sweep_argv(flags, st.just([])), body)


@pytest.mark.timeout(900)
def test_fuzz_analysis_arguments(tmp_path: Path, depth: str):
    from analysis import cli

    ints = st.one_of(st.integers(-3, 8), st.sampled_from([2**63, 10**8, 10**300]), st.text())
    option = st.one_of(
        st.tuples(st.just("--jobs"), ints.map(str)),
        st.tuples(st.just("--heatmap-layer"), ints.map(str)),
        st.tuples(st.just("--format"), st.sampled_from(["png", "gif", "", "png,svg,pdf", ","])),
        st.tuples(st.just("--metric"), st.sampled_from(["best_val_loss", "loss"])),
    )

    def body(options: list[tuple[str, str]]) -> None:
        out = tmp_path / f"report-{uuid.uuid4().hex}"
        argv = [str(tmp_path / "no-store"), "--out", str(out)]
        for flag, value in options:
            argv += [flag, value]
        code = refused_or_accepted(lambda: cli.main(argv), out)
        if code is not None:  # valid options: the missing store answers, in one line
            assert code == 2 and not out.exists()

    _fuzz("analysis", st.lists(option, max_size=4), body)
