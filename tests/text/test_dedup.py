"""MinHash/LSH near-duplicate detection and exact dedup."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.text.dedup import (
    LETTER,
    PUNCT,
    SPACE,
    SYMBOL,
    ExactDeduplicator,
    MinHasher,
    NearDuplicateIndex,
    ShingleBatch,
    classify,
    lsh_bands,
    mix64,
    shingle_batch,
)
from lmforge.utils.shared_data import shared_data_path

ARTICLE = (
    "The committee met on Tuesday to review the proposed changes to the city budget. "
    "Several members argued that the increase in spending on public transport was overdue, "
    "while others worried about the long term cost of maintaining the new lines. After a long "
    "debate the proposal was sent back for revision, and a final vote is expected next month "
    "once the finance office has published its updated estimates for the coming decade."
)
OTHER = (
    "Honey bees communicate the location of flowers through a waggle dance performed inside "
    "the hive. The angle of the dance relative to vertical encodes the direction of the food "
    "source with respect to the sun, and the duration of the waggle run encodes the distance. "
    "Foragers that watch the dance can then fly almost directly to the flowers."
)
ZH = (
    "数学是利用符号语言研究数量、结构、变化以及空间等概念的一门学科，从某种角度看属于形式科学的一种。"
    "数学透过抽象化和逻辑推理的使用，由计数、计算、量度和对物体形状及运动的观察而产生。"
    "数学家们拓展这些概念，为了公式化新的猜想以及从选定的公理及定义中建立起严谨推导出的定理。"
)


def edit_words(text: str, positions: list[int]) -> str:
    words = text.split()
    for i in positions:
        words[i] = "CHANGED"
    return " ".join(words)


def random_sets(rng, size: int, jaccard: float) -> tuple[np.ndarray, np.ndarray, float]:
    union = int(size / (0.5 + jaccard / 2))
    inter = round(jaccard * union)
    base = rng.integers(0, 2**63, union, dtype=np.uint64)
    half = (union - inter) // 2
    a = np.concatenate((base[:inter], base[inter : inter + half]))
    b = np.concatenate((base[:inter], base[inter + half :]))
    return a, b, inter / union


def batch_of(*sets: np.ndarray) -> ShingleBatch:
    counts = np.array([len(s) for s in sets])
    offsets = np.concatenate(([0], np.cumsum(counts)))
    n = len(sets)
    return ShingleBatch(np.concatenate(sets), offsets, counts, np.zeros((n, 4), np.int64), np.zeros(n, bool))


# ---------------------------------------------------------------------------------- shingling


def test_character_classes_treat_cjk_as_letters():
    cps = np.frombuffer("a中。#\n€é".encode("utf-32-le"), dtype=np.uint32)
    assert classify(cps).tolist() == [LETTER, LETTER, PUNCT, SYMBOL, SPACE, SYMBOL, LETTER]


def test_shingles_are_per_document_and_independent_of_the_batch():
    alone = shingle_batch([ARTICLE])
    together = shingle_batch(["x", OTHER, ARTICLE, ""])
    assert len(together) == 4
    assert set(alone.hashes.tolist()) == set(together.select(np.array([2])).hashes.tolist())
    n_words = len(ARTICLE.split())
    assert together.ngram_counts[2] == n_words - 4  # word 5-grams
    assert together.distinct_counts()[3] == 0 and together.ngram_counts[3] == 0


def test_case_and_punctuation_do_not_change_word_shingles():
    a = shingle_batch(["The quick brown fox jumps over the lazy dog"]).hashes
    b = shingle_batch(["the QUICK brown, fox jumps... over the lazy dog!"]).hashes
    assert set(a.tolist()) == set(b.tolist())


def test_chinese_uses_character_shingles():
    batch = shingle_batch([ZH, ARTICLE])
    assert batch.char_mode.tolist() == [True, False]
    letters = sum(c.isalnum() for c in ZH)
    assert batch.ngram_counts[0] == letters - 4  # character 5-grams over letters only


def test_repeated_text_has_few_distinct_ngrams():
    batch = shingle_batch(["buy cheap pills now " * 30, ARTICLE])
    ratio = batch.distinct_counts() / batch.ngram_counts
    assert ratio[0] < 0.05 and ratio[1] == 1.0


# ---------------------------------------------------------------------------------- MinHash


@pytest.mark.parametrize("method", ["oph", "classic"])
def test_minhash_estimates_jaccard(method):
    rng = np.random.default_rng(0)
    hasher = MinHasher(128, method=method)
    for size in (30, 400):
        for target in (0.3, 0.8, 0.95):
            errors = []
            for _ in range(8):
                a, b, true_j = random_sets(rng, size, target)
                sig = hasher.signatures(batch_of(mix64(a), mix64(b)))
                errors.append(np.mean(sig[0] == sig[1]) - true_j)
            assert abs(np.mean(errors)) < 0.05, (method, size, target)


def test_signatures_are_deterministic_and_empty_docs_never_match():
    batch = shingle_batch([ARTICLE, "!!!", OTHER])
    s1 = MinHasher(64, seed=3).signatures(batch)
    s2 = MinHasher(64, seed=3).signatures(batch)
    assert s1.shape == (3, 64) and np.array_equal(s1, s2)
    assert (s1[1] == np.iinfo(np.uint64).max).all()
    assert not np.array_equal(s1, MinHasher(64, seed=4).signatures(batch))


def test_lsh_bands_fit_the_signature():
    for threshold in (0.5, 0.8, 0.95):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.15


# ---------------------------------------------------------------------------------- index


@pytest.mark.parametrize("method", ["oph", "classic"])
def test_near_copy_dropped_unrelated_kept(method):
    index = NearDuplicateIndex(0.8, 128, method=method)
    assert index.add_if_new(ARTICLE)
    assert not index.add_if_new(edit_words(ARTICLE, [3]))  # one word changed
    assert not index.add_if_new(ARTICLE.upper())  # case only
    assert index.add_if_new(OTHER)
    assert index.add_if_new(edit_words(ARTICLE, list(range(0, 70, 3))))  # every third word: different
    assert len(index) == 3


def test_chinese_near_copy():
    index = NearDuplicateIndex()
    assert index.add_if_new(ZH)
    assert not index.add_if_new(ZH.replace("一门学科", "一个学科"))
    assert index.add_if_new(ZH[::-1])


def test_batch_matches_sequential_and_catches_copies_inside_the_batch():
    texts = [ARTICLE, OTHER, edit_words(ARTICLE, [5]), ZH, edit_words(OTHER, [2]), ARTICLE[::-1]]
    sequential = NearDuplicateIndex()
    expected = [sequential.add_if_new(t) for t in texts]
    assert expected == [True, True, False, True, False, True]
    batched = NearDuplicateIndex()
    assert batched.add_batch(texts).tolist() == expected
    assert not batched.add_batch([edit_words(ZH, [])])[0]  # already known from an earlier batch


def test_memory_grows_only_with_kept_documents():
    index = NearDuplicateIndex()
    index.add_if_new(ARTICLE)
    before = index.nbytes, len(index)
    for i in range(20):
        index.add_if_new(edit_words(ARTICLE, [i]))
    assert (index.nbytes, len(index)) == before


def test_text_without_shingles_is_kept_but_not_indexed():
    index = NearDuplicateIndex()
    assert index.add_if_new("!!! ???")
    assert index.add_if_new("!!! ???")
    assert len(index) == 0


def test_many_batches_stay_consistent():
    """Index runs merge as documents accumulate; lookups must still find old documents."""
    rng = np.random.default_rng(1)
    vocab = np.array([f"w{i}" for i in range(5000)])
    docs = [" ".join(rng.choice(vocab, 60)) for _ in range(300)]
    index = NearDuplicateIndex()
    for start in range(0, 300, 37):
        assert index.add_batch(docs[start : start + 37]).all()
    assert len(index) == 300 and len(index._runs.keys) <= 10
    assert not index.add_batch([edit_words(d, [0]) for d in docs[::50]]).any()


def test_bad_parameters():
    with pytest.raises(LmforgeError, match="near_dedup_threshold"):
        NearDuplicateIndex(1.5)
    with pytest.raises(LmforgeError, match="num_perm"):
        NearDuplicateIndex(0.8, num_perm=2)
    with pytest.raises(LmforgeError, match="method"):
        MinHasher(method="fancy")  # type: ignore[arg-type]


def test_real_news_is_not_flagged_as_near_duplicates():
    p = shared_data_path("zh_corpus", "thucnews_sample.txt")
    if p is None:
        pytest.skip("needs shared/data/zh_corpus")
    articles = [line for line in p.read_text(encoding="utf-8").split("\n") if line.strip()][:300]
    kept = NearDuplicateIndex().add_batch(articles)
    assert kept.mean() > 0.97


# ---------------------------------------------------------------------------------- exact


def test_exact_dedup():
    exact = ExactDeduplicator()
    assert exact.add_if_new("a text")
    assert not exact.add_if_new("a text")
    assert exact.add_if_new("a text ")
    assert len(exact) == 2
