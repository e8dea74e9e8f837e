"""Sentence-pair and full-sentence masked-LM batches: layout, NSP/SOP labels, documents, resume."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import make_text

from lmforge.data.masking import MaskingConfig
from lmforge.data.mlm_batches import MaskedLMBatches
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = [make_text(400, seed=i) for i in range(20)]
    return Tokenizer.train(texts, TokenizerConfig(kind="wordpiece", vocab_size=300, min_frequency=1))


def _docs(tok: Tokenizer, n_docs: int = 30, words: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Shard-like arrays: each document's tokens followed by eos; offsets of the documents."""
    parts, offsets = [], [0]
    for d in range(n_docs):
        ids = [*tok.encode(make_text(words, seed=100 + d)), tok.eos_id]
        parts.append(np.asarray(ids, dtype=np.uint16))
        offsets.append(offsets[-1] + len(ids))
    return np.concatenate(parts), np.asarray(offsets, dtype=np.int64)


def _no_mask() -> MaskingConfig:
    return MaskingConfig(rate=0.15, mask_prob=0.0, random_prob=0.0)  # picked tokens stay readable


def test_pair_layout_and_segments(tok):
    tokens, offsets = _docs(tok)
    b = MaskedLMBatches(tokens, offsets, tok, 64, 16, mode="nsp", masking=_no_mask())
    batch = b.next_batch()
    ids, types = batch["input_ids"].numpy(), batch["token_type_ids"].numpy()
    assert ids.shape == (16, 64) and (ids[:, 0] == tok.cls_id).all()
    for row, tt in zip(ids, types):
        seps = np.flatnonzero(row == tok.sep_id)
        assert len(seps) == 2  # [CLS] A [SEP] B [SEP]
        a_end, b_end = seps
        assert a_end >= 2 and b_end > a_end + 1
        assert (row[b_end + 1 :] == tok.pad_id).all()
        assert (tt[: a_end + 1] == 0).all() and (tt[a_end + 1 : b_end + 1] == 1).all()
        assert (row[1:a_end] != tok.sep_id).all()  # document ends never leak into a pair
    mask = batch["attention_mask"]
    if mask is not None:
        assert (mask.numpy() == (ids != tok.pad_id)).all()


def _locate(tokens: np.ndarray, seg: np.ndarray) -> int:
    """Start offset of the token run `seg` in `tokens` (segments are copied contiguously)."""
    windows = np.lib.stride_tricks.sliding_window_view(tokens.astype(np.int64), len(seg))
    hits = np.flatnonzero((windows == seg).all(axis=1))
    assert len(hits), "segment not found in the corpus"
    return int(hits[0])


def test_nsp_labels_balanced_and_document_aware(tok):
    tokens, offsets = _docs(tok)
    b = MaskedLMBatches(tokens, offsets, tok, 64, 32, mode="nsp", masking=_no_mask())
    ex = b._plan(0)
    assert 0.4 < ex.label.mean() < 0.6
    doc_of = lambda pos: int(np.searchsorted(offsets, pos, side="right") - 1)  # noqa: E731
    # With no truncation in the way, a true continuation starts exactly where A ends.
    for i in range(len(ex)):
        a_doc, b_doc = doc_of(ex.a_start[i]), doc_of(ex.b_start[i])
        if ex.label[i] == 0:
            assert a_doc == b_doc
            assert ex.b_start[i] >= ex.a_start[i] + ex.a_len[i]
        else:
            assert a_doc != b_doc
    # The batch holds what the plan says, from the real token stream.
    batch = b.next_batch()
    row = batch["input_ids"].numpy()[0]
    a_end = int(np.flatnonzero(row == tok.sep_id)[0])
    assert _locate(tokens, row[1:a_end]) >= 0


def test_sop_swaps_half_of_the_pairs(tok):
    tokens, offsets = _docs(tok)
    b = MaskedLMBatches(tokens, offsets, tok, 64, 16, mode="sop", masking=_no_mask())
    ex = b._plan(0)
    assert 0.4 < ex.label.mean() < 0.6
    in_order = ex.a_start + ex.a_len <= ex.b_start
    assert (in_order == (ex.label == 0)).all()


