"""The CPU kernels behind charlm's GPT: cheap dropout masks, causal attention with dropout
(its own backward pass), and re-laid-out weights for one-token decoding.

``charlm.model`` calls three things here: ``dropout`` and ``causal_attention`` in training
(the CPU fast path, or torch's own ops elsewhere and with ``fast=False``), and
``DecodeWeights.of`` for KV-cache decoding.

Why they exist. With dropout on, SDPA leaves its fused kernel for its math path and draws
masks with ``bernoulli_``, which alone took a large share of a training step. So on the CPU
(unless ``GPT(cfg, fast_dropout=False)``):

- masks come from 16-bit random integers compared with a threshold (``dropout_mask``): a
  Bernoulli whose drop probability is rounded to a multiple of 1/65536, with the scale using
  that exact probability;
- attention with dropout is a custom autograd function (``attention_with_dropout``) that works
  on blocks of query rows and skips the key blocks above the diagonal, multiplies the softmax
  weights by the mask after the softmax (the SDPA math path's semantics), and saves float
  tensors only (elementwise ops on bool tensors are several times slower on the CPU).

Masks are drawn from torch's default generator for the device only, so
``torch.get_rng_state()`` in a checkpoint makes a resume exact. benchmarks/throughput.py
measures what each path is worth.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# A uniform int16 r is kept when r >= threshold: P(keep) = 1 - round(p * 2**16) / 2**16.
_INT16_LEVELS = 1 << 16


def _drop_count(p: float) -> int:
    """Number of the 65536 int16 values that mean "drop" for drop probability ``p``."""
    return min(_INT16_LEVELS - 1, round(p * _INT16_LEVELS))


def dropout_mask(like: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """A dropout mask for ``like``: 1.0 (keep) / 0.0 (drop), ``like``'s shape, dtype and device.

    Entries are independent Bernoulli(keep_probability) with keep_probability = 1 - p' and
    p' = round(p * 65536) / 65536 (|p' - p| <= 2**-17). The random bits come from torch's
    default generator for the device (full-range int64 draws, four 16-bit lanes each), so its
    state fully determines the mask. Returns (mask, keep_probability in (0, 1]).
    """
    numel = like.numel()
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=like.device)
    words.random_(-(1 << 63), None)  # full 64-bit range: every int16 lane is uniform
    lanes = words.view(torch.int16)[:numel].view(like.shape)  # like's shape, in [-32768, 32767]
    drops = _drop_count(p)
    threshold = drops - (_INT16_LEVELS // 2)  # keep when lane >= threshold
    # float arithmetic, not a bool compare: on the CPU bool tensors are several times slower.
    # Integers >= threshold map to >= 1 and the rest to <= 0, so the clamp gives exactly 1 / 0.
    mask = lanes.to(like.dtype).sub_(threshold - 1).clamp_(0.0, 1.0)
    return mask, 1.0 - drops / _INT16_LEVELS


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with ``torch.nn.functional.dropout`` semantics and a cheap CPU mask.

    In training, each entry of ``x`` is zeroed with probability ~p (see ``dropout_mask``) and
    survivors are scaled by 1/keep_probability; at eval time, or p == 0, ``x`` is returned.
    Off the CPU it is ``torch.nn.functional.dropout``.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    mask, keep_probability = dropout_mask(x, p)
    # the scaled mask is a constant for autograd: the backward is grad * mask
    return x * mask.mul_(1.0 / keep_probability)


def _query_blocks(T: int) -> list[tuple[int, int]]:
    """Split T query rows into blocks of 32-64 rows: [(start, end), ...] covering 0..T."""
    rows = min(64, max(32, T // 4))
    n_blocks = max(1, round(T / rows))
    edges = [round(T * i / n_blocks) for i in range(n_blocks + 1)]
    return list(itertools.pairwise(edges))


class _AttentionWithDropout(torch.autograd.Function):
    """Causal softmax attention with dropout on the attention weights, for the CPU.

    Why a second copy of the attention maths: with dropout on, SDPA leaves its fused kernel
    for its math path and draws masks with ``bernoulli_``; this function with the cheap masks
    is faster (benchmarks/throughput.py's "fast" against "torch" rows). Tied to SDPA (p = 0)
    and to an explicit softmax with the same masks (p > 0), forward and backward, by
    tests/test_model.py.

    For each block of query rows [lo, hi) only the keys [0, hi) are computed (causality):
    P = softmax(q k^T / sqrt(hs) + causal), y = (P * keep) v / keep_p. Skipping the blocks
    above the diagonal saves a third or more of the (T, T) work and random numbers.
    Saved for backward per block: P and P * keep (float: on the CPU elementwise ops on bool
    are several times slower). The softmax backward uses rowsum(dP * P) = rowsum(dy * y),
    which needs no pass over the (T, T) tensors.
    """

    @staticmethod
    def forward(  # q, k, v: (B, nh, T, hs)
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float
    ) -> torch.Tensor:
        B, nh, T, hs = q.shape
        scale = 1.0 / math.sqrt(hs)
        q_scaled = torch.empty(B * nh, T, hs, dtype=q.dtype, device=q.device)  # (B*nh, T, hs)
        torch.mul(q, scale, out=q_scaled.view(B, nh, T, hs))  # one pass: gather and scale
        k = k.reshape(B * nh, T, hs)  # (B*nh, T, hs), copies the strided view
        v = v.reshape(B * nh, T, hs)  # (B*nh, T, hs)
        blocks = _query_blocks(T)
        ys, probs, kept = [], [], []
        keep_probability = 1.0
        for lo, hi in blocks:
            bias = torch.zeros(hi - lo, hi, dtype=q.dtype, device=q.device)  # (t, hi)
            bias[:, lo:].fill_(float("-inf")).triu_(1)  # future keys of the diagonal square
            scores = torch.baddbmm(  # (B*nh, t, hi)
                bias.expand(B * nh, hi - lo, hi), q_scaled[:, lo:hi], k[:, :hi].transpose(1, 2)
            )
            att = torch.softmax(scores, dim=-1)  # (B*nh, t, hi) rows sum to 1
            mask, keep_probability = dropout_mask(att, p)  # (B*nh, t, hi)
            dropped = mask.mul_(att)  # (B*nh, t, hi) kept weights, not yet scaled
            ys.append(torch.bmm(dropped, v[:, :hi]))  # (B*nh, t, hs)
            probs.append(att)
            kept.append(dropped)
        y = torch.cat(ys, dim=1).mul_(1.0 / keep_probability).view(B, nh, T, hs)
        ctx.save_for_backward(q_scaled, k, v, y, *probs, *kept)
        ctx.scale, ctx.keep_probability, ctx.blocks = scale, keep_probability, blocks
        return y  # (B, nh, T, hs)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q_scaled, k, v, y, *saved = ctx.saved_tensors
        n_blocks = len(ctx.blocks)
        probs, kept = saved[:n_blocks], saved[n_blocks:]
        B, nh, T, hs = grad_y.shape
        row_dot = (grad_y * y).sum(dim=-1, keepdim=True).view(B * nh, T, 1)  # rowsum(dP * P)
        grad_y = grad_y.reshape(B * nh, T, hs).mul(1.0 / ctx.keep_probability)  # (B*nh, T, hs)
        grad_q = torch.empty_like(k)  # (B*nh, T, hs)
        grad_k = torch.zeros_like(k)  # (B*nh, T, hs)
        grad_v = torch.zeros_like(v)  # (B*nh, T, hs)
        for (lo, hi), att, dropped in zip(ctx.blocks, probs, kept, strict=True):
            grad_block = grad_y[:, lo:hi]  # (B*nh, t, hs)
            # bmm into fresh memory: baddbmm_ into a strided slice loops over the batch
            grad_v[:, :hi] += torch.bmm(dropped.transpose(1, 2), grad_block)  # (B*nh, hi, hs)
            grad_att = torch.bmm(grad_block, v[:, :hi].transpose(1, 2))  # (B*nh, t, hi)
            # softmax backward: dS = P * (keep * dA / keep_p - rowsum) = dropped * dA' - P * rowsum
            grad_scores = grad_att.mul_(dropped).addcmul_(att, row_dot[:, lo:hi], value=-1.0)
            grad_q[:, lo:hi] = torch.bmm(grad_scores, k[:, :hi])  # (B*nh, t, hs)
            grad_k[:, :hi] += torch.bmm(grad_scores.transpose(1, 2), q_scaled[:, lo:hi])
        grad_q.mul_(ctx.scale)  # q_scaled already carries the scale into grad_k
        shape = (B, nh, T, hs)
        return grad_q.view(shape), grad_k.view(shape), grad_v.view(shape), None


def attention_with_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float
) -> torch.Tensor:
    """Causal attention with training-mode dropout ``p`` on the softmax weights (CPU fast path).

    Same semantics as ``scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)``
    (masks from ``dropout_mask``, one per block of query rows).
    q, k, v: (B, nh, T, hs); returns (B, nh, T, hs).
    """
    return _AttentionWithDropout.apply(q, k, v, p)


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, fast: bool
) -> torch.Tensor:
    """Training/eval causal attention with dropout ``p`` on the weights (0 in eval mode).

    The CPU fast path (``attention_with_dropout``) when ``fast`` and p > 0 on the CPU, else
    SDPA with ``dropout_p``. q, k, v: (B, nh, T, hs); returns (B, nh, T, hs).
    """
    if p > 0.0 and fast and q.device.type == "cpu":
        return attention_with_dropout(q, k, v, p)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)


def dropout(x: torch.Tensor, p: float, training: bool, fast: bool) -> torch.Tensor:
    """charlm's cheap-mask dropout (``fast``) or torch's."""
    return fast_dropout(x, p, training) if fast else F.dropout(x, p, training)


class TransposedLinear:
    """y = x @ W^T + b for one-token decoding, from a re-laid-out copy of an nn.Linear (no grad).

    Only the matmul is copied: ``charlm.model.Block.forward`` runs with these in place of its
    nn.Linear layers (tests/test_model.py checks decoding against the full forward, with and
    without biases).

    A one-token step is bound by reading the weights. torch's single (1, in) @ (in, out)
    product reads them on one core only, so the weight is stored as ``blocks`` column blocks
    (blocks, in, out / blocks) and multiplied with one batched matmul, which spreads the
    blocks over the intra-op threads (benchmarks/throughput.py's generation rows).
    """

    def __init__(self, linear: nn.Linear, blocks: int):
        weight_t = linear.weight.detach().t()  # (in, out)
        n_in, n_out = weight_t.shape
        self.blocks = blocks if blocks > 1 and n_out % blocks == 0 else 1
        blocked = weight_t.reshape(n_in, self.blocks, n_out // self.blocks).transpose(0, 1)
        self.weight = blocked.contiguous()  # (blocks, in, out / blocks)
        self.bias = None if linear.bias is None else linear.bias.detach()  # (out,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, in) -> (B, 1, out)
        rows = x.view(x.size(0), -1)  # (B, in)
        if self.blocks == 1:
            y = rows @ self.weight[0]  # (B, out)
        else:
            parts = torch.bmm(rows.expand(self.blocks, *rows.shape), self.weight)  # (b, B, out/b)
            y = parts.transpose(0, 1).reshape(rows.size(0), -1)  # (B, out)
        y = y if self.bias is None else y + self.bias
        return y.unsqueeze(1)  # (B, 1, out)


@dataclass
class DecodeWeights:
    """One block's matmuls for KV-cache decoding: (c_attn, c_proj) and (c_fc, c_proj)."""

    attention: tuple[TransposedLinear, TransposedLinear]
    mlp: tuple[TransposedLinear, TransposedLinear]

    @classmethod
    def of(cls, block: Any, blocks: int) -> DecodeWeights:
        """The copies of one ``charlm.model.Block``'s four matmuls, in ``blocks`` column blocks."""
        return cls(
            attention=(TransposedLinear(block.attn.c_attn, blocks),
                       TransposedLinear(block.attn.c_proj, blocks)),
            mlp=(TransposedLinear(block.mlp.c_fc, blocks),
                 TransposedLinear(block.mlp.c_proj, blocks)),
        )  # fmt: skip
