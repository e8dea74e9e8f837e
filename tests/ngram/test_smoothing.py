"""Smoothing: distributions sum to 1, hand-computed discounts and probabilities, and interpolated
Kneser-Ney against a direct (slow, dict-based) implementation of Chen & Goodman's formulas."""

from __future__ import annotations

import functools
import random
import warnings
from collections import Counter
from fractions import Fraction as F

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.ngram import DiscountFallbackWarning, NGramLM, fit_ngram
from lmforge.ngram.smoothing import FALLBACK_DISCOUNTS, kn_discounts

METHODS = ["mle", "add-k", "kneser-ney", "modified-kneser-ney"]

# Bigram counts: <s> a 2, a a 4, a </s> 1, <s> b 1, b b 3, b </s> 2, a b 1, <s> c 1, c </s> 1
# -> counts-of-counts t1..t4 = 5, 2, 1, 1 (see test_modified_kn_discounts_by_hand).
HAND = ["a a a a a", "b b b b", "a b", "c"]


def fit(sentences, order, smoothing, **kw) -> NGramLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiscountFallbackWarning)
        return fit_ngram(sentences, order=order, smoothing=smoothing, **kw)


def random_lines(seed: int, n: int = 200, words: str = "a b c d e f g", max_len: int = 10) -> list[str]:
    rng = random.Random(seed)
    pool = words.split()
    return [" ".join(rng.choice(pool) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


def zipf_lines(seed: int, n: int, vocab: int, max_len: int) -> list[str]:
    """Sentences over w0..w{vocab-1} with Zipf-like frequencies, so every count-of-count is populated."""
    rng = random.Random(seed)
    pool = [f"w{i}" for i in range(vocab)]
    weights = [1 / (i + 1) for i in range(vocab)]
    return [" ".join(rng.choices(pool, weights, k=rng.randint(0, max_len))) for _ in range(n)]


@pytest.mark.parametrize("smoothing", METHODS)
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_next_word_distribution_sums_to_one(smoothing, order):
    lm = fit(random_lines(order), order, smoothing, k=0.5)
    rng = random.Random(7)
    contexts = [[], ["zz"], ["<unk>"], ["g", "g", "g"]] + [
        [rng.choice("abcdefg") for _ in range(rng.randint(1, 6))] for _ in range(12)
    ]
    for ctx in contexts:
        for bos in (True, False):
            dist = lm.next_word_distribution(ctx, bos=bos)
            assert "<s>" not in dist and "</s>" in dist and "<unk>" in dist
            assert sum(dist.values()) == pytest.approx(1.0, abs=1e-5), (ctx, bos)
            # prob() and the sentence scorer agree with the distribution.
            for w in ("a", "</s>", "<unk>"):
                assert lm.prob(w, ctx, bos=bos) == pytest.approx(dist[w], rel=1e-6, abs=1e-12)


def test_every_method_trains_and_scores_with_unknown_words():
    for smoothing in METHODS:
        lm = fit(random_lines(1), 3, smoothing)
        res = lm.perplexity(["a b c", "zz a", ""])
        assert res.oov == 1 and res.words == 5 and res.tokens == 5 + 3 and res.sentences == 3
        if smoothing != "mle":
            assert np.isfinite(res.perplexity) and res.perplexity > 1


def test_modified_kn_discounts_by_hand():
    lm = fit(HAND, 2, "modified-kneser-ney")
    # Y = t1 / (t1 + 2 t2) = 5/9; D1 = 1 - 2Y t2/t1, D2 = 2 - 3Y t3/t2, D3+ = 3 - 4Y t4/t3.
    assert lm.meta["discounts"][1] == pytest.approx([5 / 9, 7 / 6, 7 / 9])
    # Unigram continuation counts a 2, b 3, c 1, </s> 3: t4 = 0, so order 1 falls back (with a warning).
    assert lm.meta["discount_fallback_orders"] == [1]
    assert lm.meta["discounts"][0] == list(FALLBACK_DISCOUNTS)
    with pytest.warns(DiscountFallbackWarning, match=r"order\(s\) \[1\]"):
        fit_ngram(HAND, order=2, smoothing="modified-kneser-ney")


def test_kn_probabilities_by_hand():
    lm = fit(HAND, 2, "kneser-ney")
    assert lm.meta["discounts"] == [pytest.approx([1 / 3]), pytest.approx([5 / 9])]
    assert lm.meta["discount_fallback_orders"] == []
    # Unigrams: continuation counts sum to 9, 4 types seen, 5 predictable words (<unk> </s> a b c):
    # gamma = (1/3 * 4) / 9 = 4/27; p(a) = (2 - 1/3)/9 + gamma/5 = 29/135; p(<unk>) = 4/135.
    assert lm.prob("<unk>", [], bos=False) == pytest.approx(4 / 135, rel=1e-6)
    assert lm.prob("a", [], bos=False) == pytest.approx(29 / 135, rel=1e-6)
    # After <s>: a 2, b 1, c 1 -> gamma = 5/9 * 3/4 = 5/12; p = (2 - 5/9)/4 + 5/12 * 29/135 = 73/162.
    assert lm.prob("a", []) == pytest.approx(73 / 162, rel=1e-6)
    # An unseen bigram gets gamma(<s>) * p(</s>): p(</s>) = (3 - 1/3)/9 + 4/135 = 44/135.
    assert lm.prob("</s>", []) == pytest.approx(5 / 12 * 44 / 135, rel=1e-6)


def test_add_k_and_mle_by_hand():
    # After <s>: a 2, b 1, c 1 of 4; 5 predictable words.
    assert fit(HAND, 2, "add-k", k=1.0).prob("a", []) == pytest.approx(3 / 9, rel=1e-6)
    assert fit(HAND, 2, "add-k", k=0.5).prob("a", []) == pytest.approx(2.5 / 6.5, rel=1e-6)
    mle = fit(HAND, 2, "mle")
    assert mle.prob("a", []) == pytest.approx(0.5, rel=1e-6)
    assert mle.prob("</s>", []) < 1e-90  # unseen after <s>: probability 0 (-99 in log10)
    assert mle.prob("a", [], bos=False) == pytest.approx(6 / 16, rel=1e-6)  # 6 of 16 predicted tokens


def test_kn_discount_formulas():
    assert kn_discounts(np.array([0, 5, 2, 1, 1]), modified=True) == pytest.approx([5 / 9, 7 / 6, 7 / 9])
    assert kn_discounts(np.array([0, 5, 2, 1, 1]), modified=False) == pytest.approx([5 / 9])
    assert kn_discounts(np.array([0, 5, 0, 1, 1]), modified=False) is None  # t2 = 0
    assert kn_discounts(np.array([0, 1, 1, 9, 1]), modified=True) is None  # D2 < 0


def test_bad_options_are_one_line_errors():
    with pytest.raises(LmforgeError, match="smoothing='witten-bell' is not known"):
        fit_ngram(["a"], order=2, smoothing="witten-bell")
    with pytest.raises(LmforgeError, match="k=0"):
        fit_ngram(["a"], order=2, smoothing="add-k", k=0)
    with pytest.raises(LmforgeError, match="order=0"):
        fit_ngram(["a"], order=0)
    with pytest.raises(LmforgeError, match="use order 4 or less"):
        fit_ngram(["a b", "c"], order=5)
    with pytest.raises(LmforgeError, match="reserved word '</s>'"):
        fit_ngram(["a b", "c </s> d"], order=2)
    with pytest.raises(LmforgeError, match="no lines"):
        fit_ngram([], order=2)


def test_order_as_long_as_the_longest_sentence_trains():
    lm = fit(["a b", "c"], 4, "modified-kneser-ney")
    assert lm.ngram_counts() == [6, 5, 3, 1]
    assert sum(lm.next_word_distribution("a b").values()) == pytest.approx(1.0, abs=1e-5)


def test_vocabulary_cutoff_maps_rare_words_to_unk():
    lm = fit(["a a a b", "a c", "a b"], 2, "kneser-ney", min_count=2)
    assert lm.words == ("<unk>", "<s>", "</s>", "a", "b")
    assert lm.full_scores("a c")[1].oov
    assert lm.prob("c", "a") == lm.prob("<unk>", "a")  # c was counted as <unk>
    lm = fit(["a a a b", "a c", "a b"], 2, "kneser-ney", max_vocab=1, lowercase=True)
    assert lm.words == ("<unk>", "<s>", "</s>", "a")
    assert lm.prob("A", "a") == lm.prob("a", "a")  # the model lowercases what it scores


# ----------------------------------------------------------------- reference implementation


def reference_kn(sentences: list[list[str]], order: int, modified: bool):
    """Interpolated (modified) Kneser-Ney exactly as written in Chen & Goodman / Heafield et al. 2013."""
    raw = [Counter() for _ in range(order)]
    for s in sentences:
        toks = ["<s>", *s, "</s>"]
        for j in range(1, len(toks)):
            for n in range(1, min(order, j + 1) + 1):
                raw[n - 1][tuple(toks[j - n + 1 : j + 1])] += 1
    adj = [dict(c) for c in raw]
    for n in range(1, order):
        left = Counter(g[1:] for g in raw[n])
        adj[n - 1] = {g: (c if g[0] == "<s>" else left[g]) for g, c in raw[n - 1].items()}
    discounts = []
    for a in adj:
        t = Counter(a.values())
        y = F(t[1], t[1] + 2 * t[2])
        if modified:
            d = [1 - 2 * y * F(t[2], t[1]), 2 - 3 * y * F(t[3], t[2]), 3 - 4 * y * F(t[4], t[3])]
        else:
            d = [y, y, y]
        discounts.append(d)
    vocab = {w for s in sentences for w in s} | {"</s>", "<unk>"}
    followers: dict[tuple[str, ...], dict[str, int]] = {}
    for a in adj:
        for g, c in a.items():
            followers.setdefault(g[:-1], {})[g[-1]] = c

    totals = {ctx: sum(ext.values()) for ctx, ext in followers.items()}

    def disc(n: int, c: int) -> F:
        return F(0) if c == 0 else discounts[n - 1][min(c, 3) - 1]

    @functools.cache
    def gamma_of(ctx: tuple[str, ...]) -> F:
        return sum(disc(len(ctx) + 1, c) for c in followers[ctx].values()) / totals[ctx]

    @functools.cache
    def p(w: str, ctx: tuple[str, ...]) -> F:
        n = len(ctx) + 1
        ext = followers.get(ctx, {})
        if n > 1 and not ext:
            return p(w, ctx[1:])
        c = ext.get(w, 0)
        lower = F(1, len(vocab)) if n == 1 else p(w, ctx[1:])
        return max(c - disc(n, c), 0) / totals[ctx] + gamma_of(ctx) * lower

    return p, sorted(vocab), discounts


@pytest.mark.parametrize("modified", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_kneser_ney_matches_the_formulas(modified, seed):
    order = 3
    lines = zipf_lines(seed, n=600, vocab=200, max_len=8)
    sents = [line.split() for line in lines]
    ref, vocab, discounts = reference_kn(sents, order, modified)
    lm = fit(lines, order, "modified-kneser-ney" if modified else "kneser-ney")
    assert lm.meta["discount_fallback_orders"] == []
    for ours, theirs in zip(lm.meta["discounts"], discounts):
        assert ours == pytest.approx([float(d) for d in theirs[: len(ours)]])
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(8)] + ["zz"]
    for _ in range(12):
        ctx = ("<s>", *(rng.choice(words) for _ in range(rng.randint(0, 4))))[-(order - 1) :]
        bos = ctx[0] == "<s>"
        ref_ctx = tuple("<unk>" if w == "zz" else w for w in ctx)
        dist = lm.next_word_distribution(list(ctx[1:] if bos else ctx), bos=bos)
        for w in vocab:
            assert dist[w] == pytest.approx(float(ref(w, ref_ctx)), rel=2e-6), (ctx, w)
