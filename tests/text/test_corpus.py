"""Readers: every input format, spec forms, chunking and hostile inputs."""

from __future__ import annotations

import codecs
import gzip
import json
import sys
import types
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.text import corpus
from lmforge.text.corpus import Document, EmptyInputWarning, read_documents, resolve_files
from lmforge.utils.shared_data import shared_data_path


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def texts(docs) -> list[str]:
    return [d.text for d in docs]


# ---------------------------------------------------------------------------------- plain text


def test_txt_file_unit_is_one_document_with_lf_newlines(tmp_path):
    p = write(tmp_path / "a.txt", b"line one\r\nline two\rline three\n")
    docs = list(read_documents(p, txt_unit="file"))
    assert docs == [Document("line one\nline two\nline three\n", p.as_posix(), 0)]


def test_txt_paragraph_unit_splits_on_blank_and_whitespace_only_lines(tmp_path):
    p = write(tmp_path / "a.txt", "first para\nstill first\n\n  \t\nsecond para\n\n\n third\n")
    docs = list(read_documents(p, txt_unit="paragraph"))
    assert texts(docs) == ["first para\nstill first", "second para", " third"]
    assert [d.source for d in docs] == [f"{p.as_posix()}:1", f"{p.as_posix()}:5", f"{p.as_posix()}:8"]
    assert all(d.part == 0 for d in docs)


def test_txt_default_unit_is_the_blank_line_paragraph(tmp_path):
    """One plain-text file must give NSP, dedup and the length filters many documents."""
    p = write(tmp_path / "a.txt", "first para\nstill first\n\nsecond para\n \nthird para\n")
    docs = list(read_documents(p))
    assert texts(docs) == ["first para\nstill first", "second para", "third para"]
    assert docs == list(read_documents(p, txt_unit="paragraph"))


def test_txt_line_unit_skips_blank_lines(tmp_path):
    p = write(tmp_path / "a.txt", "alpha  \n\n   \n  beta\n")
    docs = list(read_documents(p, txt_unit="line"))
    assert texts(docs) == ["alpha", "beta"]
    assert docs[1].source.endswith("a.txt:4")


def test_big_file_is_chunked_at_line_boundaries_and_reassembles(tmp_path):
    lines = [f"line {i} " + "x" * (i % 13) for i in range(500)]
    original = "\n".join(lines) + "\n"
    p = write(tmp_path / "big.txt", original)
    docs = list(read_documents(p, chunk_chars=200, txt_unit="file"))
    assert [d.part for d in docs] == list(range(len(docs)))
    assert len(docs) > 20
    assert all(len(d.text) <= 200 for d in docs)
    assert all(d.text.endswith("\n") for d in docs)  # every cut is at a line end
    assert "".join(texts(docs)) == original


def test_line_longer_than_chunk_is_split_into_parts(tmp_path):
    long_line = " ".join(f"w{i}" for i in range(400))
    p = write(tmp_path / "long.txt", "head\n" + long_line + "\ntail\n")
    for unit in ("file", "line", "paragraph"):
        docs = list(read_documents(p, chunk_chars=100, txt_unit=unit))
        assert all(len(d.text) <= 100 for d in docs), unit
    whole = read_documents(p, chunk_chars=100, txt_unit="file")
    assert "".join(texts(whole)) == "head\n" + long_line + "\ntail\n"
    para = list(read_documents(p, chunk_chars=100, txt_unit="paragraph"))
    assert [d.part for d in para] == list(range(len(para)))
    assert "".join(texts(para)) == "head\n" + long_line + "\ntail"
    lines = list(read_documents(p, chunk_chars=100, txt_unit="line"))
    assert lines[0].text == "head" and lines[-1].text == "tail"
    assert "".join(d.text for d in lines[1:-1]) == long_line
    assert [d.part for d in lines[1:-1]] == list(range(len(lines) - 2))


