"""The building blocks every architecture is made of: norms, positions, attention, MLP, block.

GPT-2, Llama and BERT differ only in which of these pieces they pick (LayerNorm or RMSNorm, learned
or rotary positions, GELU or SwiGLU, norm before or after each sublayer), so each piece reads its
choice from `ModelConfig` and the Transformer simply stacks `Block`s. Attention takes a `causal`
flag and an optional padding mask so that encoders reuse it unchanged, and a `cross` switch that
makes it attend over another sequence (an encoder-decoder's memory).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig

# `enable_gqa` lets SDPA share each key/value head across a group of query heads without copying
# them; older PyTorch lacks it, and there we repeat the key/value heads instead.
_SDPA_HAS_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


# ----------------------------------------------------------------------------------------------
# Normalisation


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): rescales by 1/rms(x), no mean subtraction and no bias.

    The statistics are computed in float32 even for bf16/fp16 activations, as Llama does, so
    imported checkpoints behave identically in reduced precision.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).type_as(x)
        return normed * self.weight


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """The norm layer chosen by `cfg.norm`; LayerNorm carries a bias only when `cfg.bias`."""
    dim = dim or cfg.d_model
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


# ----------------------------------------------------------------------------------------------
# Positions


def sinusoidal_table(max_len: int, dim: int, base: float = 10000.0, *, halves: bool = False) -> torch.Tensor:
    """Fixed sin/cos position encodings of "Attention Is All You Need": (max_len, dim).

    Even channels hold sin(pos / base^(2i/dim)), odd channels the matching cos, so every position
    is a set of rotations at geometrically spaced frequencies. With `halves`, the same frequencies
    with the sines in the first ceil(dim/2) channels and the cosines after them, computed in
    float64: the table of tensor2tensor, fairseq, Marian and Pegasus, bit for bit Marian's.
    """
    if halves:
        j = torch.arange(dim, dtype=torch.float64)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] / torch.pow(base, 2 * (j // 2) / dim)
        half = (dim + 1) // 2
        out = torch.empty(max_len, dim)
        out[:, :half] = torch.sin(angles[:, 0::2]).float()
        out[:, half:] = torch.cos(angles[:, 1::2]).float()
        return out
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (ceil(dim/2),)
    angles = pos * inv_freq  # (max_len, ceil(dim/2))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) tables: cos/sin of position * frequency, (max_len, head_dim).

    Uses the "rotate-half" layout of Hugging Face's Llama (channel i pairs with channel
    i + head_dim/2, not with its neighbour), so Llama checkpoints import and export without
    permuting the query/key projections. The tables are not parameters and are not saved.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        # Computed exactly as Llama does (int64 arange cast to float32) so the angles match bit for bit.
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, head_dim/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (max_len, head_dim)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions start .. start+length-1, each (length, head_dim)."""
        return self.cos[start : start + length], self.sin[start : start + length]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x (B, n_heads, T, head_dim) by their positions' angles: (T, head_dim),
    or (B, 1, T, head_dim) when each row has its own positions (left-padded decoding)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keeps autocast's bf16 activations in bf16
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------------------------
# Key/value cache


