"""Parallel text: the three layouts, alignment errors, skipped pairs, the shared corpora."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import LmforgeError
from lmforge.tasks.parallel import Pair, parallel_files, read_parallel
from lmforge.utils.shared_data import shared_data_path


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_two_aligned_files_pair_line_by_line(tmp_path):
    src = _write(tmp_path / "a.en", "A dog runs.\n  Two cats.  \n\nNo target here.\n")
    tgt = _write(tmp_path / "a.de", "Ein Hund rennt.\nZwei Katzen.\n\n\n")
    data = read_parallel(f"{src},{tgt}")
    assert [(p.src, p.tgt, p.line) for p in data.pairs] == [
        ("A dog runs.", "Ein Hund rennt.", 1),
        ("Two cats.", "Zwei Katzen.", 2),
    ]
    assert data.skipped_empty == 2 and data.layout == "aligned"
    assert data.notes() == [f"{src}, {tgt}: skipped 2 pair(s) with an empty side"]
    assert read_parallel([src, tgt]).pairs == data.pairs


def test_different_line_counts_name_both_files_and_counts(tmp_path):
    src = _write(tmp_path / "a.en", "one\ntwo\nthree\n")
    tgt = _write(tmp_path / "a.de", "eins\nzwei")
    with pytest.raises(LmforgeError, match=r"a\.en has 3 lines but .*a\.de has 2"):
        read_parallel(f"{src},{tgt}")


def test_tsv_with_and_without_a_header(tmp_path):
    plain = _write(tmp_path / "p.tsv", "Hi.\t你好。\r\nThanks.\t谢谢。\r\n")
    assert [(p.src, p.tgt) for p in read_parallel(plain).pairs] == [("Hi.", "你好。"), ("Thanks.", "谢谢。")]
    headed = _write(tmp_path / "h.tsv", "src\ttgt\nHi.\t你好。\n")
    assert [(p.src, p.line) for p in read_parallel(headed).pairs] == [("Hi.", 2)]
    bad = _write(tmp_path / "bad.tsv", "Hi.\t你好。\nno tab here\n")
    with pytest.raises(LmforgeError, match=r"bad\.tsv:2: 1 tab-separated field\(s\)"):
        read_parallel(bad)


def test_jsonl_fields_are_named_when_missing(tmp_path):
    rows = [{"dialogue": "#P1#: hi #P2#: hello", "summary": "They greet."}, {"dialogue": "x", "summary": ""}]
    path = _write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = read_parallel(path, src_field="dialogue", tgt_field="summary")
    assert [p.tgt for p in data.pairs] == ["They greet."] and data.skipped_empty == 1
    with pytest.raises(
        LmforgeError, match=r"d\.jsonl:1: no text field 'src' \(fields: dialogue, summary\).*--src_field"
    ):
        read_parallel(path)
    broken = _write(tmp_path / "b.jsonl", '{"src": "a", "tgt": "b"}\n{"src": \n')
    with pytest.raises(LmforgeError, match=r"b\.jsonl:2: invalid JSON"):
        read_parallel(broken)


def test_specs_and_missing_or_unknown_files(tmp_path):
    assert parallel_files("x.en,x.de") == (tmp_path.__class__("x.en"), tmp_path.__class__("x.de"))
    with pytest.raises(LmforgeError, match="give one TSV/JSONL file of pairs, or two line-aligned files"):
        parallel_files("a,b,c")
    with pytest.raises(LmforgeError, match=r"nowhere\.en: parallel text file not found"):
        read_parallel(f"{tmp_path / 'nowhere.en'},{tmp_path / 'nowhere.de'}")
    odd = _write(tmp_path / "pairs.csv", "a,b\n")
    with pytest.raises(LmforgeError, match=r"pairs\.csv: not a layout of parallel text"):
        read_parallel(odd)
    empty = _write(tmp_path / "e.tsv", "x\t \n")
    with pytest.raises(LmforgeError, match=r"e\.tsv: no pair with text on both sides"):
        read_parallel(empty)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("folder", "src", "tgt", "count", "first"),
    [
        ("multi30k", "val.en", "val.de", 1014, "A group of men are loading cotton onto a truck"),
        ("tatoeba_cmn_eng", "tatoeba.cmn-eng.eng", "tatoeba.cmn-eng.cmn", 1000, None),
    ],
)
def test_the_shared_parallel_corpora_read_whole(folder, src, tgt, count, first):
    s, t = shared_data_path(folder, src), shared_data_path(folder, tgt)
    if s is None or t is None:
        pytest.skip(f"needs ../shared/data/{folder} (the shared datasets)")
    data = read_parallel(f"{s},{t}")
    assert len(data) + data.skipped_empty == count and data.skipped_empty == 0
    if first is not None:
        assert data.pairs[0].src == first


def test_jsonl_list_fields_join_the_source_and_make_the_target_list_references(tmp_path):
    rows = [
        {"source": ["First sentence. ", "\nSecond one.\n"], "target": ["", " Summary A. ", "Summary B."]},
        {"source": ["Only one."], "target": ["Just this."]},  # one reference: the target alone
        {"source": "A string source.", "target": "A string target."},
        {"source": ["Skipped."], "target": ["", "  "]},  # no reference with text: an empty side
    ]
    path = _write(tmp_path / "s.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = read_parallel(path, src_field="source", tgt_field="target")
    assert [(p.src, p.tgt, p.refs, p.line) for p in data.pairs] == [
        ("First sentence. Second one.", "Summary A.", ("Summary A.", "Summary B."), 1),
        ("Only one.", "Just this.", (), 2),
        ("A string source.", "A string target.", (), 3),
    ]
    assert [p.references for p in data.pairs] == [
        ("Summary A.", "Summary B."),
        ("Just this.",),
        ("A string target.",),
    ]
    assert data.skipped_empty == 1


def test_a_pair_built_from_three_fields_has_its_target_as_its_only_reference():
    pair = Pair("src", "tgt", 7)
    assert pair.refs == () and pair.references == ("tgt",)


def test_ref_field_takes_the_references_from_another_field(tmp_path):
    rows = [
        {"dialogue": "#P1#: hi", "summary": "They greet.", "summaries": ["They greet.", "Hello.", " "]},
        {"dialogue": "#P1#: bye", "summary": "They part."},  # no references: scored against the target
        {"dialogue": "#P1#: ok", "summary": "Fine.", "summaries": None},
        {"dialogue": "#P1#: so", "summary": "So.", "summaries": "One string."},
    ]
    path = _write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = read_parallel(path, src_field="dialogue", tgt_field="summary", ref_field="summaries")
    assert [p.tgt for p in data.pairs] == ["They greet.", "They part.", "Fine.", "So."]
    assert [p.references for p in data.pairs] == [
        ("They greet.", "Hello."), ("They part.",), ("Fine.",), ("One string.",)
    ]  # fmt: skip
    assert data.notes() == [
        f"{path}: 2 record(s) have no references in 'summaries'; they are scored against their target alone"
    ]
    plain = read_parallel(path, src_field="dialogue", tgt_field="summary")
    assert [p.references for p in plain.pairs] == [
        (t,) for t in ["They greet.", "They part.", "Fine.", "So."]
    ]
    assert plain.notes() == []
    tsv = _write(tmp_path / "p.tsv", "a\tb\n")  # other layouts have one target, the reference
    assert read_parallel(tsv, ref_field="summaries").pairs[0].references == ("b",)


@pytest.mark.parametrize(
    ("record", "field", "kind", "flag"),
    [
        ({"src": 3, "tgt": "b"}, "src", "a number", "src_field"),
        ({"src": "a", "tgt": {"text": "b"}}, "tgt", "an object", "tgt_field"),
        ({"src": "a", "tgt": ["b", None]}, "tgt", "a list holding null", "tgt_field"),
        ({"src": ["a", 1], "tgt": "b"}, "src", "a list holding a number", "src_field"),
        ({"src": "a", "tgt": "b", "refs": [["b"]]}, "refs", "a list holding a list", "ref_field"),
        ({"src": "a", "tgt": "b", "refs": True}, "refs", "a boolean", "ref_field"),
    ],
)
def test_a_field_of_another_type_names_the_line_the_field_and_the_fix(tmp_path, record, field, kind, flag):
    path = _write(tmp_path / "t.jsonl", '{"src": "x", "tgt": "y"}\n' + json.dumps(record) + "\n")
    message = rf"t\.jsonl:2: field '{field}' is {kind}, not a string or a list of strings; .*--{flag}$"
    with pytest.raises(LmforgeError, match=message):
        read_parallel(path, ref_field="refs")


@pytest.mark.shared_data
def test_the_scitldr_test_set_reads_with_all_its_references():
    path = shared_data_path("scitldr", "test.jsonl")
    if path is None:
        pytest.skip("needs ../shared/data/scitldr (the shared datasets)")
    data = read_parallel(path, src_field="source", tgt_field="target")
    assert len(data) == 618 and data.skipped_empty == 0
    counts = sorted({len(p.references) for p in data.pairs})
    assert counts == [2, 3, 4] and sum(len(p.references) for p in data.pairs) == 1967
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert data.pairs[0].src == " ".join(s.strip() for s in first["source"])
    assert data.pairs[0].tgt == first["target"][0].strip()
