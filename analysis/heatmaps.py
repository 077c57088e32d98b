"""Attention heatmap capture: the one place in ``analysis`` that runs a model.

``capture_heatmaps`` picks, per dataset, the best trial with a saved model
(``RESULTS_DIR/models/<trial_id>.pt``) and runs it on a text with ``capture_attention``;
plots.head_heatmaps and plots.layer_heatmaps draw what it returns. torch is imported only
inside ``capture_attention``, so loading, statistics and drawing never import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.aggregate import config_label
from analysis.load import StoreError

if TYPE_CHECKING:
    from analysis.report import Analysis

HEATMAP_CHARS = 32  # default heatmap text: 32 characters keep 8-pt labels on two panels a row


@dataclass
class Heatmaps:
    dataset: str
    trial_id: str
    config: str
    layer: int
    maps: list
    chars: list[str]


def capture_attention(
    model_path: str | Path, text: str, device: str = "cpu"
) -> tuple[list[np.ndarray], list[str]]:
    """Attention maps of a trained checkpoint on ``text``: one (n_head, T, T) array per
    layer and the T characters (text cut to the model's block size).

    Loads ``RESULTS_DIR/models/<trial_id>.pt`` with ``charlm.train.load_model`` (torch is
    imported only here). Characters outside the model's vocabulary raise ValueError.
    """
    import torch

    from charlm.train import load_model

    model, vocab = load_model(model_path)
    stoi = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted(set(text) - set(stoi))
    if unknown:
        raise ValueError(
            f"heatmap text has characters {''.join(unknown)!r} that are not in the model's "
            "vocabulary: give text made of the dataset's characters."
        )
    text = text[: model.cfg.block_size]
    idx = torch.tensor([[stoi[ch] for ch in text]], dtype=torch.long, device=device)
    model.to(device).eval()
    threads = torch.get_num_threads()
    # One thread: the model is tiny, and on a busy machine (figure workers drawing) torch's
    # threads wait on each other, many times slower than one thread alone.
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            capture = model.capture(idx)
    finally:
        torch.set_num_threads(threads)
    return [att[0].float().cpu().numpy() for att in capture.attentions], list(text)


def capture_heatmaps(
    analysis: Analysis,
    text: str | None,
    layer: int | None,
    missing: list[str],
    strict: bool = False,
) -> list[Heatmaps]:
    """Capture attention of the best trial's model per dataset. A model file that cannot be
    loaded is named in ``missing`` and its heatmaps skipped (``strict``: StoreError). A bad
    --heatmap-layer raises StoreError (build_report then removes its unfinished output)."""
    trials, samples = analysis.store.trials, analysis.store.samples
    models = analysis.store.root / "models"
    saved = {p.stem for p in models.glob("*.pt")} if models.is_dir() else set()
    ok = trials[trials["status"].eq("ok") & trials["best_val_loss"].notna()]
    best = ok[ok["trial_id"].isin(saved)].sort_values("best_val_loss", kind="stable")
    found = best.drop_duplicates("dataset").sort_values("dataset")
    if found.empty and not trials.empty:
        missing.append(
            f"No trained model under {models.name}/ (models/<trial_id>.pt): attention "
            "heatmaps (figure 6) are skipped."
        )
    result = []
    for row in found.to_dict("records"):
        dataset, trial_id = row["dataset"], row["trial_id"]
        sample = samples[samples["trial_id"].astype(str) == trial_id]
        first = sample["text"].iloc[0][:HEATMAP_CHARS] if len(sample) else None
        chosen = text if text is not None else first
        if not chosen:
            missing.append(f"No heatmap text for {dataset} (no sample): pass --heatmap-text.")
            continue
        try:
            maps, chars = capture_attention(models / f"{trial_id}.pt", chosen)
        except ImportError as exc:
            missing.append(f"Attention heatmaps skipped: the model code is not importable ({exc}).")
            return []
        except ValueError as exc:
            missing.append(f"Heatmap for {dataset} skipped: {exc}")
            continue
        except Exception as exc:  # torn, not a model file, or a pickle weights_only refuses
            missing.append(_unreadable(models / f"{trial_id}.pt", dataset, exc, strict))
            continue
        chosen_layer = len(maps) - 1 if layer is None else layer
        if not 0 <= chosen_layer < len(maps):
            raise StoreError(
                f"--heatmap-layer {layer}: the model of trial {trial_id} has {len(maps)} "
                f"layers; give a layer from 0 to {len(maps) - 1}."
            )
        config = f"{row['sweep']} / {config_label(row['factor'], row['level'])}"
        result.append(Heatmaps(dataset, trial_id, config, chosen_layer, maps, chars))
    return result


def _unreadable(path: Path, dataset: str, exc: Exception, strict: bool) -> str:
    """The note on a model file that would not load (``strict``: StoreError instead)."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    first_line = message.splitlines()[0] if message else ""
    reason = re.split(r"(?<=\w)\. ", first_line)[0][:200]
    reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    if strict:
        raise StoreError(
            f"unreadable model file {path} ({reason}); move it away, or drop --strict "
            "to skip its heatmaps."
        ) from None
    return f"Heatmap for {dataset} skipped: unreadable model file {path} ({reason})."
