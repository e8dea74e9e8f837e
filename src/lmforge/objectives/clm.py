"""Causal language modelling: predict token t+1 from tokens <= t."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.transformer import Transformer
from lmforge.models.weights import unwrap


def clm_loss(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy (nats/token) over a (B, T) batch of inputs and targets.

    Our Transformer is handed the targets, so that its LM head and the loss run fused without
    materialising the (B, T, vocab) logits (see `linear_cross_entropy`); that saves memory and
    about a fifth of the head's time. Other models (transformers' ones, say) return logits and
    the loss is taken from those.
    """
    x, y = batch
    if isinstance(unwrap(model), Transformer):
        return model(x, targets=y), {}
    logits = model(x)  # (B, T, V)
    logits = getattr(logits, "logits", logits)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
    return loss, {}


def setup(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> Any:
    """Decoder, windows of the token stream, and the fixed first windows of the validation split."""
    from lmforge.data.batches import CausalLMBatches, eval_windows
    from lmforge.models import build_model
    from lmforge.objectives import ObjectiveSetup

    tcfg = cfg.train
    model = build_model(cfg.model)
    batches = CausalLMBatches(
        shards.tokens("train"), seq_len, tcfg.batch_size, seed=tcfg.seed, rank=dist.rank,
        world_size=dist.world_size, device=device,
    )  # fmt: skip
    val = shards.tokens("val")
    val_batches = None
    if len(val) > 1:

        def val_batches() -> Any:
            return eval_windows(
                val, seq_len, tcfg.batch_size, tcfg.eval_batches, rank=dist.rank, world_size=dist.world_size
            )

    return ObjectiveSetup(model, batches, val_batches, clm_loss, model.flops_per_token(seq_len))