def relative_position_bucket(
    relative: torch.Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each key-minus-query distance: small distances get a bucket each, larger
    ones share logarithmically wider buckets up to `max_distance`, beyond which all share the last.

    Bidirectional (encoder) buckets give half the buckets to keys after the query; causal
    (decoder) ones spend all buckets on keys before it (later keys are masked anyway).
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    # log(distance / exact) / log(max_distance / exact) of the remaining buckets, for distance >= exact
    far = (
        exact
        + (
            torch.log(distance.float().clamp(min=1) / exact)
            / math.log(max_distance / exact)
            * (num_buckets - exact)
        ).long()
    )
    far = far.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """T5's positions: a learned scalar per head and distance bucket, added to every attention score
    of a stack's self-attention (one table per stack, shared by its blocks, as T5 shares layer 0's)."""

    def __init__(self, cfg: ModelConfig, *, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.bias = nn.Embedding(cfg.relative_buckets, cfg.n_head)

    def forward(self, start: int, T: int, S: int) -> torch.Tensor:
        """The bias of queries at positions start..start+T-1 over keys 0..S-1: (1, n_head, T, S)."""
        device = self.bias.weight.device
        q = torch.arange(start, start + T, device=device)
        relative = torch.arange(S, device=device)[None, :] - q[:, None]  # (T, S) key minus query
        bucket = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        return self.bias(bucket).permute(2, 0, 1)[None]  # (1, n_head, T, S)


def with_position_bias(bias: torch.Tensor, attn_mask: torch.Tensor | None, *, causal: bool) -> torch.Tensor:
    """One float mask from a position bias (1, H, T, S), a boolean mask broadcastable to
    (B, 1, T, S) (True = may attend) and, when `causal`, the triangle of the last T of S positions."""
    T, S = bias.shape[-2:]
    hidden = None
    if causal and T > 1:
        hidden = torch.ones(T, S, dtype=torch.bool, device=bias.device).triu(diagonal=S - T + 1)
    if attn_mask is not None:
        hidden = ~attn_mask if hidden is None else hidden | ~attn_mask
    return bias if hidden is None else bias.masked_fill(hidden, float("-inf"))


class KVCache:
    """Keys and values of past positions, for decoding one token at a time.

    Storage is preallocated per layer at a fixed shape (batch, max_len, n_kv_head, head_dim):
    position-major within a row, so that a row's filled positions are one contiguous block, which
    is all `reorder` copies. `update` hands attention (B, n_kv_head, S, head_dim) views of it, and
    `length` counts the positions already written; the Transformer advances it once all layers
    have written. Decoding never reallocates: `reorder` copies into a second set of buffers and
    swaps (a fresh allocation per step would page-fault megabytes every step on CPU).

    Cross-attention layers (an encoder-decoder's) keep the keys/values of the encoder's output in
    `cross_k`/`cross_v` (B_in, n_kv_head, S, head_dim): computed at the first step, reused at every
    later one. There is one entry per *input*, and the rows may outnumber them: beam search keeps
    K consecutive rows per input, and cross-attention folds those K rows into one input's queries
    (see `Attention`) rather than attending over K copies of the same keys.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        shape = (batch_size, max_len, n_kv_head, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        # reorder's other buffers (allocated at its first call, grown when the rows outgrow them).
        self._spare: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._base = (self.k, self.v)  # the full buffers self.k / self.v are row-prefixes of
        self.cross_k: list[torch.Tensor | None] = [None] * n_layer
        self.cross_v: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k[0].size(1)

    @property
    def batch_size(self) -> int:
        return self.k[0].size(0)

    def reset(self) -> None:
        """Forget every position and the cross entries (the self storage is kept and overwritten)."""
        self.length = 0
        self.cross_k = [None] * len(self.k)
        self.cross_v = [None] * len(self.k)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_head, T, head_dim) at positions length..length+T-1 of `layer`.

        Returns the keys and values of all positions so far, (B, n_kv_head, length + T, head_dim).
        """
        end = self.length + k.size(2)
        self.k[layer][:, self.length : end] = k.transpose(1, 2)
        self.v[layer][:, self.length : end] = v.transpose(1, 2)
        return self.k[layer][:, :end].transpose(1, 2), self.v[layer][:, :end].transpose(1, 2)

    def cross(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached cross keys/values of `layer`, (B_in, n_kv_head, S, head_dim) each, or None."""
        k, v = self.cross_k[layer], self.cross_v[layer]
        return None if k is None or v is None else (k, v)

    def set_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep the memory's keys/values k, v (B_in, n_kv_head, S, head_dim) of `layer` for later steps."""
        self.cross_k[layer], self.cross_v[layer] = k, v

    def reorder(self, index: torch.Tensor, cross_index: torch.Tensor | None = None) -> None:
        """Keep rows `index` (B',) of every self entry, in that order (rows may repeat), and rows
        `cross_index` of the cross entries (None: they stay as they are)."""
        index = index.to(self.k[0].device)
        n, L = index.numel(), self.length
        if self._spare is None or self._spare[0][0].size(0) < n:
            # Zeros, not new_empty: a compiled step attends over every column (masking the unwritten
            # ones), and a masked NaN or inf value would still poison its weighted sum.
            self._spare = tuple([t.new_zeros((n, *t.shape[1:])) for t in ts] for ts in (self.k, self.v))
        spare_k, spare_v = self._spare
        with torch.no_grad():  # a decoding memory: out= copies take no gradient
            for src, dst in zip(self.k + self.v, spare_k + spare_v, strict=True):
                torch.index_select(src[:, :L], 0, index, out=dst[:n, :L])  # the filled positions only
        self._spare, self._base = self._base, (spare_k, spare_v)
        self.k, self.v = [k[:n] for k in spare_k], [v[:n] for v in spare_v]
        if cross_index is not None:
            cross_index = cross_index.to(index.device)
            self.cross_k = [None if k is None else k.index_select(0, cross_index) for k in self.cross_k]
            self.cross_v = [None if v is None else v.index_select(0, cross_index) for v in self.cross_v]


# ----------------------------------------------------------------------------------------------
# Attention

Unpad = tuple[torch.Tensor, int, int]
"""(flat indices of the real tokens in a (B, T) batch, B, T): lets per-token layers skip padding."""

Rope = tuple[torch.Tensor, torch.Tensor]
"""cos, sin of the query/key positions: (T, head_dim) each, or (B, 1, T, head_dim) per row."""


def _pad_back(t: torch.Tensor, unpad: Unpad | None) -> torch.Tensor:
    """Rows t (N, k) of the real tokens back in their (B, T, k) places, zeros at the padding."""
    if unpad is None:
        return t
    index, B, T = unpad
    return t.new_zeros(B * T, t.size(-1)).index_copy(0, index, t).view(B, T, -1)


class Attention(nn.Module):
    """Multi-head attention with grouped-query heads, rotary positions and a KV cache.

    Self-attention (the default) projects queries, keys and values from x. By default one fused
    Linear `qkv` does it (rows laid out as [q heads | k heads | v heads]): one matmul instead of
    three, measurably faster on CPU. With `cfg.fused_qkv=False` they are three Linears `q`, `k`,
    `v`, so that a module-name pattern (LoRA's) can pick one of them; checkpoints convert
    between the layouts on load (`lmforge.models.weights`).

    Cross-attention (`cross=True`, an encoder-decoder's decoder) takes its queries from x and its
    keys/values from another sequence, the `memory` (B, S, d_model): a Linear `q` and a fused
    `kv` (or `k`, `v` unfused). It sees every memory position but padding, and no rotation:
    positions of two different sequences have no common origin.

    A single `F.scaled_dot_product_attention` call does the attention itself, which dispatches
    to FlashAttention/memory-efficient kernels on GPU and a fused kernel on CPU.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0, *, cross: bool = False):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.layer_idx = layer_idx  # which slot of a KVCache this layer writes
        self.cross, self.fused = cross, cfg.fused_qkv
        d, nq, nkv = cfg.d_model, self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if cfg.fused_qkv and not cross:
            self.qkv = nn.Linear(d, nq + 2 * nkv, bias=cfg.bias)
        else:
            self.q = nn.Linear(d, nq, bias=cfg.bias)
            if cfg.fused_qkv:
                self.kv = nn.Linear(d, 2 * nkv, bias=cfg.bias)
            else:
                self.k = nn.Linear(d, nkv, bias=cfg.bias)
                self.v = nn.Linear(d, nkv, bias=cfg.bias)
        self.proj = nn.Linear(nq, d, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.scale = cfg.attn_scale  # None: SDPA's 1/sqrt(head_dim)
        self.resid_drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    # ------------------------------------------------------------ projections

    def project_qkv(
        self, x: torch.Tensor, unpad: Unpad | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention projections of x (B, T, d): q (B, T, n_head, hd), k, v (B, T, n_kv_head, hd).

        With `unpad`, x is the real tokens (N, d): the Linears run on those alone and their outputs
        are scattered into a zero-padded (B, T) layout, which is all the attention needs.
        """
        B, T = (unpad[1], unpad[2]) if unpad is not None else x.shape[:2]
        if not self.fused:
            q, k, v = (
                _pad_back(lin(x), unpad).view(B, T, -1, self.head_dim) for lin in (self.q, self.k, self.v)
            )
            return q, k, v
        qkv = _pad_back(self.qkv(x), unpad).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim)
        # Split along the heads axis before moving heads in front of time: in the backward pass the
        # three gradients are then concatenated straight into the (B, T, heads, head_dim) layout
        # the qkv Linear needs, rather than concatenated and copied once more to undo a transpose.
        q, k, v = qkv.split([self.n_head, self.n_kv_head, self.n_kv_head], dim=2)
        return q, k, v

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """Queries alone of x (B, L, d): (B, L, n_head, head_dim); a fused qkv is sliced to its q rows."""
        if hasattr(self, "q"):
            q = self.q(x)
        else:
            nq, w, b = self.n_head * self.head_dim, self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[:nq], None if b is None else b[:nq])
        return q.view(*x.shape[:-1], self.n_head, self.head_dim)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values alone of x (B, S, d): (B, S, n_kv_head, head_dim) each."""
        shape = (*x.shape[:-1], self.n_kv_head, self.head_dim)
        if hasattr(self, "k"):
            return self.k(x).view(shape), self.v(x).view(shape)
        if hasattr(self, "kv"):
            kv = self.kv(x)
        else:
            nq, w, b = self.n_head * self.head_dim, self.qkv.weight, self.qkv.bias
            kv = F.linear(x, w[nq:], None if b is None else b[nq:])
        k, v = kv.view(*x.shape[:-1], 2 * self.n_kv_head, self.head_dim).split(self.n_kv_head, dim=-2)
        return k, v

    # ------------------------------------------------------------ forward

    def forward(
        self,
        x: torch.Tensor,
        *,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        rope: Rope | None = None,
        causal: bool = True,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        unpad: Unpad | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model).

        Self-attention: `attn_mask` (bool, broadcastable to (B, 1, T, S), True = may attend) masks
        padding; `causal` additionally hides later positions (decoders) and is off for encoders.
        With `unpad`, x holds only the real tokens of a padded batch, (N, d_model) -> (N, d_model):
        the projections skip the padding and only the attention itself sees the (B, T) layout.
        Cross-attention: keys/values come from `memory` (B_in, S, d_model), or from the cache once
        it holds them; `memory_mask` (B_in, S) bool, True for real memory positions, masks its
        padding. B_in divides B: each input's B / B_in rows are consecutive (beam search's beams).
        """
        if self.cross:
            return self._cross(x, memory, memory_mask, cache)
        q, k, v = self.project_qkv(x, unpad)
        B, T = q.shape[:2]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        # q: (B, n_head, T, head_dim); k, v: (B, n_kv_head, T, head_dim), views (no copies)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, n_kv_head, S, head_dim), S = past + T
        y = self._attend(q, k, v, causal=causal, attn_mask=attn_mask)  # (B, n_head, T, head_dim)
        # SDPA's fused kernels lay their output out as (B, T, n_head, head_dim) already, so this
        # reshape is a view, not a copy.
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, n_head*head_dim)
        if unpad is not None:
            y = y.reshape(B * T, -1).index_select(0, unpad[0])  # (N, n_head*head_dim): real tokens only
        return self.resid_drop(self.proj(y))

    def _cross(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        """Cross-attention of x (B, T, d_model) over the memory's keys/values (see `forward`)."""
        B, T, _ = x.shape
        kv = cache.cross(self.layer_idx) if cache is not None else None
        if kv is None:
            if memory is None:
                raise LmforgeError(
                    "cross-attention needs the memory (the encoder's output) at its first call"
                )
            k, v = self.project_kv(memory)  # (B, S, n_kv_head, head_dim) each
            kv = k.transpose(1, 2), v.transpose(1, 2)  # (B, n_kv_head, S, head_dim)
            if cache is not None:
                cache.set_cross(self.layer_idx, *kv)
        q = self.project_q(x).transpose(1, 2)  # (B, n_head, T, head_dim)
        inputs = kv[0].size(0)
        if B % inputs:
            raise LmforgeError(f"{B} decoder rows cannot be grouped over a memory of {inputs} inputs")
        group = B // inputs  # consecutive rows per input (beam search's beams), 1 otherwise
        if group > 1:  # each input's rows become more queries of one attention over its memory
            q = (
                q.reshape(inputs, group, self.n_head, T, -1)
                .transpose(1, 2)
                .reshape(inputs, self.n_head, group * T, -1)
            )
        mask = None if memory_mask is None else memory_mask.bool()[:, None, None, :]  # (B_in, 1, 1, S)
        y = self._attend(q, *kv, causal=False, attn_mask=mask)  # (B_in, n_head, group * T, head_dim)
        y = y.view(inputs, self.n_head, group, T, -1).permute(0, 2, 3, 1, 4)  # (B_in, group, T, n_head, hd)
        return self.resid_drop(self.proj(y.reshape(B, T, self.n_head * self.head_dim)))

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        T, S = q.size(-2), k.size(-2)
        is_causal = False
        if causal and attn_mask is None and T == S:
            is_causal = True  # training or a prefill: the kernel builds the triangle itself
        elif causal and T > 1:
            # New queries sit at the end of S keys (a cached chunk): query i sees keys 0..S-T+i.
            # (SDPA's is_causal aligns the triangle top-left, which would be wrong here.)
            tri = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
            attn_mask = tri if attn_mask is None else attn_mask & tri
        # (causal with T == 1: the single newest query may see every cached key, so no mask.)

        gqa = {}
        if self.n_kv_head != self.n_head:
            if _SDPA_HAS_GQA:
                gqa = {"enable_gqa": True}
            else:
                repeat = self.n_head // self.n_kv_head
                k = k.repeat_interleave(repeat, dim=1)  # (B, n_head, S, head_dim)
                v = v.repeat_interleave(repeat, dim=1)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scale,
            **gqa,
        )


