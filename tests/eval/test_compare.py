"""`lmforge compare`: per-word perplexity and bits per byte, defined so that an n-gram model and a
neural model with any tokenizer are scored on the same scale."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import make_text
from torch import nn

from lmforge.cli import main
from lmforge.eval.compare import (
    TextStats,
    bits_per_byte,
    neural_nll,
    ngram_nll,
    per_word_perplexity,
    read_text,
    score_ngram,
)
from lmforge.eval.scoring import score_carried
from lmforge.models.config import ModelConfig
from lmforge.ngram import fit_ngram, read_arpa, write_arpa
from lmforge.run import LM
from lmforge.tokenizer import Tokenizer, TokenizerConfig

# Tiny training texts give Kneser-Ney too few counts-of-counts; the fallback warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore::lmforge.ngram.DiscountFallbackWarning")

TEXT = "the cat sat\n\n  the   dog sat on the mat \nthe cat\n"
LINES = ["the cat sat", "", "the dog sat on the mat", "the cat"]


def test_text_counts_follow_the_ngram_convention(tmp_path):
    f = tmp_path / "test.txt"
    f.write_text(TEXT, encoding="utf-8")
    lines, stats = read_text(f)
    assert lines == LINES  # normalised to single-spaced words; the empty line is kept
    assert stats == TextStats(lines=4, words=11, bytes=sum(len(x) for x in LINES) + 4)
    assert stats.word_events == 15  # 11 words + one </s> per line
    lines, stats = read_text(f, skip_empty=True)
    assert len(lines) == 3 and stats.word_events == 14


def test_definitions_on_a_toy_case():
    stats = TextStats(lines=2, words=4, bytes=10)
    # A model paying exactly 1 bit for each of the W = 6 events has per-word perplexity 2.
    assert per_word_perplexity(6 * math.log(2), stats) == pytest.approx(2.0)
    # 10 bits over 10 bytes is 1 bit per byte.
    assert bits_per_byte(10 * math.log(2), stats) == pytest.approx(1.0)
    assert ngram_nll(-2.0) == pytest.approx(2 * math.log(10))  # log10 prob -> nats


def test_ngram_per_word_perplexity_is_ngram_eval_perplexity(tmp_path):
    train = ["the cat sat on the mat", "the dog sat", "a cat and a dog", ""] * 3
    arpa = write_arpa(fit_ngram(train, order=3), tmp_path / "lm3.arpa")
    lines, stats = read_text([str(_write(tmp_path / "t.txt", TEXT))])
    score = score_ngram(arpa, lines, stats)
    ev = read_arpa(arpa).perplexity(LINES)
    assert score.type == "3-gram" and score.tokens == ev.tokens == stats.word_events
    assert score.word_perplexity == pytest.approx(ev.perplexity, rel=1e-9)
    assert score.parameters == sum(read_arpa(arpa).ngram_counts())
    assert score.bits_per_byte == pytest.approx(-ev.log10_prob / math.log10(2) / stats.bytes)


class _Unigram(nn.Module):
    """A 'neural' LM predicting a fixed distribution, returning (logits, state) like a recurrent model."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, idx, state=None):
        return self.logits.expand(*idx.shape, -1), (torch.zeros(1),)


class _NoState(_Unigram):
    def forward(self, idx):  # windows only: the (logits, state) tuple is unpacked by compare
        return super().forward(idx)


@pytest.mark.parametrize("model_cls", [_Unigram, _NoState])
def test_word_level_neural_model_and_ngram_share_the_per_word_formula(tmp_path, model_cls):
    """Give a word-level 'neural' model and a unigram ARPA model the same probability for every
    word and for the end of a line: their per-word perplexities and bits per byte must agree."""
    lines = [line for line in LINES if line]  # the ARPA model below has p(</s> | <s>) like any word
    tok = Tokenizer.train(lines, TokenizerConfig(kind="word", vocab_size=64, min_frequency=1))
    words = sorted({w for line in lines for w in line.split()})
    events = [*words, "</s>"]
    probs = np.arange(1, len(events) + 1, dtype=np.float64)
    probs /= probs.sum()
    logits = torch.full((tok.vocab_size,), -1e9, dtype=torch.float64)
    for w, p in zip(events, probs):
        logits[tok.eos_id if w == "</s>" else tok.token_to_id(w)] = math.log(p)
    arpa = ["\\data\\", f"ngram 1={len(events) + 1}", "", "\\1-grams:", "-99\t<s>"]
    arpa += [f"{math.log10(p)!r}\t{w}" for w, p in zip(events, probs)]
    arpa_path = _write(tmp_path / "uni.arpa", "\n".join([*arpa, "", "\\end\\", ""]))

    stats = read_text(_write(tmp_path / "t.txt", "\n".join(lines) + "\n"))[1]
    ngram = score_ngram(arpa_path, lines, stats)
    model = model_cls(logits.float())
    lm = LM(model, tok, {}, ModelConfig(vocab_size=tok.vocab_size, max_len=4), tmp_path)
    nll, tokens = neural_nll(lm, lines, batch_size=2)
    assert tokens == stats.word_events == ngram.tokens  # word-level: one token per word and per line end
    assert per_word_perplexity(nll, stats) == pytest.approx(ngram.word_perplexity, rel=1e-5)
    assert bits_per_byte(nll, stats) == pytest.approx(ngram.bits_per_byte, rel=1e-5)


