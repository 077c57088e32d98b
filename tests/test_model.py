"""The GPT: capture vs forward, attention maps, SDPA vs explicit softmax, KV-cache generation,
parameter count, initial loss, and the CPU dropout (expectation, drop rate, backward, RNG)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from charlm.config import ConfigError, ModelConfig
from charlm.kernels import _query_blocks, attention_with_dropout, dropout_mask, fast_dropout
from charlm.model import GPT, Capture
from testkit.tiny import tiny_model

VOCAB = 11


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors gain nothing from threads, and OpenMP threads stall on a shared 2-core box
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cfg() -> ModelConfig:
    return tiny_model(n_layer=2, dropout=0.1, bias=True, vocab_size=VOCAB)


def _model(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _reference_attention(q, k, v):
    """Hand-written causal softmax attention: explicit exp and normalisation, no softmax/SDPA."""
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))
    scores = torch.where(allowed, scores, torch.full_like(scores, float("-inf")))
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights @ v


def test_missing_vocab_size_is_a_config_error(cfg):
    with pytest.raises(ConfigError, match="vocab_size"):
        GPT(dataclasses.replace(cfg, vocab_size=None))


def test_forward_shapes_and_too_long_input(cfg):
    model = _model(cfg)
    idx = _tokens(3, cfg.block_size)
    logits, loss = model(idx)
    assert logits.shape == (3, cfg.block_size, VOCAB) and loss is None
    logits, loss = model(idx, idx)
    assert logits.shape == (3, cfg.block_size, VOCAB) and loss.ndim == 0
    with pytest.raises(ConfigError, match="block_size=16"):
        model(_tokens(1, cfg.block_size + 1))


def test_capture_logits_equal_forward_logits(cfg):
    model = _model(cfg)
    model.train()  # capture must switch to eval itself and restore the flag
    idx = _tokens(2, 12)
    captured = model.capture(idx)
    assert isinstance(captured, Capture) and model.training
    model.eval()
    with torch.no_grad():
        logits, _ = model(idx)
    torch.testing.assert_close(captured.logits, logits, atol=1e-5, rtol=0)
    assert len(captured.attentions) == len(captured.hidden_states) == cfg.n_layer
    assert all(h.shape == (2, 12, cfg.n_embed) for h in captured.hidden_states)


def test_capture_hidden_states_are_block_outputs(cfg):
    model = _model(cfg).eval()
    idx = _tokens(2, 10)
    captured = model.capture(idx)
    with torch.no_grad():
        x = model._embed(idx)
        for block, hidden in zip(model.transformer.h, captured.hidden_states, strict=True):
            x = block(x)
            torch.testing.assert_close(hidden, x, atol=1e-5, rtol=0)


def test_attention_maps_are_causal_distributions(cfg):
    captured = _model(cfg).capture(_tokens(3, cfg.block_size))
    T = cfg.block_size
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for att in captured.attentions:
        assert att.shape == (3, cfg.n_head, T, T)
        assert torch.all(att[..., upper] == 0)
        assert torch.all(att >= 0)
        torch.testing.assert_close(att.sum(-1), torch.ones(3, cfg.n_head, T), atol=1e-5, rtol=0)


def test_model_attention_equals_reference_inside_a_layer(cfg):
    model = _model(cfg).eval()
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 9, cfg.n_embed, generator=torch.Generator().manual_seed(4))
    B, T, C = x.shape
    with torch.no_grad():
        q, k, v = (  # (B, nh, T, hs) each
            t.view(B, T, cfg.n_head, cfg.head_size).transpose(1, 2)
            for t in attn.c_attn(x).split(C, dim=2)
        )
        y = _reference_attention(q, k, v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        expected = attn.c_proj(y)
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k", [1, 5, None])
def test_generation_with_cache_equals_without(cfg, top_k):
    model = _model(cfg)
    prompt = _tokens(2, 5)
    new_tokens = 2 * cfg.block_size  # runs far past block_size: the cache must slide
    outputs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(7)
        outputs.append(
            model.generate(
                prompt,
                new_tokens,
                temperature=0.9,
                top_k=top_k,
                use_cache=use_cache,
                generator=gen,
            )
        )
    assert outputs[0].shape == (2, 5 + new_tokens)
    assert torch.equal(outputs[0][:, :5], prompt)
    assert torch.equal(outputs[0], outputs[1])


def test_generation_with_cache_from_a_long_prompt(cfg):
    model = _model(cfg)
    prompt = _tokens(1, cfg.block_size + 3)  # longer than the context: cropped at prefill
    a = model.generate(prompt, 6, top_k=1, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 6, top_k=1, use_cache=False, generator=torch.Generator())
    assert torch.equal(a, b)


@pytest.mark.parametrize("bias", [True, False])
def test_kv_cache_decode_step_equals_forward(cfg, bias):
    model = _model(dataclasses.replace(cfg, bias=bias)).eval()
    idx = _tokens(2, 9)
    with torch.no_grad():
        full, _ = model(idx)  # (2, 9, V)
        cache = model._new_cache(idx)
        logits = [model._cached_step(idx[:, :4], cache)]
        weights = model._decode_weights()
        for t in range(4, 9):
            logits.append(model._cached_step(idx[:, t : t + 1], cache, weights))
        assert cache[0].length == 9
        torch.testing.assert_close(torch.stack(logits[:-1], 1), full[:, 3:8], atol=1e-5, rtol=0)
        with pytest.raises(ConfigError, match="one token per step"):
            model._cached_step(idx[:, :2], cache, weights)


def test_generation_is_seeded_and_restores_training_flag(cfg):
    model = _model(cfg).train()
    prompt = _tokens(1, 3)
    a = model.generate(prompt, 20, generator=torch.Generator().manual_seed(11))
    b = model.generate(prompt, 20, generator=torch.Generator().manual_seed(11))
    c = model.generate(prompt, 20, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training
    with pytest.raises(ConfigError, match="temperature"):
        model.generate(prompt, 1, temperature=0.0)


@pytest.mark.parametrize("bias", [True, False])
def test_num_params_matches_hand_count(cfg, bias):
    cfg = dataclasses.replace(cfg, bias=bias)
    C, L, V, T = cfg.n_embed, cfg.n_layer, VOCAB, cfg.block_size
    per_layer = (
        2 * C * (1 + bias)  # two LayerNorms: weight (+ bias)
        + C * 3 * C
        + 3 * C * bias  # fused qkv
        + C * C
        + C * bias  # attention output projection
        + C * 4 * C
        + 4 * C * bias  # MLP up
        + 4 * C * C
        + C * bias  # MLP down
    )
    total = V * C + T * C + L * per_layer + C * (1 + bias)  # wte (tied head), wpe, ln_f
    model = _model(cfg)
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - T * C
    assert model.flops_per_token() == 6 * (total - T * C) + 12 * L * C * T


def test_initialisation_and_weight_tying(cfg):
    cfg = dataclasses.replace(cfg, n_embed=64, n_layer=3)
    model = _model(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    fc = model.transformer.h[0].mlp.c_fc.weight
    proj = model.transformer.h[0].mlp.c_proj.weight
    assert abs(fc.std().item() - 0.02) < 0.002
    assert abs(proj.std().item() - 0.02 / math.sqrt(2 * cfg.n_layer)) < 0.001
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)


def test_initial_loss_is_about_log_vocab(cfg):
    cfg = dataclasses.replace(cfg, vocab_size=65)
    model = _model(cfg).eval()
    idx = torch.randint(0, 65, (8, cfg.block_size), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, loss = model(idx, torch.roll(idx, -1, dims=1))
    assert abs(loss.item() - math.log(65)) < 0.05


def test_configure_optimizer_decays_only_matrices(cfg):
    model = _model(cfg)
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params(non_embedding=False)


# --- the CPU dropout -------------------------------------------------------------------------


def test_dropout_mask_rate_and_quantisation():
    torch.manual_seed(0)
    mask, keep_probability = dropout_mask(torch.empty(400, 1000), 0.1)
    assert mask.dtype == torch.float32 and mask.shape == (400, 1000)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert keep_probability == 1 - round(0.1 * 65536) / 65536
    assert abs(keep_probability - 0.9) < 1e-5
    drop_rate = 1 - mask.mean().item()
    assert abs(drop_rate - 0.1) < 5 * math.sqrt(0.1 * 0.9 / mask.numel())
    # each int64 draw feeds four neighbouring entries: every lane must drop at the same rate
    lanes = (1 - mask).view(-1, 4).mean(0)
    assert torch.all((lanes - 0.1).abs() < 0.005)
    # neighbours are independent: P(both dropped) = p^2
    both = ((1 - mask[:, :-1]) * (1 - mask[:, 1:])).mean().item()
    assert abs(both - 0.01) < 0.001
    # the mask is a function of the default generator's state
    torch.manual_seed(0)
    assert torch.equal(dropout_mask(torch.empty(400, 1000), 0.1)[0], mask)
    assert dropout_mask(torch.empty(10, dtype=torch.float64), 0.5)[0].dtype == torch.float64


def test_fast_dropout_keeps_expectation_and_drop_rate():
    torch.manual_seed(0)
    x = torch.rand(1000, 500) + 0.5
    y = fast_dropout(x, 0.2, training=True)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.2) < 0.003
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - round(0.2 * 65536) / 65536))
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.005
    assert fast_dropout(x, 0.2, training=False) is x
    assert fast_dropout(x, 0.0, training=True) is x


def test_fast_dropout_backward_is_multiply_by_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    grad = torch.randn(64, 32)
    state = torch.get_rng_state()
    fast_dropout(x, 0.3, training=True).backward(grad)
    torch.set_rng_state(state)
    mask, keep_probability = dropout_mask(x, 0.3)
    torch.testing.assert_close(x.grad, grad * mask / keep_probability)


def _block_masks(shape: tuple[int, int, int, int], p: float) -> tuple[torch.Tensor, float]:
    """The masks attention_with_dropout draws, one query block after another, as (B, nh, T, T)."""
    B, nh, T, _ = shape
    full = torch.ones(B * nh, T, T, dtype=torch.float64)
    for lo, hi in _query_blocks(T):
        mask, keep_probability = dropout_mask(torch.empty(B * nh, hi - lo, hi, dtype=full.dtype), p)
        full[:, lo:hi, :hi] = mask
    return full.view(B, nh, T, T), keep_probability


@pytest.mark.parametrize("T", [12, 80])  # one query block, several query blocks
def test_attention_dropout_matches_reference_forward_and_backward(T):
    assert len(_query_blocks(T)) == (1 if T == 12 else 2)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, T, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    grad = torch.randn(2, 3, T, 4, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.manual_seed(9)
    y = attention_with_dropout(*leaves, 0.25)
    y.backward(grad)
    # reference: autograd through explicit softmax times the same masks (same RNG draws)
    torch.manual_seed(9)
    keep, keep_probability = _block_masks(q.shape, 0.25)
    assert abs(1 - keep[..., torch.ones(T, T, dtype=torch.bool).tril()].mean().item() - 0.25) < 0.05
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    rq, rk, rv = ref_leaves
    scores = rq @ rk.transpose(-2, -1) / 2.0
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    expected = (scores.softmax(-1) * keep / keep_probability) @ rv
    expected.backward(grad)
    torch.testing.assert_close(y, expected)
    for leaf, ref in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(leaf.grad, ref.grad)


@pytest.mark.parametrize("T", [12, 80])
def test_attention_dropout_at_p0_equals_sdpa_forward_and_backward(T):
    """The CPU dropout copy of the attention maths against SDPA, the path it stands in for."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 3, T, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    grad = torch.randn(2, 3, T, 4, generator=gen, dtype=torch.float64)
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    sdpa = [t.clone().requires_grad_() for t in (q, k, v)]
    y = attention_with_dropout(*ours, 0.0)
    expected = F.scaled_dot_product_attention(*sdpa, is_causal=True)
    torch.testing.assert_close(y, expected)
    y.backward(grad)
    expected.backward(grad)
    for leaf, ref in zip(ours, sdpa, strict=True):
        torch.testing.assert_close(leaf.grad, ref.grad)


