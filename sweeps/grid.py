"""One-factor-at-a-time (OFAT) ablation grids: a spec, built-in presets, YAML files, expansion.

A ``GridSpec`` is a baseline configuration plus factors. Each factor lists levels; a level
sets one or more config fields, so a *linked* factor can move several fields together
(``width: [{n_embed: 32, n_head: 2}, {n_embed: 128, n_head: 8}]``), which a Cartesian
grid cannot express. ``expand`` turns a spec into ``TrialSpec`` s: the baseline and every
factor level, times seeds, times datasets, each validated before anything runs and named
by a content hash that is the same in every run and on every machine.

No Ray here: this module is plain data and is imported by the CLIs, the trainable and tests.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from charlm.config import (
    KNOWN_DATASETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    check_schedule,
    config_fields,
    domains,
    field_types,
    is_regular_file,
    shorten_schedule,
    split_config,
    to_dict,
)
from charlm.text import short_repr

GRID_KEYS = ("name", "extends", "baseline", "factors", "datasets", "seeds")
# Fields that say where a trial runs, not what it computes: left out of the trial id, and a
# factor may not vary them (use ``overrides`` to set them for every trial).
MACHINE_FIELDS = ("data_dir", "device", "num_threads", "compile")
# Set per trial by the grid's ``datasets`` and ``seeds``, never by the baseline or a level.
AXIS_FIELDS = ("dataset", "seed")
BASELINE = "baseline"  # factor and level label of the baseline trial
ID_LENGTH = 16  # hex digits of sha256 kept in a trial id (64 bits)
# A sweep's trials are expanded, hashed and held by the driver (and Ray) before any runs:
# more than this is a typo (--seeds 100000000), not a plan.
MAX_TRIALS = 100_000

_FIELDS = config_fields(ModelConfig) + config_fields(TrainConfig)


class GridError(ConfigError):
    """A grid that cannot run; the one-line message names the problem and the fix."""


_TYPES = {**field_types(ModelConfig), **field_types(TrainConfig)}


def _suggest(name: str, choices: Iterable[str], sep: str | None = None) -> str:
    """' (did you mean x?)' for a near miss, or '; did you mean x?' with ``sep='; '``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    if not close:
        return ""
    return f"{sep}did you mean {close[0]}?" if sep else f" (did you mean {close[0]}?)"


def _normalize(name: str, value: Any) -> Any:
    """Put a field's value in canonical form: ints in float fields become floats ('0' and
    '0.0' are one dropout), integral floats in int fields become ints, and numeric strings
    become numbers (YAML 1.1 reads ``3e-4`` as a string)."""
    kind = _TYPES.get(name)
    if kind not in (int, float) or value is None or isinstance(value, bool):
        return value
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
    if kind is float and isinstance(number, int):
        try:
            return float(number)
        except OverflowError:  # beyond any float: the field's domain refuses it
            return number
    if isinstance(number, float):
        if kind is int and math.isfinite(number) and number.is_integer():
            return int(number)
        return number + 0.0  # -0.0 -> 0.0
    return number


def _level_label(factor: str, level: Mapping[str, Any]) -> str:
    """'8' for a plain level ``{n_head: 8}`` of factor n_head, else 'n_embed=32,n_head=2'."""
    if list(level) == [factor]:
        return str(level[factor])
    return ",".join(f"{key}={value}" for key, value in level.items())


def _describe(factor: str, level: Mapping[str, Any]) -> str:
    """How errors name a level: 'n_head=3', or 'width=(n_embed=30,n_head=4)' when linked."""
    label = _level_label(factor, level)
    return f"{factor}={label}" if list(level) == [factor] else f"{factor}=({label})"


def _seed_values(seeds: int | Sequence[int]) -> tuple[int, ...]:
    """A seed count n means seeds 0..n-1; a sequence means exactly those seeds."""
    if isinstance(seeds, bool):
        raise GridError(f"seeds={seeds!r} is invalid: give a count (e.g. 3) or a list of seeds.")
    if isinstance(seeds, int):
        if seeds <= 0:
            raise GridError(f"seeds={short_repr(seeds)} is invalid: give a count >= 1 (e.g. 3).")
        if seeds > MAX_TRIALS:
            raise GridError(
                f"seeds={short_repr(seeds)} is more seeds than a sweep plans trials (at most "
                f"{MAX_TRIALS:,}): give fewer seeds."
            )
        return tuple(range(seeds))
    if isinstance(seeds, str) or not isinstance(seeds, Sequence) or not seeds:
        raise GridError(
            f"seeds={short_repr(seeds)} is invalid: give a count (e.g. 3) or a non-empty list "
            "of seeds."
        )
    values = tuple(seeds)
    seed_domain = domains(TrainConfig)["seed"]
    for seed in values:
        seed_domain.check("seeds: seed", seed)
    if len(set(values)) != len(values):
        raise GridError(f"seeds={short_repr(list(values))} repeats a seed: list each seed once.")
    return values


