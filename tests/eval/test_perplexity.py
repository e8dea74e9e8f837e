import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.eval.perplexity import evaluate_lm
from lmforge.eval.scoring import score_stream, token_stream
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.run import LM
from lmforge.tokenizer import Tokenizer, TokenizerConfig


def _model(max_len=16):
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_len=max_len)).eval()


def test_non_overlapping_windows_match_a_direct_computation():
    model = _model()
    ids = np.random.default_rng(0).integers(0, 64, 50)
    nll, count = score_stream(model, ids, context=16)
    expected = 0.0
    for b in range(0, 49, 16):
        x = torch.from_numpy(ids[b : min(b + 16, 49)][None])
        y = torch.from_numpy(ids[b + 1 : min(b + 17, 50)][None])
        with torch.no_grad():
            expected += F.cross_entropy(model(x)[0], y[0], reduction="sum").item()
    assert count == 49 and nll == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("stride", [1, 5, 8, 16])
def test_every_token_is_scored_exactly_once_for_any_stride(stride):
    ids = np.random.default_rng(1).integers(0, 64, 61)
    nll, count = score_stream(_model(), ids, context=16, stride=stride, batch_size=3)
    assert count == 60 and math.isfinite(nll)


def test_longer_context_does_not_hurt_a_position_aware_score():
    # A sliding window gives each token at least context-stride tokens of history; with a random
    # model the totals differ but stay the same order of magnitude.
    ids = np.random.default_rng(2).integers(0, 64, 80)
    a, _ = score_stream(_model(), ids, context=16)
    b, _ = score_stream(_model(), ids, context=16, stride=4)
    assert a / b == pytest.approx(1.0, rel=0.2)


def test_bits_per_byte_and_stream_layout(tmp_path):
    texts = ["hello world", "héllo 世界"]
    tok = Tokenizer.train(texts * 20, TokenizerConfig(kind="char", vocab_size=64, min_frequency=1))
    ids, nbytes = token_stream(tok, texts)
    assert ids[0] == tok.eos_id and ids[-1] == tok.eos_id
    assert nbytes == sum(len(t.encode()) for t in texts) + 2  # one byte per document end
    f = tmp_path / "held.jsonl"
    f.write_text('{"text": "hello world"}\n{"text": "héllo 世界"}\n', encoding="utf-8")
    model = _model()
    lm = LM(model, tok, {}, model.config, tmp_path)
    res = evaluate_lm(lm, f)
    assert res.documents == 2 and res.bytes == nbytes and res.tokens == len(ids) - 1
    assert res.bits_per_byte == pytest.approx(res.loss * res.tokens / math.log(2) / res.bytes)
    assert res.perplexity == pytest.approx(math.exp(res.loss))


def test_recurrent_runs_are_scored_with_carried_state(tmp_path, tiny_corpus):
    import lmforge
    from lmforge.eval.scoring import score_carried

    run = tmp_path / "lstm"
    lmforge.pretrain(data=str(tiny_corpus), out=str(run), **{
        "model.arch": "lstm", "model.n_layer": 1, "model.d_model": 32, "model.max_len": 16,
        "tokenizer.vocab_size": 300, "train.max_steps": 3, "train.batch_size": 4, "train.tensorboard": False,
        "train.plot": False, "train.progress": False,
    })  # fmt: skip
    lm = lmforge.load(run)
    held = tmp_path / "held.txt"
    held.write_text("the model learns the data\nthe token is a word\n" * 20, encoding="utf-8")
    res = evaluate_lm(lm, str(held), batch_size=2)
    ids, _ = token_stream(lm.tokenizer, [held.read_text(encoding="utf-8")])
    nll, count = score_carried(lm.model, ids, context=16, streams=2)
    assert res.tokens == count and abs(res.loss - nll / count) < 1e-6
    fresh = evaluate_lm(lm, str(held), batch_size=2, stride=16)  # window by window from a fresh state
    assert fresh.tokens == count and abs(fresh.loss - res.loss) > 1e-6
