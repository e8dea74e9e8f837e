"""AdamW with weight-decay groups, and the learning-rate schedules.

The schedule is a pure function of the step, so resuming needs no scheduler state: the step
counter alone restores the exact learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.train.config import TrainConfig


def param_groups(
    model: nn.Module, weight_decay: float, lr_scale: Callable[[str], float] | None = None
) -> list[dict]:
    """Decay matrices of linear layers only; optionally scale each parameter's learning rate.

    Biases and norm gains are scale parameters that decay would pull towards zero for no benefit,
    and embeddings are looked up sparsely, so decaying all rows every step would shrink rare
    tokens' vectors (the choice of GPT-3/Llama recipes and HF's Trainer as well).

    `lr_scale(name)` gives a multiplier of the scheduled learning rate per parameter (layer-wise
    decay in fine-tuning: lower layers move less); parameters sharing a multiplier share a group,
    which remembers it as `lr_scale`. Frozen parameters (requires_grad False) are left out.
    """
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decay = p.dim() >= 2 and id(p) not in embedding_params
        scale = float(lr_scale(name)) if lr_scale is not None else 1.0
        groups.setdefault((decay, scale), []).append(p)
    if lr_scale is None:  # the two classic groups, always in the same order (checkpoints rely on it)
        return [
            {"params": groups.get((True, 1.0), []), "weight_decay": weight_decay},
            {"params": groups.get((False, 1.0), []), "weight_decay": 0.0},
        ]
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (-kv[0][1], not kv[0][0]))
    ]


def fused_available(device: torch.device) -> bool:
    """Fused AdamW runs one kernel for all parameters (CUDA, and CPU since PyTorch 2.4)."""
    return device.type in ("cuda", "cpu")


def make_optimizer(
    model: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    *,
    lr_scale: Callable[[str], float] | None = None,
) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay, lr_scale)
    if not any(g["params"] for g in groups):
        raise LmforgeError("every parameter is frozen: nothing to train; unfreeze at least the task head")
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
    if cfg.schedule == "inverse_sqrt":  # continuous with the warmup's last step; floors do not apply
        return peak * math.sqrt(max(cfg.warmup_steps, 1) / (step + 1))
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
