"""The seq2seq task's pieces: framing ids, teacher forcing, features, token-budget batches, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.finetuning import FinetuneConfig
from lmforge.models.heads import IGNORE
from lmforge.tasks import metrics
from lmforge.tasks.batches import TaskBatches, collate
from lmforge.tasks.parallel import Pair
from lmforge.tasks.seq2seq import SPEC, seq2seq_tokens, shift_right


class _Tok:
    """A whitespace tokenizer over a fixed vocabulary, with the roles a trained one has."""

    def __init__(self, eos=1, pad=0):
        self.eos_id, self.pad_id = eos, pad
        self.words: dict[str, int] = {}

    def encode_batch(self, texts):
        return [[self.words.setdefault(w, len(self.words) + 3) for w in t.split()] for t in texts]

    def decode(self, ids, skip_special_tokens=True):
        inv = {i: w for w, i in self.words.items()}
        return " ".join(inv[i] for i in ids if i in inv)


def test_teacher_forcing_shifts_targets_behind_the_start_token():
    targets = torch.tensor([[5, 6, 1], [7, 1, IGNORE]])
    assert shift_right(targets, start=0, pad=0).tolist() == [[0, 5, 6], [0, 7, 1]]


def test_framing_ids_and_a_tokenizer_without_eos():
    assert seq2seq_tokens(_Tok(eos=1, pad=0)) == seq2seq_tokens(_Tok(eos=1, pad=0))
    t = seq2seq_tokens(_Tok(eos=1, pad=None))
    assert (t.start, t.eos, t.pad) == (1, 1, 1)
    with pytest.raises(LmforgeError, match="no end-of-text token"):
        seq2seq_tokens(_Tok(eos=None))


def test_features_end_in_eos_and_over_long_pairs_are_cut_and_counted(tmp_path):
    pairs = [Pair("a b c d e f", "x y", 1), Pair("a", "x y z w v u", 2), Pair("b c", "y", 3)]
    data = SPEC.featurize(FinetuneConfig(task="seq2seq"), tmp_path / "f", pairs, _Tok(), None, None, 5)
    first = data.features[0]
    assert len(first["input_ids"]) == 5 and first["input_ids"][-1] == 1
    assert data.features[1]["target_ids"].tolist()[-1] == 1 and len(data.features[1]["target_ids"]) == 5
    assert any("1 of 3 sources cut to 4 tokens" in n and "--max_len" in n for n in data.notes)
    assert any("1 of 3 targets" in n for n in data.notes)
    unlabelled = SPEC.featurize(FinetuneConfig(task="seq2seq"), tmp_path / "f", pairs, _Tok(), None, None, 5,
                                with_labels=False)  # fmt: skip
    assert "target_ids" not in unlabelled.features[0]


def test_batches_pad_targets_with_the_ignored_label():
    feats = [{"input_ids": np.array([4, 5, 1]), "target_ids": np.array([6, 1])},
             {"input_ids": np.array([4, 1]), "target_ids": np.array([6, 7, 8, 1])}]  # fmt: skip
    batch = collate(feats, pad_id=0)
    assert batch["target_ids"].tolist() == [[6, 1, IGNORE, IGNORE], [6, 7, 8, 1]]
    assert batch["attention_mask"].tolist() == [[True, True, True], [True, True, False]]


def _features(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input_ids": np.ones(int(rng.integers(2, 30)), np.int64),
             "target_ids": np.ones(int(rng.integers(2, 30)), np.int64)} for _ in range(n)]  # fmt: skip


def test_token_budget_batches_fit_the_budget_and_cover_every_example_once_an_epoch():
    feats = _features(500)
    b = TaskBatches(feats, 8, 0, seed=3, max_tokens=256)
    seen = 0
    for _ in range(b.steps_per_epoch):
        batch = b.next_batch()
        rows, width = batch["input_ids"].size(0), max(batch["input_ids"].size(1), batch["target_ids"].size(1))
        assert rows * width <= 256
        seen += rows
    assert seen == 500 and b.epoch == 0
    b.next_batch()
    assert b.epoch == 1
    # Sorted buckets pad little: the padded share of a budget batch is small.
    assert b.batch_size > 8  # the mean number of examples per batch, for tokens/s


def test_token_budget_batches_resume_exactly_and_refuse_another_budget():
    feats = _features(300, seed=1)
    a = TaskBatches(feats, 8, 0, seed=5, max_tokens=200)
    for _ in range(a.steps_per_epoch + 3):
        a.next_batch()
    state = a.state_dict()
    b = TaskBatches(feats, 8, 0, seed=0, max_tokens=200)
    b.load_state_dict(state)
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["target_ids"], y["target_ids"])
    with pytest.raises(ValueError, match="same --max_tokens"):
        TaskBatches(feats, 8, 0, max_tokens=300).load_state_dict(state)
    with pytest.raises(LmforgeError, match="less than the longest example"):
        TaskBatches(feats, 8, 0, max_tokens=10)


def test_prediction_input_is_plain_text_with_blank_lines_kept_or_parallel_text(tmp_path):
    cfg = FinetuneConfig(task="seq2seq")
    plain = tmp_path / "in.txt"
    plain.write_text("a b\n\nc\n", encoding="utf-8")
    examples, gold = SPEC.read_for_prediction(cfg, plain)
    assert not gold and [e.src for e in examples] == ["a b", "", "c"]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("a b\tx y\nc\tz\n", encoding="utf-8")
    examples, gold = SPEC.read_for_prediction(cfg, tsv)
    assert gold and [(e.src, e.tgt) for e in examples] == [("a b", "x y"), ("c", "z")]


def test_bleu_and_chrf_are_sacrebleus():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["The cat sat on the mat.", "A dog runs in the park", "Hello world!"]
    refs = ["The cat is sitting on the mat.", "A dog is running in the park.", "Hello, world!"]
    ours = metrics.bleu(hyps, refs)
    ref = sacrebleu.corpus_bleu(hyps, [refs])
    assert ours["bleu"] == pytest.approx(ref.score) and "tok:13a" in ours["signature"]
    assert metrics.chrf(hyps, refs)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    lower = metrics.bleu([h.upper() for h in hyps], refs, lowercase=True)
    assert lower["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score)
    assert "case:lc" in lower["signature"]


def test_chinese_references_get_sacrebleus_zh_tokenizer_and_character_rouge():
    pytest.importorskip("sacrebleu")
    hyps, refs = ["我爱北京天安门"], ["我爱北京"]
    assert "tok:zh" in metrics.bleu(hyps, refs)["signature"]
    r = metrics.rouge(hyps, refs)
    assert r["rouge1"] == pytest.approx(100 * 2 * (4 / 7) * 1 / (4 / 7 + 1))


def test_rouge_is_google_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    hyps = ["the cats are running fast", "a summary\nof two lines"]
    refs = ["the cat runs fast", "a summary\nin two lines"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    for h, r in zip(hyps, refs):
        for k, s in scorer.score(r, h).items():
            expected[k] += 100 * s.fmeasure / 2
    assert metrics.rouge(hyps, refs) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("option", "message"),
    [({"beam": 0}, "--beam must be >= 1"), ({"label_smoothing": 1.5}, "--label_smoothing 1.5"),
     ({"max_new_tokens": -1}, "--max_new_tokens -1"), ({"no_repeat_ngram": -2}, "--no_repeat_ngram")],
)  # fmt: skip
def test_decoding_options_are_checked_by_their_flag_names(option, message):
    with pytest.raises(LmforgeError, match=message):
        SPEC.build_head(FinetuneConfig(task="seq2seq", **option), None, None, None, _Tok())
