"""Models: one configurable Transformer (decoder now; encoder and encoder-decoder share its blocks)."""

from lmforge.models.config import ModelConfig
from lmforge.models.layers import KVCache
from lmforge.models.transformer import (
    Transformer,
    build_model,
)

__all__ = [
    "KVCache",
    "ModelConfig",
    "Transformer",
    "build_model",
]