def _dataset_values(datasets: str | Sequence[str]) -> tuple[str, ...]:
    values = (datasets,) if isinstance(datasets, str) else datasets
    if not isinstance(values, Sequence) or not values:
        raise GridError(
            f"datasets={datasets!r} is invalid: give a dataset name or a non-empty list, "
            "e.g. [shakespeare_char]."
        )
    values = tuple(values)
    if any(not isinstance(d, str) or not d for d in values):
        raise GridError(f"datasets={list(values)} is invalid: every dataset must be a name.")
    if len(set(values)) != len(values):
        raise GridError(f"datasets={list(values)} repeats a dataset: list each dataset once.")
    # A relative path means the launching directory's file; Ray's workers run elsewhere.
    return tuple(
        os.path.abspath(d) if d not in KNOWN_DATASETS and os.path.exists(d) else d for d in values
    )


def _check_fields(names: Iterable[tuple[str, str]]) -> None:
    """Raise one GridError for every (field, where) pair whose field is not a config field."""
    unknown = [(name, where) for name, where in names if name not in _FIELDS]
    if unknown:
        listed = ", ".join(
            f"{name} ({where}{_suggest(name, _FIELDS, '; ')})" for name, where in unknown
        )
        raise GridError(f"unknown config field(s) {listed}: valid fields are {', '.join(_FIELDS)}.")


def _level(factor: str, raw: Any) -> dict[str, Any]:
    """One level of ``factor``, as a mapping of fields to normalised values."""
    if isinstance(raw, Mapping):
        if not raw:
            raise GridError(
                f"factor {factor} has an empty level {{}}: give each level at least one field."
            )
        level = dict(raw)
    elif isinstance(raw, list | tuple | set):
        raise GridError(
            f"factor {factor} level {raw!r} is a list: a level is one value or a "
            "mapping of fields to values."
        )
    elif factor in _FIELDS:
        level = {factor: raw}
    else:
        raise GridError(
            f"factor {factor} level {raw!r} is a bare value but {factor} is not a "
            f"config field{_suggest(factor, _FIELDS)}: give a mapping such as "
            "{n_embed: 32, n_head: 2}, or name the factor after the field it sets."
        )
    _check_fields((str(name), f"factor {factor}") for name in level)
    for name in level:
        if name in AXIS_FIELDS:
            raise GridError(
                f"factor {factor} sets {name}: vary it with the grid's {name}s, not with a factor."
            )
        if name in MACHINE_FIELDS:
            raise GridError(
                f"factor {factor} sets {name}, which says where a trial runs and is "
                "not part of its identity: set it for every trial (e.g. --device)."
            )
    return {name: _normalize(name, value) for name, value in level.items()}


