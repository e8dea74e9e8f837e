"""Task readers on the shared datasets (skipped when absent) and on hostile files."""

from __future__ import annotations

import json
import logging

import pytest

from lmforge.errors import LmforgeError
from lmforge.tasks.readers import (
    LabelMap,
    detect_scheme,
    read_classification,
    read_conll,
    read_squad,
    repair_iob2,
    split_squad_by_article,
    to_iob2,
)
from lmforge.utils.shared_data import shared_data_path


def _shared(*parts: str):
    p = shared_data_path(*parts)
    if p is None:
        pytest.skip(f"shared dataset file {'/'.join(parts)} not available")
    return p


# --- classification ---------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_sst2_by_name_and_by_index():
    path = _shared("sst2", "dev.tsv")
    by_name = read_classification(path, text_column="sentence", label_column="label")
    by_index = read_classification(path, text_column=0, label_column="1")  # header auto-detected
    assert len(by_name) == 872
    assert by_name == by_index
    assert by_name[0].line == 2
    lm = LabelMap.from_examples(by_name)
    assert lm.names == ["0", "1"]
    assert sum(lm.encode(by_name)) == 444  # positives, per the dataset's provenance


@pytest.mark.shared_data
def test_chnsenticorp_label_first():
    ex = read_classification(_shared("chnsenticorp", "dev.tsv"), text_column="text_a", label_column="label")
    assert ex and {e.label for e in ex} == {"0", "1"}
    assert all(e.text for e in ex)


