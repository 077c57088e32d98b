"""Attention and representation probes: small pure functions on captured tensors.

Inputs are what ``GPT.capture`` returns for one probe batch:

- attention maps ``att`` of shape (B, nh, T, T), causal and row-stochastic: row t (query t)
  is a distribution over keys 0..t and is zero to the right of the diagonal;
- hidden states (block outputs) of shape (B, T, C).

The attention metrics are pure torch. ``hidden_silhouette`` (cluster quality of a layer's
hidden states) uses scikit-learn's k-means and silhouette score, imported on first use.

Every function runs under ``torch.no_grad`` on the tensors' own device, leaves its inputs
unchanged, computes elementwise in float32 and accumulates in float64 (a float32 sum covers
at most one map, by pairwise summation, before it joins a float64 total). ``probe_metrics``
computes all metrics for every layer and head at once, sharing work between them: it runs at
every eval step of every trial, so it is built to be fast (benchmarks/throughput.py times
it): most of its time is one logarithm per causal entry and per pair of heads.

How the fast path works: only the T(T+1)/2 causal entries of each map are kept, so the
upper triangle costs nothing; every per-row mean is a weighted sum over those entries; and
the Jensen-Shannon divergences use JS(p, q) = H((p + q) / 2) - (H(p) + H(q)) / 2, so each
head's entropy is computed once and only the mixtures need new logarithms.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

PROBE_KEYS = (
    "layer",
    "head",
    "entropy",
    "entropy_normalized",
    "effective_span",
    "head_diversity",
    "attention_js_next",
    "hidden_cosine_next",
    "silhouette",
)

# Cluster quality of hidden states (``hidden_silhouette``): k-means with this many clusters
# and this seed, on at most this many tokens of the probe batch (evenly spaced).
SILHOUETTE_CLUSTERS = 8
SILHOUETTE_SEED = 0
SILHOUETTE_TOKENS = 512

# Probabilities are clamped to this before taking logs: p log p is then 0 (to ~1e-28) for p = 0.
_TINY = 1e-30
# Largest temporary of the pairwise head comparison, in elements (16 MB of float32).
_CHUNK_ELEMENTS = 1 << 22


# --- shared machinery ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _CausalLayout:
    """Where the causal entries of a (T, T) map are, and per-entry weights for row means."""

    index: Tensor  # (L,) flat positions t * T + j of the entries j <= t, row by row
    entropy_weights: Tensor  # (2, L) float64: 1 and 1 / log(t + 1) (0 for t = 0)
    mass_weights: Tensor  # (2, L) float64: 1 and t - j (characters back)


@functools.lru_cache(maxsize=32)
def _causal_layout(T: int, device: torch.device) -> _CausalLayout:
    rows, cols = torch.tril_indices(T, T, device=device)  # (L,), (L,)
    rows64 = rows.to(torch.float64)
    log_context = torch.log1p(rows64)  # log(t + 1): entropy of uniform attention over 0..t
    inverse_max = torch.where(rows > 0, 1.0 / log_context.clamp_min(_TINY), 0.0)
    ones = torch.ones_like(rows64)
    return _CausalLayout(
        index=rows * T + cols,
        entropy_weights=torch.stack([ones, inverse_max]),
        mass_weights=torch.stack([ones, rows64 - cols]),
    )


def _check_attention(att: Tensor, name: str = "att") -> None:
    if att.dim() != 4 or att.shape[-1] != att.shape[-2]:
        raise ValueError(
            f"{name} has shape {tuple(att.shape)}: attention maps must be (B, nh, T, T)."
        )


def _causal_entries(att: Tensor) -> tuple[Tensor, _CausalLayout]:
    """The causal entries of each map as float32 (..., L), and their layout.

    Entries are clamped to at least 1e-30 so their logs are finite: p log p is then 0 to
    within 1e-28 for p = 0, and every mixture of entries is positive too.
    """
    T = att.shape[-1]
    layout = _causal_layout(T, att.device)
    flat = att.float().flatten(-2)  # (..., T * T)
    # gather with an expanded (view) index is several times faster than index_select here
    entries = torch.gather(flat, -1, layout.index.expand(*flat.shape[:-1], -1))  # (..., L)
    return entries.clamp_min_(_TINY), layout


@dataclass(frozen=True)
class _HeadSums:
    """Per-head sums over batch and causal entries of one layer, float64, shape (nh,)."""

    entropy: Tensor  # sum of row entropies
    entropy_normalized: Tensor  # sum over rows t >= 1 of entropy / log(t + 1)
    span: Tensor  # sum over rows of sum_j att[t, j] * (t - j)
    mass: Tensor  # sum of all probabilities (B * T for exact row-stochastic maps)


def _head_sums(entries: Tensor, layout: _CausalLayout) -> _HeadSums:
    """Weighted sums of one layer's causal entries (B, nh, L): one matmul per quantity."""
    plogp = entries.log().mul_(entries).sum(0)  # (nh, L): summed over the batch in float32
    # (2, L) @ (L, nh) is several times faster than (nh, L) @ (L, 2) in float64
    weighted_entropy = -(layout.entropy_weights @ plogp.double().T)  # (2, nh)
    weighted_mass = layout.mass_weights @ entries.sum(0).double().T  # (2, nh)
    return _HeadSums(
        entropy=weighted_entropy[0],
        entropy_normalized=weighted_entropy[1],
        span=weighted_mass[1],
        mass=weighted_mass[0],
    )


