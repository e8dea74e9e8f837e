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


def test_a_separate_validation_file_gives_the_reported_perplexity(tmp_path, tiny_corpus):
    """`--val_data`: the run's validation split is that file, and it cannot be combined with shards."""
    import pytest
    from tests.conftest import make_text
    from tests.test_run import TINY

    import lmforge
    from lmforge.data.shards import Shards
    from lmforge.errors import LmforgeError

    valid = tmp_path / "valid.txt"
    valid.write_text(make_text(400, seed=99), encoding="utf-8")
    run = tmp_path / "run"
    result = lmforge.pretrain(data=str(tiny_corpus), val_data=str(valid), out=str(run), **TINY)
    shards = Shards.open(run / "data")
    assert shards.manifest["val_sources"] == [str(valid)] and result.val_ppl is not None
    assert shards.manifest["splits"]["train"]["documents"] == 40  # none of the corpus held out
    with pytest.raises(LmforgeError, match="--val_data goes with raw --data"):
        lmforge.pretrain(data=str(run / "data"), val_data=str(valid), out=str(tmp_path / "r2"), **TINY)