def test_incremental_decoding_across_tiny_reads(tmp_path, monkeypatch):
    """Multi-byte characters and CRLF pairs split between reads must decode correctly."""
    monkeypatch.setattr(corpus, "_READ_BYTES", 3)
    text = "数学是研究数量的学科。\r\n第二行：结构\r\n" * 5
    p = write(tmp_path / "zh.txt", text.encode("utf-8"))
    monkeypatch.setattr(corpus, "_SNIFF_BYTES", 4)
    (doc,) = read_documents(p, txt_unit="file")
    assert doc.text == text.replace("\r\n", "\n")


def test_bom_files_decode_transparently(tmp_path):
    a = write(tmp_path / "bom8.txt", codecs.BOM_UTF8 + "héllo wörld\n".encode())
    b = write(tmp_path / "bom16.txt", "héllo 世界\r\n".encode("utf-16"))  # has a BOM, and NUL bytes
    assert texts(read_documents(a, txt_unit="file")) == ["héllo wörld\n"]
    assert texts(read_documents(b, txt_unit="file")) == ["héllo 世界\n"]


def test_explicit_encoding_reads_gbk(tmp_path):
    p = write(tmp_path / "gbk.txt", "中文新闻文本\n".encode("gbk"))
    assert texts(read_documents(p, encoding="gbk", txt_unit="file")) == ["中文新闻文本\n"]


def test_gbk_bytes_read_as_utf8_name_file_offset_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_SNIFF_BYTES", 4)  # the bad byte lies several reads in
    monkeypatch.setattr(corpus, "_READ_BYTES", 5)
    p = write(tmp_path / "gbk.txt", b"plain ascii prefix " + "中文".encode("gbk"))
    with pytest.raises(LmforgeError) as e:
        list(read_documents(p))
    msg = str(e.value)
    assert str(p) in msg and "byte 19" in msg and "--encoding" in msg and "gbk" in msg


def test_binary_file_is_rejected(tmp_path):
    p = write(tmp_path / "model.txt", b"\x7fELF\x00\x01\x02" + bytes(range(256)))
    with pytest.raises(LmforgeError, match="looks binary") as e:
        list(read_documents(p))
    assert str(p) in str(e.value)


def test_nul_byte_past_the_sniffed_head_is_rejected_with_file_and_line(tmp_path):
    body = "".join(f"line {i} of ordinary text\n" for i in range(400))  # ~9.6 KB, past the sniff
    assert len(body.encode()) > 9 * 1024
    p = write(tmp_path / "tail.txt", body.encode() + b"junk\x00\x00\x01 more\n")
    for unit in ("file", "paragraph", "line"):
        with pytest.raises(LmforgeError) as e:
            list(read_documents(p, txt_unit=unit))
        msg = str(e.value)
        assert f"{p}:401" in msg and "NUL" in msg and "--encoding utf-16" in msg and "\n" not in msg


