"""XLNet's two-stream attention over the `Encoder`'s own weights (permutation language modelling).

The order lives in the attention masks only: positions keep their natural place in the input, and
`rank[i]` (position i's step in the factorisation order z) decides who sees whom. A standard
Transformer cannot represent "predict position i without seeing token i" and "let later positions
see token i" at once, so the model runs two streams through the same blocks:

    content stream h (B, T, d): token + position, attends to keys j with rank[j] <= rank[i]
    query stream   g (B, P, d): position only (the [MASK] embedding + position), attends to keys j
                                with rank[j] < rank[i]; it never sees its own token
    keys/values of both come from the content stream; the objective reads g through the MLM head.

The query stream is computed only at the P predicted positions (XLNet's target mapping), and the
content stream stops before its last layer's attention/MLP (only its keys and values are needed
there), so a step costs about (1 + 1/K) encoder passes instead of two.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.models.encoder import Encoder
from lmforge.models.layers import Attention, Block, apply_rope


class PermutationEncoder(Encoder):
    """The `Encoder` with XLNet's two-stream forward pass; the same parameters, names and init.

    It subclasses rather than wraps so that the two-stream pass is the module's `forward` (what
    DDP and torch.compile call) while the saved weights stay a plain Encoder's: a PLM run loads
    as an Encoder for fine-tuning. The query stream starts from the embedding of `query_id` (the
    tokenizer's mask token) plus the position: XLNet's learned vector w is that embedding row, so
    no parameter is added.
    """

    def __init__(self, cfg: ModelConfig, query_id: int, *, full_context: bool = False):
        super().__init__(cfg)
        if not 0 <= query_id < cfg.vocab_size:
            raise LmforgeError(f"query token id {query_id} is outside model.vocab_size={cfg.vocab_size}")
        self.query_id = query_id
        self.full_context = full_context

    def forward(  # type: ignore[override]
        self,
        idx: torch.Tensor,
        *,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        perm_rank: torch.Tensor | None = None,
        target_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Without an order: the Encoder's forward, (B, T, d). With `perm_rank` (B, T) and
        `target_positions` (B, P): the final query-stream states at the targets, (B, P, d)."""
        if perm_rank is None or target_positions is None:
            return super().forward(idx, token_type_ids=token_type_ids, attention_mask=attention_mask)
        return self.two_stream(idx, perm_rank, target_positions)[0]

    def two_stream(
        self,
        idx: torch.Tensor,
        perm_rank: torch.Tensor,
        target_positions: torch.Tensor,
        *,
        content: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final query-stream states g (B, P, d) and, with `content`, content-stream states h (B, T, d).

        Both streams travel as one (B, T+P, d) tensor [h | g]: norms, MLPs and projections are
        per-row, so only the attention treats them differently (queries from all rows, keys and
        values from the T content rows, under a (B, 1, T+P, T) mask). Without `content` the last
        block updates the query rows only.
        """
        B, T = idx.shape
        P = target_positions.size(1)
        d = self.config.d_model
        h = self.embed(idx)  # (B, T, d): token + position
        g = self.embed(torch.full_like(idx, self.query_id))  # (B, T, d): query vector + position only
        g = g.gather(1, target_positions[:, :, None].expand(B, P, d))  # (B, P, d)
        x = torch.cat([h, g], dim=1)  # (B, T+P, d)

        rank = perm_rank
        if self.full_context:  # every context token shares the last context step: they see each other
            rank = rank.clamp(min=T - P - 1)
        target_rank = rank.gather(1, target_positions)  # (B, P)
        sees_content = rank[:, None, :] <= rank[:, :, None]  # (B, T, T): [b, i, j] = rank j <= rank i
        sees_query = rank[:, None, :] < target_rank[:, :, None]  # (B, P, T): strictly earlier only
        mask = torch.cat([sees_content, sees_query], dim=1)[:, None]  # (B, 1, T+P, T)

        rope_q = rope_k = None
        if self.rope is not None:
            cos, sin = self.rope(0, T)  # (T, head_dim) each
            rope_k = (cos, sin)

            def at_rows(
                t: torch.Tensor,
            ) -> torch.Tensor:  # content rows at 0..T-1, query rows at their targets
                return torch.cat([t.expand(B, T, -1), t[target_positions]], dim=1)[:, None]  # (B, 1, T+P, hd)

            rope_q = (at_rows(cos), at_rows(sin))

        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            start = T if (i == last and not content) else 0  # first row whose new state is needed
            x = _two_stream_block(block, x, T, start, mask[:, :, start:], rope_q, rope_k)
        x = self.norm_f(x)
        return x[:, -P:], (x[:, :T] if content else None)


def _two_stream_block(
    block: Block,
    x: torch.Tensor,
    T: int,
    start: int,
    mask: torch.Tensor,
    rope_q: tuple[torch.Tensor, torch.Tensor] | None,
    rope_k: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """`Block.forward` for x = [content (T rows) | query rows], returning the new rows start.. only."""
    if block.pre_norm:
        y = x[:, start:] + _two_stream_attention(block.attn, block.norm1(x), T, start, mask, rope_q, rope_k)
        return y + block.mlp(block.norm2(y))
    y = block.norm1(x[:, start:] + _two_stream_attention(block.attn, x, T, start, mask, rope_q, rope_k))
    return block.norm2(y + block.mlp(y))


def _two_stream_attention(
    attn: Attention,
    x: torch.Tensor,
    T: int,
    start: int,
    mask: torch.Tensor,
    rope_q: tuple[torch.Tensor, torch.Tensor] | None,
    rope_k: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """`Attention.forward` with queries from rows start.. of x (B, L, d) and keys/values from rows :T.

    The query rows are projected to queries alone (`Attention.project_q` slices a fused qkv
    weight), so they never pay for keys and values nobody reads. Returns (B, L - start, d).
    """
    B, L, _ = x.shape
    q = attn.project_q(x[:, max(start, T) :])  # (B, P, nh, hd)
    if start < T:  # the content rows' queries come out of the fused projection with their keys/values
        q_h, k, v = attn.project_qkv(x[:, :T])
        q = torch.cat([q_h, q], dim=1)  # (B, L, nh, hd)
    else:
        k, v = attn.project_kv(x[:, :T])  # (B, T, nkv, hd) each
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, rows, hd)
    if rope_q is not None and rope_k is not None:
        q = apply_rope(q, rope_q[0][:, :, start:], rope_q[1][:, :, start:])
        k = apply_rope(k, *rope_k)
    y = attn._attend(q, k, v, causal=False, attn_mask=mask)  # (B, nh, L - start, hd)
    y = y.transpose(1, 2).reshape(B, L - start, attn.n_head * attn.head_dim)
    return attn.resid_drop(attn.proj(y))


def plm_flops_per_token(model: Encoder, seq_len: int, n_predict: int) -> float:
    """Training FLOPs per input token of the two-stream pass (6 per weight per row, 12*d*T per
    attention row per layer, as `Encoder.flops_per_token` counts).

    Content rows run every layer but the last (where only their keys/values are made); query rows
    run every layer without keys/values; the MLM head runs on the query rows.
    """
    cfg, blk = model.config, model.blocks[0]
    n_layer, f = cfg.n_layer, n_predict / seq_len
    kv = 2 * blk.attn.n_kv_head * blk.attn.head_dim * cfg.d_model
    row = 6.0 * (sum(p.numel() for p in blk.parameters()) - kv) + 12.0 * cfg.d_model * seq_len  # no k/v
    head = model.mlm_head.dense.weight.numel() + model.lm_head.weight.numel()
    return (n_layer - 1 + f * n_layer) * row + n_layer * 6.0 * kv + f * 6.0 * head


__all__ = ["PermutationEncoder", "plm_flops_per_token"]
