"""A nanoGPT-class character-level GPT with probe capture and KV-cache generation.

Architecture (GPT-2 style): learned token and position embeddings, ``n_layer`` pre-LayerNorm
blocks of causal self-attention (one fused QKV projection, ``n_head`` heads) and a 4x GELU MLP,
a final LayerNorm and a language-model head tied to the token embedding. Initialisation follows
GPT-2: every weight normal(0, 0.02), residual output projections normal(0, 0.02/sqrt(2*n_layer)),
biases zero.

Training attention uses ``torch.nn.functional.scaled_dot_product_attention`` (causal). Dropout
(on the embeddings, the attention weights after the softmax, and each residual branch, scaled by
1/(1-p) so that expectations are preserved; off in eval mode) draws its masks from torch's
default generator for the device only, so ``torch.get_rng_state()`` in a checkpoint makes a
resume exact and a seed gives identical losses.

CPU speed: on the CPU, dropout and attention with dropout run through ``charlm.kernels``
(cheap masks, a blocked attention with its own backward pass), unless
``GPT(cfg, fast_dropout=False)``; on other devices torch's own dropout and SDPA's dropout_p
are used. ``torch.compile`` is opt-in (``TrainConfig.compile``), not used here.

One block. The block's maths is written once (``Block``, ``CausalSelfAttention``, ``MLP``):
training, evaluation, probe capture, KV-cache prefill and one-token decoding all run it. The
attention core has three forms, each tied to SDPA by a test in tests/test_model.py: SDPA
itself; ``charlm.kernels.attention_with_dropout`` (CPU training speed); ``_explicit_attention``
(capture: SDPA does not return its weights). One-token decoding swaps the block's
``nn.Linear`` matmuls for re-laid-out copies of the same weights (``kernels.DecodeWeights``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from charlm.config import GREEDY_TEMPERATURE, ConfigError, ModelConfig
from charlm.kernels import DecodeWeights, causal_attention, dropout


def _explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal softmax attention written out: returns (y (B, nh, T, hs), weights (B, nh, T, T)).

    Why a copy of SDPA's maths: the probes need the weights, which SDPA never returns (not
    speed: capture runs only at evaluation). Tied to SDPA by tests/test_model.py (logits
    equal forward's; the maps equal a hand-written softmax).
    """
    T = q.size(-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)  # (T, T)
    att = att.masked_fill(future, float("-inf")).softmax(dim=-1)  # (B, nh, T, T)
    return att @ v, att  # (B, nh, T, hs), (B, nh, T, T)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) within the block; the model's training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class Capture:
    """What ``GPT.capture`` records for one batch, in eval mode.

    logits: (B, T, vocab_size). attentions: one (B, nh, T, T) tensor per layer, the softmax
    weights (causal: zero above the diagonal, rows sum to 1). hidden_states: one (B, T, C)
    tensor per layer, each block's output (before the final LayerNorm).
    """

    logits: torch.Tensor
    attentions: list[torch.Tensor]
    hidden_states: list[torch.Tensor]


class _LayerCache:
    """Keys and values of one layer for KV-cache generation: (B, nh, block_size, hs) buffers."""

    def __init__(
        self, batch: int, n_head: int, block_size: int, head_size: int, like: torch.Tensor
    ):
        shape = (batch, n_head, block_size, head_size)
        self.keys = torch.empty(shape, dtype=like.dtype, device=like.device)
        self.values = torch.empty(shape, dtype=like.dtype, device=like.device)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, t, hs) after what is cached; return all cached (B, nh, L, hs)."""
        end = self.length + k.size(2)
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, fast_dropout: bool = True):
        super().__init__()
        self.n_head, self.n_embed, self.dropout = cfg.n_head, cfg.n_embed, cfg.dropout
        self.fast_dropout = fast_dropout
        self.c_attn = nn.Linear(cfg.n_embed, 3 * cfg.n_embed, bias=cfg.bias)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.n_embed, cfg.n_embed, bias=cfg.bias)

    def forward(
        self,
        x: torch.Tensor,
        cache: _LayerCache | None = None,
        decode: DecodeWeights | None = None,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C). With ``cache``: keys and values go into it and the
        queries see everything cached (a prefill of an empty cache, or one decoded token,
        whose matmuls use ``decode``'s weight copies). ``attentions`` (eval mode) receives
        this layer's softmax weights (B, nh, T, T), through the explicit softmax path."""
        B, T, C = x.size()
        c_attn, c_proj = (self.c_attn, self.c_proj) if decode is None else decode.attention
        q, k, v = c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        if cache is not None:
            prefill = cache.length == 0  # causal within the prompt; one new token sees all
            k, v = cache.append(k, v)  # (B, nh, L, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=prefill)  # (B, nh, T, hs)
        elif attentions is not None:
            y, att = _explicit_attention(q, k, v)  # (B, nh, T, hs), (B, nh, T, T)
            attentions.append(att)
        else:
            y = causal_attention(q, k, v, p, self.fast_dropout)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C) heads side by side
        return dropout(c_proj(y), self.dropout, self.training, self.fast_dropout)  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, fast_dropout: bool = True):
        super().__init__()
        self.dropout, self.fast_dropout = cfg.dropout, fast_dropout
        self.c_fc = nn.Linear(cfg.n_embed, 4 * cfg.n_embed, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embed, cfg.n_embed, bias=cfg.bias)

    def forward(self, x: torch.Tensor, decode: DecodeWeights | None = None) -> torch.Tensor:
        c_fc, c_proj = (self.c_fc, self.c_proj) if decode is None else decode.mlp
        x = c_proj(self.gelu(c_fc(x)))  # (B, T, C)
        return dropout(x, self.dropout, self.training, self.fast_dropout)


