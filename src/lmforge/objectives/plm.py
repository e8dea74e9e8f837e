"""Permutation language modelling (XLNet): autoregressive prediction along random factorisation orders.

For each row a random order z of the T positions is drawn; the model predicts the tokens at the last
P ~= T/K positions of that order, each from the tokens before it in the order (partial prediction):

    loss = -mean over targets t of log p(x[z_t] | x[z_<t])

Every context a token is predicted from is a subset of the sequence on *both* sides of it, yet no
[MASK] token is ever put into the input, and the targets are predicted jointly (later targets see
earlier ones), which is what XLNet offers over BERT.

The order lives in the attention masks only: positions keep their natural place in the input, and
`rank[i]` (position i's step in z) decides who sees whom. A standard Transformer cannot represent
"predict position i without seeing token i" and "let later positions see token i" at once, so the
model runs two streams through the same blocks:

    content stream h (B, T, d): token + position, attends to keys j with rank[j] <= rank[i]
    query stream   g (B, P, d): position only (the [MASK] embedding + position), attends to keys j
                                with rank[j] < rank[i]; it never sees its own token
    keys/values of both come from the content stream; the loss reads g through the MLM head.

The query stream is computed only at the P predicted positions (XLNet's target mapping), and the
content stream stops before its last layer's attention/MLP (only its keys and values are needed
there), so a step costs about (1 + 1/K) encoder passes instead of two.

The data side (`PermutationLMBatches`) draws the orders with NumPy from (seed, epoch, position), so
a resumed run sees the same orders and the device never waits on the host.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.models.encoder import Encoder
from lmforge.models.layers import Attention, Block, apply_rope, linear_cross_entropy
from lmforge.models.weights import unwrap

_TRAIN_TAG, _VAL_TAG = 23, 29  # keep the order streams apart from other samplers of the same seed


@dataclass
class PLMConfig:
    # Predict the last 1/predict_k of each sampled factorisation order (XLNet's K; 6 in the paper).
    predict_k: float = 6.0
    # Let the tokens that are not predicted attend to each other in both directions, as XLNet's released
    # code does (they are only context); false keeps the strict order of the paper's equations.
    full_context: bool = False

    def validate(self) -> None:
        if not (math.isfinite(self.predict_k) and self.predict_k >= 1.0):
            raise LmforgeError(
                f"plm.predict_k={self.predict_k} must be at least 1 (the share predicted is 1/predict_k); "
                "XLNet uses 6 or 7"
            )


# ----------------------------------------------------------------------------------------------
# Data: factorisation orders


def num_predict(seq_len: int, predict_k: float) -> int:
    """Targets per row: about seq_len/predict_k, at least 1, and at least one context token left.

    The count is fixed per row so that the query stream is a dense (B, P, d) tensor.
    """
    if seq_len < 2:
        raise LmforgeError(f"train.seq_len={seq_len} is too short for permutation LM; use at least 2")
    return int(min(seq_len - 1, max(1, round(seq_len / predict_k))))


def sample_orders(
    rng: np.random.Generator, batch_size: int, seq_len: int, n_predict: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random factorisation orders: (rank (B, T), target positions (B, P)).

    rank[b, i] is the step at which position i comes in row b's order (a permutation of 0..T-1);
    the targets are the positions of the last P steps, in order.
    """
    order = rng.permuted(np.broadcast_to(np.arange(seq_len), (batch_size, seq_len)), axis=1)  # (B, T)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(seq_len)[None, :].repeat(batch_size, axis=0), axis=1)
    return rank, np.ascontiguousarray(order[:, seq_len - n_predict :])


def permutation_batch(
    input_ids: torch.Tensor, rng: np.random.Generator, predict_k: float, device: torch.device
) -> dict[str, torch.Tensor]:
    """A PLM batch from input windows (B, T): the ids plus a sampled order per row, on `device`.

    Returns input_ids (B, T), perm_rank (B, T) and target_positions (B, P), all int64.
    """
    B, T = input_ids.shape
    rank, targets = sample_orders(rng, B, T, num_predict(T, predict_k))

    def dev(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a.astype(np.int64))
        if device.type == "cuda":
            t = t.pin_memory()
        return t.to(device, non_blocking=True)

    return {"input_ids": input_ids.to(device), "perm_rank": dev(rank), "target_positions": dev(targets)}


class PermutationLMBatches:
    """Endless, resumable PLM batches: `CausalLMBatches` windows plus a factorisation order per row.

    The windows' shifted targets are dropped (the targets are the inputs themselves). Sampling and
    resume state are the windows' own (epoch, position); the orders are drawn from (seed, epoch, the
    row's place in the epoch), so they follow the windows on resume without any state of their own.
    """

    def __init__(self, windows: Any, predict_k: float) -> None:
        self.windows, self.predict_k = windows, predict_k
        self.n_predict = num_predict(windows.seq_len, predict_k)

    @property
    def batch_size(self) -> int:
        return self.windows.batch_size

    @property
    def seq_len(self) -> int:
        return self.windows.seq_len

    def state_dict(self) -> dict[str, int]:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.windows.load_state_dict(state)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """input_ids (B, T), perm_rank (B, T), target_positions (B, P), on the windows' device."""
        w = self.windows
        x, _ = w.next_batch()
        st = w.state  # after the call, so an epoch rollover inside next_batch is already applied
        first = st.position - w.global_batch + w.rank * w.batch_size  # this rank's first window in the epoch
        rng = np.random.Generator(np.random.PCG64([w.seed, st.epoch, first, _TRAIN_TAG]))
        return permutation_batch(x, rng, self.predict_k, w.device)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()


