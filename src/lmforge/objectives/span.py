"""T5's span corruption (Raffel et al. 2020): an encoder-decoder learns to write the spans it cannot see.

    window: Thank you for inviting me to your party last week .
    input : Thank you <s0> me to your party last <s1> </s>
    target: <s0> for inviting <s1> week . </s>
    loss  = teacher-forced cross-entropy of the target (decoder input: the target shifted right
            behind the decoder's start token), padding ignored

The batches (noise spans, sentinels, window lengths) come from `lmforge.data.span_batches`; the
sentinels are the top `span.num_sentinels` ids of the model's vocabulary, which pretraining sizes
for them (`lmforge.pretraining._settle_model`). The decoder starts from the tokenizer's padding
token (the end-of-text token where there is none), as `lmforge finetune seq2seq` does, so a
pretrained run is fine-tuned with the framing it was trained with. This module also holds what
both encoder-decoder objectives share: that loss and their FLOPs count (BART's denoising is
`lmforge.objectives.denoise`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.heads import IGNORE
from lmforge.models.seq2seq import seq2seq_tokens, shift_right
from lmforge.models.weights import unwrap
from lmforge.objectives.base import Objective, ObjectiveSetup
from lmforge.objectives.losses import linear_cross_entropy

_ACC_ROWS = 4096  # target rows whose logits the validation accuracy holds at once


@dataclass
class SpanConfig:
    # Share of each window's tokens that are corrupted (T5: 0.15).
    noise_density: float = 0.15
    # Mean length of a corrupted span, in tokens (T5: 3); the span count is noise / this, rounded.
    mean_span_length: float = 3.0
    # Sentinel ids reserved at the top of the model's vocabulary, one per span of a window (T5: 100);
    # the model's vocab_size must hold the tokenizer's tokens and these.
    num_sentinels: int = 100

    def validate(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            raise LmforgeError(
                f"span.noise_density={self.noise_density} must be between 0 and 1 (exclusive); T5 uses 0.15"
            )
        if not (math.isfinite(self.mean_span_length) and self.mean_span_length >= 1.0):
            raise LmforgeError(f"span.mean_span_length={self.mean_span_length} must be at least 1; T5 uses 3")
        if self.num_sentinels < 1:
            raise LmforgeError(f"span.num_sentinels={self.num_sentinels} must be at least 1; T5 uses 100")


# ------------------------------------------------------------------------------------------------
# What the encoder-decoder objectives share


@dataclass(frozen=True)
class TeacherForcedLoss:
    """(model, batch) -> mean cross-entropy of the target tokens, the decoder reading the targets
    shifted right behind `start`; in eval mode also `acc`, the share of target tokens the model
    ranks first (computed in chunks of rows, never over all logits at once)."""

    start: int
    pad: int

    def __call__(
        self, model: nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = batch["target_ids"]
        h = model(
            batch["input_ids"], shift_right(targets, self.start, self.pad), src_mask=batch.get("attention_mask"),
            token_index=batch.get("token_index"), features=True,
        )  # fmt: skip
        inner = unwrap(model)
        head = inner.output_layer()
        x, y = h.flatten(0, 1), targets.flatten()
        loss = linear_cross_entropy(x, head.weight, y, bias=head.bias, chunk_rows=head.chunk_rows)
        metrics: dict[str, torch.Tensor] = {}
        if not inner.training:
            metrics["acc"] = _accuracy(x, head, y)
        return loss, metrics


@torch.no_grad()
def _accuracy(x: torch.Tensor, head: Any, y: torch.Tensor) -> torch.Tensor:
    real = y != IGNORE
    x, y = x[real], y[real]
    correct = torch.zeros((), device=x.device)
    for i in range(0, len(y), _ACC_ROWS):
        logits = x[i : i + _ACC_ROWS] @ head.weight.T
        if head.bias is not None:
            logits = logits + head.bias
        correct += (logits.argmax(-1) == y[i : i + _ACC_ROWS]).sum()
    return correct / max(len(y), 1)


def target_tokens(batch: dict[str, Any]) -> int:
    """A batch weighs as many target tokens as its loss averages over."""
    return int((batch["target_ids"] != IGNORE).sum())


def seq2seq_objective(name: str, tokenizer: Any) -> Objective:
    tokens = seq2seq_tokens(tokenizer)
    return Objective(
        name, TeacherForcedLoss(tokens.start, tokens.pad), batch_weight=target_tokens, figures=("loss", "acc")
    )


def seq2seq_flops(model: nn.Module, source_len: float, target_len: float, positions: int) -> float:
    """Training FLOPs per batch position (the trainer counts batch_size x seq_len of them) of an
    encoder-decoder whose examples hold `source_len` input and `target_len` target tokens: 6 per
    weight per token through each half (the output layer with the decoder), plus the attention
    terms of `EncoderDecoder.flops_per_token` (self-attention over the own side, cross-attention
    over the source)."""
    cfg = model.config
    embeddings = {id(model.encoder.tok_emb.weight), id(model.decoder.tok_emb.weight)}
    for stack in (model.encoder, model.decoder):
        if isinstance(getattr(stack, "pos_emb", None), nn.Embedding):
            embeddings.add(id(stack.pos_emb.weight))

    def weights(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters() if id(p) not in embeddings)

    d = cfg.d_model
    encoder = 6.0 * weights(model.encoder) + 12.0 * cfg.n_layer * d * source_len
    decoder = 6.0 * (weights(model.decoder) + model.lm_head.weight.numel())
    decoder += 12.0 * cfg.dec_layers * d * (target_len + source_len)
    return (source_len * encoder + target_len * decoder) / positions


def validation(make: Callable[[], Any], eval_batches: int) -> Callable[[], Any] | None:
    """The fixed validation batches of the source `make()` builds, or None (with the reason on
    stderr) when the validation split is too small for one."""
    try:
        source = make()
    except LmforgeError as e:
        print(f"no validation: {e}", file=sys.stderr)
        return None

    def val_batches() -> Any:
        return source.eval_batches(eval_batches)

    return val_batches


# ------------------------------------------------------------------------------------------------
# Setup


def setup(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> ObjectiveSetup:
    """Encoder-decoder, span-corruption batches of the train split, fixed ones of the val split."""
    from lmforge.data.span_batches import SpanCorruptionBatches
    from lmforge.models import build_model

    tcfg, scfg = cfg.train, cfg.span
    scfg.validate()
    tokenizer = shards.tokenizer()
    pad = seq2seq_tokens(tokenizer).pad
    model = build_model(cfg.model)
    common = {
        "vocab_size": cfg.model.vocab_size, "noise_density": scfg.noise_density,
        "mean_span_length": scfg.mean_span_length, "num_sentinels": scfg.num_sentinels,
        "eos_id": shards.eos_id, "pad_id": pad, "seed": tcfg.seed, "rank": dist.rank,
        "world_size": dist.world_size, "device": device,
    }  # fmt: skip
    batches = SpanCorruptionBatches(
        shards.tokens("train"), shards.doc_offsets("train"), seq_len, tcfg.batch_size, **common
    )
    if batches.target_len > cfg.model.max_len:
        raise LmforgeError(
            f"span corruption of {batches.window}-token windows makes targets of {batches.target_len} tokens, "
            f"over model.max_len={cfg.model.max_len}; lower span.noise_density or train.seq_len"
        )
    val_batches = None
    if shards.num_tokens("val") > 1:
        val_batches = validation(
            lambda: SpanCorruptionBatches(
                shards.tokens("val"), shards.doc_offsets("val"), seq_len, tcfg.batch_size, name="val",
                drop_last=False, **common,
            ),
            tcfg.eval_batches,
        )  # fmt: skip
    flops = seq2seq_flops(model, seq_len, batches.target_len, seq_len)
    return ObjectiveSetup(model, batches, val_batches, seq2seq_objective("span", tokenizer), flops)


__all__ = [
    "SpanConfig",
    "TeacherForcedLoss",
    "seq2seq_flops",
    "seq2seq_objective",
    "setup",
    "target_tokens",
]
