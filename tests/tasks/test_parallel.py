"""Parallel text: the three layouts, alignment errors, skipped pairs, the shared corpora."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import LmforgeError
from lmforge.tasks.parallel import parallel_files, read_parallel
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