def test_mlm_mode_packs_full_sentences(tok):
    tokens, offsets = _docs(tok)
    b = MaskedLMBatches(tokens, offsets, tok, 64, 8, mode="mlm", masking=_no_mask())
    batch = b.next_batch()
    assert batch["token_type_ids"] is None and batch["pair_labels"] is None
    ids = batch["input_ids"].numpy()
    assert (ids[:, 0] == tok.cls_id).all()
    assert ((ids == tok.sep_id).sum(axis=1) >= 1).all()
    ex = b._plan(0)
    assert (ex.a_len <= 62).all()


def test_masked_positions_and_targets(tok):
    tokens, offsets = _docs(tok)
    b = MaskedLMBatches(tokens, offsets, tok, 64, 16, mode="nsp", masking=MaskingConfig())
    batch = b.next_batch()
    pos, tgt = batch["mlm_positions"].numpy(), batch["mlm_targets"].numpy()
    ids = batch["input_ids"].numpy().reshape(-1)
    assert len(pos) > 0 and (np.diff(pos) > 0).all()
    assert 0.6 < (ids[pos] == tok.mask_id).mean() <= 1.0
    assert not np.isin(tgt, [tok.cls_id, tok.sep_id, tok.pad_id]).any()


def test_resume_and_dynamic_masking(tok):
    tokens, offsets = _docs(tok)
    make = lambda: MaskedLMBatches(tokens, offsets, tok, 64, 8, mode="nsp", seed=3)  # noqa: E731
    a = make()
    first = [a.next_batch() for _ in range(5)]
    state = a.state_dict()
    after = [a.next_batch() for _ in range(3)]
    b = make()
    b.load_state_dict(state)
    for x, y in zip(after, (b.next_batch() for _ in range(3))):
        for k in x:
            assert (x[k] is None and y[k] is None) or (x[k] == y[k]).all()
    # A new epoch draws new chunks and new masks.
    assert not np.array_equal(a._plan(0).a_start, a._plan(1).a_start)
    assert len(first) == 5


def test_eval_batches_are_fixed(tok):
    tokens, offsets = _docs(tok, n_docs=6)
    b = MaskedLMBatches(tokens, offsets, tok, 64, 4, mode="nsp", name="val", drop_last=False)
    one, two = list(b.eval_batches(3)), list(b.eval_batches(3))
    assert len(one) == 3
    for x, y in zip(one, two):
        assert (x["input_ids"] == y["input_ids"]).all() and (x["mlm_positions"] == y["mlm_positions"]).all()


def test_one_document_cannot_make_nsp_pairs(tok):
    tokens, offsets = _docs(tok, n_docs=1, words=3000)
    with pytest.raises(LmforgeError, match="at least two documents"):
        MaskedLMBatches(tokens, offsets, tok, 64, 4, mode="nsp")
    MaskedLMBatches(tokens, offsets, tok, 64, 4, mode="sop")  # sentence order needs only one


def test_text_without_punctuation_splits_at_tokens(tok):
    ids = [t for t in tok.encode(make_text(2000, seed=5)) if tok.id_to_token(t) != "."]
    tokens = np.asarray([*ids, tok.eos_id, *ids[::-1], tok.eos_id], dtype=np.uint16)
    offsets = np.asarray([0, len(ids) + 1, len(tokens)], dtype=np.int64)
    b = MaskedLMBatches(tokens, offsets, tok, 64, 4, mode="nsp", masking=_no_mask())
    ex = b._plan(0)
    assert (ex.a_len >= 1).all() and (ex.b_len >= 1).all()
    assert (ex.a_len + ex.b_len <= 61).all()


def test_too_little_data_is_an_error(tok):
    tokens, offsets = _docs(tok, n_docs=2, words=20)
    with pytest.raises(LmforgeError, match="fewer than one batch"):
        MaskedLMBatches(tokens, offsets, tok, 64, 64, mode="nsp")
