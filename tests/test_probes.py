"""Probes checked against values computed by hand on constructed attention maps."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from charlm import probes
from charlm.probes import (
    PROBE_KEYS,
    attention_entropy,
    effective_span,
    head_diversity,
    hidden_cosine,
    hidden_silhouette,
    js_divergence,
    layer_attention_js,
    normalized_entropy,
    probe_metrics,
)

T = 8
B = 2


def uniform_causal(T: int = T) -> torch.Tensor:
    """Row t spreads evenly over keys 0..t: (T, T)."""
    mask = torch.ones(T, T).tril()
    return mask / mask.sum(-1, keepdim=True)


def previous_token(T: int = T) -> torch.Tensor:
    """Row t puts all its weight on key t - 1 (row 0 on key 0): (T, T)."""
    att = torch.zeros(T, T)
    att[0, 0] = 1.0
    att[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    return att


def self_token(T: int = T) -> torch.Tensor:
    return torch.eye(T)


def layer(*heads: torch.Tensor, batch: int = B) -> torch.Tensor:
    """Stack per-head (T, T) maps into a (B, nh, T, T) layer, same for every batch item."""
    return torch.stack(heads).unsqueeze(0).expand(batch, -1, -1, -1).clone()


def random_layer(generator: torch.Generator, nh: int = 3, T: int = T) -> torch.Tensor:
    scores = torch.randn(B, nh, T, T, generator=generator) * 2
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def js_uniform_vs_self(t: int) -> float:
    """JS between uniform attention over keys 0..t and one-hot attention on key t, by hand.

    m puts (1/(t+1) + 1)/2 = (t+2)/(2(t+1)) on key t and 1/(2(t+1)) on each other key.
    KL(uniform || m) = t/(t+1) log 2 + 1/(t+1) log(2/(t+2)); KL(one-hot || m) = log(2(t+1)/(t+2)).
    """
    kl_uniform = t / (t + 1) * math.log(2) + 1 / (t + 1) * math.log(2 / (t + 2))
    kl_onehot = math.log(2 * (t + 1) / (t + 2))
    return 0.5 * (kl_uniform + kl_onehot)


# --- single metrics ----------------------------------------------------------------------------


def test_uniform_attention_entropy_normalized_and_span() -> None:
    att = layer(uniform_causal(), uniform_causal())
    expected_entropy = sum(math.log(t + 1) for t in range(T)) / T
    expected_span = sum(t / 2 for t in range(T)) / T  # = (T - 1) / 4
    assert attention_entropy(att).tolist() == pytest.approx([expected_entropy] * 2, abs=1e-6)
    assert normalized_entropy(att).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert effective_span(att).tolist() == pytest.approx([expected_span] * 2, abs=1e-6)
    assert expected_span == pytest.approx((T - 1) / 4)


def test_previous_token_attention_has_zero_entropy_and_span_one() -> None:
    att = layer(previous_token())
    assert attention_entropy(att).tolist() == pytest.approx([0.0], abs=1e-6)
    assert normalized_entropy(att).tolist() == pytest.approx([0.0], abs=1e-6)
    # rows 1..T-1 look one character back, row 0 looks at itself
    assert effective_span(att).tolist() == pytest.approx([(T - 1) / T], abs=1e-6)


def test_self_attention_has_zero_span() -> None:
    att = layer(self_token(), uniform_causal())
    assert effective_span(att).tolist() == pytest.approx([0.0, (T - 1) / 4], abs=1e-6)
    assert attention_entropy(att)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_single_position_maps() -> None:
    att = torch.ones(2, 3, 1, 1)
    assert attention_entropy(att).tolist() == pytest.approx([0.0] * 3, abs=1e-6)
    assert all(math.isnan(value) for value in normalized_entropy(att).tolist())
    assert effective_span(att).tolist() == [0.0] * 3


def test_js_divergence_by_hand() -> None:
    p = torch.tensor([1.0, 0.0])
    q = torch.tensor([0.5, 0.5])
    # m = (0.75, 0.25)
    kl_pm = math.log(1 / 0.75)
    kl_qm = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert js_divergence(p, q).item() == pytest.approx(0.5 * (kl_pm + kl_qm), abs=1e-12)
    assert js_divergence(q, p).item() == pytest.approx(js_divergence(p, q).item(), abs=1e-15)
    assert js_divergence(p, p).item() == 0.0
    disjoint = js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert disjoint.item() == pytest.approx(math.log(2), abs=1e-12)


def test_js_divergence_reduces_the_given_dim() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # columns are distributions
    q = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    result = js_divergence(p, q, dim=0)
    assert result.dtype == torch.float64
    assert result.tolist() == pytest.approx([0.0, math.log(2)], abs=1e-12)


def test_identical_heads_have_zero_diversity() -> None:
    assert head_diversity(layer(uniform_causal(), uniform_causal())) == pytest.approx(0, abs=1e-6)
    assert head_diversity(layer(previous_token(), previous_token())) == pytest.approx(0, abs=1e-6)


def test_single_head_diversity_is_zero() -> None:
    assert head_diversity(layer(uniform_causal())) == 0.0


def test_uniform_vs_self_head_diversity_by_hand() -> None:
    expected = sum(js_uniform_vs_self(t) for t in range(T)) / T
    assert head_diversity(layer(uniform_causal(), self_token())) == pytest.approx(
        expected, abs=1e-6
    )
    # three heads: pairs (u, s), (u, u), (s, u) -> two of three pairs differ
    three = layer(uniform_causal(), self_token(), uniform_causal())
    assert head_diversity(three) == pytest.approx(2 * expected / 3, abs=1e-6)


def test_disjoint_heads_reach_log_2() -> None:
    # from row 1 on, previous-token and self attention have disjoint supports
    expected = (T - 1) / T * math.log(2)
    assert head_diversity(layer(previous_token(), self_token())) == pytest.approx(
        expected, abs=1e-6
    )


def test_layer_attention_js_by_hand() -> None:
    uniform_layer = layer(uniform_causal(), uniform_causal())
    self_layer = layer(self_token(), self_token())
    expected = sum(js_uniform_vs_self(t) for t in range(T)) / T
    assert layer_attention_js(uniform_layer, self_layer) == pytest.approx(expected, abs=1e-6)
    assert layer_attention_js(self_layer, uniform_layer) == pytest.approx(expected, abs=1e-6)
    # same head-averaged map, heads in another order: no difference between the layers
    mixed = layer(uniform_causal(), self_token())
    swapped = layer(self_token(), uniform_causal())
    assert layer_attention_js(mixed, swapped) == pytest.approx(0.0, abs=1e-6)


def test_hidden_cosine_identical_orthogonal_opposite() -> None:
    h = torch.randn(B, T, 16, generator=torch.Generator().manual_seed(0))
    assert hidden_cosine(h, h) == pytest.approx(1.0, abs=1e-6)
    assert hidden_cosine(h, 3.0 * h) == pytest.approx(1.0, abs=1e-6)
    assert hidden_cosine(h, -h) == pytest.approx(-1.0, abs=1e-6)
    e1 = torch.zeros(B, T, 16)
    e1[..., 0] = 2.0
    e2 = torch.zeros(B, T, 16)
    e2[..., 1] = -5.0
    assert hidden_cosine(e1, e2) == pytest.approx(0.0, abs=1e-7)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(B, nh, T, T\)"):
        attention_entropy(torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        hidden_cosine(torch.ones(2, 4, 8), torch.ones(2, 4, 9))
    with pytest.raises(ValueError, match="one of each per layer"):
        probe_metrics([layer(self_token())], [])


# --- probe_metrics ------------------------------------------------------------------------------


def test_probe_metrics_rows_keys_and_last_layer() -> None:
    generator = torch.Generator().manual_seed(1)
    attentions = [random_layer(generator, nh=2) for _ in range(3)]
    hidden = [torch.randn(B, T, 16, generator=generator) for _ in range(3)]
    rows = probe_metrics(attentions, hidden)
    assert len(rows) == 6
    assert [(row["layer"], row["head"]) for row in rows] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)
    ]  # fmt: skip
    for row in rows:
        assert tuple(row) == PROBE_KEYS
        assert set(row) == {
            "layer", "head", "entropy", "entropy_normalized", "effective_span",
            "head_diversity", "attention_js_next", "hidden_cosine_next", "silhouette",
        }  # fmt: skip
        assert type(row["layer"]) is int and type(row["head"]) is int
        assert all(type(row[key]) is float for key in PROBE_KEYS[2:6])
        assert type(row["silhouette"]) is float and -1.0 <= row["silhouette"] <= 1.0
    # per layer: the same value on each head row, the layer's own hidden states' score
    assert [rows[2 * i]["silhouette"] for i in range(3)] == [hidden_silhouette(h) for h in hidden]
    assert rows[0]["silhouette"] == rows[1]["silhouette"]
    for row in rows[:4]:
        assert type(row["attention_js_next"]) is float
        assert type(row["hidden_cosine_next"]) is float
    for row in rows[4:]:
        assert row["attention_js_next"] is None
        assert row["hidden_cosine_next"] is None


def test_probe_metrics_matches_the_single_metrics_and_a_brute_force_reference() -> None:
    generator = torch.Generator().manual_seed(2)
    n_layer, nh = 3, 3
    attentions = [random_layer(generator, nh=nh) for _ in range(n_layer)]
    hidden = [torch.randn(B, T, 16, generator=generator) for _ in range(n_layer)]
    rows = probe_metrics(attentions, hidden)
    for index, att in enumerate(attentions):
        layer_rows = rows[index * nh : (index + 1) * nh]
        # brute force in float64 on the full maps
        p = att.double()
        row_entropy = -torch.special.xlogy(p, p).sum(-1)  # (B, nh, T)
        context = torch.log(torch.arange(1, T + 1, dtype=torch.float64))
        distance = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).clamp_min(0).double()
        pairs = itertools.combinations(range(nh), 2)
        pair_js = [js_divergence(p[:, i], p[:, j]).mean() for i, j in pairs]
        expected_diversity = torch.stack(pair_js).mean().item()
        for head, row in enumerate(layer_rows):
            assert row["entropy"] == pytest.approx(row_entropy[:, head].mean().item(), abs=1e-5)
            assert row["entropy_normalized"] == pytest.approx(
                (row_entropy[:, head, 1:] / context[1:]).mean().item(), abs=1e-5
            )
            assert row["effective_span"] == pytest.approx(
                (p[:, head] * distance).sum(-1).mean().item(), abs=1e-5
            )
            assert row["head_diversity"] == pytest.approx(expected_diversity, abs=1e-5)
        # the single-metric functions give the same numbers
        assert [row["entropy"] for row in layer_rows] == pytest.approx(
            attention_entropy(att).tolist(), abs=1e-9
        )
        assert layer_rows[0]["head_diversity"] == pytest.approx(head_diversity(att), abs=1e-9)
        if index + 1 < n_layer:
            next_att = attentions[index + 1]
            expected_js = js_divergence(p.mean(1), next_att.double().mean(1)).mean().item()
            assert layer_rows[0]["attention_js_next"] == pytest.approx(expected_js, abs=1e-5)
            assert layer_rows[0]["attention_js_next"] == pytest.approx(
                layer_attention_js(att, next_att), abs=1e-7
            )
            expected_cosine = torch.nn.functional.cosine_similarity(
                hidden[index].double(), hidden[index + 1].double(), dim=-1
            ).mean()
            assert layer_rows[0]["hidden_cosine_next"] == pytest.approx(
                expected_cosine.item(), abs=1e-6
            )


def test_probe_metrics_on_constructed_layers() -> None:
    attentions = [
        layer(uniform_causal(), uniform_causal()),
        layer(uniform_causal(), self_token()),
        layer(previous_token(), previous_token()),
    ]
    h = torch.randn(B, T, 8, generator=torch.Generator().manual_seed(3))
    rows = probe_metrics(attentions, [h, h, -h])
    js_hand = sum(js_uniform_vs_self(t) for t in range(T)) / T
    assert rows[0]["head_diversity"] == pytest.approx(0.0, abs=1e-6)
    assert rows[2]["head_diversity"] == rows[3]["head_diversity"]
    assert rows[2]["head_diversity"] == pytest.approx(js_hand, abs=1e-6)
    assert rows[0]["entropy_normalized"] == pytest.approx(1.0, abs=1e-6)
    assert rows[3]["effective_span"] == pytest.approx(0.0, abs=1e-6)
    assert rows[4]["effective_span"] == pytest.approx((T - 1) / T, abs=1e-6)
    assert rows[0]["hidden_cosine_next"] == pytest.approx(1.0, abs=1e-6)
    assert rows[2]["hidden_cosine_next"] == pytest.approx(-1.0, abs=1e-6)
    assert rows[5]["attention_js_next"] is None


def test_probe_metrics_leaves_inputs_unchanged_and_needs_no_grad() -> None:
    att = layer(previous_token(), self_token()).requires_grad_()
    before = att.detach().clone()
    h = torch.randn(B, T, 8, requires_grad=True)
    rows = probe_metrics([att, att], [h, h])
    assert torch.equal(att.detach(), before)
    assert rows[0]["attention_js_next"] == pytest.approx(0.0, abs=1e-6)


def test_probe_metrics_on_a_real_capture() -> None:
    from charlm.model import GPT
    from testkit.tiny import tiny_model

    torch.manual_seed(0)
    cfg = tiny_model(n_layer=2, dropout=0.1, vocab_size=11)
    model = GPT(cfg)
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        capture = model.capture(idx)
    rows = probe_metrics(capture.attentions, capture.hidden_states)
    assert [(row["layer"], row["head"]) for row in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for row in rows:
        assert 0.0 <= row["entropy"] <= math.log(16)
        assert 0.0 <= row["entropy_normalized"] <= 1.0
        assert 0.0 <= row["effective_span"] <= 15
        assert 0.0 <= row["head_diversity"] <= math.log(2)
    assert 0.0 <= rows[0]["attention_js_next"] <= math.log(2)
    assert -1.0 <= rows[0]["hidden_cosine_next"] <= 1.0
    assert rows[0]["entropy"] == pytest.approx(
        attention_entropy(capture.attentions[0])[0].item(), abs=1e-9
    )


def test_head_diversity_in_memory_bounded_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    att = random_layer(torch.Generator().manual_seed(4), nh=5)
    whole = head_diversity(att)
    monkeypatch.setattr(probes, "_CHUNK_ELEMENTS", 1)  # one head pair at a time
    assert head_diversity(att) == pytest.approx(whole, abs=1e-9)


# --- cluster quality of hidden states ---------------------------------------------------------


def test_silhouette_of_two_pairs_by_hand() -> None:
    # 1-D points {0, 1} and {10, 11}, k = 2. a = 1 for every point; b = mean distance to
    # the other pair: 10.5 for 0 and 11, 9.5 for 1 and 10. s = 1 - a / b.
    h = torch.tensor([0.0, 1.0, 10.0, 11.0]).reshape(1, 4, 1)
    expected = (2 * (1 - 1 / 10.5) + 2 * (1 - 1 / 9.5)) / 4
    assert expected == pytest.approx(0.8997494, abs=1e-7)
    assert hidden_silhouette(h, clusters=2) == pytest.approx(expected, abs=1e-6)


def test_well_separated_clusters_score_near_one() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 32, generator=generator) * 50  # 8 far-apart centres
    points = centres.repeat_interleave(40, 0) + torch.randn(320, 32, generator=generator) * 0.1
    h = points[torch.randperm(320, generator=generator)].reshape(4, 80, 32)
    assert hidden_silhouette(h) > 0.95


def test_one_blob_scores_near_zero() -> None:
    h = torch.randn(4, 128, 64, generator=torch.Generator().manual_seed(1))
    assert abs(hidden_silhouette(h)) < 0.1


def test_silhouette_subsamples_evenly_and_is_deterministic() -> None:
    h = torch.randn(4, 256, 16, generator=torch.Generator().manual_seed(2))  # 1,024 tokens
    first = hidden_silhouette(h)
    assert hidden_silhouette(h) == first
    # the 512 evenly spaced tokens: first and last included, ~2 apart
    index = torch.linspace(0, 1023, 512).round().long()
    assert index[0] == 0 and index[-1] == 1023 and set(index.diff().tolist()) == {2, 3}
    chosen = h.reshape(1, -1, 16)[:, index]
    assert hidden_silhouette(chosen) == pytest.approx(first, abs=1e-9)


def test_silhouette_undefined_cases_are_nan() -> None:
    assert math.isnan(hidden_silhouette(torch.zeros(1, 2, 4)))  # two tokens
    assert math.isnan(hidden_silhouette(torch.ones(2, 10, 4)))  # all tokens equal
    # few tokens: k drops to tokens - 1 (here 3 clusters for 4 tokens), still defined
    assert math.isfinite(hidden_silhouette(torch.tensor([0.0, 1.0, 5.0, 9.0]).reshape(1, 4, 1)))
    with pytest.raises(ValueError, match="must be"):
        hidden_silhouette(torch.zeros(4, 4))