def _mixture_entropy_sum(p: Tensor, q: Tensor, p_mass: Tensor, q_mass: Tensor) -> Tensor:
    """Sum of -m log m with m = (p + q) / 2 over the leading (batch) and last (entry) dims of
    clamped entries p, q (B, k, L): float64, shape (k,).

    With s = p + q: -m log m = -(s log s) / 2 + (s log 2) / 2, and the sum of s is the known
    mass of p plus that of q, so only s log s needs new logarithms.
    """
    s = p + q  # (B, k, L)
    slogs = s.log().mul_(s).sum(-1).double().sum(0)  # (k,)
    return -0.5 * slogs + 0.5 * math.log(2.0) * (p_mass + q_mass)


def _pairwise_js_mean(entries: Tensor, sums: _HeadSums, rows: int) -> Tensor:
    """Mean over head pairs, batch and queries of JS between heads: float64 scalar tensor."""
    nh = entries.shape[1]
    if nh < 2:
        return torch.zeros((), dtype=torch.float64, device=entries.device)
    B, _, L = entries.shape
    heads_per_chunk = max(1, _CHUNK_ELEMENTS // (B * L))  # bounds the temporaries' memory
    total = torch.zeros((), dtype=torch.float64, device=entries.device)
    for i in range(nh - 1):
        # head i against later heads j at once: (B, k, L) with k <= heads_per_chunk
        for start in range(i + 1, nh, heads_per_chunk):
            others = slice(start, min(start + heads_per_chunk, nh))
            mixture = _mixture_entropy_sum(
                entries[:, i : i + 1], entries[:, others], sums.mass[i], sums.mass[others]
            )  # (k,)
            total = total + (mixture - 0.5 * (sums.entropy[i] + sums.entropy[others])).sum()
    pairs = nh * (nh - 1) // 2
    return (total / (pairs * rows)).clamp_min(0.0)


def _layer_sums(att: Tensor) -> tuple[Tensor, _HeadSums, int]:
    """One layer's checked maps (B, nh, T, T): causal entries, head sums, rows (B * T)."""
    _check_attention(att)
    entries, layout = _causal_entries(att)
    return entries, _head_sums(entries, layout), att.shape[0] * att.shape[-1]


# --- public metrics --------------------------------------------------------------------------


@torch.no_grad()
def attention_entropy(att: Tensor) -> Tensor:
    """Entropy of each head's attention rows, in nats: shape (nh,), float64.

    Mean over batch and query positions of -sum_j p_tj log p_tj. Range [0, log T]: 0 for
    attention on a single key, log(t + 1) for row t when uniform over its causal context.
    """
    _, sums, rows = _layer_sums(att)
    return sums.entropy / rows


@torch.no_grad()
def normalized_entropy(att: Tensor) -> Tensor:
    """Attention entropy relative to its causal maximum: shape (nh,), float64, range [0, 1].

    Each query row's entropy is divided by log(t + 1), the entropy of uniform attention over
    keys 0..t; query 0 (a single key, maximum 0) is left out of the mean over batch and
    queries. 1 means uniform attention, 0 attention on one key. NaN when T == 1.
    """
    _, sums, _ = _layer_sums(att)
    return _normalized_mean(sums, att.shape[0], att.shape[-1])


def _normalized_mean(sums: _HeadSums, B: int, T: int) -> Tensor:
    """Per-head mean normalised entropy over the B * (T - 1) rows t >= 1; NaN when T == 1."""
    if T < 2:
        return torch.full_like(sums.entropy, math.nan)
    return (sums.entropy_normalized / (B * (T - 1))).clamp(0.0, 1.0)


@torch.no_grad()
def effective_span(att: Tensor) -> Tensor:
    """How far back each head looks, in characters: shape (nh,), float64, range [0, T - 1].

    Mean over batch and queries of sum_j att[t, j] * (t - j): 0 for attention on the token
    itself, 1 for the previous token, t / 2 for uniform attention over row t's context.
    """
    _, sums, rows = _layer_sums(att)
    return sums.span / rows


@torch.no_grad()
def js_divergence(p: Tensor, q: Tensor, dim: int = -1) -> Tensor:
    """Jensen-Shannon divergence between distributions along ``dim``, in nats, float64.

    JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2; symmetric, range
    [0, log 2] (0 for equal distributions, log 2 for disjoint supports). Zeros are safe:
    0 log 0 = 0. ``p`` and ``q`` broadcast; ``dim`` is reduced.
    """
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)
    kl_pm = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(dim)
    kl_qm = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum(dim)
    return (0.5 * (kl_pm + kl_qm)).clamp_min(0.0)