# ----------------------------------------------------------------------------------------------
# Feed-forward

# GPT-2's GELU is 0.5·x·(1 + tanh(u)) with u = sqrt(2/π)·(x + 0.044715·x³). Since
# 1 + tanh(u) = 2·sigmoid(2u), it equals x·sigmoid(x·(K + K·0.044715·x²)) with K = sqrt(8/π).
_GELU_K = math.sqrt(8 / math.pi)
_GELU_K3 = _GELU_K * 0.044715


class _SigmoidGELU(torch.autograd.Function):
    """The tanh GELU computed through sigmoid, for float32 on CPU.

    ATen's fused tanh-GELU kernel is bound by its vectorised tanh, which on AVX2 costs about three
    times a sigmoid: four memory passes of addcmul/mul/sigmoid/mul take half its time (7 against
    15 ms for a (4096, 1536) activation on 2 threads), and in a small GPT the activation is ~6% of
    a training step. The backward pass is ATen's own `gelu_backward`, which needs only x, so
    nothing more is kept than `nn.GELU` keeps. Results agree with it to float32 rounding.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        z = torch.addcmul(x.new_tensor(_GELU_K), x, x, value=_GELU_K3).mul_(x)  # 2u
        return z.sigmoid_().mul_(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (GPT-2's "gelu_new"), the fastest way on each device.

    Float32 on CPU goes through `_SigmoidGELU`; other dtypes and devices (where ATen's kernel is a
    single memory-bound pass), and graphs being compiled or exported (which fuse it themselves),
    use `F.gelu(approximate="tanh")`.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling():
        return _SigmoidGELU.apply(x)
    return F.gelu(x, approximate="tanh")


class TanhGELU(nn.Module):
    """`nn.GELU(approximate="tanh")` through `gelu_tanh`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_tanh(x)


