"""The scoring API: per sentence, batched, per word, next-word distributions, perplexity."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lmforge.ngram import DiscountFallbackWarning, NGramLM, fit_ngram

LINES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "", "the cat ate food"] * 4


@pytest.fixture(scope="module")
def lm() -> NGramLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiscountFallbackWarning)
        return fit_ngram(LINES, order=3)


def test_batch_and_single_sentence_scores_agree(lm):
    sents = ["the cat sat", "", "zebra zebra the", "a dog and a cat ate the food", "<unk>"]
    batch = lm.score_sentences(sents)
    assert batch.tolist() == pytest.approx([lm.score(s) for s in sents], abs=1e-9)
    assert lm.score_sentences([]).shape == (0,)
    for bos, eos in [(True, False), (False, True), (False, False)]:
        got = lm.score_sentences(sents, bos=bos, eos=eos).tolist()
        assert got == pytest.approx([lm.score(s, bos=bos, eos=eos) for s in sents], abs=1e-9)
    assert lm.score("", bos=False, eos=False) == 0.0


def test_full_scores_add_up_and_chain_the_conditionals(lm):
    words = lm.full_scores("the cat sat on a log")
    assert [w.word for w in words] == ["the", "cat", "sat", "on", "a", "log", "</s>"]
    assert sum(w.log10_prob for w in words) == pytest.approx(lm.score("the cat sat on a log"))
    assert words[2].log10_prob == pytest.approx(lm.logprob_of("sat", "the cat"))
    assert words[-1].log10_prob == pytest.approx(lm.logprob_of("</s>", "the cat sat on a log"))
    assert [w.ngram_length for w in words][:3] == [2, 3, 3]
    assert lm.full_scores("the zebra")[1].oov and not lm.full_scores("the zebra")[0].oov


def test_next_word_arrays(lm):
    lp = lm.next_word_log10probs("the")
    assert lp.shape == (len(lm.words),) and lp[lm.words.index("<s>")] == -np.inf
    assert np.power(10.0, lp).sum() == pytest.approx(1.0, abs=1e-5)
    dist = lm.next_word_distribution("the")
    assert max(dist, key=dist.get) == "cat"
    assert 0 < lm.prob("cat", "the") < 1


def test_perplexity_counts_like_kenlm(lm):
    res = lm.perplexity(["the cat sat", "", "the zebra"])
    assert (res.sentences, res.words, res.tokens, res.oov) == (3, 5, 8, 1)
    total = lm.score("the cat sat") + lm.score("") + lm.score("the zebra")
    assert res.log10_prob == pytest.approx(total)
    assert res.perplexity == pytest.approx(10 ** (-total / 8))
    oov_lp = lm.full_scores("the zebra")[1].log10_prob
    assert res.perplexity_excluding_oov == pytest.approx(10 ** (-(total - oov_lp) / 7))
    assert math.isfinite(lm.perplexity(iter(LINES)).perplexity)  # any iterable of lines