class Block(nn.Module):
    """One pre-LayerNorm transformer block: the only place its maths is written."""

    def __init__(self, cfg: ModelConfig, fast_dropout: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embed, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, fast_dropout)
        self.ln_2 = nn.LayerNorm(cfg.n_embed, bias=cfg.bias)
        self.mlp = MLP(cfg, fast_dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: _LayerCache | None = None,
        decode: DecodeWeights | None = None,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C); the options are CausalSelfAttention.forward's."""
        x = x + self.attn(self.ln_1(x), cache, decode, attentions)  # (B, T, C)
        return x + self.mlp(self.ln_2(x), decode)  # (B, T, C)


class _Transformer(nn.Module):
    """Embeddings, blocks and the final LayerNorm (nanoGPT's state-dict names)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, fast_dropout: bool):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, cfg.n_embed)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embed)
        self.h = nn.ModuleList([Block(cfg, fast_dropout) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embed, bias=cfg.bias)


class GPT(nn.Module):
    """The language model. ``GPT(cfg)`` needs ``cfg.vocab_size`` set.

    ``fast_dropout`` (default True) selects the cheap CPU dropout masks described in the module
    docstring; False gives torch's own dropout everywhere (the nanoGPT reference, for
    benchmarks). It changes only which random numbers are drawn, not the training semantics.
    """

    def __init__(self, cfg: ModelConfig, *, fast_dropout: bool = True):
        super().__init__()
        if cfg.vocab_size is None:
            raise ConfigError(
                "vocab_size=None: set ModelConfig.vocab_size (e.g. dataset.vocab_size) "
                "before building the GPT."
            )
        self.cfg = cfg
        self.fast_dropout = fast_dropout
        self.transformer = _Transformer(cfg, cfg.vocab_size, fast_dropout)
        self.lm_head = nn.Linear(cfg.n_embed, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # the projections that write into the residual
                nn.init.normal_(param, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` subtracts the position embeddings.

        The token embedding is tied to the LM head, so it counts once and is not subtracted.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), PaLM appendix B / nanoGPT estimate_mfu.

        6 x non-embedding parameters + 12 x n_layer x n_embed x block_size (attention).
        """
        cfg = self.cfg
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embed * cfg.block_size

    def _embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        T = idx.size(1)
        if start + T > self.cfg.block_size:
            raise ConfigError(
                f"sequence length {start + T} exceeds block_size={self.cfg.block_size}: "
                f"crop idx to its last {self.cfg.block_size} tokens."
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        return dropout(x, self.cfg.dropout, self.training, self.fast_dropout)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets: (B, T) int64 token ids, T <= block_size; targets -1 are ignored.

        Returns logits (B, T, vocab_size) for every position and the mean cross-entropy loss
        (a scalar tensor) when ``targets`` is given, else None.
        """
        x = self._embed(idx)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss

    @torch.no_grad()
    def capture(self, idx: torch.Tensor) -> Capture:
        """Eval-mode forward of idx (B, T) recording attention maps and block outputs.

        Uses the explicit softmax path (no SDPA) so the weights exist; dropout is off, and the
        module's training flag is restored afterwards. Logits equal ``forward``'s in eval mode.
        """
        with eval_mode(self):
            x = self._embed(idx)  # (B, T, C)
            attentions: list[torch.Tensor] = []  # (B, nh, T, T) per layer
            hidden_states = []
            for block in self.transformer.h:
                x = block(x, attentions=attentions)  # (B, T, C)
                hidden_states.append(x)
            logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        return Capture(logits=logits, attentions=attentions, hidden_states=hidden_states)

    def _new_cache(self, idx: torch.Tensor) -> list[_LayerCache]:
        cfg = self.cfg
        like = self.transformer.wpe.weight
        return [
            _LayerCache(idx.size(0), cfg.n_head, cfg.block_size, cfg.head_size, like)
            for _ in range(cfg.n_layer)
        ]

    def _cached_step(
        self,
        idx: torch.Tensor,
        cache: list[_LayerCache],
        decode: list[DecodeWeights] | None = None,
    ) -> torch.Tensor:
        """Run idx (B, t) after what ``cache`` holds (a prompt into an empty cache, or one
        token with ``decode``'s weight copies); return next-token logits (B, V)."""
        if cache[0].length and idx.size(1) != 1:
            raise ConfigError(f"KV-cache step got {idx.size(1)} tokens: feed one token per step.")
        x = self._embed(idx, start=cache[0].length)  # (B, t, C)
        layers: list[DecodeWeights | None] = list(decode) if decode else [None] * len(cache)
        for block, layer_cache, weights in zip(self.transformer.h, cache, layers, strict=True):
            x = block(x, layer_cache, weights)  # (B, t, C)
        return self.lm_head(self.transformer.ln_f(x[:, -1, :]))  # (B, V)

    def _decode_weights(self) -> list[DecodeWeights]:
        """Re-laid-out copies of every block's matmul weights, for one-token ``_cached_step``."""
        blocks = torch.get_num_threads() if self.transformer.wpe.weight.device.type == "cpu" else 1
        return [DecodeWeights.of(block, blocks) for block in self.transformer.h]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after idx (B, T0); return (B, T0 + max_new_tokens).

        Runs in eval mode (no dropout; the training flag is restored). Each step samples from
        softmax(logits / temperature) restricted to the ``top_k`` most likely tokens, drawing
        from ``generator`` (torch's default generator when None). The context is the last
        block_size tokens. With ``use_cache`` the prompt is prefilled once and then one token
        per step runs against cached keys and values; once the sequence is longer than
        block_size every token's position changes at each step (absolute position
        embeddings), so the cache cannot be reused and each step re-prefills the last
        block_size tokens, which costs what use_cache=False costs. Both modes give the same
        tokens for the same generator state.
        """
        if temperature <= 0 or not math.isfinite(temperature):
            raise ConfigError(
                f"temperature={temperature!r} is invalid: use a number > 0 (top_k=1 is greedy)."
            )
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k={top_k!r} is invalid: use an integer >= 1 or None.")
        block_size = self.cfg.block_size
        with eval_mode(self):
            cache: list[_LayerCache] | None = None
            weights: list[DecodeWeights] | None = None
            for _ in range(max_new_tokens):
                if not use_cache:
                    logits, _ = self(idx[:, -block_size:])  # (B, t, V)
                    logits = logits[:, -1, :]  # (B, V)
                elif cache is None or cache[0].length == block_size:
                    cache = self._new_cache(idx)
                    logits = self._cached_step(idx[:, -block_size:], cache)  # (B, V)
                else:
                    if weights is None:  # built once per call: the model may train between
                        weights = self._decode_weights()
                    logits = self._cached_step(idx[:, -1:], cache, weights)  # (B, V)
                idx_next = _sample(logits, temperature, top_k, generator)  # (B, 1)
                idx = torch.cat((idx, idx_next), dim=1)  # (B, t + 1)
        return idx

    def configure_optimizer(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str,
    ) -> torch.optim.AdamW:
        """AdamW with ``weight_decay`` on the 2-D weights (matmuls, embeddings) only.

        Biases and LayerNorm gains are not decayed. ``fused=True`` when ``device_type`` is
        "cuda".
        """
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        extra = {"fused": True} if device_type == "cuda" else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


def _sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row from logits (B, V): temperature, optional top-k, multinomial.

    A temperature below GREEDY_TEMPERATURE is argmax (the limit as it goes to 0). The
    logits are shifted to a maximum of 0 before dividing, so a small temperature sends the
    others to -inf, never to inf or NaN."""
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # (B, V), max 0
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