@dataclass(frozen=True)
class GridSpec:
    """An OFAT grid: the baseline, the factors and their levels, datasets and seeds.

    ``baseline`` maps ModelConfig/TrainConfig field names to values (unset fields keep the
    configs' defaults; ``dataset`` and ``seed`` come from ``datasets`` and ``seeds``).
    ``factors`` maps a factor name to its levels, in order. A level is a mapping of fields
    to values; a bare value ``v`` of a factor named after a field ``f`` means ``{f: v}``.
    ``seeds`` is a count n (seeds 0..n-1) or a list of seeds. ``source`` (the YAML file, if
    any) only improves error messages. Values are normalised on construction (see
    ``_normalize``), so a spec compares equal however its numbers were written.
    """

    name: str
    baseline: Mapping[str, Any]
    factors: Mapping[str, Sequence[Any]]
    datasets: tuple[str, ...] = ("shakespeare_char",)
    seeds: int | tuple[int, ...] = 3
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise GridError(
                f"name={self.name!r} is invalid: give the grid a non-empty text name, "
                "e.g. name: width_sweep."
            )
        if not isinstance(self.baseline, Mapping):
            raise GridError(
                f"baseline={self.baseline!r} is invalid: give a mapping of config fields to "
                "values, e.g. {n_layer: 4, n_embed: 64}."
            )
        if not isinstance(self.factors, Mapping):
            raise GridError(
                f"factors={self.factors!r} is invalid: give a mapping of factor names to "
                "lists of levels, e.g. {n_head: [1, 8]}."
            )
        object.__setattr__(self, "datasets", _dataset_values(self.datasets))
        seed_values = _seed_values(self.seeds)
        object.__setattr__(
            self, "seeds", self.seeds if isinstance(self.seeds, int) else seed_values
        )

        _check_fields((str(name), "baseline") for name in self.baseline)
        for name in self.baseline:
            if name in AXIS_FIELDS:
                raise GridError(
                    f"baseline sets {name}: set it with the grid's {name}s "
                    f"(e.g. {name}s: {'[shakespeare_char]' if name == 'dataset' else '3'})."
                )
        baseline = {name: _normalize(name, value) for name, value in self.baseline.items()}
        object.__setattr__(self, "baseline", baseline)

        factors = {factor: self._levels(factor, raw) for factor, raw in self.factors.items()}
        object.__setattr__(self, "factors", factors)

    @staticmethod
    def _levels(factor: Any, raw_levels: Any) -> tuple[dict[str, Any], ...]:
        if not isinstance(factor, str) or not factor:
            raise GridError(f"factor name {factor!r} is invalid: name factors with strings.")
        if factor == BASELINE:
            raise GridError("a factor is named 'baseline': that name is reserved; rename it.")
        if isinstance(raw_levels, str | bytes | Mapping) or not isinstance(raw_levels, Sequence):
            raise GridError(
                f"factor {factor}: {raw_levels!r} is not a list of levels: write e.g. "
                f"{factor}: [1, 8] or {factor}: [{{n_embed: 32, n_head: 2}}, ...]."
            )
        if not raw_levels:
            raise GridError(f"factor {factor} has no levels: list at least one, or remove it.")
        levels = [_level(factor, raw) for raw in raw_levels]
        labels = [_level_label(factor, level) for level in levels]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise GridError(
                f"factor {factor} lists level {', '.join(repeated)} more than once: "
                "list each level once."
            )
        return tuple(levels)

    @property
    def seed_values(self) -> tuple[int, ...]:
        """The seeds every configuration runs with."""
        return _seed_values(self.seeds)

    def varied_fields(self, factor: str) -> tuple[str, ...]:
        """The config fields that ``factor``'s levels set, in first-seen order."""
        names: dict[str, None] = {}
        for level in self.factors[factor]:
            names.update(dict.fromkeys(level))
        return tuple(names)

    def baseline_configs(self) -> tuple[ModelConfig, TrainConfig]:
        """The baseline as configs (config defaults where the grid sets nothing)."""
        return split_config(dict(self.baseline))


# ---------------------------------------------------------------- presets

_NOTEBOOK_BASELINE: dict[str, Any] = {
    "n_layer": 4,
    "n_head": 4,
    "n_embed": 64,
    "block_size": 128,
    "dropout": 0.1,
    "batch_size": 32,
    "learning_rate": 3e-4,
    "max_iters": 3000,
    "eval_interval": 500,
}

# nanoGPT's config/train_shakespeare_char.py (lr_decay_iters there equals max_iters, which
# is our default when unset, so it follows --max-iters).
_NANOGPT_BASELINE: dict[str, Any] = {
    "n_layer": 6,
    "n_head": 6,
    "n_embed": 384,
    "block_size": 256,
    "dropout": 0.2,
    "bias": False,
    "batch_size": 64,
    "learning_rate": 1e-3,
    "min_lr": 1e-4,
    "warmup_iters": 100,
    "beta2": 0.99,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "max_iters": 5000,
    "eval_interval": 250,
    "eval_iters": 200,
}