def test_capture_attention_maps_equal_the_reference_softmax(cfg):
    """The capture copy (explicit softmax) gives the weights SDPA applies, layer by layer."""
    model = _model(cfg).eval()
    idx = _tokens(2, 10)
    captured = model.capture(idx)
    with torch.no_grad():
        x = model._embed(idx)  # (B, T, C)
        for block, att in zip(model.transformer.h, captured.attentions, strict=True):
            h = block.ln_1(x)
            B, T, C = h.shape
            q, k, _ = (
                t.view(B, T, cfg.n_head, cfg.head_size).transpose(1, 2)
                for t in block.attn.c_attn(h).split(C, dim=2)
            )
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(cfg.head_size)
            future = torch.ones(T, T, dtype=torch.bool).triu(1)
            torch.testing.assert_close(att, scores.masked_fill(future, -math.inf).softmax(-1))
            x = block(x)


def test_query_blocks_cover_the_sequence():
    for T in (1, 7, 31, 64, 100, 128, 256, 1000):
        blocks = _query_blocks(T)
        assert blocks[0][0] == 0 and blocks[-1][1] == T
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(blocks))
    assert len(_query_blocks(128)) == 4 and len(_query_blocks(256)) == 4


def test_attention_dropout_keeps_expectation():
    # averaged over many masks (a batch of identical inputs), it equals attention without dropout
    n, p = 3000, 0.3
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 1, 70, 4, generator=gen) for _ in range(3))
    torch.manual_seed(0)
    draws = attention_with_dropout(*(t.expand(n, 1, 70, 4) for t in (q, k, v)), p)
    expected = _reference_attention(q, k, v)
    # Var(y_i) = p / (1 - p) * sum_j P_ij^2 v_j^2 for independent masks: allow 5 standard errors
    weights = torch.softmax(
        (q @ k.transpose(-2, -1) / 2.0).masked_fill(torch.ones(70, 70).triu(1).bool(), -math.inf),
        dim=-1,
    )
    std_error = (p / (1 - p) * (weights**2 @ v**2) / n).sqrt()
    assert torch.all((draws.mean(0, keepdim=True) - expected).abs() < 5 * std_error + 1e-6)
    assert not torch.allclose(draws[0], draws[1])


