"""ARPA files: exact round trips, files from other tools, and one-line errors that cite the line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.ngram import DiscountFallbackWarning, NGramLM, fit_ngram, read_arpa, write_arpa
from lmforge.text.corpus import read_lines

LINES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog",
    "",
    "the cat ate the dog food",
] * 3


def train(order: int = 3, smoothing: str = "modified-kneser-ney", **kw) -> NGramLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiscountFallbackWarning)
        return fit_ngram(LINES, order=order, smoothing=smoothing, **kw)


def assert_same_model(a: NGramLM, b: NGramLM) -> None:
    assert a.vocab.words == b.vocab.words
    for n in range(a.order):
        np.testing.assert_array_equal(a.keys[n], b.keys[n])
        np.testing.assert_array_equal(a.logprob[n], b.logprob[n])
        np.testing.assert_array_equal(a.backoff[n], b.backoff[n])
        np.testing.assert_array_equal(a.has_backoff[n], b.has_backoff[n])


@pytest.mark.parametrize("smoothing", ["mle", "add-k", "kneser-ney", "modified-kneser-ney"])
@pytest.mark.parametrize("name", ["lm.arpa", "lm.arpa.gz"])
def test_round_trip_is_exact(tmp_path, smoothing, name):
    lm = train(4, smoothing, lowercase=True)
    loaded = read_arpa(write_arpa(lm, tmp_path / name))
    assert_same_model(lm, loaded)
    assert loaded.meta["smoothing"] == smoothing and loaded.lowercase
    for s in ["the cat sat", "The DOG ate a zebra", "", "<unk> cat"]:
        assert loaded.score(s) == lm.score(s)
        assert loaded.full_scores(s) == lm.full_scores(s)
    assert loaded.perplexity(LINES) == lm.perplexity(LINES)


def test_file_layout(tmp_path):
    path = write_arpa(train(2), tmp_path / "lm.arpa")
    text = path.read_text(encoding="utf-8")
    assert "\\data\\\nngram 1=" in text and text.endswith("\n\\end\\\n")
    lines = text.splitlines()
    bos = next(x for x in lines if x.split("\t")[1:2] == ["<s>"])
    assert bos.startswith("-99\t<s>\t")  # <s> is never predicted, but starts bigrams: it has a backoff
    # Bigrams (the top order) carry no backoff.
    bigrams = lines[lines.index("\\2-grams:") + 1 : lines.index("\\end\\") - 1]
    assert bigrams and all(len(x.split("\t")) == 2 for x in bigrams)


def test_handmade_file_follows_the_backoff_rule(handmade_arpa):
    lm = read_arpa(handmade_arpa)
    assert lm.words[:3] == ("<unk>", "<s>", "</s>")
    assert lm.logprob_of("<unk>", [], bos=False) == -100.0  # what KenLM assumes for a missing <unk>
    assert lm.logprob_of("a", []) == pytest.approx(-0.2)
    assert lm.logprob_of("c", ["a", "b"], bos=False) == pytest.approx(-0.05)
    # "a b" is not in the file: bow(a) + p(b) (the added context changes nothing).
    assert lm.logprob_of("b", ["a"], bos=False) == pytest.approx(-0.3 - 0.7)
    assert lm.logprob_of("a", ["a", "b"], bos=False) == pytest.approx(-0.2 - 0.5)
    assert lm.logprob_of("a", ["b", "c"], bos=False) == pytest.approx(-0.15 - 0.5)
    # </s> after "b c": bow(b c) + p(</s> | c) = bow(b c) + bow(c) + p(</s>), and c has no backoff.
    assert lm.score("a b c") == pytest.approx(-0.2 + (-0.3 - 0.7) + -0.05 + (-0.15 - 0.6))
    assert sum(lm.next_word_distribution("a b").values()) == pytest.approx(
        sum(10 ** lm.logprob_of(w, "a b") for w in lm.words if w != "<s>")
    )


def write_lines(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "bad.arpa"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.fixture
def good_lines(tmp_path) -> list[str]:
    return write_arpa(train(3), tmp_path / "good.arpa").read_text(encoding="utf-8").splitlines()


def line_of(lines: list[str], prefix: str) -> int:
    """1-based number of the first line starting with `prefix`."""
    return next(i for i, x in enumerate(lines, 1) if x.startswith(prefix))


def test_truncated_file_names_the_line(tmp_path, good_lines):
    cut = line_of(good_lines, "\\2-grams:") + 3
    p = write_lines(tmp_path, good_lines[:cut])
    with pytest.raises(
        LmforgeError, match=rf"bad\.arpa:{cut}: the file ends after 3 of the \d+ 2-grams.*truncated"
    ):
        read_arpa(p)
    p = write_lines(tmp_path, good_lines[:-1])  # no \end\
    with pytest.raises(LmforgeError, match=r"bad\.arpa:\d+: the file ends without '\\end\\'"):
        read_arpa(p)
    p.write_bytes("\n".join(good_lines).encode()[:-200])  # cut inside a line of the last section
    with pytest.raises(LmforgeError, match=r"bad\.arpa:\d+: "):
        read_arpa(p)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda x: x.replace("\t", "\tzz yy ", 1), "expected a 2-gram entry"),  # four words
        (lambda x: "abc" + x[x.index("\t") :], "probability 'abc' of a 2-gram is not a number"),
        (lambda x: x + "\tnope", "backoff 'nope'"),
        (lambda x: "", "an empty line"),
        (lambda x: x.split("\t")[0] + "\tnever seen", "'never', which is not among the 1-grams"),
    ],
)
def test_malformed_entry_names_the_line(tmp_path, good_lines, mutate, message):
    lines = list(good_lines)
    i = line_of(lines, "\\2-grams:") + 1  # 1-based number of the second bigram line
    if "nope" in message:  # a bigram without a backoff gets a non-numeric one
        i = next(j for j in range(i, len(lines) + 1) if lines[j - 1].count("\t") == 1)
    lines[i - 1] = mutate(lines[i - 1])
    with pytest.raises(LmforgeError, match=rf"bad\.arpa:{i}: .*{message}"):
        read_arpa(write_lines(tmp_path, lines))


def test_duplicate_and_count_mismatch(tmp_path, good_lines):
    lines = list(good_lines)
    first = line_of(lines, "\\3-grams:") + 1
    lines.insert(first + 1, lines[first - 1])  # the first trigram again, as the third entry
    lines[line_of(lines, "ngram 3=") - 1] = f"ngram 3={int(lines[line_of(lines, 'ngram 3=') - 1][8:]) + 1}"
    with pytest.raises(
        LmforgeError, match=rf"bad\.arpa:{first + 2}: this 3-gram is listed twice \(also on line {first}\)"
    ):
        read_arpa(write_lines(tmp_path, lines))
    lines = list(good_lines)
    n1 = line_of(lines, "ngram 1=")
    lines[n1 - 1] = f"ngram 1={int(lines[n1 - 1][8:]) - 1}"
    with pytest.raises(LmforgeError, match=r"expected '\\2-grams:' .*do not match"):
        read_arpa(write_lines(tmp_path, lines))


def test_not_an_arpa_file(tmp_path, handmade_arpa):
    p = tmp_path / "x.txt"
    p.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"x\.txt:2: no '\\data\\' line"):
        read_arpa(p)
    with pytest.raises(LmforgeError, match="no such ARPA file"):
        read_arpa(tmp_path / "missing.arpa")
    text = handmade_arpa.read_text(encoding="utf-8")
    p.write_text(text.replace("-99 <s> -0.4\n", "").replace("ngram 1=5", "ngram 1=4"), encoding="utf-8")
    with pytest.raises(LmforgeError, match="no '<s>'"):
        read_arpa(p)


def test_read_lines_keeps_empty_lines(tmp_path):
    (tmp_path / "a.txt").write_text("one two\n\nthree", encoding="utf-8")
    (tmp_path / "b.txt").write_text("four\n", encoding="utf-8")
    assert list(read_lines(tmp_path)) == ["one two", "", "three", "four"]
