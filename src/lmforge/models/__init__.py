"""Models: one Transformer stack, configured as a causal decoder (GPT), a bidirectional
encoder (BERT) or both with cross-attention between them (the encoder-decoder)."""

from lmforge.models.build import build_model
from lmforge.models.config import ModelConfig
from lmforge.models.encoder import Encoder
from lmforge.models.layers import KVCache
from lmforge.models.seq2seq import EncoderDecoder
from lmforge.models.transformer import Transformer, TransformerStack

__all__ = [
    "Encoder",
    "EncoderDecoder",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "TransformerStack",
    "build_model",
]
