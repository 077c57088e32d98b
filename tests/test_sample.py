"""Quality metrics against hand-counted values; generation with a stand-in and the real GPT."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn

from charlm.config import ConfigError, ModelConfig
from charlm.data import Dataset
from charlm.sample import (
    QUALITY_KEYS,
    coherence,
    generate_text,
    quality_metrics,
    sample_attention,
    word_set,
    words,
)
from testkit.tiny import tiny_model

# --- quality metrics --------------------------------------------------------------------------


def test_the_cat_by_hand() -> None:
    metrics = quality_metrics("the cat the cat the cat", {"the", "cat"})
    assert tuple(metrics) == QUALITY_KEYS
    assert set(metrics) == {
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "repetition_rate",
        "known_word_share",
        "coherence",
    }
    # 6 words, 2 distinct; 5 bigrams: (the cat) x3, (cat the) x2
    assert metrics["distinct_1"] == pytest.approx(2 / 6)
    assert metrics["distinct_2"] == pytest.approx(2 / 5)
    # 4 trigrams: (the cat the) x2, (cat the cat) x2
    assert metrics["distinct_3"] == pytest.approx(2 / 4)
    # 4-grams in order: (the cat the cat), (cat the cat the), (the cat the cat) <- repeat
    assert metrics["repetition_rate"] == pytest.approx(1 / 3)
    assert metrics["known_word_share"] == 1.0
    assert math.isnan(metrics["coherence"])  # 23 characters: fewer than two segments


def test_known_word_share_against_a_training_text() -> None:
    train_text = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind"
    # generated words: to, be, or, nott, to, bee, mind -> 5 of 7 known
    generated = "To be or NOTT, to bee...\n\nmind!"
    metrics = quality_metrics(generated, train_text)
    assert metrics["known_word_share"] == pytest.approx(5 / 7)
    assert quality_metrics(generated, word_set(train_text)) == pytest.approx(metrics, nan_ok=True)
    # 7 words, 6 distinct (to twice); no 4-gram repeats
    assert metrics["distinct_1"] == pytest.approx(6 / 7)
    assert metrics["distinct_2"] == 1.0
    assert metrics["repetition_rate"] == 0.0


def test_word_rule() -> None:
    assert words("O'er the King's 'tis hill--42 times, x2 café_ok") == [
        "o'er", "the", "king's", "tis", "hill", "42", "times", "x", "2", "caf", "ok"
    ]  # fmt: skip
    assert word_set("The the THE") == {"the"}


def test_empty_and_short_texts_give_nan_not_errors() -> None:
    empty = quality_metrics("", {"the"})
    assert tuple(empty) == QUALITY_KEYS
    assert all(math.isnan(value) for value in empty.values())
    no_words = quality_metrics("  ,;! \n", "the cat")
    assert all(math.isnan(value) for value in no_words.values())
    two_words = quality_metrics("the dog", "the cat")
    assert two_words["distinct_1"] == 1.0
    assert two_words["distinct_2"] == 1.0
    assert math.isnan(two_words["distinct_3"])
    assert math.isnan(two_words["repetition_rate"])
    assert two_words["known_word_share"] == 0.5


def test_all_repeating_text() -> None:
    metrics = quality_metrics("la la la la la la la", set())
    # 7 words, 4 identical 4-grams: the first is new, 3 repeat
    assert metrics["distinct_1"] == pytest.approx(1 / 7)
    assert metrics["repetition_rate"] == pytest.approx(3 / 4)
    assert metrics["known_word_share"] == 0.0


# --- generation --------------------------------------------------------------------------------

VOCAB = list("\n abcdefghijklmnopqrstuvwxyz.")


@pytest.fixture
def dataset() -> Dataset:
    return Dataset(name="tiny", vocab=VOCAB, splits={})


class StandIn(nn.Module):
    """Appends random ids from the given generator, recording how it was called."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.calls: list[dict] = []

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        self.calls.append(
            {
                "prompt_ids": idx.tolist(),
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_k": top_k,
                "use_cache": use_cache,
                "training": self.training,
                "grad": torch.is_grad_enabled(),
            }
        )
        new = torch.randint(0, self.vocab_size, (idx.shape[0], max_new_tokens), generator=generator)
        return torch.cat([idx, new], dim=1)


