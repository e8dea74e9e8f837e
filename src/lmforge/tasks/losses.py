"""The training losses of the task heads: the head returns logits, the task computes the loss.

Each function takes the head (unwrapped: it reads the head's class weights and CRF), the outputs
of its `forward` and the batch, and returns (mean loss, metrics as 0-d tensors), as objectives do.
The dev loss of an evaluation is the same function on the same forward pass's outputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.heads import IGNORE

Outputs = dict[str, torch.Tensor]


def classification_loss(
    model: nn.Module, out: Outputs, batch: dict[str, Any]
) -> tuple[torch.Tensor, Outputs]:
    """Cross-entropy of the labels (class-weighted when asked), and the batch's accuracy."""
    logits = out["logits"]
    loss = F.cross_entropy(logits, batch["label"], weight=model.class_weights)
    return loss, {"accuracy": (logits.argmax(-1) == batch["label"]).float().mean().detach()}


def token_classification_loss(
    model: nn.Module, out: Outputs, batch: dict[str, Any]
) -> tuple[torch.Tensor, Outputs]:
    """With a CRF, the negative log-likelihood of each sentence's word tags (the emissions read at
    each word's first piece); without one, the cross-entropy of the labelled word pieces."""
    em = out["emissions"]
    if model.crf is not None:  # every window holds at least one word (encode_tokens)
        words = model.word_emissions(em, batch)
        return model.crf(words, batch["word_labels"], batch["word_mask"].to(em.device)), {}
    labels = batch["piece_labels"]
    loss = F.cross_entropy(
        em.flatten(0, 1), labels.flatten(), weight=model.class_weights, ignore_index=IGNORE
    )
    return loss, {}


def span_loss(model: nn.Module, out: Outputs, batch: dict[str, Any]) -> tuple[torch.Tensor, Outputs]:
    """The mean of the start and the end position's cross-entropy (BERT's SQuAD loss)."""
    start = F.cross_entropy(out["start_logits"], batch["start_positions"])
    end = F.cross_entropy(out["end_logits"], batch["end_positions"])
    return (start + end) / 2, {}


__all__ = ["classification_loss", "span_loss", "token_classification_loss"]
