"""Vectorised counting against a plain dict-of-tuples count, and the vocabulary cut-offs."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.ngram.counts import continuation_counts, count_ngrams, counts_of_counts, unique_inverse_counts
from lmforge.ngram.vocab import (
    BOS,
    EOS,
    UNK,
    CorpusIds,
    Vocabulary,
    sentence_stream,
    split_sentences,
    split_words,
)


def random_sentences(seed: int, n: int = 60, words: str = "a b c d e f", max_len: int = 9) -> list[list[str]]:
    rng = random.Random(seed)
    pool = words.split()
    return [[rng.choice(pool) for _ in range(rng.randint(0, max_len))] for _ in range(n)]


def reference_counts(sentences: list[list[str]], order: int) -> list[Counter]:
    """Every n-gram that ends at a predicted position of `<s> w1 .. wk </s>` (never crossing sentences)."""
    out = [Counter() for _ in range(order)]
    for s in sentences:
        toks = ["<s>", *s, "</s>"]
        for j in range(1, len(toks)):
            for n in range(1, min(order, j + 1) + 1):
                out[n - 1][tuple(toks[j - n + 1 : j + 1])] += 1
    return out


def table_as_dict(tables, vocab: Vocabulary, n: int) -> dict[tuple[str, ...], int]:
    """Decode the order-n table back to word tuples by following prefix rows down to the unigrams."""
    grams: list[list[tuple[str, ...]]] = [[(w,) for w in vocab.words]]
    for m in range(2, n + 1):
        t = tables[m - 1]
        grams.append([grams[m - 2][p] + (vocab.words[w],) for p, w in zip(t.prefix, t.word)])
    counts = tables[n - 1].count
    return {g: int(c) for g, c in zip(grams[n - 1], counts) if c > 0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_match_a_dict_count(seed):
    sents = random_sentences(seed)
    vocab = Vocabulary.build(*_types_counts(sents))
    ids, _ = sentence_stream(sents, vocab)
    tables = count_ngrams(ids, len(vocab), 4)
    ref = reference_counts(sents, 4)
    for n in range(1, 5):
        assert table_as_dict(tables, vocab, n) == dict(ref[n - 1]), f"order {n}"
        if n > 1:
            keys = tables[n - 1].prefix * len(vocab) + tables[n - 1].word
            assert np.all(np.diff(keys) > 0), "tables are sorted by (prefix row, word)"


def _types_counts(sents):
    c = CorpusIds.from_sentences(sents)
    return c.types, c.counts


def test_suffix_rows_and_bos_flags():
    sents = random_sentences(3)
    vocab = Vocabulary.build(*_types_counts(sents))
    ids, _ = sentence_stream(sents, vocab)
    tables = count_ngrams(ids, len(vocab), 3)
    grams = [[(w,) for w in vocab.words]]
    for m in (2, 3):
        t = tables[m - 1]
        grams.append([grams[m - 2][p] + (vocab.words[w],) for p, w in zip(t.prefix, t.word)])
        for g, s, b in zip(grams[m - 1], t.suffix, t.starts_with_bos):
            assert grams[m - 2][s] == g[1:]
            assert b == (g[0] == "<s>")


def test_continuation_counts_count_distinct_left_words():
    sents = [["a", "b"], ["c", "b"], ["a", "b"], ["b"]]
    vocab = Vocabulary.build(*_types_counts(sents))
    ids, _ = sentence_stream(sents, vocab)
    tables = count_ngrams(ids, len(vocab), 2)
    adjusted = continuation_counts(tables)
    uni = dict(zip(vocab.words, adjusted[0].tolist()))
    # b follows a, c and <s>; </s> follows only b; a and c follow only <s>; <s> is never predicted.
    assert uni == {"<unk>": 0, "<s>": 0, "</s>": 1, "b": 3, "a": 1, "c": 1}
    # The highest order keeps raw counts.
    assert sorted(adjusted[1].tolist()) == sorted(tables[1].count.tolist())


def test_counts_of_counts():
    assert counts_of_counts(np.array([1, 1, 2, 3, 3, 3, 4, 5, 0])).tolist() == [0, 2, 1, 3, 1]


@pytest.mark.parametrize("n,bound", [(0, 5), (1, 5), (500, 20), (100_000, 5 * 10**10), (300, 2**62)])
def test_unique_inverse_counts_equals_numpy(n, bound):
    keys = np.random.default_rng(n).integers(0, bound, n)
    ours = unique_inverse_counts(keys, bound)
    ref = np.unique(keys, return_inverse=True, return_counts=True)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


def test_orders_beyond_the_longest_sentence_give_empty_tables():
    sents = [["a", "b"], ["c"]]
    vocab = Vocabulary.build(*_types_counts(sents))
    ids, _ = sentence_stream(sents, vocab)
    tables = count_ngrams(ids, len(vocab), 6)
    assert [len(t) for t in tables[1:]] == [5, 3, 1, 0, 0]  # <s> a b </s> is the longest n-gram


# ------------------------------------------------------------------------------------- vocabulary


def test_vocabulary_orders_by_count_then_alphabet_and_cuts_off():
    words, counts = ["b", "a", "c", "d", "<unk>"], [3, 3, 1, 5, 9]
    assert Vocabulary.build(words, counts).words == ("<unk>", "<s>", "</s>", "d", "a", "b", "c")
    assert Vocabulary.build(words, counts, min_count=3).words == ("<unk>", "<s>", "</s>", "d", "a", "b")
    assert Vocabulary.build(words, counts, max_vocab=2).words == ("<unk>", "<s>", "</s>", "d", "a")
    with pytest.raises(LmforgeError, match="min_count"):
        Vocabulary.build(words, counts, min_count=0)
    with pytest.raises(LmforgeError, match="max_vocab"):
        Vocabulary.build(words, counts, max_vocab=0)


def test_unknown_words_become_unk_and_boundaries_are_added():
    vocab = Vocabulary(("<unk>", "<s>", "</s>", "a"))
    ids, starts = sentence_stream([["a", "zz"], [], ["<unk>"]], vocab)
    assert ids.tolist() == [BOS, 3, UNK, EOS, BOS, EOS, BOS, UNK, EOS]
    assert starts.tolist() == [0, 4, 6]


def test_split_words_uses_ascii_whitespace_like_kenlm():
    assert split_words(" a\tb  c \r") == ["a", "b", "c"]
    assert split_words("a\u00a0b c") == ["a\u00a0b", "c"]  # a no-break space is part of a word
    assert split_sentences(["A b", ""], lowercase=True) == [["a", "b"], []]
