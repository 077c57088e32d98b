"""Text generation from a trained model, quality metrics of the text, and the model's
attention on its own sample.

Words are what ``WORD_PATTERN`` finds in the lowercased text: runs of ASCII letters with
inner apostrophes kept ("o'er", "king's"; a quote around a word is dropped), and runs of
digits. Everything else (spaces, punctuation, markup, non-ASCII characters) separates words.
The same rule builds the training vocabulary (``word_set``), so the two always agree.

Coherence (``coherence``) works on characters, not words: how alike consecutive stretches
of the text are in their character n-grams.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections import Counter

import torch

from charlm.config import ConfigError, Domain
from charlm.data import Dataset
from charlm.model import GPT, eval_mode

WORD_PATTERN = re.compile(r"[a-z]+(?:'[a-z]+)*|[0-9]+")
QUALITY_KEYS = (
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "repetition_rate",
    "known_word_share",
    "coherence",
)
SAMPLE_ATTENTION_KEYS = ("attention_entropy", "effective_span")
# coherence: character n-grams of this length, in consecutive segments of this many characters
COHERENCE_N = 3
COHERENCE_SEGMENT = 64
# sample_attention: at most this many attention weights per layer in one capture (64 MB)
_CAPTURE_ELEMENTS = 1 << 24


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


def _char_ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(count * b[gram] for gram, count in a.items())
    norm_a = math.sqrt(sum(count * count for count in a.values()))
    norm_b = math.sqrt(sum(count * count for count in b.values()))
    return dot / (norm_a * norm_b)


def coherence(text: str, segment: int = COHERENCE_SEGMENT, n: int = COHERENCE_N) -> float:
    """How alike consecutive stretches of ``text`` are: in [0, 1], NaN when undefined.

    The text is cut into consecutive ``segment``-character segments (a shorter tail is
    dropped); each segment becomes the count vector of its character ``n``-grams
    (overlapping, inside the segment); coherence is the mean, over consecutive pairs of
    segments, of the cosine similarity of their count vectors. 1: every segment has the
    same n-gram profile (e.g. a repeated segment); 0: consecutive segments share no n-gram.
    Natural text scores between (the profile of its common n-grams carries over), random
    characters near 0. NaN with fewer than two full segments.
    """
    if segment < n or n < 1:
        raise ValueError(f"segment={segment}, n={n}: use n >= 1 and segment >= n.")
    count = len(text) // segment
    if count < 2:
        return float("nan")
    profiles = [_char_ngrams(text[i * segment : (i + 1) * segment], n) for i in range(count)]
    pairs = [_cosine(a, b) for a, b in itertools.pairwise(profiles)]
    return sum(pairs) / len(pairs)


def quality_metrics(text: str, train_words: set[str] | str) -> dict[str, float]:
    """Word-level quality of generated ``text``: a dict with exactly the keys QUALITY_KEYS.

    - ``distinct_n`` (n = 1, 2, 3): distinct word n-grams / all word n-grams, in (0, 1];
      low values mean the text keeps reusing the same words or phrases.
    - ``repetition_rate``: share of word 4-gram occurrences that repeat a 4-gram seen earlier
      in the same text, in [0, 1) (= 1 - distinct_4); high values mean loops.
    - ``known_word_share``: share of the generated words (occurrences, not distinct words)
      found in the training vocabulary, in [0, 1]; low values mean invented words.
    - ``coherence``: similarity of consecutive 64-character segments in their character
      trigrams, in [0, 1] (``coherence``); low values mean the text drifts or is noise.

    ``train_words`` is the training vocabulary from ``word_set`` or the training text itself.
    A metric without anything to count (fewer than n words for an n-gram metric, no words
    for known_word_share, fewer than 128 characters for coherence) is NaN, never an error:
    a short or empty sample is a valid result.
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
        "coherence": coherence(text),
    }


def generate_text(
    model: GPT,
    dataset: Dataset,
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
    Domain(int, low=0).check("max_new_tokens", max_new_tokens)
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
    with eval_mode(model), torch.no_grad():
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
    text = dataset.decode(out[0, idx.shape[1] :].tolist())
    return text, max_new_tokens / seconds if seconds > 0 else float("nan")


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so the timing covers generation only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sample_attention(
    model: GPT,
    ids: list[int],
    n_prompt: int,
    device: str | torch.device = "cpu",
) -> dict[str, list[float] | None]:
    """The model's attention while it generated ``ids[n_prompt:]``: per layer, the mean
    over heads and generated tokens of the attention entropy (nats) and effective span
    (characters back, sum_j p_j * (t - j)) of the query that predicted each token.

    ``ids`` is the prompt followed by the generated tokens. Token j was sampled from the
    attention of the query at its context's last position, the context being the last
    block_size tokens before j (what ``GPT.generate`` sees): for j <= block_size that is
    row j - 1 of one capture of the sequence's start, for later tokens the last row of a
    capture of the window ids[j - block_size : j]. The maps are recomputed with
    ``GPT.capture`` (eval mode, float32); generation itself is not slowed. Returns
    ``{"attention_entropy": [...], "effective_span": [...]}``, one float per layer, or
    None for both when nothing was generated.
    """
    block = model.cfg.block_size
    length = len(ids)
    if length <= n_prompt or n_prompt < 1:
        return dict.fromkeys(SAMPLE_ATTENTION_KEYS)
    device = torch.device(device)
    sequence = torch.tensor(ids, dtype=torch.long, device=device)  # (L,)
    totals = torch.zeros(2, model.cfg.n_layer, dtype=torch.float64, device=device)  # (2, n_layer)
    # tokens n_prompt .. min(L - 1, block): rows n_prompt - 1 .. of one capture of the start
    start = sequence[: min(length - 1, block)].unsqueeze(0)  # (1, T)
    queries = torch.arange(n_prompt - 1, start.shape[1], device=device)  # (n,)
    for layer, att in enumerate(model.capture(start).attentions):
        totals[:, layer] += _row_sums(att[0][:, queries].transpose(0, 1), queries)
    rows = len(queries)
    # later tokens j > block: the last row of each window ids[j - block : j]
    first = max(block + 1, n_prompt)  # none when the sample fits in the first capture
    later = torch.arange(first, length, device=device) if length > first else None  # (m,)
    per_capture = max(1, _CAPTURE_ELEMENTS // (model.cfg.n_head * block * block))
    for chunk in later.split(per_capture) if later is not None else ():
        windows = torch.stack([sequence[j - block : j] for j in chunk.tolist()])  # (w, block)
        last = torch.full((len(chunk),), block - 1, device=device)
        for layer, att in enumerate(model.capture(windows).attentions):
            totals[:, layer] += _row_sums(att[:, :, -1], last)
        rows += len(chunk)
    means = (totals / (rows * model.cfg.n_head)).tolist()
    return dict(zip(SAMPLE_ATTENTION_KEYS, means, strict=True))


def _row_sums(att_rows: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Sums over rows and heads of the entropy and span of attention rows (n, nh, T) whose
    queries sit at positions ``queries`` (n,): float64 (2,), entropy then span."""
    p = att_rows.double()  # (n, nh, T)
    entropy = -torch.special.xlogy(p, p).sum()
    distance = queries[:, None] - torch.arange(p.shape[-1], device=p.device)[None, :]  # (n, T)
    span = (p * distance.clamp_min(0)[:, None, :]).sum()
    return torch.stack([entropy, span])
