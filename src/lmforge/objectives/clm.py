"""Causal language modelling: predict token t+1 from tokens <= t."""

from __future__ import annotations

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
