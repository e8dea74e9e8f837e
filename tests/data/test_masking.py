"""Masking statistics and word grouping: rate, 80/10/10, specials untouched, whole words (also Chinese)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import make_text

from lmforge.data.masking import MaskingConfig, TokenTables, mask_tokens, sentence_ends, word_starts
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    texts = [make_text(400, seed=i) for i in range(30)]
    texts += [
        "Tokenization of unbelievably unpredictable words happens.",
        "中国的首都是北京。我们喜欢学习语言模型。",
    ] * 5
    return Tokenizer.train(texts, TokenizerConfig(kind="wordpiece", vocab_size=300, min_frequency=1))


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    texts = [make_text(400, seed=i) for i in range(30)]
    return Tokenizer.train(texts, TokenizerConfig(kind="bpe", vocab_size=400, min_frequency=1))


def _batch(tok: Tokenizer, n_rows: int = 64, T: int = 64) -> tuple[np.ndarray, np.ndarray]:
    ids = tok.encode(make_text(n_rows * T, seed=99))[: n_rows * T]
    ids = np.asarray(ids, dtype=np.int64).reshape(n_rows, T)
    ids[:, 0] = tok.cls_id
    ids[:, -1] = tok.sep_id
    tables = TokenTables.build(tok)
    return ids, ~tables.special[ids]


def test_rate_and_80_10_10(wordpiece):
    tables = TokenTables.build(wordpiece)
    ids, maskable = _batch(wordpiece)
    cfg = MaskingConfig(rate=0.15)
    picked = replaced_mask = replaced_random = unchanged = candidates = 0
    for seed in range(20):
        out, pos, tgt = mask_tokens(ids, maskable, None, cfg, tables, np.random.default_rng(seed))
        flat_out = out.reshape(-1)[pos]
        assert np.array_equal(ids.reshape(-1)[pos], tgt)  # targets are the original tokens
        assert maskable.reshape(-1)[pos].all()  # never a special token
        changed = np.flatnonzero(out.reshape(-1) != ids.reshape(-1))
        assert np.isin(changed, pos).all()  # nothing outside the picked positions changes
        picked += len(pos)
        candidates += maskable.sum()
        replaced_mask += (flat_out == tables.mask_id).sum()
        same = flat_out == tgt
        unchanged += same.sum()
        replaced_random += (~same & (flat_out != tables.mask_id)).sum()
    assert abs(picked / candidates - 0.15) < 0.01
    assert abs(replaced_mask / picked - 0.8) < 0.02
    # a random replacement can draw the original token: "unchanged" slightly exceeds 10%
    assert abs(replaced_random / picked - 0.1) < 0.02
    assert abs(unchanged / picked - 0.1) < 0.02
    assert not np.isin(tables.random_ids, np.flatnonzero(tables.special)).any()


def test_specials_are_never_masked(wordpiece):
    tables = TokenTables.build(wordpiece)
    ids, maskable = _batch(wordpiece)
    out, pos, _ = mask_tokens(ids, maskable, None, MaskingConfig(rate=0.9), tables, np.random.default_rng(0))
    assert (out[:, 0] == wordpiece.cls_id).all() and (out[:, -1] == wordpiece.sep_id).all()
    assert not np.isin(pos, np.flatnonzero(~maskable.reshape(-1))).any()


def test_wordpiece_word_starts(wordpiece):
    tables = TokenTables.build(wordpiece)
    ids = np.asarray(wordpiece.encode("Tokenization of unbelievably unpredictable words"))
    starts = word_starts(ids, tables, chinese_words="none")
    pieces = [wordpiece.id_to_token(i) for i in ids]
    assert [not p.startswith("##") for p in pieces] == starts.tolist()
    assert starts.sum() == 5 and len(ids) > 5  # some words are several pieces


def test_bpe_word_starts(bpe):
    tables = TokenTables.build(bpe)
    text = "Tokenization of unbelievably unpredictable words."
    ids = np.asarray(bpe.encode(text))
    starts = word_starts(ids, tables)
    words = []
    for i, s in zip(ids, starts):
        piece = bpe.decode([int(i)])
        if s:
            words.append(piece)
        else:
            words[-1] += piece
    assert [w.strip() for w in words] == ["Tokenization", "of", "unbelievably", "unpredictable", "words", "."]


def test_whole_word_masking_groups_pieces(wordpiece):
    tables = TokenTables.build(wordpiece)
    ids, maskable = _batch(wordpiece)
    ws = word_starts(ids.reshape(-1), tables).reshape(ids.shape)
    cfg = MaskingConfig(rate=0.15, whole_word=True)
    total = picked_n = 0
    for seed in range(10):
        _, pos, _ = mask_tokens(ids, maskable, ws, cfg, tables, np.random.default_rng(seed))
        picked = np.zeros(ids.size, dtype=bool)
        picked[pos] = True
        picked = picked.reshape(ids.shape)
        word_id = np.cumsum(ws | ~maskable, axis=1)
        for r in range(ids.shape[0]):  # every word is picked entirely or not at all
            for w in np.unique(word_id[r][maskable[r]]):
                sel = picked[r][(word_id[r] == w) & maskable[r]]
                assert sel.all() or not sel.any()
        picked_n += picked.sum()
        total += maskable.sum()
    assert abs(picked_n / total - 0.15) < 0.02


def test_chinese_whole_words_come_from_jieba(wordpiece):
    pytest.importorskip("jieba")
    tables = TokenTables.build(wordpiece)
    ids = np.asarray(wordpiece.encode("中国的首都是北京。"))
    chars = [wordpiece.id_to_token(i) for i in ids]
    assert chars[:2] == ["中", "国"]  # BERT-Chinese style: one token per character
    starts = word_starts(ids, tables)
    # jieba: 中国 / 的 / 首都 / 是 / 北京 / 。
    assert starts.tolist() == [True, False, True, True, False, True, True, False, True]
    assert word_starts(ids, tables, chinese_words="none").all()  # without a segmenter: characters


def test_span_masking_covers_about_the_rate(wordpiece):
    tables = TokenTables.build(wordpiece)
    ids, maskable = _batch(wordpiece, n_rows=128)
    ws = word_starts(ids.reshape(-1), tables).reshape(ids.shape)
    _, pos, _ = mask_tokens(ids, maskable, ws, MaskingConfig(span=True), tables, np.random.default_rng(0))
    share = len(pos) / maskable.sum()
    assert 0.10 < share < 0.20
    picked = np.zeros(ids.size, dtype=bool)
    picked[pos] = True
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], picked.astype(int), [0]]))))[::2]
    assert runs.mean() > 2  # spans, not isolated tokens


def test_sentence_ends(bpe):
    tables = TokenTables.build(bpe)
    ids = np.asarray(bpe.encode("The model was trained. It learned words! Did it? Yes. 3.5 is a value."))
    ends = sentence_ends(ids, tables)
    texts = [bpe.decode([int(i)]) for i in ids[ends]]
    assert [t.strip()[-1] for t in texts] == [".", "!", "?", ".", "."]
    assert ends.sum() == 5  # the "." of 3.5 is not a sentence end


def test_tokenizer_without_mask_is_refused():
    tok = Tokenizer.train([make_text(200)], TokenizerConfig(kind="char", vocab_size=100))
    tok.mask_id = None
    with pytest.raises(LmforgeError, match=r"no \[MASK\] token"):
        TokenTables.build(tok)


def test_config_validation():
    with pytest.raises(LmforgeError, match=r"mlm\.rate"):
        MaskingConfig(rate=1.5).validate()
    with pytest.raises(LmforgeError, match="exceeds 1"):
        MaskingConfig(mask_prob=0.8, random_prob=0.3).validate()
