"""Synthetic result stores: a tool for tests, benchmarks and demos (never used on real results).

``build_store`` writes a store through ``sweeps``' own writer (``sweeps.store.ResultStore``:
marker file, one Parquet file per trial per table, the columns of ``sweeps.schema.SCHEMAS``,
config defaults from the config dataclasses) with values
that look like training runs: losses fall along an exponential curve towards a final
value that depends on the config's level and on the seed (so paired comparisons have
something to pair), attention entropy falls over training, the hidden-state silhouette
rises (more where the final loss is lower), the sample's coherence is higher for a lower
loss, and so on.

The lower-level ``init_store``, ``trial_row`` and ``write_rows`` let a test write exact,
hand-chosen values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from charlm.config import ModelConfig, TrainConfig
from sweeps.grid import trial_columns
from sweeps.schema import SCHEMAS
from sweeps.store import ResultStore

__all__ = ["SyntheticSpec", "build_store", "init_store", "trial_row", "write_rows"]

# The config columns of a default trial (as ``sweeps`` writes them), on the CPU with
# shakespeare_char's 65 characters.
_CONFIG_DEFAULTS = trial_columns(
    sweep="sweep", kind="ablation", factor="baseline", level="baseline",
    model=ModelConfig(vocab_size=65), train=TrainConfig(device="cpu"),
)  # fmt: skip


def init_store(root: str | Path) -> Path:
    """Create an empty store at ``root`` (marker file and one directory per table)."""
    return ResultStore(root).root


def trial_row(
    trial_id: str,
    *,
    sweep: str = "sweep",
    dataset: str = "shakespeare_char",
    factor: str = "baseline",
    level: str = "baseline",
    seed: int = 0,
    kind: str = "ablation",
    status: str = "ok",
    **values: Any,
) -> dict[str, Any]:
    """One row of the trials table: identity, config defaults, then ``values`` on top.

    Unknown keys are an error (a typo would otherwise silently become a null column).
    """
    row: dict[str, Any] = dict.fromkeys(SCHEMAS["trials"].names)
    row.update(_CONFIG_DEFAULTS)
    row.update(
        trial_id=trial_id, sweep=sweep, dataset=dataset, factor=factor, level=level,
        seed=seed, kind=kind, status=status, device="cpu", attempts=1, eval_mode="exact",
        early_stopped=False, started_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
        finished_at=datetime(2025, 1, 1, 1, tzinfo=timezone.utc),
    )  # fmt: skip
    unknown = sorted(set(values) - set(row))
    if unknown:
        raise KeyError(f"unknown trials column(s) {', '.join(unknown)}")
    row.update(values)
    return row


def write_rows(
    root: str | Path,
    table: str,
    rows: pa.Table | Sequence[dict[str, Any]] | dict[str, Any],
    name: str,
) -> Path:
    """Write ``rows`` (row dicts, a dict of columns, or an Arrow table) as one Parquet file
    ``<root>/<table>/<name>.parquet`` through the store's own writer; missing columns are
    null."""
    return ResultStore(root).write_rows(table, name, rows)


@dataclass
class SyntheticSpec:
    """What ``build_store`` writes: sweeps x datasets x configs x seeds trials.

    Configs are the baseline plus ``n_factors`` factors with ``n_levels`` levels each.
    ``failed_share`` of the trials diverge (status 'failed', error 'non-finite loss at
    step k', curves stopping at k). ``attention`` writes n_layer x n_head rows per eval step.
    """

    sweeps: Sequence[str] = ("base",)
    datasets: Sequence[str] = ("shakespeare_char",)
    n_factors: int = 3
    n_levels: int = 2
    seeds: int = 3
    eval_steps: int = 10
    eval_interval: int = 50
    n_layer: int = 4
    n_head: int = 4
    attention: bool = True
    samples: bool = True
    failed_share: float = 0.0
    random_seed: int = 0
    factor_names: Sequence[str] = field(
        default=(
            "n_layer", "n_embed", "dropout", "learning_rate", "block_size", "n_head",
            "weight_decay", "batch_size", "grad_clip", "warmup_iters", "beta2", "bias",
        )
    )  # fmt: skip


def _trial_tables(spec: SyntheticSpec, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Every trial's row plus its curves/attention/samples columns, ready to write."""
    steps = np.arange(1, spec.eval_steps + 1) * spec.eval_interval
    configs = [("baseline", "baseline", 0.0, 0)]
    for f in range(spec.n_factors):
        name = spec.factor_names[f % len(spec.factor_names)]
        name = name if f < len(spec.factor_names) else f"{name}_{f}"
        for lv in range(spec.n_levels):
            effect = rng.normal(0, 0.08) * (lv + 1) / spec.n_levels
            configs.append((name, str(2 ** (lv + 1)), effect, lv))
    trials = []
    for s_index, sweep in enumerate(spec.sweeps):
        sweep_shift = -0.03 * s_index
        for d_index, dataset in enumerate(spec.datasets):
            base_loss = 1.5 + 0.3 * d_index + sweep_shift
            seed_effects = rng.normal(0, 0.02, spec.seeds)
            for factor, level, effect, lv in configs:
                n_params = int(800_000 * (1.6 ** (lv + 1 if factor != "baseline" else 1.5)))
                for seed in range(spec.seeds):
                    trial_id = f"{sweep}-{dataset}-{factor}-{level}-s{seed}"
                    final = base_loss + effect + seed_effects[seed] + rng.normal(0, 0.01)
                    failed = rng.random() < spec.failed_share
                    trials.append(
                        dict(
                            trial_id=trial_id, sweep=sweep, dataset=dataset, factor=factor,
                            level=level, seed=seed, final=final, failed=failed,
                            n_params=n_params, steps=steps,
                        )
                    )  # fmt: skip
    return trials


def _write_trial(store: ResultStore, spec: SyntheticSpec, trial: dict[str, Any], seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps = trial["steps"]
    final = trial["final"]
    n_steps = len(steps)
    if trial["failed"]:
        n_steps = int(rng.integers(1, len(steps) + 1))
        steps = steps[:n_steps]
    progress = np.arange(1, n_steps + 1) / len(trial["steps"])
    val = final + (4.2 - final) * np.exp(-5 * progress) + rng.normal(0, 0.005, n_steps)
    train = val - 0.05 * progress + rng.normal(0, 0.005, n_steps)
    if trial["failed"]:
        val[-1] = train[-1] = math.nan
    best = np.fmin.accumulate(val)
    tokens = steps * 32 * 128
    elapsed = steps * 0.05
    tid = trial["trial_id"]
    curves = {
        "trial_id": [tid] * n_steps, "step": steps, "tokens_seen": tokens,
        "elapsed_s": elapsed, "lr": 3e-4 * (1 - 0.9 * progress), "train_loss": train,
        "val_loss": val, "best_val_loss": best, "tokens_per_s": tokens / elapsed,
    }  # fmt: skip
    store.write_rows("curves", tid, curves)
    ok = not trial["failed"]
    row = trial_row(
        tid, sweep=trial["sweep"], dataset=trial["dataset"], factor=trial["factor"],
        level=trial["level"], seed=trial["seed"], status="ok" if ok else "failed",
        error=None if ok else f"non-finite loss at step {int(steps[-1])}",
        n_layer=spec.n_layer, n_head=spec.n_head, eval_interval=spec.eval_interval,
        n_params=trial["n_params"],
        best_val_loss=float(np.nanmin(val)) if ok else None,
        final_train_loss=float(train[-1]) if ok else None,
        final_val_loss=float(val[-1]) if ok else None, last_step=int(steps[-1]),
        train_time_s=float(elapsed[-1]), train_tokens_per_s=float(tokens[-1] / elapsed[-1]),
        inference_tokens_per_s=float(rng.normal(5000, 100)) if ok else None,
    )  # fmt: skip
    store.write_rows("trials", tid, [row])
    if spec.attention:
        n_layer, n_head = spec.n_layer, spec.n_head
        per_step = n_layer * n_head
        layer = np.tile(np.repeat(np.arange(n_layer), n_head), n_steps)
        head = np.tile(np.arange(n_head), n_steps * n_layer)
        prog = np.repeat(progress, per_step)
        entropy = 3.0 - 1.2 * prog * (1 + 0.2 * layer) + rng.normal(0, 0.05, len(layer))
        last = layer == n_layer - 1
        js_next = np.where(last, np.nan, 0.1 + 0.05 * layer + 0.1 * prog)
        cos_next = np.where(last, np.nan, 0.9 - 0.05 * layer - 0.1 * prog)
        # per layer (the same on each head row): rises over training, higher for lower loss
        layer_noise = np.repeat(rng.normal(0, 0.02, n_steps * n_layer), n_head)
        silhouette = 0.05 + prog * (0.3 + 0.04 * layer - 0.4 * (final - 1.5)) + layer_noise
        attention = {
            "trial_id": [tid] * len(layer), "step": np.repeat(steps, per_step), "layer": layer,
            "head": head, "entropy": entropy, "entropy_normalized": entropy / 4.8,
            "effective_span": 20 - 12 * prog + 3 * layer + rng.normal(0, 0.5, len(layer)),
            "head_diversity": 0.2 + 0.1 * prog, "attention_js_next": js_next,
            "hidden_cosine_next": cos_next, "silhouette": silhouette,
        }  # fmt: skip
        store.write_rows("attention", tid, attention)
    if spec.samples and ok:
        text = "ROMEO:\nWhat light through yonder window breaks? " * 3
        sample = {
            "trial_id": tid, "prompt": "\n", "text": text[: 40 + int(rng.integers(0, 80))],
            "n_chars": 120, "distinct_1": 0.4, "distinct_2": 0.7, "distinct_3": 0.85,
            "repetition_rate": 0.1, "known_word_share": 0.8,
            "coherence": float(0.6 - 0.3 * (final - 1.5) + rng.normal(0, 0.02)),
            "attention_entropy": list(1.5 - 0.1 * np.arange(spec.n_layer) + rng.normal(0, 0.05)),
            "effective_span": list(8.0 + 2 * np.arange(spec.n_layer) + rng.normal(0, 0.3)),
        }  # fmt: skip
        store.write_rows("samples", tid, [sample])


def build_store(root: str | Path, spec: SyntheticSpec | None = None, *, threads: int = 4) -> Path:
    """Write a synthetic store at ``root`` (created; existing files of the same trials are
    overwritten) and return its path. Deterministic for a given ``spec.random_seed``."""
    spec = spec or SyntheticSpec()
    store = ResultStore(root)
    rng = np.random.default_rng(spec.random_seed)
    trials = _trial_tables(spec, rng)
    seeds = rng.integers(0, 2**31, len(trials))
    work: Iterable[None]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        work = pool.map(
            lambda i: _write_trial(store, spec, trials[i], int(seeds[i])), range(len(trials))
        )
        for _ in work:
            pass
    return store.root