def make_activation(name: str) -> nn.Module:
    """The (ungated) activation module for `cfg.activation`: gelu (erf), gelu_tanh or relu."""
    return {"gelu": nn.GELU, "gelu_tanh": TanhGELU, "relu": nn.ReLU}[name]()


class MLP(nn.Module):
    """Position-wise feed-forward: fc -> activation -> proj, or the gated down(act(gate) * up) of
    SwiGLU (act = SiLU) and GEGLU (act = the tanh GELU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, ff = cfg.d_model, cfg.ff_dim
        self.gated = cfg.activation in ("swiglu", "geglu")
        self.gate_act = F.silu if cfg.activation == "swiglu" else gelu_tanh
        if self.gated:
            self.gate = nn.Linear(d, ff, bias=cfg.bias)
            self.up = nn.Linear(d, ff, bias=cfg.bias)
            self.down = nn.Linear(ff, d, bias=cfg.bias)
        else:
            self.fc = nn.Linear(d, ff, bias=cfg.bias)
            self.proj = nn.Linear(ff, d, bias=cfg.bias)
            self.act = make_activation(cfg.activation)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.drop(self.down(self.gate_act(self.gate(x)) * self.up(x)))
        return self.drop(self.proj(self.act(self.fc(x))))


# ----------------------------------------------------------------------------------------------
# Block


class Block(nn.Module):
    """Attention then MLP, each wrapped in a residual connection and a norm.

    Pre-norm (GPT-2, Llama): x + f(norm(x)), which keeps an identity path from input to output
    and trains stably without warmup tricks. Post-norm (original Transformer, BERT):
    norm(x + f(x)). With `cross` (an encoder-decoder's decoder) a cross-attention sublayer over
    the memory sits between the two, with its own residual and norm (`norm_cross`, `cross_attn`).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0, *, cross: bool = False):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg, layer_idx)
        self.norm_cross = make_norm(cfg) if cross else None
        self.cross_attn = Attention(cfg, layer_idx, cross=True) if cross else None
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: Rope | None = None,
        causal: bool = True,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        unpad: Unpad | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model); with `unpad` (see Attention), (N, d) -> (N, d).

        `memory`/`memory_mask` feed the cross-attention of a `cross` block (see Attention).
        """
        kw = {"rope": rope, "causal": causal, "attn_mask": attn_mask, "cache": cache, "unpad": unpad}
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), **kw)
            if self.cross_attn is not None and self.norm_cross is not None:
                h = self.norm_cross(x)
                x = x + self.cross_attn(h, memory=memory, memory_mask=memory_mask, cache=cache)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, **kw))
        if self.cross_attn is not None and self.norm_cross is not None:
            x = self.norm_cross(x + self.cross_attn(x, memory=memory, memory_mask=memory_mask, cache=cache))
        return self.norm2(x + self.mlp(x))


# ----------------------------------------------------------------------------------------------
# Output layer


class OutputLayer(NamedTuple):
    """A model's vocabulary projection, `logits = features @ weight.T + bias`, handed to objectives.

    Models return the features (the inputs of this layer) when asked, and objectives fuse the
    projection with the loss (`lmforge.objectives.losses.linear_cross_entropy`) so that the
    (rows, vocab) logits are never held. `chunk_rows` is how many rows of logits the fused loss
    may compute at once (None: its default, 16 MB of float32); a model with small batches over a
    large vocabulary asks for bigger chunks (see `lmforge.models.rnn.HEAD_CHUNK_BYTES`).
    """

    weight: torch.Tensor  # (vocab, features)
    bias: torch.Tensor | None  # (vocab,)
    chunk_rows: int | None = None

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(..., features) -> (..., vocab)."""
        return F.linear(features, self.weight, self.bias)


