"""AdamW with weight-decay groups, and the learning-rate schedules.

The schedule is a pure function of the step, so resuming needs no scheduler state: the step
counter alone restores the exact learning rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices of linear layers only.

    Biases and norm gains are scale parameters that decay would pull towards zero for no benefit,
    and embeddings are looked up sparsely, so decaying all rows every step would shrink rare
    tokens' vectors (the choice of GPT-3/Llama recipes and HF's Trainer as well).
    """
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embedding_params else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def fused_available(device: torch.device) -> bool:
    """Fused AdamW runs one kernel for all parameters (CUDA, and CPU since PyTorch 2.4)."""
    return device.type in ("cuda", "cpu")


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    fused = fused_available(device)
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused,
        foreach=None if fused else True,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    total = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / total)
    if cfg.schedule == "cosine":
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return peak - (peak - floor) * progress
    # wsd: hold the peak, then decay linearly to the floor over the last decay_ratio of training.
    decay_start = 1.0 - cfg.decay_ratio
    if progress <= decay_start:
        return peak
    return peak - (peak - floor) * (progress - decay_start) / cfg.decay_ratio
