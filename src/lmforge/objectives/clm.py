"""Causal language modelling: predict token t+1 from tokens <= t."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def clm_loss(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy (nats/token) over a (B, T) batch of inputs and targets."""
    x, y = batch
    logits = model(x)  # (B, T, V)
    logits = getattr(logits, "logits", logits)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
    return loss, {}
