"""Causal language modelling: predict token t+1 from tokens <= t."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.weights import unwrap
from lmforge.objectives.base import Objective, ObjectiveSetup
from lmforge.objectives.losses import output_layer_loss


def clm_loss(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy (nats/token) over a (B, T) batch of inputs and targets.

    Our models hand over their final features and their `output_layer()`, so that the LM head and
    the loss run fused without materialising the (B, T, vocab) logits (see `lmforge.objectives.losses`);
    that saves memory and about a fifth of the head's time. Other models (transformers' ones, say)
    return logits and the loss is taken from those.
    """
    x, y = batch
    inner = unwrap(model)
    if hasattr(inner, "output_layer"):
        features = model(x, features=True)  # through the wrapper: DDP and compile see the call
        return output_layer_loss(features, inner.output_layer(), y), {}
    logits = model(x)  # (B, T, V)
    logits = getattr(logits, "logits", logits)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
    return loss, {}


def target_tokens(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """A causal-LM batch weighs as many target tokens as it predicts."""
    return int(batch[1].numel())


def perplexity(loss: float) -> dict[str, float]:
    """exp(mean nats per token), capped so that a diverged loss still prints."""
    return {"ppl": math.exp(min(loss, 50))}


def causal_lm(loss: Any = clm_loss) -> Objective:
    """The causal-LM objective as the trainer takes it (also for the carried-state baselines)."""
    return Objective("clm", loss, batch_weight=target_tokens, derived=perplexity, figures=("loss", "ppl"))


def setup(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> ObjectiveSetup:
    """Decoder, windows of the token stream, and the fixed first windows of the validation split."""
    from lmforge.data.batches import CausalLMBatches, eval_windows
    from lmforge.models import build_model

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

    return ObjectiveSetup(model, batches, val_batches, causal_lm(), model.flops_per_token(seq_len))