PRESETS: dict[str, GridSpec] = {
    # The notebook's grid: a 4x4x64 model and one step down and up on each factor.
    "notebook": GridSpec(
        name="notebook",
        baseline=_NOTEBOOK_BASELINE,
        factors={
            "n_head": [1, 8],
            "n_layer": [1, 8],
            "n_embed": [32, 128],
            "dropout": [0.0, 0.3],
            "block_size": [32, 256],
        },
        datasets=("shakespeare_char",),
        seeds=3,
    ),
    # nanoGPT's shakespeare-char model, each factor halved and doubled (n_embed stays a
    # multiple of 6 heads; every n_head divides 384). Sized for GPUs.
    "nanogpt": GridSpec(
        name="nanogpt",
        baseline=_NANOGPT_BASELINE,
        factors={
            "n_head": [3, 12],
            "n_layer": [3, 12],
            "n_embed": [192, 768],
            "dropout": [0.0, 0.4],
            "block_size": [128, 512],
        },
        datasets=("shakespeare_char",),
        seeds=3,
    ),
}
DEFAULT_PRESET = "notebook"

# What sweeps/search.py samples (and analysis names as searched): ranges of the five OFAT
# factors and the learning rate, as (Ray Tune sampler, arguments). Every n_embed choice is a
# multiple of every n_head choice, so each sampled config is valid.
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "n_head": ("choice", [1, 2, 4, 8]),
    "n_layer": ("randint", 1, 9),
    "n_embed": ("choice", [32, 64, 96, 128, 192, 256]),
    "dropout": ("uniform", 0.0, 0.3),
    "block_size": ("choice", [32, 64, 128, 256]),
    "learning_rate": ("loguniform", 1e-4, 3e-3),
}


# ---------------------------------------------------------------- YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader refusing a key given twice in one mapping (it keeps the last one
    silently otherwise)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the SafeLoader's own error follows
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short_repr(key)} (lines {first} and "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark,
                )  # fmt: skip
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate mapping keys (a ConstructorError naming the
    key and both lines)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_grid(path: str | Path) -> GridSpec:
    """Read a grid from a YAML file (``yaml.safe_load``: no Python tags).

    Keys (only ``factors`` is required)::

        name: my_grid            # default: the file name without .yaml
        extends: notebook        # preset whose baseline, datasets and seeds are the defaults
        baseline: {max_iters: 2000}  # fields changed from the preset's baseline
        factors:                 # ordered; {} runs the baseline alone
          n_head: [1, 8]         # plain: each value sets the field named like the factor
          width:                 # linked: each level sets several fields together
            - {n_embed: 32, n_head: 2}
            - {n_embed: 128, n_head: 8}
        datasets: [shakespeare_char]   # or one name, or paths of UTF-8 text files
        seeds: 3                 # a count (seeds 0..2) or a list such as [0, 1, 2]

    Every problem is a GridError naming the file, the problem and the fix. Config values
    themselves (e.g. n_embed not divisible by n_head) are checked by ``expand``.
    """
    path = Path(path)
    where = str(path)
    raw = _grid_mapping(path)
    extends = raw.get("extends", DEFAULT_PRESET)
    if not isinstance(extends, str) or extends not in PRESETS:
        raise GridError(
            f"grid file {where}: extends={extends!r} is not a preset; use one of "
            f"{', '.join(PRESETS)}."
        )
    parent = PRESETS[extends]
    baseline = raw.get("baseline") or {}
    factors = raw["factors"] if raw["factors"] is not None else {}
    for key, value, example in (
        ("baseline", baseline, "baseline: {n_layer: 2, max_iters: 1000}"),
        ("factors", factors, "factors: {n_head: [1, 8]}"),
    ):
        if not isinstance(value, dict):
            raise GridError(
                f"grid file {where}: {key} is a {type(value).__name__}, not a mapping; "
                f"write e.g. '{example}'."
            )
    try:
        return GridSpec(
            name=raw.get("name", path.stem),
            baseline={**parent.baseline, **baseline},
            factors=factors,
            datasets=raw.get("datasets", parent.datasets),
            seeds=raw.get("seeds", parent.seeds),
            source=where,
        )
    except ConfigError as error:
        raise GridError(f"grid file {where}: {error}") from None