def init_normal(module: nn.Module, std: float) -> None:
    """GPT-2/BERT initialisation of one module: N(0, std) weights for Linear and Embedding, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


def init_transformer(model: nn.Module, cfg: ModelConfig, *, scale_residual: bool = True) -> None:
    """Initialise every Linear/Embedding of `model` with `init_normal`, then (GPT-2) scale the
    projections that write into the residual stream by 1/sqrt(2*n_layer): each block adds two
    outputs to it, and this keeps its variance independent of depth in a pre-norm model."""
    model.apply(lambda m: init_normal(m, cfg.init_std))
    if scale_residual:
        resid_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        for name, p in model.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=resid_std)


def check_length(length: int, max_len: int) -> None:
    """Refuse sequences the position tables (or the KV cache) were not built for."""
    if length > max_len:
        raise LmforgeError(
            f"sequence of length {length} exceeds model.max_len={max_len}; "
            "raise --model.max_len or shorten the input"
        )


__all__ = [
    "MLP",
    "Attention",
    "Block",
    "KVCache",
    "OutputLayer",
    "RMSNorm",
    "RelativePositionBias",
    "Rope",
    "RotaryEmbedding",
    "TanhGELU",
    "apply_rope",
    "check_length",
    "gelu_tanh",
    "init_normal",
    "init_transformer",
    "make_activation",
    "make_norm",
    "relative_position_bucket",
    "rotate_half",
    "sinusoidal_table",
    "with_position_bias",
]