@torch.no_grad()
def head_diversity(att: Tensor) -> float:
    """How differently the heads of one layer attend: JS divergence in nats, range [0, log 2].

    Mean over all pairs of heads (i < j) of the JS divergence between their attention rows,
    averaged over batch and queries. 0 when all heads attend alike, and 0 by definition when
    the layer has a single head (no pairs).
    """
    entries, sums, rows = _layer_sums(att)
    return _pairwise_js_mean(entries, sums, rows).item()


@torch.no_grad()
def layer_attention_js(att_a: Tensor, att_b: Tensor) -> float:
    """How differently two layers attend: JS divergence in nats, range [0, log 2].

    Each layer's maps are averaged over heads (the result is still row-stochastic), then the
    JS divergence between the two layers' rows is averaged over batch and queries.
    """
    _check_attention(att_a, "att_a")
    _check_attention(att_b, "att_b")
    if att_a.shape[0] != att_b.shape[0] or att_a.shape[-1] != att_b.shape[-1]:
        raise ValueError(
            f"att_a {tuple(att_a.shape)} and att_b {tuple(att_b.shape)} differ in batch or "
            "length: compare maps captured from the same batch."
        )
    entries_a, sums_a, rows = _layer_sums(att_a.float().mean(1, keepdim=True))
    entries_b, sums_b, _ = _layer_sums(att_b.float().mean(1, keepdim=True))
    return _layer_js(entries_a, sums_a, entries_b, sums_b, rows).item()


def _layer_js(
    entries_a: Tensor, sums_a: _HeadSums, entries_b: Tensor, sums_b: _HeadSums, rows: int
) -> Tensor:
    """JS between two head-averaged maps (B, 1, L), mean over rows: float64 scalar tensor."""
    mixture = _mixture_entropy_sum(entries_a, entries_b, sums_a.mass, sums_b.mass)  # (1,)
    js = mixture - 0.5 * (sums_a.entropy + sums_b.entropy)
    return (js[0] / rows).clamp_min(0.0)


