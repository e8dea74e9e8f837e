"""Models: one Transformer stack, configured as a causal decoder (GPT) or a bidirectional encoder (BERT)."""

from lmforge.models.build import build_model
from lmforge.models.config import ModelConfig
from lmforge.models.encoder import Encoder
from lmforge.models.layers import KVCache
from lmforge.models.transformer import Transformer, TransformerStack

__all__ = [
    "Encoder",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "TransformerStack",
    "build_model",
]
