"""What an objective hands the trainer: a loss function and how to read its validation figures.

The trainer knows no objective. It calls `objective.loss(model, batch) -> (loss, metrics)` for
every micro-batch, weights validation batches by `objective.batch_weight(batch)`, adds the figures
`objective.derived(mean validation loss)` returns (a causal LM's perplexity) to what it reports,
and, unless `train.select_metric` names one, keeps the checkpoint best by `objective.select_metric`
(a name among the `figures` it declares, checked when training starts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Loss = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""(model, batch) -> (mean loss to minimise, named metrics as 0-d device tensors, e.g. accuracies)."""


def batch_rows(batch: Any) -> int:
    """A batch's weight in a validation mean when its loss is a mean over rows (examples)."""
    if isinstance(batch, dict):
        return int(batch["input_ids"].size(0))
    return int(batch[0].size(0))


def default_batch_weight(batch: Any) -> int:
    """The weight of a batch whose objective says nothing: a dict batch counts its rows, an
    (inputs, targets) pair its targets (a mean over tokens, as language modelling's)."""
    if isinstance(batch, dict):
        return batch_rows(batch)
    return int(batch[1].numel())


def no_derived(loss: float) -> dict[str, float]:
    """Objectives whose loss means nothing beyond itself derive no other figure from it."""
    return {}


@dataclass(frozen=True)
class Objective:
    name: str  # what the run reports it trained with (clm, mlm+nsp, ...)
    loss: Loss
    batch_weight: Callable[[Any], int] = default_batch_weight  # weight of a batch in validation means
    derived: Callable[[float], dict[str, float]] = no_derived  # figures computed from the mean loss
    select_metric: str = "loss"  # the validation figure that keeps the best weights by default
    # Every validation figure it reports ("loss" and the names its loss and `derived` give), so
    # that a train.select_metric it never reports is refused before step 1; None: not declared.
    figures: tuple[str, ...] | None = None


@dataclass
class ObjectiveSetup:
    """Everything a pretraining objective contributes to a run."""

    model: nn.Module  # freshly initialised, on the CPU
    batches: Any  # next_batch(), state_dict(), load_state_dict(), batch_size, seq_len
    val_batches: Callable[[], Iterable[Any]] | None  # the same fixed batches at every call
    objective: Objective
    flops_per_token: float = field(default=0.0)  # training FLOPs per input token, for MFU


__all__ = ["Loss", "Objective", "ObjectiveSetup", "batch_rows", "default_batch_weight", "no_derived"]