class _TinyLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.rnn, self.head = nn.Embedding(20, 8), nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 20)

    def forward(self, idx, state=None):
        h, new = self.rnn(self.emb(idx), state)
        return self.head(h), new


@pytest.mark.parametrize(("streams", "context"), [(1, 7), (3, 5), (4, 64)])
def test_carried_state_scores_each_piece_as_one_sequence(streams, context):
    model = _TinyLSTM().eval()
    ids = np.random.default_rng(0).integers(0, 20, 101)
    nll, count = score_carried(model, ids, context=context, streams=streams)
    n = len(ids) - 1
    B = max(1, min(streams, n // context or 1))
    seg = -(-n // B)
    expected = 0.0
    with torch.no_grad():
        for b in range(B):  # each piece in one call, from a fresh state
            x = torch.from_numpy(ids[b * seg : min((b + 1) * seg, n)][None])
            y = torch.from_numpy(ids[b * seg + 1 : min((b + 1) * seg, n) + 1][None])
            expected += F.cross_entropy(model(x)[0][0], y[0], reduction="sum").item()
    assert count == n and nll == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_cli_compares_an_arpa_and_a_gpt_run(tmp_path, capsys):
    from lmforge.pretraining import pretrain

    train = _write(tmp_path / "train.txt", make_text(3000, seed=1))
    test = _write(tmp_path / "test.txt", make_text(300, seed=2))
    arpa = write_arpa(fit_ngram(train.read_text().splitlines(), order=3), tmp_path / "lm3.arpa")
    run = tmp_path / "gpt"
    pretrain(
        data=str(train), out=str(run), tokenizer={"kind": "bpe", "vocab_size": 300},
        prep={"txt_unit": "line", "val_fraction": 0.1}, model={"n_layer": 1, "n_head": 2, "d_model": 32, "max_len": 32},
        train={"max_steps": 3, "batch_size": 4, "eval_batches": 1, "device": "cpu", "progress": False,
               "tensorboard": False, "plot": False},
    )  # fmt: skip
    capsys.readouterr()
    png = tmp_path / "cmp.png"
    code = main(["compare", "--data", str(test), str(arpa), str(run), "--plot", str(png), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert "ppl/word" in out and "bits/byte" in out  # the human table comes first
    assert [m["type"] for m in res["models"]] == ["3-gram", "transformer"]
    assert res["word_events"] == res["words"] + res["lines"]
    ngram, gpt = res["models"]
    assert ngram["word_perplexity"] == pytest.approx(read_arpa(arpa).perplexity_file(test).perplexity)
    assert gpt["tokens"] > res["word_events"]  # BPE: several tokens per word; the measures still compare
    for m in res["models"]:
        assert m["word_perplexity"] == pytest.approx(math.exp(m["nll"] / res["word_events"]))
        assert m["bits_per_byte"] == pytest.approx(m["nll"] / math.log(2) / res["bytes"])
        assert m["parameters"] > 0 and m["seconds"] >= 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and res["plot"] == str(png)


def test_cli_errors_are_one_line(tmp_path, capsys):
    test = _write(tmp_path / "test.txt", "a b\n")
    code = main(["compare", "--data", str(test), str(tmp_path / "missing.arpa")])
    err = capsys.readouterr().err
    assert (
        code == 2 and "missing.arpa: no such ARPA file or run directory" in err and len(err.splitlines()) == 1
    )


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path
