"""The word-level tokenizer: a closed vocabulary of whitespace words, the corpus's own <unk>, one eos
per line when prepared with txt_unit line (the classic benchmark setup)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.cli import main
from lmforge.data.shards import Shards, prepare
from lmforge.errors import LmforgeError
from lmforge.text.clean import CleanConfig
from lmforge.tokenizer import GPT_SPECIALS, Tokenizer, TokenizerConfig, train_tokenizer
from lmforge.utils.shared_data import shared_data_path

# WikiText style: pre-tokenized, with the corpus's own <unk> and "@-@" joiners.
LINES = [
    " = Valkyria Chronicles = ",
    " the game , released in 2011 , is a <unk> role @-@ playing game . ",
    " the story runs parallel to the first game . ",
    " the <unk> unit fights in the war . ",
    "the game was a success .",
]
# Keep every line as it is: the default cleaner drops short lines and copies, which a benchmark must not.
NO_CLEANING = CleanConfig(
    normalize=False, min_chars=0, max_symbol_ratio=1.0, max_repetition=1.0, dedup=False, near_dedup=False
)


def _train(lines=LINES, **kw) -> Tokenizer:
    cfg = TokenizerConfig(
        kind="word", vocab_size=kw.pop("vocab_size", 1000), min_frequency=kw.pop("mf", 1), **kw
    )
    return Tokenizer.train(lines, cfg)


def test_words_are_whitespace_tokens_and_the_corpus_unk_is_the_unknown_token():
    tok = _train()
    assert tok.kind == "word"
    assert tok.special_tokens["unk"] == "<unk>" and tok.unk_id == tok.token_to_id("<unk>")
    assert tok.special_tokens["eos"] == GPT_SPECIALS["eos"] and tok.eos_id == 0
    ids = tok.encode("the  game\tis @-@ zebra <unk>")
    assert [tok.id_to_token(i) for i in ids] == ["the", "game", "is", "@-@", "<unk>", "<unk>"]
    # Unseen words and the corpus's <unk> are one event, as for an n-gram model.
    assert ids[-1] == ids[-2] == tok.unk_id
    assert tok.decode(tok.encode(" the game ,  released ")) == "the game , released"
    assert tok.decode(tok.encode("the zebra")) == "the <unk>"  # <unk> is a word, not a skipped special


def test_without_a_corpus_unk_the_special_unk_is_used():
    tok = _train(["a b c", "a b"])
    assert tok.special_tokens["unk"] == GPT_SPECIALS["unk"]
    assert tok.encode("a zebra") == [tok.token_to_id("a"), tok.unk_id]
    assert tok.decode(tok.encode("a zebra")) == "a"  # the special unk is skipped like the other specials


def test_vocabulary_cut_off_keeps_the_most_frequent_words():
    # w0 seen 10 times, w1 9 times, ..., w9 once.
    lines = [" ".join(f"w{i}" for i in range(10 - n)) for n in range(10)]
    tok = _train(lines, vocab_size=len(GPT_SPECIALS) + 8)
    assert tok.vocab_size == len(GPT_SPECIALS) + 8
    assert all(tok.token_to_id(f"w{i}") is not None for i in range(8))
    assert tok.token_to_id("w8") is None and tok.encode("w9") == [tok.unk_id]
    by_freq = _train(lines, mf=4)
    assert by_freq.token_to_id("w6") is not None and by_freq.token_to_id("w7") is None


def test_lowercase_save_load_and_validation(tmp_path):
    tok = _train(["The Cat sat", "the cat"], lowercase=True)
    assert tok.decode(tok.encode("THE CAT")) == "the cat"
    tok.save(tmp_path / "tok.json")
    back = Tokenizer.load(tmp_path / "tok.json")
    assert (
        back.kind == "word" and back.sha256 == tok.sha256 and back.encode("the cat") == tok.encode("the cat")
    )
    with pytest.raises(LmforgeError, match="vocab_size"):
        TokenizerConfig(kind="word", vocab_size=4).validate()


def test_cli_trains_a_word_tokenizer(tmp_path, capsys):
    data = tmp_path / "train.txt"
    data.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "tok.json"
    code = main(["tokenizer", "train", "--data", str(data), "--kind", "word", "--vocab_size", "100",
                 "--min_frequency", "1", "--txt_unit", "line", "--out", str(out), "--json"])  # fmt: skip
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and res["kind"] == "word" and res["special_tokens"]["unk"] == "<unk>"


def test_prepare_by_line_ends_every_line_with_eos(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("\n".join(LINES) + "\n\n", encoding="utf-8")
    tok = train_tokenizer(
        data, kind="word", vocab_size=100, min_frequency=1, txt_unit="line", clean=NO_CLEANING
    )
    prepare(data, tok, tmp_path / "shards", clean=NO_CLEANING, val_fraction=0.0, txt_unit="line",
            show_progress=False)  # fmt: skip
    shards = Shards.open(tmp_path / "shards")
    got = np.asarray(shards.tokens("train")).tolist()
    # Blank lines are no documents; each other line is its words then eos (lines are stripped first).
    expected = [i for line in LINES for i in [*tok.encode(line), tok.eos_id]]
    assert got == expected
    assert len(shards.doc_offsets("train")) == len(LINES) + 1


@pytest.mark.shared_data
@pytest.mark.slow
def test_pretrain_word_level_on_wikitext2(tmp_path, capsys):
    wiki = shared_data_path("wikitext2", "wiki.train.tokens")
    if wiki is None:
        pytest.skip("shared WikiText-2 not available")
    head = tmp_path / "wiki.head.tokens"
    with open(wiki, encoding="utf-8") as f:
        head.write_text("".join(next(f) for _ in range(600)), encoding="utf-8")
    run = tmp_path / "run"
    code = main([
        "pretrain", "--data", str(head), "--out", str(run), "--tokenizer.kind", "word", "--tokenizer.vocab_size",
        "2000", "--tokenizer.min_frequency", "1", "--prep.txt_unit", "line", "--prep.val_fraction", "0.1",
        "--prep.clean.min_chars", "0", "--prep.clean.dedup", "false", "--prep.clean.near_dedup", "false",
        "--prep.clean.normalize", "false", "--prep.clean.max_repetition", "1", "--prep.clean.max_symbol_ratio", "1",
        "--model.n_layer", "1", "--model.n_head", "2", "--model.d_model", "32", "--model.max_len", "32",
        "--train.max_steps", "2", "--train.batch_size", "2", "--train.eval_batches", "1", "--train.device", "cpu",
        "--train.progress", "false", "--train.tensorboard", "false", "--train.plot", "false", "--json",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    shards = Shards.open(run / "data")
    tok = shards.tokenizer()
    assert tok.kind == "word" and tok.special_tokens["unk"] == "<unk>"
    lines = [line for line in head.read_text(encoding="utf-8").splitlines() if line.strip()]
    stream = np.concatenate([np.asarray(shards.tokens(s)) for s in ("train", "val")])
    # One eos per non-blank line, and exactly one word token per whitespace word.
    assert int((stream == tok.eos_id).sum()) == len(lines)
    assert len(stream) == sum(len(line.split()) for line in lines) + len(lines)