def test_nul_in_a_record_is_rejected(tmp_path):
    p = write(tmp_path / "d.jsonl", json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": "a\x00b"}) + "\n")
    with pytest.raises(LmforgeError, match="NUL") as e:
        list(read_documents(p))
    assert f"{p.as_posix()}:2" in str(e.value)


def test_unknown_encoding_is_a_clear_error(tmp_path):
    p = write(tmp_path / "a.txt", "x\n")
    with pytest.raises(LmforgeError, match="unknown encoding"):
        list(read_documents(p, encoding="klingon-8"))


# ---------------------------------------------------------------------------------- empty inputs


def test_empty_single_file_is_an_error(tmp_path):
    p = write(tmp_path / "empty.txt", "")
    with pytest.raises(LmforgeError, match="is empty; give a file with text") as e:
        list(read_documents(p))
    assert str(p) in str(e.value)


def test_whitespace_only_single_file_is_empty(tmp_path):
    p = write(tmp_path / "blank.txt", "\n  \n\t\n")
    with pytest.raises(LmforgeError, match="empty"):
        list(read_documents(p, txt_unit="paragraph"))


def test_empty_file_in_directory_is_skipped_with_warning(tmp_path):
    write(tmp_path / "d" / "a.txt", "some text\n")
    write(tmp_path / "d" / "b.txt", "")
    with pytest.warns(EmptyInputWarning, match="b.txt"):
        docs = list(read_documents(tmp_path / "d"))
    assert texts(docs) == ["some text"]


def test_directory_of_only_empty_files_is_an_error(tmp_path):
    write(tmp_path / "d" / "a.txt", "")
    write(tmp_path / "d" / "b.txt", "")
    with pytest.warns(EmptyInputWarning), pytest.raises(LmforgeError, match="no text found"):
        list(read_documents(tmp_path / "d"))


# ---------------------------------------------------------------------------------- specs


def test_directory_is_recursive_sorted_and_filtered(tmp_path, capsys):
    d = tmp_path / "corpus"
    write(d / "b.txt", "b\n")
    write(d / "a.md", "a\n")
    write(d / "sub" / "c.text", "c\n")
    write(d / "sub" / "d.jsonl", json.dumps({"text": "d"}) + "\n")
    write(d / "skip.csv", "x,y\n")
    write(d / "skip.py", "print(1)\n")
    write(d / ".hidden" / "e.txt", "hidden\n")
    write(d / ".f.txt", "hidden\n")
    files = resolve_files(d)
    assert [f.relative_to(d).as_posix() for f in files] == [
        "b.txt",
        "sub/c.text",
        "sub/d.jsonl",
    ]  # .md notes are skipped
    assert texts(read_documents(d)) == ["b", "c", "d"]
    # what was left out is said (but not the .md notes or hidden files)
    note = capsys.readouterr().err
    assert "2 file(s) of other extensions not read (skip.csv, skip.py)" in note and "a.md" not in note


def test_glob_and_list_specs(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        write(tmp_path / name, name + "\n")
    pattern = str(tmp_path / "x*.txt")
    assert texts(read_documents(pattern)) == ["x1.txt", "x2.txt"]
    # a list keeps its order and reads a file named twice only once
    spec = [tmp_path / "y.txt", pattern, str(tmp_path / "x1.txt")]
    assert texts(read_documents(spec)) == ["y.txt", "x1.txt", "x2.txt"]


def test_explicit_file_with_unknown_extension_is_text(tmp_path):
    p = write(tmp_path / "wiki.train.tokens", " = Title = \n\n body text \n")
    assert texts(read_documents(p, txt_unit="paragraph")) == [" = Title = ", " body text "]


@pytest.mark.parametrize("spec", ["missing.txt", "nothing/*.txt", "nodir/"])
def test_missing_path_or_empty_glob_names_it(tmp_path, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LmforgeError) as e:
        list(read_documents(spec))
    assert spec in str(e.value)


def test_directory_without_supported_files(tmp_path):
    write(tmp_path / "d" / "a.csv", "x\n")
    with pytest.raises(LmforgeError, match="has no"):
        resolve_files(tmp_path / "d")


def test_bad_arguments(tmp_path):
    p = write(tmp_path / "a.txt", "x\n")
    with pytest.raises(LmforgeError, match="txt_unit"):
        list(read_documents(p, txt_unit="sentence"))  # type: ignore[arg-type]
    with pytest.raises(LmforgeError, match="chunk_chars"):
        list(read_documents(p, chunk_chars=0))


# ---------------------------------------------------------------------------------- JSONL / JSON


def test_jsonl_reads_field_and_names_lines(tmp_path):
    rows = [{"text": "first doc", "id": 1}, {"text": "second doc"}, {"text": None}]
    p = write(
        tmp_path / "d.jsonl", json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n" + json.dumps(rows[2])
    )
    docs = list(read_documents(p))
    assert texts(docs) == ["first doc", "second doc", ""]  # null text is an empty document
    assert [d.source for d in docs] == [f"{p.as_posix()}:{n}" for n in (1, 3, 4)]


def test_jsonl_custom_field_and_gzip(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"content": "zipped"}) + "\n")
    assert texts(read_documents(p, text_field="content")) == ["zipped"]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "ok"}\n{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(LmforgeError) as e:
        list(read_documents(p))
    msg = str(e.value)
    assert f"{p}:3" in msg and "malformed JSON" in msg and "fix or delete" in msg
    assert "\n" not in msg


def test_jsonl_missing_field_lists_the_keys(tmp_path):
    p = write(tmp_path / "d.jsonl", json.dumps({"content": "x", "id": 7}) + "\n")
    with pytest.raises(LmforgeError) as e:
        list(read_documents(p))
    msg = str(e.value)
    assert f"{p}:1" in msg and "'content'" in msg and "'id'" in msg and "text_field" in msg


def test_jsonl_non_string_and_non_object(tmp_path):
    p = write(tmp_path / "d.jsonl", json.dumps({"text": 5}) + "\n")
    with pytest.raises(LmforgeError, match="is a int, expected a string"):
        list(read_documents(p))
    q = write(tmp_path / "e.jsonl", json.dumps(["a", "b"]) + "\n")
    with pytest.raises(LmforgeError, match="expected a JSON object"):
        list(read_documents(q))


def test_json_array_file(tmp_path):
    p = write(tmp_path / "d.json", json.dumps([{"text": "one"}, {"text": "two"}]))
    docs = list(read_documents(p))
    assert texts(docs) == ["one", "two"]
    assert docs[1].source.endswith("d.json:item 1")


def test_long_record_is_chunked(tmp_path):
    p = write(tmp_path / "d.jsonl", json.dumps({"text": "line\n" * 100}) + "\n")
    docs = list(read_documents(p, chunk_chars=64))
    assert [d.part for d in docs] == list(range(len(docs))) and len(docs) > 1
    assert "".join(texts(docs)) == "line\n" * 100


# ---------------------------------------------------------------------------------- Parquet


def test_parquet_rows_in_batches(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(corpus, "_PARQUET_BATCH_ROWS", 3)
    p = tmp_path / "x.parquet"
    values = [f"row text {i}" for i in range(10)]
    values[4] = None
    pq.write_table(pa.table({"text": values, "n": list(range(10))}), p)
    docs = list(read_documents(p))
    assert texts(docs) == [v or "" for v in values]
    assert docs[5].source == f"{p.as_posix()}:row 5"
    with pytest.raises(LmforgeError) as e:
        list(read_documents(p, text_field="body"))
    assert "'body'" in str(e.value) and "text, n" in str(e.value)
    with pytest.raises(LmforgeError, match="expected strings"):
        list(read_documents(p, text_field="n"))


def test_parquet_without_pyarrow_explains_install(tmp_path, monkeypatch):
    p = write(tmp_path / "x.parquet", b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(LmforgeError, match=r"pip install 'lmforge\[parquet\]'"):
        list(read_documents(p))


# ---------------------------------------------------------------------------------- Hugging Face


def test_hf_without_datasets_explains_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(LmforgeError, match=r"pip install 'lmforge\[hf\]'"):
        list(read_documents("hf:wikitext:wikitext-2-raw-v1"))


def test_hf_streams_rows_with_a_fake_datasets_module(monkeypatch):
    calls = {}

    def load_dataset(name, config, split, streaming):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return iter([{"text": "hello hub"}, {"text": "second"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    docs = list(read_documents("hf:wikitext:wikitext-2-raw-v1:validation"))
    assert texts(docs) == ["hello hub", "second"]
    assert docs[1].source == "hf:wikitext:row 1"
    assert calls == {
        "name": "wikitext",
        "config": "wikitext-2-raw-v1",
        "split": "validation",
        "streaming": True,
    }
    assert calls["streaming"] is True
    list(read_documents("hf:tiny_shakespeare"))
    assert calls["config"] is None and calls["split"] == "train"


def test_hf_spec_has_no_local_files():
    with pytest.raises(LmforgeError, match="no local files"):
        resolve_files("hf:wikitext")


# ---------------------------------------------------------------------------------- real data


def test_reads_shared_shakespeare_as_one_document():
    p = shared_data_path("tinyshakespeare", "input.txt")
    if p is None:
        pytest.skip("needs shared/data/tinyshakespeare")
    docs = list(read_documents(p, txt_unit="file"))
    assert len(docs) == 1 and docs[0].text.startswith("First Citizen:")
    assert len(docs[0].text) == p.stat().st_size  # ASCII: one char per byte, nothing lost


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    p = write(tmp_path / "a.txt.gz", b"\x1f\x8b\x08\x00 definitely not a gzip stream")
    with pytest.raises(LmforgeError, match="cannot read") as e:
        list(read_documents(p))
    assert str(p) in str(e.value)
