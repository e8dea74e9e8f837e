"""Task metrics against hand-computed values."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("seqeval")

from lmforge.errors import LmforgeError
from lmforge.tasks.metrics import (
    classification_metrics,
    exact_match,
    ner_metrics,
    normalize_answer,
    squad_metrics,
    token_f1,
)
from lmforge.tasks.readers import Answer, QAExample


def test_classification_accuracy_and_macro_f1():
    y_true = ["a", "a", "b", "b", "c"]
    y_pred = ["a", "b", "b", "b", "a"]
    m = classification_metrics(y_true, y_pred, labels=["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # a: P 1/2 R 1/2 F 1/2; b: P 2/3 R 1 F 4/5; c: never predicted, F 0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["report"]["b"]["recall"] == pytest.approx(1.0)
    assert m["report"]["c"]["support"] == 1
    assert "macro avg" in m["report_text"]


def test_classification_with_int_ids_and_length_check():
    m = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], labels=[0, 1])
    assert m["accuracy"] == pytest.approx(0.75)
    assert set(m["report"]) >= {"0", "1"}
    with pytest.raises(LmforgeError):
        classification_metrics([0, 1], [0], labels=[0, 1])


def test_ner_entity_level():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    m = ner_metrics(gold, pred)
    # gold entities 4 (PER, LOC, ORG, PER), predicted 3 (PER, ORG, ORG), correct 2 (PER, ORG)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["per_type"]["PER"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_type"]["LOC"]["f1"] == 0.0
    assert m["per_type"]["ORG"]["precision"] == pytest.approx(0.5)


def test_ner_default_vs_strict():
    gold = [["B-PER", "I-PER"]]
    pred = [["I-PER", "I-PER"]]  # conlleval counts a chunk started by I-; strict IOB2 does not
    assert ner_metrics(gold, pred)["f1"] == pytest.approx(1.0)
    assert ner_metrics(gold, pred, strict_scheme="IOB2")["f1"] == pytest.approx(0.0)
    with pytest.raises(LmforgeError, match="sentence 0"):
        ner_metrics(gold, [["O"]])


@pytest.mark.parametrize(
    ("text", "norm"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear ", "apple pear"),
        ("Theater", "theater"),  # articles are whole words only
        ("U.S.A.", "usa"),
        ("a", ""),
    ],
)
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_em_and_f1_cases():
    assert exact_match("the Denver Broncos", "Denver Broncos!") == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    # pred {denver, broncos, team} vs gold {denver, broncos}: P 2/3, R 1 -> F1 0.8
    assert token_f1("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    assert token_f1("a the", "the") == 0.0  # both normalize to nothing: 0 in v1.1
    assert token_f1("cat cat dog", "cat dog dog") == pytest.approx(2 / 3)  # multiset overlap 2


def _ex(qid, *golds):
    return QAExample(qid, "t", "ctx", "q", [Answer(g, 0) for g in golds])


def test_squad_metrics_max_over_golds_and_missing():
    examples = [_ex("1", "Denver Broncos", "Broncos"), _ex("2", "blue sky"), _ex("3", "x")]
    preds = {"1": "broncos.", "2": "the sky", "extra": "ignored"}
    m = squad_metrics(preds, examples)
    # q1: EM 1 (matches "Broncos"), F1 1; q2: EM 0, F1 P 1 R 1/2 -> 2/3; q3 missing: 0
    assert m["exact_match"] == pytest.approx(100 * 1 / 3)
    assert m["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert m["count"] == 3 and m["missing"] == 1


def _conlleval(lines: list[str]) -> tuple[float, float, float]:
    """conlleval.pl's chunk counting, line for line (its endOfChunk / startOfChunk rules), on
    `word gold predicted` lines: the reference our entity scores must reproduce."""

    def end_of_chunk(prev_tag, tag, prev_type, type_):
        return (
            (prev_tag in ("B", "I") and tag in ("B", "O", "S"))
            or (prev_tag in ("E", "S"))
            or (prev_tag != "O" and prev_tag != "." and prev_type != type_)
        ) and prev_tag not in ("O", ".")

    def start_of_chunk(prev_tag, tag, prev_type, type_):
        return (
            tag in ("B", "S")
            or (prev_tag in ("E", "S", "O", ".") and tag in ("I", "E"))
            or (tag != "O" and tag != "." and prev_type != type_)
        ) and tag not in ("O", ".")

    def split(t):
        return (t.split("-", 1)[0], t.split("-", 1)[1]) if "-" in t else (t, "")

    correct = found_gold = found_pred = 0
    in_correct = False
    prev = {"g": ("O", ""), "p": ("O", "")}
    for line in [*lines, ""]:
        if line.strip():
            _, g, p = line.split()
            (gt, gty), (pt, pty) = split(g), split(p)
        else:
            (gt, gty), (pt, pty) = ("O", ""), ("O", "")
        (lg, lgty), (lp, lpty) = prev["g"], prev["p"]
        end_g, end_p = end_of_chunk(lg, gt, lgty, gty), end_of_chunk(lp, pt, lpty, pty)
        start_g, start_p = start_of_chunk(lg, gt, lgty, gty), start_of_chunk(lp, pt, lpty, pty)
        if in_correct:
            if end_g and end_p and lgty == lpty:
                in_correct = False
                correct += 1
            elif end_g != end_p or gty != pty:
                in_correct = False
        if start_g and start_p and gty == pty:
            in_correct = True
        found_gold += start_g
        found_pred += start_p
        prev = {"g": (gt, gty), "p": (pt, pty)}
    if in_correct:
        correct += 1
    precision = correct / found_pred if found_pred else 0.0
    recall = correct / found_gold if found_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def test_entity_scores_equal_conlleval_on_a_prediction_file_with_broken_chunks():
    import random

    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-ORG"]
    gold_sents, pred_sents, lines = [], [], []
    for _ in range(200):
        n = rng.randint(1, 12)
        g = [rng.choice(tags) for _ in range(n)]  # stray I- tags included, as models produce
        p = [t if rng.random() < 0.7 else rng.choice(tags) for t in g]
        gold_sents.append(g)
        pred_sents.append(p)
        lines += [f"w {a} {b}" for a, b in zip(g, p)] + [""]
    ours = ner_metrics(gold_sents, pred_sents)
    ref = _conlleval(lines)
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx(ref)


def test_bleu_up_to_order_n_and_distinct_n():
    """BLEU-1/2 are sacreBLEU's BLEU with --max-ngram-order; distinct-n counts n-grams by hand."""
    import sacrebleu

    from lmforge.tasks import metrics

    hyps = ["the cat sat on the mat .", "a dog ! a dog !", "hi"]
    refs = ["the cat is on the mat .", "there is a dog !", "hello there"]
    for n in (1, 2):
        want = sacrebleu.metrics.BLEU(max_ngram_order=n).corpus_score(hyps, [refs]).score
        assert metrics.bleu(hyps, refs, max_order=n)["bleu"] == pytest.approx(want)
    # BLEU-1 by hand: clipped unigram matches 6 + 3 + 0 of 7 + 6 + 1, equal lengths (no brevity penalty)
    assert metrics.bleu(hyps, refs, max_order=1)["bleu"] == pytest.approx(100 * 9 / 14)
    # 13a tokens: 7 + 6 + 1 = 14 unigrams, 10 distinct (the, cat, sat, on, mat, ., a, dog, !, hi)
    assert metrics.distinct(hyps, 1) == pytest.approx(100 * 10 / 14)
    # bigrams: 6 + 5 + 0 = 11; repeated: "a dog", "dog !" -> 11 - 2 = 9 distinct
    assert metrics.distinct(hyps, 2) == pytest.approx(100 * 9 / 11)
    assert metrics.distinct(["hi"], 2) == 0.0
    assert metrics.distinct(["你好你好"], 1) == pytest.approx(50.0)  # characters, as BLEU's zh tokens
