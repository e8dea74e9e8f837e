"""BART's denoising (Lewis et al. 2020): an encoder-decoder learns to write back the text it saw corrupted.

    window: The cat sat . It was warm .
    input : It <mask> warm . The <mask> . </s>     (sentences shuffled, spans infilled)
    target: The cat sat . It was warm . </s>
    loss  = teacher-forced cross-entropy of the target, as for span corruption

The paper's best setting: text infilling (30% of the tokens, in spans of Poisson(3) lengths, each
span one mask token) with sentence permutation. The batches come from
`lmforge.data.denoise_batches`; the mask is the tokenizer's own mask token, so no vocabulary rows
are reserved. Loss, decoder framing and FLOPs are those of `lmforge.objectives.span`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.models.seq2seq import seq2seq_tokens
from lmforge.objectives.base import ObjectiveSetup
from lmforge.objectives.span import seq2seq_flops, seq2seq_objective, validation


@dataclass
class DenoiseConfig:
    # Share of each window's tokens masked by text infilling (BART: 0.3).
    mask_ratio: float = 0.3
    # Mean of the Poisson distribution of the infilled span lengths, in tokens (BART: 3).
    poisson_lambda: float = 3.0
    # Shuffle the window's sentences before infilling (BART's sentence permutation).
    permute_sentences: bool = True

    def validate(self) -> None:
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise LmforgeError(f"denoise.mask_ratio={self.mask_ratio} must be between 0 and 1; BART uses 0.3")
        if not (math.isfinite(self.poisson_lambda) and self.poisson_lambda > 0):
            raise LmforgeError(f"denoise.poisson_lambda={self.poisson_lambda} must be above 0; BART uses 3")


def expected_source_len(window: int, cfg: DenoiseConfig) -> float:
    """The mean input length of a full window: kept tokens, one mask per span (about
    masked / lambda of them), the end-of-text token."""
    masked = math.ceil(window * cfg.mask_ratio)
    return window - masked + masked / cfg.poisson_lambda + 1


def setup(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> ObjectiveSetup:
    """Encoder-decoder, denoising batches of the train split, fixed ones of the val split."""
    from lmforge.data.denoise_batches import DenoisingBatches, sentence_end_table
    from lmforge.models import build_model

    tcfg, dcfg = cfg.train, cfg.denoise
    dcfg.validate()
    tokenizer = shards.tokenizer()
    if tokenizer.mask_id is None:
        raise LmforgeError(
            "--objective denoise replaces each span with the tokenizer's mask token, but this tokenizer has none; "
            "train one with lmforge tokenizer train (its kinds all have one), or use --objective span"
        )
    pad = seq2seq_tokens(tokenizer).pad
    model = build_model(cfg.model)
    common = {
        "mask_id": tokenizer.mask_id, "sentence_ends": sentence_end_table(tokenizer),
        "mask_ratio": dcfg.mask_ratio, "poisson_lambda": dcfg.poisson_lambda,
        "permute": dcfg.permute_sentences, "eos_id": shards.eos_id, "pad_id": pad, "seed": tcfg.seed,
        "rank": dist.rank, "world_size": dist.world_size, "device": device,
    }  # fmt: skip
    batches = DenoisingBatches(
        shards.tokens("train"), shards.doc_offsets("train"), seq_len, tcfg.batch_size, **common
    )
    val_batches = None
    if shards.num_tokens("val") > 1:
        val_batches = validation(
            lambda: DenoisingBatches(
                shards.tokens("val"), shards.doc_offsets("val"), seq_len, tcfg.batch_size, name="val",
                drop_last=False, **common,
            ),
            tcfg.eval_batches,
        )  # fmt: skip
    flops = seq2seq_flops(model, expected_source_len(batches.window, dcfg), seq_len, seq_len)
    return ObjectiveSetup(model, batches, val_batches, seq2seq_objective("denoise", tokenizer), flops)


__all__ = ["DenoiseConfig", "expected_source_len", "setup"]