def test_headerless_tsv_and_named_labels(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text('pos\tgreat "fun" film\nneg\tdull\npos\tfine\n', encoding="utf-8")
    ex = read_classification(p, text_column=1, label_column=0)
    assert [e.label for e in ex] == ["pos", "neg", "pos"]
    assert ex[0].text == 'great "fun" film'  # TSV quotes are text
    assert LabelMap.from_examples(ex).names == ["neg", "pos"]


def test_header_detected_with_indices(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("text\tcategory\na\tx\nb\ty\nc\tx\n", encoding="utf-8")
    ex = read_classification(p, text_column=0, label_column=1)
    assert [e.text for e in ex] == ["a", "b", "c"]
    ex = read_classification(p, text_column=0, label_column=1, has_header=False)
    assert ex[0].label == "category"


def test_quoted_csv_with_pair(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('premise,hypothesis,label\n"A, quoted ""text""","multi\nline",2\nb,c,10\n', encoding="utf-8")
    ex = read_classification(p, text_column="premise", text_pair_column="hypothesis", label_column="label")
    assert ex[0].text == 'A, quoted "text"'
    assert ex[0].text_pair == "multi\nline"
    assert ex[1].line == 4
    assert LabelMap.from_examples(ex).names == ["2", "10"]  # numeric order, not string order


def test_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"t": "hi", "y": 1}\n\n{"t": "yo", "y": 0}\n', encoding="utf-8")
    ex = read_classification(p, text_column="t", label_column="y")
    assert [(e.text, e.label, e.line) for e in ex] == [("hi", "1", 1), ("yo", "0", 3)]
    with pytest.raises(LmforgeError, match=r"column 'text'.*available: t, y"):
        read_classification(p, text_column="text", label_column="y")


def test_missing_column_names_file_and_available(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("sentence\tlabel\nx\t1\n", encoding="utf-8")
    with pytest.raises(LmforgeError) as e:
        read_classification(p, text_column="text", label_column="label")
    msg = str(e.value)
    assert "d.tsv" in msg and "'text'" in msg and "available: sentence, label" in msg
    assert "\n" not in msg


def test_short_row_and_empty_text(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("a\t1\nb\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"d\.tsv:2: column 1 \(label\) missing"):
        read_classification(p, text_column=0, label_column=1, has_header=False)
    p.write_text("a\t1\n \t0\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"d\.tsv:2: empty text"):
        read_classification(p, text_column=0, label_column=1, has_header=False)


def test_unknown_extension_needs_delimiter(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("a|1\nb|0\nc|1\n", encoding="utf-8")
    # The message names the file and a fix the CLI offers (the Python API also takes `delimiter`).
    with pytest.raises(
        LmforgeError, match=r"d\.txt: cannot tell the columns .*rename it to \.tsv .*\.csv .*\.jsonl"
    ):
        read_classification(p, text_column=0, label_column=1)
    assert len(read_classification(p, text_column=0, label_column=1, delimiter="|")) == 3


def test_label_map_roundtrip_and_unseen(tmp_path):
    lm = LabelMap.from_labels(["b", "a", "b"])
    lm.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json") == lm
    dev = tmp_path / "dev.tsv"
    dev.write_text("x\ta\ny\tc\n", encoding="utf-8")
    ex = read_classification(dev, text_column=0, label_column=1, has_header=False)
    with pytest.raises(LmforgeError, match=r"dev\.tsv:2: label 'c' is not in the label map"):
        lm.encode(ex, source=dev)


# --- CoNLL ------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_conll2003_is_iob2_and_clean():
    path = _shared("conll2003", "valid.txt")
    sents = read_conll(path)
    assert len(sents) == 3250
    assert sum(len(s.tokens) for s in sents) == 51362
    assert sum(s.repaired for s in sents) == 0
    assert sum(t.startswith("B-") for s in sents for t in s.tags) == 5942
    assert detect_scheme(s.tags for s in sents) == "iob2"


@pytest.mark.shared_data
def test_msra_char_level():
    sents = read_conll(_shared("msra_ner", "dev.txt"))
    assert len(sents) == 2000
    assert all(len(tok) == 1 for s in sents[:50] for tok in s.tokens)
    assert {t.split("-")[-1] for s in sents for t in s.tags} <= {"O", "PER", "LOC", "ORG"}


def test_docstart_blank_lines_and_tag_column(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text(
        "-DOCSTART- -X- O\n\nJohn NNP B-PER\nlives VBZ O\n\n\nin IN O\nParis NNP B-LOC\n", encoding="utf-8"
    )
    sents = read_conll(p)
    assert [s.tokens for s in sents] == [["John", "lives"], ["in", "Paris"]]
    assert [s.line for s in sents] == [3, 7]
    with pytest.raises(LmforgeError, match=r"d\.txt:3: tag 'NNP'"):
        read_conll(p, tag_column=1)  # the POS column is not a tag column


def test_wrong_column_count(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("a X O\nb B-PER\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"d\.txt:2: expected 3 columns.*got 2"):
        read_conll(p)


def test_broken_bio_repaired_with_count(tmp_path, caplog):
    p = tmp_path / "d.txt"
    p.write_text("a B-PER\nb O\nc I-PER\nd I-LOC\ne I-LOC\n\nf B-ORG\ng I-ORG\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        sents = read_conll(p, scheme="iob2")
    assert sents[0].tags == ["B-PER", "O", "B-PER", "B-LOC", "I-LOC"]
    assert [s.repaired for s in sents] == [2, 0]
    assert "repaired 2 tag(s)" in caplog.text


def test_iob1_conversion_and_detection(tmp_path):
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC"]
    assert to_iob2(iob1, "iob1") == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    p = tmp_path / "d.txt"
    p.write_text("".join(f"w{i} {t}\n" for i, t in enumerate(iob1)), encoding="utf-8")
    sents = read_conll(p)  # auto-detected as IOB1: conversion, not repair
    assert sents[0].tags == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert sents[0].repaired == 0


def test_bioes_conversion(tmp_path):
    bioes = ["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "B-LOC", "E-LOC"]
    assert to_iob2(bioes, "bioes") == ["B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "B-LOC", "I-LOC"]
    assert to_iob2(bioes, "IOBES") == to_iob2(bioes, "bioes")
    assert detect_scheme([bioes]) == "bioes"
    p = tmp_path / "d.txt"
    p.write_text("a\tS-PER\nb\tE-LOC\n", encoding="utf-8")
    assert read_conll(p)[0].tags == ["B-PER", "B-LOC"]  # a lone E- becomes I-, then is repaired
    with pytest.raises(LmforgeError, match=r"d\.txt:1: tag 'S-PER' is not valid in scheme iob2"):
        read_conll(p, scheme="bio")


def test_repair_iob2_function():
    assert repair_iob2(["I-X", "I-X", "O", "B-Y", "I-Y"]) == (["B-X", "I-X", "O", "B-Y", "I-Y"], 1)
    with pytest.raises(LmforgeError, match="unknown tag scheme"):
        to_iob2(["O"], "bilou")


# --- SQuAD ------------------------------------------------------------------------------------------


def _squad(tmp_path, qas, context="The cat sat on the mat. The cat slept."):
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}
    p = tmp_path / "squad.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


@pytest.mark.shared_data
def test_squad_dev_and_article_split():
    ex = read_squad(_shared("squad", "dev-v1.1.json"))
    assert len(ex) == 10570
    a = ex[0].answers[0]
    assert ex[0].context[a.start : a.start + len(a.text)] == a.text
    train, dev = split_squad_by_article(ex, 0.25, seed=3)
    assert len(train) + len(dev) == len(ex)
    assert not {e.title for e in train} & {e.title for e in dev}
    assert len({e.title for e in dev}) == 12
    assert split_squad_by_article(ex, 0.25, seed=3) == (train, dev)


def test_squad_offset_repaired(tmp_path, caplog):
    p = _squad(
        tmp_path, [{"id": "q1", "question": "Where?", "answers": [{"text": "the mat", "answer_start": 12}]}]
    )
    with caplog.at_level(logging.WARNING):
        ex = read_squad(p)
    assert ex[0].answers[0].start == 15 and ex[0].repaired == 1
    assert "repaired 1 answer offset" in caplog.text


def test_squad_offset_picks_nearest_occurrence(tmp_path):
    p = _squad(
        tmp_path, [{"id": "q1", "question": "Who?", "answers": [{"text": "The cat", "answer_start": 22}]}]
    )
    assert read_squad(p)[0].answers[0].start == 24  # the second "The cat", not the first


def test_squad_offset_unrepairable(tmp_path):
    p = _squad(tmp_path, [{"id": "q-42", "question": "?", "answers": [{"text": "a dog", "answer_start": 4}]}])
    with pytest.raises(LmforgeError, match="question q-42"):
        read_squad(p)


def test_squad_malformed(tmp_path):
    p = tmp_path / "s.json"
    p.write_text('{"data": [{"title": "x"}]}', encoding="utf-8")
    with pytest.raises(LmforgeError, match="malformed SQuAD"):
        read_squad(p)


def test_split_by_article_validation(tmp_path):
    ex = read_squad(_squad(tmp_path, [{"id": "q", "question": "?", "answers": []}]))
    with pytest.raises(LmforgeError, match="at least 2 articles"):
        split_squad_by_article(ex, 0.5, seed=0)
    with pytest.raises(LmforgeError, match="dev_fraction"):
        split_squad_by_article(ex, 1.0, seed=0)


def test_write_squad_round_trips_a_split(tmp_path):
    from lmforge.tasks.readers import write_squad

    data = {"version": "1.1", "data": [
        {"title": t, "paragraphs": [{"context": f"{t} is a city. 北京 too.", "qas": [
            {"id": f"{t}{i}", "question": "where?", "answers": [{"text": t, "answer_start": 0}]} for i in range(2)]}]}
        for t in ("Paris", "Rome", "Oslo")]}  # fmt: skip
    src = tmp_path / "all.json"
    src.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    examples = read_squad(src)
    train, test = split_squad_by_article(examples, 0.34, seed=1)
    assert {e.title for e in train}.isdisjoint({e.title for e in test})
    for part, name in ((train, "train.json"), (test, "test.json")):
        assert read_squad(write_squad(part, tmp_path / name)) == part