def test_generate_text_with_a_stand_in(dataset: Dataset) -> None:
    model = StandIn(len(VOCAB))
    model.train()
    text, tokens_per_s = generate_text(
        model, dataset, "ab", max_new_tokens=20, temperature=0.7, top_k=5, seed=3
    )
    assert len(text) == 20 and set(text) <= set(VOCAB)
    assert tokens_per_s > 0
    assert model.calls == [
        {
            "prompt_ids": [[VOCAB.index("a"), VOCAB.index("b")]],
            "max_new_tokens": 20,
            "temperature": 0.7,
            "top_k": 5,
            "use_cache": True,
            "training": False,
            "grad": False,
        }
    ]
    assert model.training  # restored
    again, _ = generate_text(model, dataset, "ab", 20, 0.7, 5, 3, "cpu")
    other, _ = generate_text(model, dataset, "ab", 20, 0.7, 5, 4, "cpu")
    assert again == text and other != text


def test_prompt_characters_outside_the_vocabulary(dataset: Dataset) -> None:
    with pytest.raises(ConfigError, match=r"'Q', 'Z', '!'|'!', 'Q', 'Z'") as error:
        generate_text(StandIn(len(VOCAB)), dataset, "Zebra! Quick", max_new_tokens=5)
    assert "vocabulary" in str(error.value)
    with pytest.raises(ConfigError, match="prompt='' is empty"):
        generate_text(StandIn(len(VOCAB)), dataset, "", max_new_tokens=5)
    with pytest.raises(ConfigError, match="max_new_tokens=-1"):
        generate_text(StandIn(len(VOCAB)), dataset, "a", max_new_tokens=-1)


def test_zero_new_tokens(dataset: Dataset) -> None:
    model = StandIn(len(VOCAB))
    text, tokens_per_s = generate_text(model, dataset, "a", max_new_tokens=0)
    assert text == "" and math.isnan(tokens_per_s) and model.calls == []