def _grid_mapping(path: Path) -> dict[Any, Any]:
    """The grid file's top-level mapping: readable, valid YAML, known keys, with factors."""
    where = str(path)
    try:
        if not is_regular_file(path, f"grid file {where}", "a grid YAML file"):
            raise FileNotFoundError(where)
        raw = safe_load_unique(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GridError(
            f"grid file {where}: no such file; give the path of a grid YAML file or a preset "
            f"name ({', '.join(PRESETS)})."
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise GridError(
            f"grid file {where}: cannot be read ({error}); give a readable UTF-8 YAML file."
        ) from None
    except yaml.YAMLError as error:
        raise GridError(f"grid file {where}: not valid YAML: {_yaml_problem(error)}.") from None
    except ConfigError as error:
        raise GridError(str(error)) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise GridError(
            f"grid file {where}: the top level is a {type(raw).__name__}, not a mapping; "
            f"write keys such as factors: and baseline: (keys: {', '.join(GRID_KEYS)})."
        )
    unknown = [key for key in raw if key not in GRID_KEYS]
    if unknown:
        listed = ", ".join(f"{key!r}{_suggest(str(key), GRID_KEYS)}" for key in unknown)
        raise GridError(
            f"grid file {where}: unknown key(s) {listed}; valid keys are {', '.join(GRID_KEYS)}."
        )
    if "factors" not in raw:
        raise GridError(
            f"grid file {where}: no factors; add e.g. 'factors: {{n_head: [1, 8]}}' "
            "(or 'factors: {}' to run the baseline alone)."
        )
    return raw


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: what the parser disliked and where."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if problem.startswith("duplicate key"):
        return f"{problem}; keep one of them"
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        problem = f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    if "constructor" in problem or "tag" in problem:
        return " ".join(problem.split()) + "; grids are plain YAML: remove the !! tag"
    return " ".join(problem.split()) + "; fix the syntax there"


# ---------------------------------------------------------------- trials


# (real path, size, mtime_ns, inode) -> sha256 of the file: each text file is read once.
_FILE_HASHES: dict[tuple[str, int, int, int], str] = {}


def _file_sha256(dataset: str) -> str:
    path = os.path.realpath(dataset)
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def dataset_sha256(dataset: str) -> str | None:
    """The sha256 of the text a trial of ``dataset`` trains on (what ``charlm.data``'s
    Dataset.source_sha256 says of it): a built-in dataset's published checksum, a text
    file's content now; None for a name that is neither."""
    from charlm.data import DATASETS

    if dataset in DATASETS:
        return DATASETS[dataset].sha256
    return _file_sha256(dataset) if os.path.isfile(dataset) else None


def dataset_identity(dataset: str) -> str:
    """What a trial id hashes for a dataset: a built-in name as is, a text file by its
    content ('sha256:...'), so an edited file makes new trials and another spelling of the
    same file's path the same ones."""
    if dataset in KNOWN_DATASETS or not os.path.isfile(dataset):
        return dataset
    return f"sha256:{_file_sha256(dataset)}"


def _canonical(config: ModelConfig | TrainConfig) -> dict[str, Any]:
    values = {}
    for name, value in to_dict(config).items():
        if name in MACHINE_FIELDS:
            continue
        value = _normalize(name, value)
        if name == "dataset":
            value = dataset_identity(value)
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)  # keep the JSON strict
        values[name] = value
    return values


def trial_id(model: ModelConfig, train: TrainConfig) -> str:
    """A stable id for the trial these configs describe: 16 hex digits of a sha256.

    It hashes canonical JSON (sorted keys, numbers normalised: 0.1 == 0.10 == 1e-1, and an
    int in a float field equals the float) of every config field except where the trial runs
    (``MACHINE_FIELDS``), so it depends on the dataset, the seed and the full configuration,
    never on the sweep's name or the factor that produced it. A dataset given as a file path
    counts by its content (``dataset_identity``), not by how the path is spelled.
    """
    return _hash({"model": _canonical(model), "train": _canonical(train)})


def config_id(model: ModelConfig, train: TrainConfig) -> str:
    """The id the seeds of one configuration share: ``trial_id``'s hash without the seed
    (and marked, so it never equals a trial id)."""
    train_values = {k: v for k, v in _canonical(train).items() if k != "seed"}
    return _hash({"config": True, "model": _canonical(model), "train": train_values})


def _hash(payload: dict[str, Any]) -> str:
    """``ID_LENGTH`` hex digits of the sha256 of ``payload`` as canonical JSON."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a grid: its id, where it comes from (sweep, factor, level), and configs.

    ``factor`` and ``level`` are 'baseline' for the baseline; ``level`` is the value as a
    string for a plain factor ('8', '0.3') and 'n_embed=32,n_head=2' for a linked one.
    ``dataset`` and ``seed`` repeat ``train.dataset`` and ``train.seed``.
    """

    trial_id: str
    sweep: str
    dataset: str
    factor: str
    level: str
    seed: int
    model: ModelConfig
    train: TrainConfig

    def params(self, kind: str = "ablation") -> dict[str, Any]:
        """This trial as Ray Tune's param_space holds it (and the trainable reads it):
        ``trial_id``; ``params``, every config field as a flat dict; ``columns``, the
        identity and configuration columns of its store row, ``dataset_sha256`` among them
        (the content the trial must train on, checked when it starts). ``kind`` is the
        sweep kind ('ablation', 'search' or 'single')."""
        return {
            "trial_id": self.trial_id,
            "params": {**to_dict(self.model), **to_dict(self.train)},
            "columns": {
                "dataset": self.dataset,
                "dataset_sha256": dataset_sha256(self.dataset),
                "seed": self.seed,
                **trial_columns(
                    sweep=self.sweep,
                    kind=kind,
                    factor=self.factor,
                    level=self.level,
                    model=self.model,
                    train=self.train,
                ),
            },
        }


def trial_columns(
    *, sweep: str, kind: str, factor: str, level: str, model: ModelConfig, train: TrainConfig
) -> dict[str, Any]:
    """The identity and configuration columns of a trial's ``trials`` row (the requested
    device is ``requested_device``: ``device`` holds the one the trial really used)."""
    columns = {"sweep": sweep, "kind": kind, "factor": factor, "level": level}
    for name, value in {**to_dict(model), **to_dict(train)}.items():
        columns["requested_device" if name == "device" else name] = value
    return columns


def expand(
    spec: GridSpec,
    *,
    factors: Iterable[str] | None = None,
    datasets: str | Sequence[str] | None = None,
    seeds: int | Sequence[int] | None = None,
    max_iters: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[TrialSpec]:
    """The grid's trials: for each dataset, each seed: the baseline, then each factor level.

    ``factors`` keeps only these factors (the baseline always runs); ``datasets`` and
    ``seeds`` replace the spec's; ``max_iters`` sets every trial's length (see
    ``charlm.config.shorten_schedule``);
    ``overrides`` sets fields for every trial (e.g. device, data_dir, num_threads,
    batch_size) and may not touch a field a selected factor varies.

    Every configuration is built, and validated, before this returns: all invalid levels
    are reported together in one GridError. A level whose configuration equals the
    baseline's (or an earlier level's) is no separate trial: ids are unique, the first
    (factor, level) keeps the label, so the baseline wins.
    """
    where = f" in grid {spec.name!r}" + (f" ({spec.source})" if spec.source else "")
    selected = _select_factors(spec, factors, where)
    dataset_values = spec.datasets if datasets is None else _dataset_values(datasets)
    seed_values = spec.seed_values if seeds is None else _seed_values(seeds)
    if max_iters is not None:
        try:
            domains(TrainConfig)["max_iters"].check("max_iters", max_iters)
        except ConfigError as error:
            raise GridError(str(error)) from None
    fixed = _check_overrides(spec, selected, overrides)
    dataset_errors, valid = _check_datasets(dataset_values)
    built, errors = _build_levels(spec, selected, fixed, valid[0] if valid else None, max_iters)
    if errors or dataset_errors:
        counts = [
            f"{n} invalid {what}{'s' if n != 1 else ''}"
            for n, what in ((len(dataset_errors), "dataset"), (len(errors), "grid level"))
            if n
        ]
        raise GridError(f"{' and '.join(counts)}{where}: {'; '.join(dataset_errors + errors)}.")
    planned = len(dataset_values) * len(seed_values) * len(built)
    if planned > MAX_TRIALS:
        raise GridError(
            f"{planned:,} trials ({len(seed_values):,} seeds x {len(built)} configs x "
            f"{len(dataset_values)} datasets){where} are more than a sweep plans (at most "
            f"{MAX_TRIALS:,}): give at most {MAX_TRIALS // (len(built) * len(dataset_values)):,} "
            "seeds."
        )
    return _trials(spec.name, dataset_values, seed_values, built)


def _check_datasets(datasets: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the problems of the datasets no trial can use, the others)."""
    errors, valid = [], []
    for dataset in datasets:
        try:
            TrainConfig(dataset=dataset)
        except ConfigError as error:
            errors.append(str(error).rstrip("."))
        else:
            valid.append(dataset)
    return errors, valid


def _trials(
    sweep: str,
    datasets: Sequence[str],
    seeds: Sequence[int],
    built: list[tuple[str, str, ModelConfig, TrainConfig]],
) -> list[TrialSpec]:
    """For each dataset, each seed, each built config: its trial; a repeated id (a level
    equal to the baseline or an earlier level) keeps its first label."""
    trials: dict[str, TrialSpec] = {}
    for dataset in datasets:
        for seed in seeds:
            for factor, label, model, train in built:
                train_cfg = dataclasses.replace(train, dataset=dataset, seed=seed)
                identity = trial_id(model, train_cfg)
                trials.setdefault(
                    identity,
                    TrialSpec(identity, sweep, dataset, factor, label, seed, model, train_cfg),
                )
    return list(trials.values())


def _build_levels(
    spec: GridSpec,
    selected: list[str],
    fixed: dict[str, Any],
    dataset: str | None,
    max_iters: int | None,
) -> tuple[list[tuple[str, str, ModelConfig, TrainConfig]], list[str]]:
    """(factor, label, model, train) of the baseline and each selected level, and the
    problems of those that cannot be built (a level failing as the baseline does is the
    baseline's problem, reported once)."""
    entries: list[tuple[str, str, str, dict[str, Any]]] = [(BASELINE, BASELINE, BASELINE, {})]
    for factor in selected:
        for level in spec.factors[factor]:
            entries.append((factor, _level_label(factor, level), _describe(factor, level), level))
    built, errors = [], []
    baseline_error = None
    for factor, label, description, level in entries:
        try:
            values = {**spec.baseline, **level, **fixed}
            model, train = _build(values, dataset or TrainConfig().dataset, max_iters)
        except ConfigError as error:
            message = str(error).rstrip(".")
            if factor == BASELINE:
                baseline_error = message
            elif message == baseline_error:
                continue
            errors.append(f"{description}: {message}")
            continue
        built.append((factor, label, model, train))
    return built, errors


def _build(
    values: dict[str, Any], dataset: str, max_iters: int | None
) -> tuple[ModelConfig, TrainConfig]:
    """One level's configs, at ``max_iters`` steps when given: its schedule must work at its
    own length (a warm-up longer than the grid's run is a mistake however it would scale)
    and at the final one."""
    values = {**values, "dataset": dataset, "seed": 0}
    if max_iters is not None:
        check_schedule(split_config(values)[1])
        values = shorten_schedule(values, max_iters)
    model, train = split_config(values)
    check_schedule(train)
    return model, train


def _select_factors(spec: GridSpec, factors: Iterable[str] | None, where: str) -> list[str]:
    if factors is None:
        return list(spec.factors)
    if isinstance(factors, str):
        factors = [factors]
    chosen = [name for name in factors if name != BASELINE]
    unknown = [name for name in chosen if name not in spec.factors]
    if unknown:
        listed = ", ".join(f"{name}{_suggest(name, spec.factors)}" for name in unknown)
        valid = ", ".join(spec.factors) or "none (it runs the baseline alone)"
        raise GridError(f"unknown factor(s) {listed}{where}: its factors are {valid}.")
    return [name for name in spec.factors if name in chosen]  # the grid's order


def _check_overrides(
    spec: GridSpec, selected: list[str], overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    if not overrides:
        return {}
    _check_fields((str(name), "overrides") for name in overrides)
    for name in overrides:
        if name in AXIS_FIELDS:
            raise GridError(f"overrides set {name}: choose it with {name}s= instead.")
    for factor in selected:
        clash = [name for name in spec.varied_fields(factor) if name in overrides]
        if clash:
            raise GridError(
                f"overrides set {', '.join(clash)}, which factor {factor} varies: drop the "
                f"override or leave factor {factor} out."
            )
    return {name: _normalize(name, value) for name, value in overrides.items()}


def parse_overrides(items: Iterable[str] | None) -> dict[str, Any]:
    """``["eval_iters=20", "lr_decay_iters=null"]`` -> a dict of overrides for ``expand``.

    Values are read as YAML scalars (``null``, ``true``, numbers, strings); field names are
    checked by ``expand``.
    """
    overrides: dict[str, Any] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise GridError(f"--set {item!r}: write FIELD=VALUE, e.g. --set eval_iters=20.")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        overrides[name.strip()] = value
    return overrides
