"""Masked language modelling (BERT, RoBERTa) with optional next-sentence / sentence-order prediction.

    loss = cross-entropy of the original tokens at the masked positions
         + cross-entropy of the pair label (NSP: is B the real continuation? SOP: are A, B in order?)

The batch comes from `lmforge.data.mlm_batches.MaskedLMBatches`; the masked positions arrive as
flat indices, so only those rows of the final hidden states go through the vocabulary head.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.weights import unwrap
from lmforge.objectives.base import Objective, ObjectiveSetup
from lmforge.objectives.losses import output_layer_loss

MODES = {"mlm": "mlm", "mlm+nsp": "nsp", "mlm+sop": "sop"}


def mlm_loss(
    model: nn.Module, batch: dict[str, torch.Tensor | None]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked-LM loss (+ the pair loss when the batch has pair labels) and per-objective metrics.

    Metrics: `mlm_loss`, `pair_loss`, `pair_acc` always (as tensors, no host sync); in eval mode
    also `mlm_acc` (needs the masked positions' logits, which training never materialises).
    """
    enc = unwrap(model)
    h = model(
        batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        token_index=batch.get("token_index"),
    )
    positions, targets = batch["mlm_positions"], batch["mlm_targets"]
    metrics: dict[str, torch.Tensor] = {}
    if enc.training:  # the vocab projection fused with the loss: no (N, vocab) logits kept
        mlm = output_layer_loss(enc.mlm_features(h, positions), enc.output_layer(), targets)
    else:
        logits = enc.mlm_logits(h.flatten(0, 1).index_select(0, positions)).float()
        mlm = F.cross_entropy(logits, targets)
        metrics["mlm_acc"] = (logits.argmax(-1) == targets).float().mean()
    metrics["mlm_loss"] = mlm.detach()
    loss = mlm
    labels = batch.get("pair_labels")
    if labels is not None:
        pair_logits = enc.pair_logits(h).float()
        pair = F.cross_entropy(pair_logits, labels)
        metrics["pair_loss"] = pair.detach()
        metrics["pair_acc"] = (pair_logits.argmax(-1) == labels).float().mean()
        loss = loss + pair
    return loss, metrics


def setup(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> ObjectiveSetup:
    """Encoder, masked-LM batches (with sentence pairs for NSP/SOP) and fixed validation batches."""
    from lmforge.data.mlm_batches import MaskedLMBatches
    from lmforge.models import build_model

    tcfg, mode = cfg.train, MODES[cfg.objective]
    model = build_model(cfg.model)
    if mode == "mlm":  # no sentence-pair head to train: keep DDP from waiting for its gradients
        for p in [*model.pooler.parameters(), *model.cls_head.parameters()]:
            p.requires_grad_(False)
    tokenizer = shards.tokenizer()
    common = {"mode": mode, "masking": cfg.mlm, "eos_id": shards.eos_id, "seed": tcfg.seed, "device": device}
    batches = MaskedLMBatches(
        shards.tokens("train"), shards.doc_offsets("train"), tokenizer, seq_len, tcfg.batch_size,
        rank=dist.rank, world_size=dist.world_size, **common,
    )  # fmt: skip
    val_batches = None
    if shards.num_tokens("val") > 1:
        try:
            val_src = MaskedLMBatches(
                shards.tokens("val"), shards.doc_offsets("val"), tokenizer, seq_len, tcfg.batch_size,
                name="val", drop_last=False, rank=dist.rank, world_size=dist.world_size, **common,
            )  # fmt: skip
        except LmforgeError as e:
            print(f"no validation: {e}", file=sys.stderr)
        else:

            def val_batches() -> Any:
                return val_src.eval_batches(tcfg.eval_batches)

    flops = model.flops_per_token(seq_len, predicted_fraction=cfg.mlm.rate)
    figures = ("loss", "mlm_loss", "mlm_acc", *(("pair_loss", "pair_acc") if mode != "mlm" else ()))
    objective = Objective(cfg.objective, mlm_loss, figures=figures)
    return ObjectiveSetup(model, batches, val_batches, objective, flops)


__all__ = ["mlm_loss", "setup"]
