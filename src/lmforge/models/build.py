"""`build_model`: the model a `ModelConfig` names, the one place that maps `model.arch` to a class."""

from __future__ import annotations

from torch import nn

from lmforge.models.config import BASELINE_ARCHS, ModelConfig
from lmforge.models.encoder import Encoder
from lmforge.models.rnn import build_baseline
from lmforge.models.seq2seq import EncoderDecoder
from lmforge.models.transformer import Transformer


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg.arch` names (randomly initialised, on the CPU, in float32): a `Transformer`
    decoder, an `Encoder`, an `EncoderDecoder`, or one of the classic baselines (`lmforge.models.rnn`)."""
    if cfg.arch == "encoder":
        return Encoder(cfg)
    if cfg.arch == "encoder-decoder":
        return EncoderDecoder(cfg)
    if cfg.arch in BASELINE_ARCHS:
        return build_baseline(cfg)
    return Transformer(cfg)


__all__ = ["build_model"]
