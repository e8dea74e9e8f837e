"""The seq2seq task's pieces: framing ids, teacher forcing, features, token-budget batches, metrics."""

from __future__ import annotations

import json
import subprocess
import sys

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


# Three hypotheses with two references each, and a fourth with one (the variable-count case).
MULTI_HYPS = ["The cat sat on the mat.", "A dog runs in the park", "Hello world!", "It is raining today."]
MULTI_REFS = [
    ["The cat is sitting on the mat.", "A cat sat on the mat."],
    ["A dog is running in the park.", "The dog runs through a park."],
    ["Hello, world!", "Hi world!"],
    ["Today it rains."],
]


def _sacrebleu_command(tmp_path, hyps, streams):
    """BLEU and chrF as `sacrebleu REF1 REF2 ... -i HYP -m bleu chrf -b` prints them."""
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    refs = []
    for k, stream in enumerate(streams):
        refs.append(tmp_path / f"ref{k}.txt")
        refs[-1].write_text("".join(r + "\n" for r in stream), encoding="utf-8")
    cmd = [sys.executable, "-m", "sacrebleu", *map(str, refs), "-i", str(hyp), "-m", "bleu", "chrf", "-b",
           "-w", "4"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [float(x) for x in json.loads(out)]


def test_multi_reference_bleu_and_chrf_are_the_sacrebleu_commands(tmp_path):
    pytest.importorskip("sacrebleu")
    hyps, refs = MULTI_HYPS[:3], MULTI_REFS[:3]
    bleu, chrf = _sacrebleu_command(tmp_path, hyps, [[r[k] for r in refs] for k in range(2)])
    ours = metrics.bleu(hyps, refs)
    assert ours["bleu"] == pytest.approx(bleu, abs=1e-4) and "nrefs:2" in ours["signature"]
    assert metrics.chrf(hyps, refs)["chrf"] == pytest.approx(chrf, abs=1e-4)
    # A second reference changes the score: the first alone is another number.
    assert metrics.bleu(hyps, [r[0] for r in refs])["bleu"] != pytest.approx(ours["bleu"], abs=1e-2)


def test_examples_with_fewer_references_are_scored_against_the_ones_they_have(tmp_path):
    sacrebleu = pytest.importorskip("sacrebleu")
    # The command wants one line per example in every file; repeating an example's reference in
    # the file it lacks is a no-op for BLEU (n-gram counts take the max over references, the
    # closest length is the same) and for chrF (the best reference wins).
    padded = [[r[k] if k < len(r) else r[0] for r in MULTI_REFS] for k in range(2)]
    bleu, chrf = _sacrebleu_command(tmp_path, MULTI_HYPS, padded)
    ours = metrics.bleu(MULTI_HYPS, MULTI_REFS)
    assert ours["bleu"] == pytest.approx(bleu, abs=1e-4) and "nrefs:var" in ours["signature"]
    assert metrics.chrf(MULTI_HYPS, MULTI_REFS)["chrf"] == pytest.approx(chrf, abs=1e-4)
    streams = [[r[0] for r in MULTI_REFS], [r[1] if len(r) > 1 else None for r in MULTI_REFS]]
    assert ours["bleu"] == pytest.approx(sacrebleu.corpus_bleu(MULTI_HYPS, streams).score)


def test_multi_reference_rouge_is_rouge_scores_best_reference():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    kinds = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    expected = dict.fromkeys(kinds, 0.0)
    for h, r in zip(MULTI_HYPS, MULTI_REFS):
        for k, score in scorer.score_multi(r, h).items():
            expected[k] += 100 * score.fmeasure / len(MULTI_HYPS)
    ours = metrics.rouge(MULTI_HYPS, MULTI_REFS)
    assert ours == pytest.approx(expected)
    assert (
        ours["rouge1"]
        > metrics.rouge(MULTI_HYPS, [r[1] if len(r) > 1 else r[0] for r in MULTI_REFS])["rouge1"]
    )


def test_one_reference_in_a_list_scores_as_the_reference_itself():
    pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    hyps, refs = MULTI_HYPS, [r[0] for r in MULTI_REFS]
    wrapped = [[r] for r in refs]
    assert metrics.bleu(hyps, wrapped) == metrics.bleu(hyps, refs)
    assert metrics.chrf(hyps, wrapped) == metrics.chrf(hyps, refs)
    assert metrics.rouge(hyps, wrapped) == metrics.rouge(hyps, refs)


@pytest.mark.parametrize("score", [metrics.bleu, metrics.chrf, metrics.rouge])
def test_references_that_are_not_text_are_refused(score):
    pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    with pytest.raises(LmforgeError, match="example 1: references must be a string or a non-empty list"):
        score(["a", "b"], ["a", []])
    with pytest.raises(LmforgeError, match="2 hypotheses for 1 references"):
        score(["a", "b"], [["a", "b"]])
    with pytest.raises(LmforgeError, match="no examples to score"):
        score([], [])


def test_ref_field_reaches_the_reader_and_dev_scoring_uses_every_reference(tmp_path):
    pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    from lmforge.cli import build_parser
    from lmforge.config import namespace_overrides

    ns = build_parser().parse_args(["finetune", "seq2seq", "--ref_field", "summaries"])
    assert namespace_overrides(ns, FinetuneConfig)["ref_field"] == "summaries"
    rows = [{"dialogue": f"d{i}", "summary": r[0], "summaries": r} for i, r in enumerate(MULTI_REFS)]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = FinetuneConfig(task="seq2seq", src_field="dialogue", tgt_field="summary", ref_field="summaries")
    examples = SPEC.read(cfg, path)
    assert [e.references for e in examples] == [tuple(r) for r in MULTI_REFS]
    tok = _Tok()
    data = SPEC.featurize(cfg, path, examples, tok, None, None, 64)
    outputs = {"hyp": tok.encode_batch(MULTI_HYPS)}
    hyps = [tok.decode(ids) for ids in outputs["hyp"]]
    found = SPEC.score(cfg, data, outputs, None)
    assert found["metrics"]["bleu"] == pytest.approx(metrics.bleu(hyps, MULTI_REFS)["bleu"])
    assert found["metrics"]["chrf"] == pytest.approx(metrics.chrf(hyps, MULTI_REFS)["chrf"])
    assert found["metrics"]["rougeL"] == pytest.approx(metrics.rouge(hyps, MULTI_REFS)["rougeL"])
    assert "nrefs:var" in found["report"]["bleu_signature"]


@pytest.mark.parametrize(
    ("option", "message"),
    [({"beam": 0}, "--beam must be >= 1"), ({"label_smoothing": 1.5}, "--label_smoothing 1.5"),
     ({"max_new_tokens": -1}, "--max_new_tokens -1"), ({"no_repeat_ngram": -2}, "--no_repeat_ngram")],
)  # fmt: skip
def test_decoding_options_are_checked_by_their_flag_names(option, message):
    with pytest.raises(LmforgeError, match=message):
        SPEC.build_head(FinetuneConfig(task="seq2seq", **option), None, None, None, _Tok())
