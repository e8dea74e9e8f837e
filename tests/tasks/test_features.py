"""Task features and batches: input layouts, truncation, sub-word label alignment, windows, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.models.heads import IGNORE
from lmforge.tasks.batches import TaskBatches, collate
from lmforge.tasks.features import encode_classification, encode_tokens, truncate_pair
from lmforge.tasks.framing import Specials
from lmforge.tasks.readers import ClassificationExample, LabelMap, TokenExample
from lmforge.tokenizer import Tokenizer, TokenizerConfig

TEXT = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine"] * 30


@pytest.fixture(scope="module")
def wordpiece():
    return Tokenizer.train(TEXT, TokenizerConfig(kind="wordpiece", vocab_size=120, min_frequency=1))


@pytest.fixture(scope="module")
def bpe():
    return Tokenizer.train(TEXT, TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1))


ENC = Specials(cls=2, sep=3, pad=0)


def test_longest_first_truncation_matches_bert():
    def reference(a, b, room):  # BERT's truncate_seq_pair, one token at a time
        a, b = list(a), list(b)
        while len(a) + len(b) > room:
            (a if len(a) > len(b) else b).pop()
        return a, b

    for la in range(0, 9):
        for lb in range(0, 9):
            for room in range(1, 12):
                a, b, cut = truncate_pair(list(range(la)), list(range(100, 100 + lb)), room)
                assert (a, b) == reference(range(la), range(100, 100 + lb), room), (la, lb, room)
                assert cut == (la + lb > room)


def test_classification_layouts(wordpiece):
    ex = [ClassificationExample(text="the quick fox", label="1", text_pair="saves nine", line=2)]
    labels = LabelMap(["0", "1"])
    f = encode_classification(ex, wordpiece, ENC, labels, 32).features[0]
    ids, types = f["input_ids"].tolist(), f["token_type_ids"].tolist()
    a = wordpiece.backend.encode("the quick fox", add_special_tokens=False).ids
    b = wordpiece.backend.encode("saves nine", add_special_tokens=False).ids
    assert ids == [2, *a, 3, *b, 3]
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert int(f["label"]) == 1
    dec = Specials(cls=None, sep=7, pad=7)  # a decoder: no [CLS]; the summary is the last token
    f = encode_classification(ex, wordpiece, dec, labels, 32).features[0]
    assert f["input_ids"].tolist() == [*a, 7, *b, 7]
    enc = encode_classification(ex * 3, wordpiece, ENC, labels, 5)
    assert enc.truncated == 3 and all(len(x["input_ids"]) == 5 for x in enc.features)


def test_word_labels_sit_on_first_pieces_or_all_pieces(wordpiece):
    labels = LabelMap(["B-ANI", "I-ANI", "O"])
    ex = [TokenExample(tokens=["the", "quickest", "foxes"], tags=["O", "B-ANI", "I-ANI"])]
    pieces = [wordpiece.backend.encode(w, add_special_tokens=False).ids for w in ex[0].tokens]
    assert max(len(p) for p in pieces) > 1  # some word is split, or the test shows nothing
    f = encode_tokens(ex, wordpiece, ENC, labels, 32).features[0]
    assert f["input_ids"].tolist() == [2, *[i for p in pieces for i in p], 3]
    starts = np.cumsum([1] + [len(p) for p in pieces[:-1]]).tolist()
    assert f["word_pos"].tolist() == starts
    assert f["word_labels"].tolist() == [2, 0, 1]
    expected = [IGNORE] * len(f["input_ids"])
    for pos, tag in zip(starts, [2, 0, 1]):
        expected[pos] = tag
    assert f["piece_labels"].tolist() == expected
    f = encode_tokens(ex, wordpiece, ENC, labels, 32, label_all_pieces=True).features[0]
    expected = [IGNORE]
    for p, tag in zip(pieces, [2, 0, 1]):
        expected += [tag] + [1 if tag == 0 else tag] * (len(p) - 1)  # B-ANI continues as I-ANI
    assert f["piece_labels"].tolist() == [*expected, IGNORE]


def test_long_sentences_are_split_into_windows_at_word_boundaries(wordpiece):
    from lmforge.tasks.ner import word_tags
    from lmforge.tasks.spec import TaskData

    words = ("the quick brown fox jumps over the lazy dog " * 4).split()
    labels = LabelMap(["B-X", "O"])
    ex = [TokenExample(tokens=words, tags=["B-X" if w == "fox" else "O" for w in words])]
    enc = encode_tokens(ex, wordpiece, ENC, labels, 12)
    assert enc.split == 1 and len(enc.features) > 2
    assert all(len(f["input_ids"]) <= 12 for f in enc.features)
    assert [int(f["word_offset"]) for f in enc.features] == list(
        np.cumsum([0] + [len(f["word_pos"]) for f in enc.features[:-1]])
    )
    # Predictions of the windows join back into one sentence of the original length.
    preds = np.full((len(enc.features), 12), -1)
    for i, f in enumerate(enc.features):
        preds[i, : len(f["word_labels"])] = f["word_labels"]
    tags = word_tags(TaskData(None, ex, enc.features), preds, labels)
    assert tags == [ex[0].tags]


def test_bpe_words_get_the_space_they_have_in_running_text(bpe):
    ex = [TokenExample(tokens=["the", "quick", "fox"], tags=["O", "O", "O"])]
    f = encode_tokens(ex, bpe, Specials(cls=None, sep=0, pad=0), LabelMap(["O"]), 32).features[0]
    running = bpe.backend.encode("the quick fox", add_special_tokens=False).ids
    assert f["input_ids"].tolist()[:-1] == running


def test_collate_pads_only_when_needed():
    feats = [{"input_ids": np.array([5, 6, 7]), "token_type_ids": np.zeros(3, np.int64), "label": np.array(1)},
             {"input_ids": np.array([8]), "token_type_ids": np.zeros(1, np.int64), "label": np.array(0)}]  # fmt: skip
    b = collate(feats, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert b["token_index"].tolist() == [0, 1, 2, 3] and b["lengths"].tolist() == [3, 1]
    same = collate([feats[0], feats[0]], pad_id=0)
    assert same["attention_mask"] is None and same["token_index"] is None


def test_task_batches_resume_exactly_and_reshuffle_each_epoch():
    feats = [{"input_ids": np.arange(i % 5 + 1), "label": np.array(i)} for i in range(10)]
    a = TaskBatches(feats, 4, 0, seed=3)
    seen = [a.next_batch()["label"].tolist() for _ in range(7)]
    assert sorted(x for batch in seen[:3] for x in batch) == list(
        range(10)
    )  # every example once per epoch, last batch partial
    assert seen[:3] != seen[3:6]
    b = TaskBatches(feats, 4, 0, seed=3)
    for _ in range(4):
        b.next_batch()
    c = TaskBatches(feats, 4, 0, seed=3)
    c.load_state_dict(b.state_dict())
    assert [c.next_batch()["label"].tolist() for _ in range(3)] == seen[4:7]
    with pytest.raises(ValueError, match="training data changed"):
        TaskBatches(feats[:5], 4, 0).load_state_dict(b.state_dict())


def test_unpadded_encoder_batch_equals_one_example_at_a_time():
    from lmforge.models import build_model
    from lmforge.models.backbone import Backbone
    from lmforge.models.config import ModelConfig
    from lmforge.models.heads import TokenClassifier

    torch.manual_seed(0)
    cfg = ModelConfig(arch="encoder", vocab_size=50, n_layer=2, n_head=2, d_model=32, max_len=16, dropout=0.0)
    model = TokenClassifier(Backbone(build_model(cfg)), ["B-X", "I-X", "O"], head_dropout=0.0).eval()
    feats = [{"input_ids": np.array(ids), "token_type_ids": np.zeros(len(ids), np.int64), "word_pos": np.array(pos)}
             for ids, pos in (([2, 10, 11, 12, 3], [1, 3]), ([2, 20, 3], [1]), ([2, 30, 31, 32, 33, 34, 3], [1, 2, 5]))]  # fmt: skip
    together = model.predict(collate(feats, pad_id=0))["pred"]
    for i, f in enumerate(feats):
        alone = model.predict(collate([f], pad_id=0))["pred"][0]
        assert together[i, : len(f["word_pos"])].tolist() == alone.tolist()
    assert (together[1, 1:] == -1).all()


def test_group_by_length_pads_less_and_still_covers_every_example_once():
    rng = np.random.default_rng(0)
    feats = [
        {"input_ids": np.arange(int(n)), "label": np.array(i)} for i, n in enumerate(rng.integers(1, 60, 400))
    ]
    plain = TaskBatches(feats, 8, 0, seed=1)
    grouped = TaskBatches(feats, 8, 0, seed=1, group_by_length=True)

    def epoch(b):
        batches = [b.next_batch() for _ in range(b.steps_per_epoch)]
        padded = sum(x["input_ids"].numel() for x in batches)
        return sorted(i for x in batches for i in x["label"].tolist()), padded

    seen_plain, padded_plain = epoch(plain)
    seen_grouped, padded_grouped = epoch(grouped)
    assert seen_plain == seen_grouped == list(range(400))
    assert padded_grouped < 0.7 * padded_plain
    resumed = TaskBatches(feats, 8, 0, seed=1)
    resumed.load_state_dict(grouped.state_dict())
    assert (
        resumed.group_by_length
        and resumed.next_batch()["label"].tolist() == grouped.next_batch()["label"].tolist()
    )


def test_an_empty_sentence_gets_no_window_and_no_tags(wordpiece):
    from lmforge.tasks.ner import word_tags
    from lmforge.tasks.spec import TaskData

    labels = LabelMap(["O"])
    ex = [TokenExample(tokens=[], tags=[]), TokenExample(tokens=["the", "fox"], tags=["O", "O"])]
    enc = encode_tokens(ex, wordpiece, ENC, labels, 32)
    assert len(enc.features) == 1 and int(enc.features[0]["sentence"]) == 1
    preds = np.zeros((1, 2), np.int64)
    assert word_tags(TaskData(None, ex, enc.features), preds, labels) == [
        [],
        ["O", "O"],
    ]
