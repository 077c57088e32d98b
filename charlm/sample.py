"""Text generation from a trained model, and word-level quality metrics of the text.

Words are what ``WORD_PATTERN`` finds in the lowercased text: runs of ASCII letters with
inner apostrophes kept ("o'er", "king's"; a quote around a word is dropped), and runs of
digits. Everything else (spaces, punctuation, markup, non-ASCII characters) separates words.
The same rule builds the training vocabulary (``word_set``), so the two always agree.
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol

import torch

from charlm.config import ConfigError
from charlm.model import GPT

__all__ = ["QUALITY_KEYS", "WORD_PATTERN", "generate_text", "quality_metrics", "word_set", "words"]

WORD_PATTERN = re.compile(r"[a-z]+(?:'[a-z]+)*|[0-9]+")
QUALITY_KEYS = (
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "repetition_rate",
    "known_word_share",
)


class _Vocabulary(Protocol):
    """What generate_text needs of a charlm.data.Dataset."""

    @property
    def vocab(self) -> list[str]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Any) -> str: ...


def words(text: str) -> list[str]:
    """The words of ``text`` in order, lowercased, by the rule of ``WORD_PATTERN``."""
    return WORD_PATTERN.findall(text.lower())


def word_set(text: str) -> set[str]:
    """The distinct words of ``text``: compute a training text's vocabulary once, reuse it."""
    return set(words(text))


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _distinct(tokens: list[str], n: int) -> float:
    grams = _ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else float("nan")


def quality_metrics(text: str, train_words: set[str] | str) -> dict[str, float]:
    """Word-level quality of generated ``text``: a dict with exactly the keys QUALITY_KEYS.

    - ``distinct_n`` (n = 1, 2, 3): distinct word n-grams / all word n-grams, in (0, 1];
      low values mean the text keeps reusing the same words or phrases.
    - ``repetition_rate``: share of word 4-gram occurrences that repeat a 4-gram seen earlier
      in the same text, in [0, 1) (= 1 - distinct_4); high values mean loops.
    - ``known_word_share``: share of the generated words (occurrences, not distinct words)
      found in the training vocabulary, in [0, 1]; low values mean invented words.

    ``train_words`` is the training vocabulary from ``word_set`` or the training text itself.
    A metric without anything to count (fewer than n words for an n-gram metric, no words
    for known_word_share) is NaN, never an error: a short or empty sample is a valid result.
    """
    vocabulary = word_set(train_words) if isinstance(train_words, str) else train_words
    tokens = words(text)
    known = sum(token in vocabulary for token in tokens)
    return {
        "distinct_1": _distinct(tokens, 1),
        "distinct_2": _distinct(tokens, 2),
        "distinct_3": _distinct(tokens, 3),
        "repetition_rate": 1.0 - _distinct(tokens, 4),
        "known_word_share": known / len(tokens) if tokens else float("nan"),
    }


def generate_text(
    model: GPT,
    dataset: _Vocabulary,
    prompt: str = "\n",
    max_new_tokens: int = 300,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[str, float]:
    """Sample ``max_new_tokens`` characters after ``prompt``; return (text, tokens per second).

    The text excludes the prompt. Generation runs in eval mode (the model's training flag is
    restored afterwards), without gradients, with the KV cache, drawing from a generator
    seeded with ``seed`` on ``device``: the same model, prompt and seed give the same text.
    Tokens per second is max_new_tokens over the wall time of ``model.generate`` (NaN when
    max_new_tokens is 0). Characters of the prompt outside the dataset's vocabulary raise
    ConfigError naming them.
    """
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 0
    ):
        raise ConfigError(
            f"max_new_tokens={max_new_tokens!r} is invalid: it must be an integer >= 0."
        )
    if not prompt:
        raise ConfigError("prompt='' is empty: give at least one character, e.g. '\\n'.")
    unknown = sorted(set(prompt) - set(dataset.vocab))
    if unknown:
        raise ConfigError(
            f"prompt={prompt!r} has characters outside the vocabulary "
            f"({len(dataset.vocab)} characters): {', '.join(map(repr, unknown))}; "
            "use only characters from the training text."
        )
    if max_new_tokens == 0:
        return "", float("nan")
    device = torch.device(device)
    idx = torch.tensor([dataset.encode(prompt)], dtype=torch.long, device=device)  # (1, T0)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _synchronize(device)
            start = time.perf_counter()
            out = model.generate(
                idx,
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                use_cache=True,
                generator=generator,
            )  # (1, T0 + max_new_tokens)
            _synchronize(device)
            seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    text = dataset.decode(out[0, idx.shape[1] :].tolist())
    return text, max_new_tokens / seconds if seconds > 0 else float("nan")


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so the timing covers generation only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