def permutation_eval_batches(
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    max_batches: int,
    *,
    predict_k: float,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[dict[str, torch.Tensor]]:
    """The same validation windows *and orders* at every evaluation, so successive losses compare."""
    from lmforge.data.batches import eval_windows

    device = torch.device(device)
    windows = eval_windows(tokens, seq_len, batch_size, max_batches, rank=rank, world_size=world_size)
    for i, (x, _) in enumerate(windows):
        if x.size(1) < 2:  # a one-token split: nothing to predict from
            return
        rng = np.random.Generator(np.random.PCG64([seed, 1 << 20, i * world_size + rank, _VAL_TAG]))
        yield permutation_batch(x, rng, predict_k, device)


# ----------------------------------------------------------------------------------------------
# Model: two-stream attention over the Encoder's weights


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

    The fused qkv weight is sliced ([q heads | k heads | v heads] rows), so the query rows never
    pay for keys and values nobody reads. Returns (B, L - start, d).
    """
    B, L, _ = x.shape
    nh, nkv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
    nq = nh * hd
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(x[:, max(start, T) :], w[:nq], None if b is None else b[:nq])  # (B, P, nh*hd)
    if start < T:  # the content rows' queries come out of the fused projection with their keys/values
        qkv = attn.qkv(x[:, :T]).view(B, T, nh + 2 * nkv, hd)
        q_h, k, v = qkv.split([nh, nkv, nkv], dim=2)
        q = torch.cat([q_h, q.view(B, L - T, nh, hd)], dim=1)  # (B, L, nh, hd)
    else:
        kv = F.linear(x[:, :T], w[nq:], None if b is None else b[nq:]).view(B, T, 2 * nkv, hd)
        k, v = kv.split([nkv, nkv], dim=2)
        q = q.view(B, L - start, nh, hd)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, rows, hd)
    if rope_q is not None and rope_k is not None:
        q = apply_rope(q, rope_q[0][:, :, start:], rope_q[1][:, :, start:])
        k = apply_rope(k, *rope_k)
    y = attn._attend(q, k, v, causal=False, attn_mask=mask)  # (B, nh, L - start, hd)
    y = y.transpose(1, 2).reshape(B, L - start, nq)
    return attn.resid_drop(attn.proj(y))


# ----------------------------------------------------------------------------------------------
# Loss, cost and setup


def plm_loss(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy of the target tokens, predicted from the query stream through the MLM head.

    Metrics: `plm_loss` always; in eval mode also `plm_acc` (it needs the targets' logits, which
    training never materialises: there the head is fused with the loss).
    """
    enc = unwrap(model)
    ids, positions = batch["input_ids"], batch["target_positions"]
    g = model(ids, perm_rank=batch["perm_rank"], target_positions=positions).flatten(0, 1)  # (B*P, d)
    targets = ids.gather(1, positions).flatten()  # (B*P,)
    metrics: dict[str, torch.Tensor] = {}
    if enc.training:
        loss = linear_cross_entropy(enc.mlm_head(g), enc.lm_head.weight, targets, bias=enc.mlm_bias)
    else:
        logits = enc.mlm_logits(g).float()  # (B*P, vocab)
        loss = F.cross_entropy(logits, targets)
        metrics["plm_acc"] = (logits.argmax(-1) == targets).float().mean()
    metrics["plm_loss"] = loss.detach()
    return loss, metrics


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


def setup(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> Any:
    """Two-stream encoder, windows of the token stream with sampled orders, fixed validation batches."""
    from lmforge.data.batches import CausalLMBatches
    from lmforge.objectives import ObjectiveSetup

    tcfg, pcfg = cfg.train, cfg.plm
    pcfg.validate()
    if cfg.model.arch != "encoder":
        raise LmforgeError(
            f"--objective plm trains an encoder, but model.arch={cfg.model.arch}; use --model.arch encoder"
        )
    query_id = shards.tokenizer().mask_id
    if query_id is None:
        raise LmforgeError(
            "--objective plm starts its query stream from the mask token, but the tokenizer has none; "
            "use a tokenizer with a mask token (every one lmforge trains has one)"
        )
    model = PermutationEncoder(cfg.model, query_id, full_context=pcfg.full_context)
    # Not used by PLM: frozen so that DDP does not wait for their gradients.
    for p in [*model.pooler.parameters(), *model.cls_head.parameters()]:
        p.requires_grad_(False)
    windows = CausalLMBatches(
        shards.tokens("train"), seq_len, tcfg.batch_size, seed=tcfg.seed, rank=dist.rank,
        world_size=dist.world_size, device=device,
    )  # fmt: skip
    batches = PermutationLMBatches(windows, pcfg.predict_k)
    val = shards.tokens("val")
    val_batches = None
    if len(val) > 2:

        def val_batches() -> Iterator[dict[str, torch.Tensor]]:
            return permutation_eval_batches(
                val, seq_len, tcfg.batch_size, tcfg.eval_batches, predict_k=pcfg.predict_k, seed=tcfg.seed,
                rank=dist.rank, world_size=dist.world_size, device=device,
            )  # fmt: skip

    flops = plm_flops_per_token(model, seq_len, batches.n_predict)
    return ObjectiveSetup(model, batches, val_batches, plm_loss, flops)


__all__ = [
    "PLMConfig",
    "PermutationEncoder",
    "PermutationLMBatches",
    "num_predict",
    "permutation_batch",
    "permutation_eval_batches",
    "plm_flops_per_token",
    "plm_loss",
    "sample_orders",
]
