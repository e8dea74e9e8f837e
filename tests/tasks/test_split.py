"""`lmforge split`: train/dev files from one labelled file, for each task format.

Every split must be disjoint and complete (each unit of the input in exactly one part, byte for byte
where the format allows), deterministic for a seed, and refuse what would lose data.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import lmforge
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.tasks.readers import read_conll, read_squad
from lmforge.tasks.split import looks_like_header, split_task_file
from lmforge.utils.shared_data import shared_data_path

# --- helpers ----------------------------------------------------------------------------------------


def _squad_file(tmp_path, n_articles: int = 10):
    """Articles of two paragraphs; article i has i % 3 + 2 questions, ids unique across the file."""
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            context = f"Article {a} paragraph {p} says the answer is blue{a}{p}."
            qas = [
                {"id": f"q{a}-{p}-{q}", "question": f"What colour {q}?",
                 "answers": [{"text": f"blue{a}{p}", "answer_start": context.index("blue")}]}
                for q in range(a % 3 + 2 - p)
            ]  # fmt: skip
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


def _conll_docs(n_docs: int, sents_per_doc: int = 3) -> str:
    out = []
    for d in range(n_docs):
        out.append("-DOCSTART- -X- -X- O\n\n")
        for s in range(sents_per_doc):
            out.append(f"Doc{d} NNP B-NP B-ORG\nsays VBZ B-VP O\nhi{s} NN B-NP O\n\n")
    return "".join(out)


def _read(path: str) -> str:
    """A written part exactly as it is on disk (line endings untranslated)."""
    return Path(path).read_bytes().decode("utf-8")


def _lines(path: str) -> list[str]:
    return _read(path).splitlines(keepends=True)


def _blocks(text: str) -> list[str]:
    """The sentence blocks of CoNLL text (without -DOCSTART- lines), as strings."""
    blocks: list[str] = []
    cur: list[str] = []
    for line in [*text.split("\n"), ""]:
        if line.strip() and not line.startswith("-DOCSTART-"):
            cur.append(line)
        elif cur:
            blocks.append("\n".join(cur))
            cur = []
    return blocks


# --- qa ---------------------------------------------------------------------------------------------


def test_qa_split_by_article_is_disjoint_complete_and_readable(tmp_path):
    src = _squad_file(tmp_path)
    res = split_task_file("qa", src, tmp_path / "squad", dev_fraction=0.2, seed=0)
    train, dev = read_squad(res["train"]), read_squad(res["dev"])
    assert res["split_by"] == "article"
    assert res["train"].endswith("train.json") and res["dev"].endswith("dev.json")
    assert res["dev_counts"] == {"articles": 2, "questions": len(dev)}
    assert res["train_counts"] == {"articles": 8, "questions": len(train)}
    assert not {ex.title for ex in train} & {ex.title for ex in dev}  # no article in both
    assert not {ex.context for ex in train} & {ex.context for ex in dev}
    every = read_squad(src)
    assert sorted(ex.id for ex in train + dev) == sorted(ex.id for ex in every)
    by_id = {ex.id: ex for ex in every}
    assert all(by_id[ex.id] == ex for ex in train + dev)  # questions and answers unchanged


def test_qa_split_is_deterministic_for_a_seed(tmp_path):
    src = _squad_file(tmp_path, n_articles=20)
    a = split_task_file("qa", src, tmp_path / "a", dev_fraction=0.25, seed=7)
    b = split_task_file("qa", src, tmp_path / "b", dev_fraction=0.25, seed=7)
    c = split_task_file("qa", src, tmp_path / "c", dev_fraction=0.25, seed=8)
    assert _read(a["dev"]) == _read(b["dev"])
    assert _read(a["dev"]) != _read(c["dev"])


def test_qa_needs_two_articles(tmp_path):
    src = _squad_file(tmp_path, n_articles=1)
    with pytest.raises(LmforgeError, match=r"dev-v1.1.json: 1 article\(s\) found; need at least 2"):
        split_task_file("qa", src, tmp_path / "out")


# --- classify ---------------------------------------------------------------------------------------


def test_tsv_split_repeats_the_header_and_keeps_rows_byte_for_byte(tmp_path):
    rows = [f'text "{i}"  with  spaces\t{i % 2}\textra{i}\n' for i in range(40)]
    src = tmp_path / "train.tsv"
    src.write_text("sentence\tlabel\tnote\n" + "".join(rows) + "\n", encoding="utf-8")
    res = split_task_file("classify", src, tmp_path / "out", dev_fraction=0.1, seed=0)
    assert res["split_by"] == "row" and res["header"] is True
    assert (res["train_counts"], res["dev_counts"]) == ({"rows": 36}, {"rows": 4})
    train = _lines(res["train"])
    dev = _lines(res["dev"])
    assert train[0] == dev[0] == "sentence\tlabel\tnote\n"
    assert res["train"].endswith("train.tsv") and res["dev"].endswith("dev.tsv")
    assert not set(train[1:]) & set(dev[1:])
    assert sorted(train[1:] + dev[1:]) == sorted(rows)
    assert train[1:] == [r for r in rows if r in set(train)]  # the file's order is kept


def test_csv_records_spanning_lines_stay_whole(tmp_path):
    rows = [f'"line one\nline two of {i}",{i % 3}\r\n' for i in range(10)]
    src = tmp_path / "data.csv"
    src.write_bytes(("text,label\r\n" + "".join(rows)).encode("utf-8"))
    res = split_task_file("classify", src, tmp_path / "out", dev_fraction=0.3, seed=1)
    train = _read(res["train"])
    dev = _read(res["dev"])
    assert train.startswith("text,label\r\n") and dev.startswith("text,label\r\n")
    assert res["dev_counts"] == {"rows": 3}
    parts = [r for r in rows if r in dev]
    assert len(parts) == 3 and all((r in train) != (r in dev) for r in rows)
    assert len(train) + len(dev) == len("text,label\r\n") * 2 + len("".join(rows))


def test_jsonl_and_headerless_tsv_have_no_header(tmp_path):
    src = tmp_path / "train.jsonl"
    lines = [json.dumps({"text": f"t{i}", "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(10)]
    src.write_text("".join(lines), encoding="utf-8")
    res = split_task_file("classify", src, tmp_path / "j", dev_fraction=0.2, seed=0)
    got = _lines(res["train"]) + _lines(res["dev"])
    assert res["header"] is False and sorted(got) == sorted(lines)
    assert res["dev"].endswith("dev.jsonl")

    tsv = tmp_path / "plain.tsv"
    tsv.write_bytes(b"".join(f"t{i}\t{i % 2}\r\n".encode() for i in range(9)) + b"t9\t1")  # no final newline
    res = split_task_file("classify", tsv, tmp_path / "t", dev_fraction=0.2, seed=0)
    both = Path(res["train"]).read_bytes() + Path(res["dev"]).read_bytes()
    assert res["header"] is False and res["train_counts"]["rows"] + res["dev_counts"]["rows"] == 10
    assert both.count(b"\r\n") == 10 and b"t9\t1\r\n" in both


def test_has_header_says_it_outright(tmp_path):
    src = tmp_path / "tiny.tsv"
    src.write_text("a\tx\nb\ty\nc\tz\nd\tw\n", encoding="utf-8")
    res = split_task_file("classify", src, tmp_path / "h", dev_fraction=0.4, seed=0, has_header=True)
    assert res["header"] is True and res["train_counts"]["rows"] + res["dev_counts"]["rows"] == 3
    assert _lines(res["dev"])[0] == "a\tx\n"
    with pytest.raises(LmforgeError, match="a JSONL file has no header row"):
        jsonl = tmp_path / "x.jsonl"
        jsonl.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
        split_task_file("classify", jsonl, tmp_path / "j", has_header=True)


@pytest.mark.parametrize("rows, header", [
    ([["sentence", "label"], ["good", "1"], ["bad", "0"]], True),  # a name fine-tuning looks for
    ([["Quality", "#1 String"], ["0", "a"], ["1", "b"], ["1", "c"], ["0", "d"]], True),  # a label column
    ([["great film", "pos"], ["dull", "neg"], ["fine", "pos"]], False),  # the first label recurs
    ([["unique", "pos"], ["dup", "neg"], ["dup", "pos"], ["a", "neg"], ["b", "pos"], ["c", "neg"]], False),
    ([["7", "text"], ["8", "text"], ["9", "other"]], False),  # a number is never a column name
])  # fmt: skip
def test_looks_like_header(rows, header):
    assert looks_like_header(rows) is header


def test_classify_refuses_an_unknown_extension(tmp_path):
    src = tmp_path / "train.txt"
    src.write_text("a\t1\nb\t0\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"train.txt: cannot tell the rows of a '.txt' file; rename it"):
        split_task_file("classify", src, tmp_path / "out")


# --- ner --------------------------------------------------------------------------------------------


def test_conll_with_documents_is_split_by_document(tmp_path):
    src = tmp_path / "train.txt"
    src.write_text(_conll_docs(10), encoding="utf-8")
    res = split_task_file("ner", src, tmp_path / "out", dev_fraction=0.2, seed=0)
    assert res["split_by"] == "document"
    assert res["dev_counts"] == {"documents": 2, "sentences": 6}
    assert res["train_counts"] == {"documents": 8, "sentences": 24}
    train = _read(res["train"])
    dev = _read(res["dev"])
    assert dev.count("-DOCSTART-") == 2 and train.count("-DOCSTART-") == 8
    docs_of = lambda text: {b.split()[0] for b in _blocks(text)}  # noqa: E731
    assert not docs_of(train) & docs_of(dev)  # each document whole, in one part
    assert Counter(_blocks(train) + _blocks(dev)) == Counter(_blocks(src.read_text(encoding="utf-8")))
    assert len(read_conll(res["train"])) == 24 and len(read_conll(res["dev"])) == 6


def test_conll_without_documents_is_split_by_sentence(tmp_path):
    sents = [f"w{i}\tO\nx{i}\tB-PER\n" for i in range(20)]
    src = tmp_path / "eng.train"
    src.write_text("-DOCSTART- O\n\n" + "\n\n".join(sents) + "\n", encoding="utf-8")  # one document
    res = split_task_file("ner", src, tmp_path / "out", dev_fraction=0.25, seed=3)
    assert res["split_by"] == "sentence"
    assert (res["train_counts"], res["dev_counts"]) == ({"sentences": 15}, {"sentences": 5})
    assert res["train"].endswith("train.txt")  # a CoNLL file's odd extension is not kept
    train = _read(res["train"])
    dev = _read(res["dev"])
    assert train.startswith("-DOCSTART- O\n\n") and dev.startswith("-DOCSTART- O\n\n")
    assert sorted(_blocks(train) + _blocks(dev)) == sorted(s.rstrip("\n") for s in sents)
    again = split_task_file("ner", src, tmp_path / "again", dev_fraction=0.25, seed=3)
    assert _read(again["dev"]) == dev


# --- what is refused ---------------------------------------------------------------------------------


def test_refuses_to_overwrite_unless_asked(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text("".join(f'{{"text": "t{i}", "label": "a"}}\n' for i in range(10)), encoding="utf-8")
    out = tmp_path / "out"
    split_task_file("classify", src, out, seed=0)
    before = (out / "dev.jsonl").read_text(encoding="utf-8")
    with pytest.raises(
        LmforgeError, match=r"train.jsonl already exists; choose another --out, or add --overwrite"
    ):
        split_task_file("classify", src, out, seed=1)
    assert (out / "dev.jsonl").read_text(encoding="utf-8") == before
    split_task_file("classify", src, out, seed=1, overwrite=True)
    assert (out / "dev.jsonl").read_text(encoding="utf-8") != before
    with pytest.raises(LmforgeError, match="is the file being split; choose another --out"):
        split_task_file("classify", src, tmp_path, overwrite=True)  # out/train.jsonl is the input


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, float("nan"), "a tenth", True])
def test_bad_dev_fraction(tmp_path, fraction):
    src = _squad_file(tmp_path)
    with pytest.raises(LmforgeError, match=r"--dev_fraction .* is not between 0 and 1 \(exclusive\)"):
        split_task_file("qa", src, tmp_path / "out", dev_fraction=fraction)


def test_a_fraction_that_leaves_a_part_empty_names_one_that_works(tmp_path):
    src = tmp_path / "train.tsv"
    src.write_text("".join(f"t{i}\t{i % 2}\n" for i in range(5)), encoding="utf-8")
    with pytest.raises(
        LmforgeError, match=r"train.tsv: --dev_fraction 0.05 of 5 rows puts none in dev; use 0.1 or more"
    ):
        split_task_file("classify", src, tmp_path / "a", dev_fraction=0.05)
    with pytest.raises(LmforgeError, match=r"of 5 rows leaves none for train; use less than 0.9"):
        split_task_file("classify", src, tmp_path / "b", dev_fraction=0.95)
    res = split_task_file("classify", src, tmp_path / "c", dev_fraction=0.1)
    assert res["dev_counts"] == {"rows": 1}


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(LmforgeError, match="split: unknown task 'pos'; use one of qa, classify, ner"):
        split_task_file("pos", tmp_path / "x", tmp_path / "out")
    with pytest.raises(LmforgeError, match=r"missing.json: file not found; give the labelled file"):
        split_task_file("qa", tmp_path / "missing.json", tmp_path / "out")


# --- the API and the CLI ----------------------------------------------------------------------------


def test_cli_prints_what_the_api_returns(tmp_path, capsys):
    src = _squad_file(tmp_path)
    code = main(["split", "qa", "--data", str(src), "--out", str(tmp_path / "cli"), "--json",
                 "--dev_fraction", "0.2", "--seed", "4"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = json.loads(out.strip().splitlines()[-1])
    lines = out.splitlines()
    assert lines[0].startswith(f"split {src} by article (dev_fraction 0.2, seed 4)")
    assert "cli/dev.json" in lines[2] and "2 articles" in lines[2]
    api = lmforge.split("qa", src, tmp_path / "api", dev_fraction=0.2, seed=4)
    assert printed["dev_counts"] == api["dev_counts"] and printed["train_counts"] == api["train_counts"]
    assert (tmp_path / "cli" / "dev.json").read_bytes() == (tmp_path / "api" / "dev.json").read_bytes()

    code = main(["split", "qa", "--data", str(src), "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("lmforge: error: ") and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    code = main(["split", "qa", "--data", str(src), "--out", str(tmp_path / "x"), "--dev_fraction", "1"])
    assert code == 2 and "is not between 0 and 1" in capsys.readouterr().err


def test_cli_has_header_flag(tmp_path, capsys):
    src = tmp_path / "tiny.tsv"
    src.write_text("a\tx\nb\ty\nc\tz\nd\tw\n", encoding="utf-8")
    argv = ["split", "classify", "--data", str(src), "--out", str(tmp_path / "o"), "--dev_fraction", "0.4"]
    assert main([*argv, "--has_header", "true", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["header"] is True and res["dev_counts"]["rows"] + res["train_counts"]["rows"] == 3


# --- the real SQuAD dev set -------------------------------------------------------------------------


@pytest.mark.shared_data
def test_official_squad_dev_set(tmp_path):
    path = shared_data_path("squad", "dev-v1.1.json")
    if path is None:
        pytest.skip("shared dataset file squad/dev-v1.1.json not available")
    res = lmforge.split("qa", path, tmp_path / "squad", dev_fraction=0.1, seed=0)
    train, dev = read_squad(res["train"]), read_squad(res["dev"])
    assert res["train_counts"]["articles"] + res["dev_counts"]["articles"] == 48
    assert res["dev_counts"]["articles"] == 5  # round(48 * 0.1)
    assert len(train) + len(dev) == 10570
    assert not {ex.title for ex in train} & {ex.title for ex in dev}
    assert {ex.id for ex in train + dev} == {ex.id for ex in read_squad(path)}
