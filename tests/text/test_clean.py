"""Cleaner: normalisation, filters on real and garbage text, dedup, PII and the summary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.text import clean
from lmforge.text.clean import (
    DROP_REASONS,
    CleanConfig,
    Cleaner,
    CleanSummary,
    line_repetition,
    normalize_text,
    scrub_pii,
)
from lmforge.text.corpus import Document, read_documents
from lmforge.utils.shared_data import shared_data_path

PROSE = (
    "The committee met on Tuesday to review the proposed changes to the city budget. "
    "Several members argued that the increase in spending on public transport was overdue, "
    "while others worried about the long term cost of maintaining the new lines."
)
PROSE2 = (
    "Honey bees communicate the location of flowers through a waggle dance performed inside "
    "the hive. The angle of the dance encodes the direction of the food source."
)
ZH = "数学是利用符号语言研究数量、结构、变化以及空间等概念的一门学科，从某种角度看属于形式科学的一种。"


def run(docs, **cfg) -> tuple[list[Document], CleanSummary]:
    cleaner = Cleaner(CleanConfig(**cfg))
    out = list(cleaner(Document(d, f"doc{i}") if isinstance(d, str) else d for i, d in enumerate(docs)))
    return out, cleaner.summary


def assert_accounting(summary: CleanSummary) -> None:
    assert summary.docs_in == summary.docs_kept + sum(summary.dropped.values())


# ---------------------------------------------------------------------------------- normalisation


def test_nfkc_folds_compatibility_forms():
    assert normalize_text("ﬁne Ｆｕｌｌ１２３ x²") == "fine Full123 x2"


def test_nfkc_keeps_chinese_fullwidth_punctuation():
    text = "你好，世界！真的吗？（是的）：对；ＡＢＣ"
    assert normalize_text(text) == "你好，世界！真的吗？（是的）：对；ABC"


def test_invisible_characters_removed_tab_and_newline_kept():
    text = "a\u200bb\x07c\ufeffd\u00ade\tf\ng\x00"
    assert normalize_text(text) == "abcde\tf\ng"


def test_spaces_and_blank_lines():
    text = "\n\n  indented   code  line   \nword    word\t \n\n\n\n\n\nend\n\n\n"
    assert normalize_text(text) == "  indented code line\nword word\n\n\nend\n"
    assert normalize_text("a\r\nb\rc\u2028d") == "a\nb\nc\nd"


def test_continuation_chunks_keep_leading_newlines():
    assert normalize_text("\nrest of the doc", first_part=False) == "\nrest of the doc"


# ---------------------------------------------------------------------------------- filters


def test_obvious_garbage_is_dropped_with_the_right_reason():
    docs = [
        "",
        "  \n\u200b ",
        "too short",
        "!!!!####" * 10,
        "#$%^&*@~|<>" * 10 + " some words",
        "the same line of spam text again\n" * 50,
        "buy cheap pills now " * 30,
        "的的的的的的" * 30,
        PROSE,
    ]
    out, summary = run(docs, dedup=False, near_dedup=False)
    assert [d.source for d in out] == ["doc8"]
    assert summary.dropped["empty"] == 2
    assert summary.dropped["too_short"] == 1
    assert summary.dropped["symbols"] == 2
    assert summary.dropped["repetition"] == 3
    assert_accounting(summary)


def test_max_chars_and_disabled_filters():
    out, summary = run([PROSE, PROSE2], max_chars=200, dedup=False, near_dedup=False)
    assert [d.source for d in out] == ["doc1"] and summary.dropped["too_long"] == 1
    spam = "the same line of spam text again\n" * 50
    out, _ = run([spam, "!!!!####" * 10], max_repetition=1.0, max_symbol_ratio=1.0, near_dedup=False)
    assert len(out) == 2


def test_line_repetition_measure():
    assert line_repetition("a line\n" * 10) == pytest.approx(0.9)
    assert line_repetition("one\ntwo\nthree") == 0.0
    assert line_repetition("no newline at all") == 0.0


def test_exact_duplicates_dropped_after_normalisation():
    out, summary = run([PROSE, PROSE + "   ", "Ｔhe" + PROSE[3:], PROSE2], near_dedup=False)
    assert [d.source for d in out] == ["doc0", "doc3"]
    assert summary.dropped["duplicate"] == 2
    out, _ = run([PROSE, PROSE], dedup=False, near_dedup=False)
    assert len(out) == 2


def test_near_duplicate_of_lightly_edited_copy_dropped_unrelated_kept():
    long_en = " ".join([PROSE, PROSE2.replace("Honey", "Wild"), PROSE.replace("committee", "council")[::-1]])
    edited = long_en.replace("Tuesday", "Wednesday", 1)
    long_zh = ZH + "数学家们拓展这些概念，为了公式化新的猜想以及从选定的公理及定义中建立起严谨推导出的定理。"
    long_zh += "今日，数学使用在不同的领域中，包括科学、工程、医学、经济学和金融学等。"
    out, summary = run([long_en, edited, PROSE2, long_zh, long_zh.replace("领域", "方面")])
    assert [d.source for d in out] == ["doc0", "doc2", "doc3"]
    assert summary.dropped["near_duplicate"] == 2
    out, _ = run([long_en, edited], near_dedup=False)
    assert len(out) == 2


def test_dedup_spans_batches(monkeypatch):
    monkeypatch.setattr(clean, "_BATCH_DOCS", 2)
    docs = [PROSE, PROSE2, "A different sentence about the weather today and tomorrow.", PROSE, PROSE2]
    out, summary = run(docs)
    assert [d.source for d in out] == ["doc0", "doc1", "doc2"]
    assert summary.dropped["duplicate"] == 2


# ---------------------------------------------------------------------------------- continuations


def test_continuation_chunks_follow_their_first_chunk(monkeypatch):
    monkeypatch.setattr(clean, "_BATCH_DOCS", 2)  # decisions must carry across batch boundaries
    docs = [
        Document(PROSE + "\n", "a", 0),
        Document("continuation of a, kept with it\n", "a", 1),
        Document("x", "a", 2),  # too short on its own, but not filtered on its own
        Document(PROSE + "\n", "b", 0),  # exact duplicate: b and all its parts go
        Document("continuation of b\n", "b", 1),
        Document(PROSE2, "c", 0),
        Document("tail of c", "c", 1),
    ]
    out, summary = run(docs)
    assert [(d.source, d.part) for d in out] == [("a", 0), ("a", 1), ("a", 2), ("c", 0), ("c", 1)]
    assert summary.docs_in == 3 and summary.docs_kept == 2 and summary.dropped["duplicate"] == 1
    assert_accounting(summary)


def test_stream_starting_mid_document_is_treated_as_a_document():
    out, summary = run([Document(PROSE, "z", 3)])
    assert [(d.source, d.part) for d in out] == [("z", 3)] and summary.docs_in == 1


# ---------------------------------------------------------------------------------- PII


def test_pii_scrub_counts_and_leaves_ordinary_numbers():
    text = (
        "Mail john.doe+news@example.co.uk or call (555) 123-4567 / +44 20 7946 0958 or 13812345678. "
        "Servers 192.168.0.1 and 2001:db8::8a2e:370:7334 are down. "
        "In 1999 the price was 12.50, version 3.11.7, ratio 16:9, at 10:30:15 on 2011-04-12."
    )
    scrubbed, counts = scrub_pii(text)
    assert counts == {"email": 1, "phone": 3, "ip": 2}
    assert "<EMAIL>" in scrubbed and scrubbed.count("<PHONE>") == 3 and scrubbed.count("<IP>") == 2
    for keep in ("1999", "12.50", "3.11.7", "16:9", "10:30:15", "2011-04-12"):
        assert keep in scrubbed


def test_cleaner_pii_option_and_summary():
    doc = PROSE + " Contact admin@example.org or 10.0.0.1 for details."
    out, summary = run([doc, doc], pii=True)  # the dropped copy's replacements are not counted
    assert len(out) == 1 and "admin@example.org" not in out[0].text and "<EMAIL>" in out[0].text
    assert summary.pii_replaced == {"email": 1, "phone": 0, "ip": 1}
    assert "pii replaced" in summary.format()
    out, summary = run([doc])
    assert "admin@example.org" in out[0].text and not any(summary.pii_replaced.values())


# ---------------------------------------------------------------------------------- summary / config


def test_summary_accounting_and_format():
    docs = [PROSE, PROSE, "short", "!!!!####" * 10, PROSE2]
    out, summary = run(docs)
    assert summary.docs_in == 5 and summary.docs_kept == 2 == len(out)
    assert_accounting(summary)
    assert summary.chars_in == sum(map(len, docs))
    assert summary.chars_kept == sum(len(d.text) for d in out)
    d = summary.to_dict()
    assert set(d["dropped"]) == set(DROP_REASONS) and d["docs_kept"] == 2
    table = summary.format()
    for word in ("documents in", "kept", "duplicate", "too_short", "symbols"):
        assert word in table


def test_all_dropped_names_the_filter_and_its_flag():
    """A corpus that vanishes entirely must say which setting removed it, not just 'no text'."""
    with pytest.raises(LmforgeError) as e:
        run([PROSE], max_chars=100)
    msg = str(e.value)
    assert "all 1 document(s) were dropped by the clean.max_chars filter" in msg
    assert "--clean.max_chars" in msg and "--prep.clean" in msg and "\n" not in msg
    with pytest.raises(LmforgeError) as e:
        run(["short", "!!!!####" * 10])
    msg = str(e.value)
    assert "clean.min_chars filter (1:" in msg and "clean.max_symbol_ratio filter (1:" in msg
    assert "--clean.min_chars" in msg and "--clean.max_symbol_ratio" in msg


def test_all_dropped_is_allowed_when_asked():
    cleaner = Cleaner(CleanConfig(), allow_empty=True)
    assert list(cleaner([Document("short", "a")])) == []
    assert cleaner.summary.dropped["too_short"] == 1


def test_config_validation():
    with pytest.raises(LmforgeError, match="max_symbol_ratio"):
        CleanConfig(max_symbol_ratio=0)
    with pytest.raises(LmforgeError, match="min_chars"):
        CleanConfig(min_chars=-1)
    with pytest.raises(LmforgeError, match="max_chars"):
        CleanConfig(min_chars=100, max_chars=50)
    with pytest.raises(LmforgeError, match=r"unknown key.*min_char.*valid keys"):
        CleanConfig.from_dict({"min_char": 3})
    assert CleanConfig.from_dict({"pii": True}).pii


def test_normalize_off_keeps_text_verbatim():
    raw = "Ｆｕｌｌ  width   text with trailing spaces   \n" * 3
    out, _ = run([raw], normalize=False, max_repetition=1.0)
    assert out[0].text == raw


# ---------------------------------------------------------------------------------- real text


def shared(*parts: str):
    p = shared_data_path(*parts)
    if p is None:
        pytest.skip(f"needs shared/data/{'/'.join(parts)}")
    return p


def test_keeps_shakespeare_as_one_document():
    out, summary = run(read_documents(shared("tinyshakespeare", "input.txt"), txt_unit="file"))
    assert summary.docs_kept == 1 and len(out) == 1
    assert out[0].text.startswith("First Citizen:")


def test_keeps_chinese_news_and_wiki():
    news, s1 = run(read_documents(shared("zh_corpus", "thucnews_sample.txt"), txt_unit="line"))
    assert s1.docs_kept / s1.docs_in > 0.95
    assert "，" in news[0].text  # Chinese punctuation survives normalisation
    _, s2 = run(read_documents(shared("zh_corpus", "zhwiki_sample.txt"), txt_unit="paragraph"))
    assert s2.docs_kept + s2.dropped["too_short"] == s2.docs_in  # only one-line stubs go
    assert s2.docs_kept >= 60


def test_keeps_wikitext_body_paragraphs():
    docs = [
        d
        for d in read_documents(shared("wikitext2", "wiki.valid.tokens"), txt_unit="paragraph")
        if not d.text.strip().startswith("=")  # section headings are fragments, not text
    ]
    _, summary = run(docs)
    dropped_as_bad = summary.dropped["symbols"] + summary.dropped["repetition"]
    assert dropped_as_bad <= 0.01 * summary.docs_in
    assert summary.docs_kept / summary.docs_in > 0.9


def test_keeps_python_docstrings():
    import argparse
    import json.decoder

    docstrings = []
    for module in (argparse, json.decoder):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 32:
                    docstrings.append(doc)
    assert len(docstrings) > 20
    _, summary = run(docstrings, dedup=False, near_dedup=False)
    assert summary.docs_kept == len(docstrings), summary.format()


def test_disabled_cleaning_keeps_benchmark_text_exactly():
    docs = [
        Document(" = Heading = ", "wiki", 0),
        Document("short", "wiki", 0),
        Document("short", "wiki", 0),  # an exact repeat
        Document("a  line\twith   odd   spacing and \u00a0 a no-break space", "wiki", 0),
    ]
    cleaner = Cleaner(CleanConfig(enabled=False))
    kept = list(cleaner(docs))
    assert [d.text for d in kept] == [d.text for d in docs]
    s = cleaner.summary
    assert s.docs_in == s.docs_kept == 4 and s.chars_in == s.chars_kept and not any(s.dropped.values())
    assert cleaner.clean_text(docs[3].text) == docs[3].text
