"""Pretraining objectives: each turns a model and a batch into a loss, and knows its own data.

Every objective module provides `setup(cfg, shards, seq_len, dist, device) -> ObjectiveSetup`:
the model it trains, resumable training batches, a factory of fixed validation batches and the
loss function. `lmforge pretrain --objective NAME` looks the module up in `OBJECTIVES`, so adding
an objective means adding a module and a line here; the trainer never changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Loss = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]

# objective name -> module providing setup()
OBJECTIVES: dict[str, str] = {
    "clm": "lmforge.objectives.clm",
    "mlm": "lmforge.objectives.mlm",
    "mlm+nsp": "lmforge.objectives.mlm",
    "mlm+sop": "lmforge.objectives.mlm",
    "plm": "lmforge.objectives.plm",
    "electra": "lmforge.objectives.electra",
    # clm for the classic baselines (model.arch lstm/gru/nnlm): truncated BPTT, state carried
    "clm-carried-state": "lmforge.objectives.rnn",
}


@dataclass
class ObjectiveSetup:
    model: nn.Module  # freshly initialised, on the CPU
    batches: Any  # next_batch(), state_dict(), load_state_dict(), batch_size, seq_len
    val_batches: Callable[[], Iterable[Any]] | None  # the same fixed batches at every call
    loss: Loss
    flops_per_token: float  # training FLOPs per input token, for MFU


def setup_objective(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> ObjectiveSetup:
    """The ObjectiveSetup of `cfg.objective` (cfg is a PretrainConfig)."""
    from lmforge.models.config import BASELINE_ARCHS

    name = cfg.objective
    if name == "clm" and cfg.model.arch in BASELINE_ARCHS:
        name = "clm-carried-state"
    module = importlib.import_module(OBJECTIVES[name])
    return module.setup(cfg, shards, seq_len, dist, device)


__all__ = ["OBJECTIVES", "Loss", "ObjectiveSetup", "setup_objective"]