@torch.no_grad()
def hidden_cosine(h_a: Tensor, h_b: Tensor) -> float:
    """How much a block changes the residual stream: cosine similarity, range [-1, 1].

    Mean over batch and tokens of the cosine similarity between the two layers' hidden
    vectors (B, T, C) at the same token: 1 for parallel, 0 for orthogonal, -1 for opposite
    vectors (a zero vector counts as 0).
    """
    _check_hidden(h_a, h_b)
    return _mean_cosine(_unit(h_a), _unit(h_b)).item()


def _check_hidden(h_a: Tensor, h_b: Tensor, names: str = "h_a and h_b") -> None:
    if h_a.shape != h_b.shape or h_a.dim() != 3:
        raise ValueError(
            f"{names} have shapes {tuple(h_a.shape)} and {tuple(h_b.shape)}: hidden states "
            "must be (B, T, C), all of the same shape."
        )


def _unit(h: Tensor) -> Tensor:
    """Hidden vectors scaled to length 1 (zero vectors stay zero), float32 (B, T, C)."""
    return F.normalize(h.float(), dim=-1)


def _mean_cosine(unit_a: Tensor, unit_b: Tensor) -> Tensor:
    """Mean over tokens of the dot products of unit vectors: float64 scalar tensor."""
    return torch.linalg.vecdot(unit_a, unit_b).double().mean()


@torch.no_grad()
def hidden_silhouette(
    hidden: Tensor,
    clusters: int = SILHOUETTE_CLUSTERS,
    max_tokens: int = SILHOUETTE_TOKENS,
    seed: int = SILHOUETTE_SEED,
) -> float:
    """How well a layer's hidden states form clusters: silhouette score, range [-1, 1].

    The B * T token vectors of ``hidden`` (B, T, C) (at most ``max_tokens`` of them, evenly
    spaced over batch and positions, in the order of ``hidden.reshape(-1, C)``) are split
    into ``clusters`` groups by k-means (scikit-learn's ``KMeans``: k-means++ start from
    ``seed``, one initialisation, Lloyd iterations), and the mean silhouette of that
    clustering is returned (``sklearn.metrics.silhouette_score``, Euclidean distance): for
    each token, s = (b - a) / max(a, b) with a its mean distance to its own cluster and b
    to the nearest other cluster. Near 1: tight, well-separated clusters; near 0: one blob
    cut into pieces; negative: tokens closer to another cluster than to their own.

    With fewer than ``clusters`` + 1 tokens, k is lowered to tokens - 1. NaN when the
    score is undefined: fewer than 3 tokens, or fewer than 2 distinct clusters found
    (e.g. all vectors equal). Runs on one CPU thread (sklearn's thread pool is limited to
    one while it runs: on a busy machine its own OpenMP threads wait on each other, far
    slower than one thread). Deterministic for the same input.
    """
    if hidden.dim() != 3:
        raise ValueError(
            f"hidden has shape {tuple(hidden.shape)}: hidden states must be (B, T, C)."
        )
    if clusters < 2 or max_tokens < 3:
        raise ValueError(
            f"clusters={clusters}, max_tokens={max_tokens}: use clusters >= 2 and max_tokens >= 3."
        )
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    points = hidden.detach().reshape(-1, hidden.shape[-1]).float().cpu()  # (B * T, C)
    n = points.shape[0]
    if n > max_tokens:
        points = points[torch.linspace(0, n - 1, max_tokens).round().long()]
    n = points.shape[0]
    if n < 3:
        return math.nan
    data = points.numpy()
    with threadpool_limits(limits=1), warnings.catch_warnings():
        # "Number of distinct clusters found smaller than n_clusters": handled below
        warnings.simplefilter("ignore", category=UserWarning)
        k = min(clusters, n - 1)
        labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(data)
        if len(set(labels.tolist())) < 2:
            return math.nan
        return float(silhouette_score(data, labels, metric="euclidean"))


# --- all probes of one capture ---------------------------------------------------------------


