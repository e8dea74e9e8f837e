"""`lmforge ngram train` and `lmforge ngram eval` end to end, as a user types them."""

from __future__ import annotations

import json

import pytest

from lmforge.cli import main
from lmforge.ngram import read_arpa

TRAIN = "the cat sat on the mat\nthe dog sat on the log\n\na cat and a dog\nthe cat ate the dog food\n" * 20
TEST = "the cat sat on the log\na zebra ate the food\n\n"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "train.txt").write_text(TRAIN, encoding="utf-8")
    (tmp_path / "test.txt").write_text(TEST, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("smoothing", ["mle", "add-k", "kneser-ney", "modified-kneser-ney"])
def test_train_then_eval(capsys, corpus, smoothing):
    arpa = corpus / "lm3.arpa"
    code, out, err = run_cli(
        capsys, "ngram", "train", "--data", str(corpus / "train.txt"), "--order", "3",
        "--smoothing", smoothing, "--k", "0.5", "--out", str(arpa), "--json",
    )  # fmt: skip
    assert code == 0, err
    res = last_json(out)
    assert res["order"] == 3 and res["smoothing"] == smoothing and res["vocab_size"] == 14
    assert res["training_sentences"] == 100 and len(res["ngrams"]) == 3
    assert f"saved 3-gram {smoothing} model to {arpa}" in out

    code, out, err = run_cli(capsys, "ngram", "eval", str(arpa), "--data", str(corpus / "test.txt"), "--json")
    assert code == 0, err
    res = last_json(out)
    # 3 lines: 6 + 5 + 0 words, one </s> each; "zebra" is the one unknown word.
    assert (res["sentences"], res["words"], res["tokens"], res["oov"]) == (3, 11, 14, 1)
    expected = read_arpa(arpa).perplexity(TEST.splitlines())
    assert res["perplexity"] == pytest.approx(expected.perplexity)
    assert "perplexity" in out.splitlines()[1]


def test_human_output_and_vocabulary_options(capsys, corpus):
    arpa = corpus / "lm.arpa.gz"
    code, out, err = run_cli(
        capsys, "ngram", "train", "--data", str(corpus / "*.txt"), "--order", "2", "--min_count", "30",
        "--max_vocab", "3", "--lowercase", "--out", str(arpa),
    )  # fmt: skip
    assert code == 0, err
    assert "vocab_size" in out and "ngrams" in out and not out.strip().startswith("{")
    assert read_arpa(arpa).words == ("<unk>", "<s>", "</s>", "the", "cat", "dog")


def test_train_rejects_nul_bytes_past_the_sniffed_head(capsys, corpus):
    """NULs deep in a text file would otherwise become words and make the ARPA file not text."""
    data = corpus / "tail.txt"
    data.write_bytes(TRAIN.encode() * 10 + b"the cat\x00\x00 sat\n")  # ~9.6 KB of text first
    assert data.stat().st_size > 9 * 1024
    arpa = corpus / "lm.arpa"
    code, out, err = run_cli(
        capsys, "ngram", "train", "--data", str(data), "--order", "2", "--out", str(arpa)
    )
    assert code == 2 and out == ""
    assert err.startswith("lmforge: error: ") and f"{data}:" in err and "NUL" in err and err.count("\n") == 1
    assert not arpa.exists() and not list(corpus.glob("*.arpa*"))


def test_user_errors_are_one_line(capsys, corpus):
    code, _, err = run_cli(
        capsys, "ngram", "eval", str(corpus / "test.txt"), "--data", str(corpus / "test.txt")
    )
    assert code == 2 and err.startswith("lmforge: error: ") and "test.txt:" in err and err.count("\n") == 1
    code, _, err = run_cli(
        capsys, "ngram", "train", "--data", str(corpus / "nope.txt"), "--out", str(corpus / "x.arpa")
    )
    assert code == 2 and "nope.txt: no such file or directory" in err
    code, _, err = run_cli(
        capsys,
        "ngram",
        "train",
        "--data",
        str(corpus / "test.txt"),
        "--order",
        "12",
        "--out",
        str(corpus / "x.arpa"),
    )
    assert code == 2 and "use order 8 or less" in err
    with pytest.raises(SystemExit):
        main(["ngram", "train", "--data", "x", "--out", "y", "--smoothing", "witten-bell"])