def test_generate_text_with_the_real_gpt(dataset: Dataset) -> None:
    from charlm.model import GPT

    torch.manual_seed(0)
    cfg = tiny_model(n_layer=2, vocab_size=len(VOCAB))
    model = GPT(cfg)
    # longer than block_size: the context slides
    text, tokens_per_s = generate_text(model, dataset, "to be", max_new_tokens=24, seed=7)
    assert len(text) == 24 and set(text) <= set(VOCAB)
    assert tokens_per_s > 0
    assert model.training
    assert generate_text(model, dataset, "to be", max_new_tokens=24, seed=7)[0] == text
    # the same draw as calling the model directly with the same seed
    idx = torch.tensor([dataset.encode("to be")])
    out = model.generate(idx, 24, temperature=0.8, top_k=40,
                         generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert dataset.decode(out[0, 5:].tolist()) == text


# --- coherence ----------------------------------------------------------------------------------


def test_a_repeated_segment_has_coherence_one() -> None:
    segment = "ROMEO:\nBut soft, what light through yonder window breaks? It is "
    assert len(segment) == 64
    assert coherence(segment * 4) == pytest.approx(1.0)
    assert coherence(segment * 4 + "tail shorter than a segment") == pytest.approx(1.0)
    assert quality_metrics(segment * 2, set())["coherence"] == pytest.approx(1.0)


def test_coherence_by_hand() -> None:
    # segments of 4, bigrams: "aaaa" -> {aa: 3}; "aaab" -> {aa: 2, ab: 1}; "cdcd" -> {cd: 2, dc: 1}
    # cos(aaaa, aaab) = 6 / (3 sqrt 5); cos(aaab, cdcd) = 0
    value = coherence("aaaaaaabcdcd", segment=4, n=2)
    assert value == pytest.approx((6 / (3 * math.sqrt(5)) + 0.0) / 2)
    assert coherence("abababab", segment=4, n=2) == pytest.approx(1.0)
    assert coherence("abcdefgh", segment=4, n=2) == 0.0
    assert math.isnan(coherence("abcdefg", segment=4, n=2))  # one full segment
    with pytest.raises(ValueError, match="segment >= n"):
        coherence("abc", segment=2, n=3)


# --- the model's attention on its own sample ------------------------------------------------------


class UniformAttention:
    """A stand-in GPT whose every head attends uniformly over its causal context."""

    def __init__(self, block_size: int, n_layer: int = 2, n_head: int = 3):
        self.cfg = ModelConfig(n_layer=n_layer, n_head=n_head, n_embed=6, block_size=block_size)
        self.shapes: list[tuple[int, ...]] = []

    def capture(self, idx: torch.Tensor):
        B, T = idx.shape
        self.shapes.append((B, T))
        mask = torch.ones(T, T).tril()
        att = (mask / mask.sum(-1, keepdim=True)).expand(B, self.cfg.n_head, T, T)
        return types.SimpleNamespace(attentions=[att] * self.cfg.n_layer)


def test_sample_attention_of_uniform_attention_by_hand() -> None:
    model = UniformAttention(block_size=4)
    # prompt of 1 token, 6 generated: contexts of 1, 2, 3, 4, 4, 4 tokens
    result = sample_attention(model, [0, 1, 2, 3, 4, 5, 6], n_prompt=1)
    entropy = (math.log(1) + math.log(2) + math.log(3) + 3 * math.log(4)) / 6
    span = (0 + 0.5 + 1 + 3 * 1.5) / 6  # uniform over c tokens: (c - 1) / 2 back
    assert result["attention_entropy"] == pytest.approx([entropy, entropy])
    assert result["effective_span"] == pytest.approx([span, span])
    # one capture of the start (4 tokens), then the windows of tokens 5 and 6 in one batch
    assert model.shapes == [(1, 4), (2, 4)]
    # a sample shorter than the block: the one capture of the start holds every token
    model.shapes.clear()
    short = sample_attention(model, [0, 1, 2], n_prompt=1)
    assert short["attention_entropy"] == pytest.approx([math.log(2) / 2] * 2)
    assert model.shapes == [(1, 2)]
    assert sample_attention(model, [0, 1], n_prompt=2) == {
        "attention_entropy": None,
        "effective_span": None,
    }


def test_sample_attention_is_the_attention_that_generated_each_token() -> None:
    from charlm.model import GPT

    torch.manual_seed(0)
    cfg = tiny_model(n_layer=2, block_size=8, dropout=0.1, vocab_size=len(VOCAB))
    model = GPT(cfg)
    ids = torch.randint(0, len(VOCAB), (20,), generator=torch.Generator().manual_seed(1)).tolist()
    result = sample_attention(model, ids, n_prompt=3)
    entropy, span = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for j in range(3, 20):  # token j came from the last query of its context
        context = torch.tensor([ids[max(0, j - 8) : j]])
        for layer, att in enumerate(model.capture(context).attentions):
            p = att[0, :, -1].double()  # (n_head, T)
            entropy[layer] += -torch.special.xlogy(p, p).sum() / 2
            back = torch.arange(p.shape[-1] - 1, -1, -1, dtype=torch.float64)
            span[layer] += (p * back).sum() / 2
    assert result["attention_entropy"] == pytest.approx((entropy / 17).tolist(), abs=1e-6)
    assert result["effective_span"] == pytest.approx((span / 17).tolist(), abs=1e-6)
    assert model.training  # capture restores the mode
