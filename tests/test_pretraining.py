"""What `lmforge pretrain` says about the model it trains."""

from __future__ import annotations

from lmforge.models import ModelConfig, build_model
from lmforge.pretraining import describe_params


def test_the_parameter_count_says_what_the_words_mean():
    """A tied 10k x 256 embedding is 2.56M of an LSTM's parameters: said so, not hidden in a
    "non-embedding" figure that (for scaling laws) keeps it as the output layer."""
    lstm = build_model(ModelConfig(arch="lstm", vocab_size=10_000, d_model=256, n_layer=2))
    assert (
        describe_params(lstm)
        == "3.62M parameters, 2.56M of them the token embedding (tied to the output layer)"
    )
    untied = build_model(ModelConfig(vocab_size=4096, d_model=64, n_layer=1, n_head=2, tie_embeddings=False))
    assert describe_params(untied).endswith("0.26M of them the token embedding")
