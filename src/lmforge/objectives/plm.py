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

Where the pieces live: the batches with their sampled orders in `lmforge.data.permutation_batches`,
the two-stream model in `lmforge.models.permutation`; this module holds the loss and the setup.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.weights import unwrap
from lmforge.objectives.base import Objective, ObjectiveSetup, batch_rows
from lmforge.objectives.clm import perplexity
from lmforge.objectives.losses import output_layer_loss


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
        loss = output_layer_loss(enc.mlm_head(g), enc.output_layer(), targets)
    else:
        logits = enc.mlm_logits(g).float()  # (B*P, vocab)
        loss = F.cross_entropy(logits, targets)
        metrics["plm_acc"] = (logits.argmax(-1) == targets).float().mean()
    metrics["plm_loss"] = loss.detach()
    return loss, metrics


def setup(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> ObjectiveSetup:
    """Two-stream encoder, windows of the token stream with sampled orders, fixed validation batches."""
    from lmforge.data.batches import CausalLMBatches
    from lmforge.data.permutation_batches import PermutationLMBatches, permutation_eval_batches
    from lmforge.models.permutation import PermutationEncoder, plm_flops_per_token

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
    return ObjectiveSetup(
        model,
        batches,
        val_batches,
        Objective(
            "plm",
            plm_loss,
            batch_weight=batch_rows,
            derived=perplexity,
            figures=("loss", "ppl", "plm_loss", "plm_acc"),
        ),
        flops,
    )


__all__ = ["PLMConfig", "plm_loss", "setup"]
