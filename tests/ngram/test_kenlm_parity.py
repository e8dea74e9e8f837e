"""KenLM loads our ARPA files and scores every sentence as we do (the reference implementation)."""

from __future__ import annotations

import random
import re
import warnings

import numpy as np
import pytest

from lmforge.ngram import DiscountFallbackWarning, NGramLM, fit_ngram, read_arpa, write_arpa
from lmforge.utils.shared_data import shared_data_path

kenlm = pytest.importorskip("kenlm", reason="kenlm is not installed (pip install -e '.[ngram-ref]')")

WORDS = ["a", "b", "c", "d", "e", "f", "g"]


def lines(seed: int, n: int, words: list[str], max_len: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


def assert_kenlm_agrees(lm: NGramLM, path, sentences: list[str]) -> None:
    ken = kenlm.Model(str(write_arpa(lm, path)))
    for s in sentences:
        ours = lm.full_scores(s)
        theirs = list(ken.full_scores(s))
        assert [w.ngram_length for w in ours] == [t[1] for t in theirs], s
        assert [w.oov for w in ours] == [t[2] for t in theirs], s
        np.testing.assert_allclose([w.log10_prob for w in ours], [t[0] for t in theirs], atol=2e-5, rtol=1e-6)
        # KenLM sums in float32: compare totals to float32 accuracy.
        assert lm.score(s) == pytest.approx(ken.score(s), rel=2e-6, abs=1e-4)
        assert lm.score(s, bos=False, eos=False) == pytest.approx(
            ken.score(s, bos=False, eos=False), rel=2e-6, abs=1e-4
        )


@pytest.mark.parametrize("smoothing", ["mle", "add-k", "kneser-ney", "modified-kneser-ney"])
@pytest.mark.parametrize("order", [2, 3, 5])  # KenLM refuses unigram-only models
def test_kenlm_scores_our_files_identically(tmp_path, smoothing, order):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiscountFallbackWarning)
        lm = fit_ngram(lines(order, 300, WORDS[:5]), order=order, smoothing=smoothing, k=0.3, min_count=2)
    # Unseen words, a literal <unk>, empty sentences and contexts never seen in training.
    test = [*lines(100 + order, 60, [*WORDS, "zz", "<unk>"]), ""]
    assert_kenlm_agrees(lm, tmp_path / "lm.arpa", test)


def with_tabs(text: str) -> str:
    """KenLM insists on tabs around the words of an entry; the handmade file uses spaces."""
    out, n = [], 0
    for line in text.splitlines():
        if re.fullmatch(r"\\\d-grams:", line):
            n = int(line[1])
        parts = line.split()
        if n and len(parts) in (n + 1, n + 2) and not line.startswith("\\"):
            line = parts[0] + "\t" + " ".join(parts[1 : n + 1]) + "".join("\t" + b for b in parts[n + 1 :])
        out.append(line)
    return "\n".join(out) + "\n"


def test_kenlm_reads_a_handmade_file_like_us(handmade_arpa):
    """A file without <unk>, specials in any order: both readers apply the same rules.

    (KenLM's default model refuses a trigram whose context bigram is absent, so it is added here;
    our reader accepts the file without it too, see test_arpa.py.)
    """
    text = handmade_arpa.read_text(encoding="utf-8")
    text = text.replace("ngram 2=2", "ngram 2=3").replace("-0.2 <s> a\n", "-0.2 <s> a\n-0.25 a b -0.1\n")
    handmade_arpa.write_text(with_tabs(text), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ken = kenlm.Model(str(handmade_arpa))
    lm = read_arpa(handmade_arpa)
    for s in ["a b c", "a b", "b c a", "c c", "a zz b c", ""]:
        ours = [w.log10_prob for w in lm.full_scores(s)]
        np.testing.assert_allclose(ours, [t[0] for t in ken.full_scores(s)], atol=2e-5)


@pytest.mark.shared_data
def test_kenlm_parity_on_wikitext2(tmp_path):
    valid = shared_data_path("wikitext2", "wiki.valid.tokens")
    test = shared_data_path("wikitext2", "wiki.test.tokens")
    if valid is None or test is None:
        pytest.skip("WikiText-2 is not in the shared data folder")
    train_lines = valid.read_text(encoding="utf-8").split("\n")[:1500]
    lm = fit_ngram(train_lines, order=4, smoothing="modified-kneser-ney")
    test_lines = test.read_text(encoding="utf-8").split("\n")[:300]
    assert_kenlm_agrees(lm, tmp_path / "wt2.arpa", test_lines)
    ken = kenlm.Model(str(tmp_path / "wt2.arpa"))
    total = sum(ken.score(s) for s in test_lines)
    res = lm.perplexity(test_lines)
    assert res.log10_prob == pytest.approx(total, rel=1e-6)