@torch.no_grad()
def probe_metrics(attentions: list[Tensor], hidden_states: list[Tensor]) -> list[dict]:
    """All probes of one captured batch: one row per (layer, head), layers in order.

    ``attentions[l]`` is layer l's (B, nh, T, T) attention, ``hidden_states[l]`` its block
    output (B, T, C). Each row has exactly the keys of ``PROBE_KEYS``: ``layer`` and
    ``head`` (ints, from 0); per head ``entropy`` (nats), ``entropy_normalized`` ([0, 1]),
    ``effective_span`` (characters back); per layer, repeated on each of its head rows,
    ``head_diversity`` (nats), ``attention_js_next`` (nats, layer vs layer + 1),
    ``hidden_cosine_next`` ([-1, 1], layer vs layer + 1) and ``silhouette`` ([-1, 1], the
    cluster quality of the layer's hidden states, ``hidden_silhouette``). The two ``*_next``
    values are None for the last layer. Values are python floats (entropy_normalized NaN
    when T == 1, silhouette NaN when undefined).
    """
    if not attentions or len(attentions) != len(hidden_states):
        raise ValueError(
            f"got {len(attentions)} attention maps and {len(hidden_states)} hidden states: "
            "pass one of each per layer (at least one layer)."
        )
    for layer, att in enumerate(attentions):
        _check_attention(att, f"attentions[{layer}]")
        if att.shape != attentions[0].shape:
            raise ValueError(
                f"attentions[{layer}] has shape {tuple(att.shape)}, layer 0 has "
                f"{tuple(attentions[0].shape)}: capture all layers from the same batch."
            )
    for layer, hidden in enumerate(hidden_states):
        _check_hidden(hidden_states[0], hidden, f"hidden_states[0] and hidden_states[{layer}]")
    B, nh, T, _ = attentions[0].shape
    if hidden_states[0].shape[:2] != (B, T):
        raise ValueError(
            f"hidden states {tuple(hidden_states[0].shape)} do not match attention maps "
            f"{tuple(attentions[0].shape)} in (B, T): capture both from the same batch."
        )
    rows = B * T

    per_head, per_layer, averaged = [], [], []
    for att in attentions:
        entries, layout = _causal_entries(att)  # (B, nh, L)
        sums = _head_sums(entries, layout)
        normalized = _normalized_mean(sums, B, T)
        per_head.append(torch.stack([sums.entropy / rows, normalized, sums.span / rows]))
        head_mean = entries.mean(1, keepdim=True)  # (B, 1, L): the layer's average map
        averaged.append((head_mean, _head_sums(head_mean, layout)))
        per_layer.append(_pairwise_js_mean(entries, sums, rows))

    next_js = [_layer_js(*averaged[i], *averaged[i + 1], rows) for i in range(len(averaged) - 1)]
    units = [_unit(hidden) for hidden in hidden_states]
    next_cosine = [_mean_cosine(units[i], units[i + 1]) for i in range(len(units) - 1)]
    # one device-to-host transfer for everything
    head_values = torch.stack(per_head).tolist()  # (n_layer, 3, nh)
    n_layer, device = len(attentions), attentions[0].device
    next_values = [_padded(next_js, n_layer, device), _padded(next_cosine, n_layer, device)]
    layer_values = torch.stack([torch.stack(per_layer), *next_values]).tolist()  # (3, n_layer)

    silhouettes = [hidden_silhouette(hidden) for hidden in hidden_states]
    results = []
    for layer, (entropy, normalized, span) in enumerate(head_values):
        diversity, js_next, cosine_next = (values[layer] for values in layer_values)
        nexts = (js_next, cosine_next) if layer < n_layer - 1 else (None, None)
        shared = (diversity, *nexts, silhouettes[layer])  # the layer's values, on each head row
        for head in range(nh):
            row = (layer, head, entropy[head], normalized[head], span[head], *shared)
            results.append(dict(zip(PROBE_KEYS, row, strict=True)))  # PROBE_KEYS' order
    return results


def _padded(values: list[Tensor], length: int, device: torch.device) -> Tensor:
    """Stack float64 scalar tensors, padded with NaN to ``length`` (the last layer has no next)."""
    pad = torch.full((length - len(values),), math.nan, dtype=torch.float64, device=device)
    return torch.cat([*(value.reshape(1) for value in values), pad])