def test_training_is_reproducible_from_rng_state(cfg):
    def losses(model: GPT, steps: int) -> list[float]:
        opt = model.configure_optimizer(0.1, 1e-2, (0.9, 0.99), "cpu")
        out = []
        for step in range(steps):
            idx = _tokens(4, cfg.block_size, seed=step)
            _, loss = model(idx, torch.roll(idx, -1, dims=1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    a = losses(_model(cfg, seed=1).train(), 4)
    b = losses(_model(cfg, seed=1).train(), 4)
    assert a == b
    # dropout is active: with a different dropout stream the losses differ
    torch.manual_seed(1)
    model = GPT(cfg).train()
    torch.manual_seed(2)
    assert losses(model, 4) != a


def test_fast_dropout_has_torch_dropouts_expected_loss_and_gradient():
    # the same training semantics: over many masks, the mean loss and mean gradient of the fast
    # CPU dropout equal those of torch's dropout (SDPA dropout_p, F.dropout) within noise
    cfg = ModelConfig(2, 2, 16, 32, dropout=0.3, bias=False, vocab_size=VOCAB)
    torch.manual_seed(0)
    reference = GPT(cfg, fast_dropout=False).train()
    with torch.no_grad():  # larger weights than at init, so that dropout moves the loss
        for param in reference.parameters():
            if param.dim() == 2:
                param.mul_(8)
    fast = GPT(cfg).train()
    fast.load_state_dict(reference.state_dict())
    idx = _tokens(8, cfg.block_size)
    targets = torch.roll(idx, -1, dims=1)
    draws = 200
    results = []
    for model in (fast, reference):
        torch.manual_seed(5)
        losses, grads = [], []
        for _ in range(draws):
            model.zero_grad(set_to_none=True)
            loss = model(idx, targets)[1]
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        results.append((torch.tensor(losses), torch.stack(grads)))
    (fast_losses, fast_grads), (ref_losses, ref_grads) = results
    loss_se = math.sqrt((fast_losses.var() + ref_losses.var()).item() / draws)
    assert abs(fast_losses.mean().item() - ref_losses.mean().item()) < 4 * loss_se
    grad_se = ((fast_grads.var(0) + ref_grads.var(0)) / draws).sqrt() + 1e-12
    z = (fast_grads.mean(0) - ref_grads.mean(0)) / grad_se
    assert z.abs().mean().item() < 0.9  # 0.80 for pure noise; a wrong scale or mask is far above
