"""QA features and span decoding on tiny tokenizers (WordPiece, byte-level BPE, GPT-style), English and Chinese."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.errors import LmforgeError
from lmforge.tasks.metrics import squad_metrics
from lmforge.tasks.readers import Answer, QAExample, read_squad
from lmforge.tasks.spans import QAFeatures, build_qa_features, decode_spans, write_predictions_json
from lmforge.tokenizer import Tokenizer, TokenizerConfig
from lmforge.utils.shared_data import shared_data_path

EN_CONTEXT = (
    "The quick brown fox jumps over the lazy dog near the river bank. "
    "Language models learn the statistics of text, one token at a time.\n\n"
    "A tokenizer splits raw text into pieces that a model can embed. "
    "Rivers run to the sea, and the sea returns the rain to the hills. "
    "She sells sea shells by the sea shore on a bright summer morning."
)
ZH_CONTEXT = "地点：北京。时间：四月十二日。主队：湖人队。客队：国王队。我爱北京天安门，天安门上太阳升。"
CORPUS = [EN_CONTEXT, ZH_CONTEXT, "What jumps over the lazy dog? 比赛在哪里？主队是谁？"] * 8


def qa(qid: str, context: str, question: str, answer: str, nth: int = 0) -> QAExample:
    """An example whose answer is the `nth` occurrence of `answer` in `context`."""
    start = -1
    for _ in range(nth + 1):
        start = context.index(answer, start + 1)
    return QAExample(qid, "t", context, question, [Answer(answer, start)])


EN = [
    qa("en1", EN_CONTEXT, "What jumps over the lazy dog?", "quick brown fox"),
    qa("en2", EN_CONTEXT, "What do language models learn?", "the statistics of text"),
    qa("en3", EN_CONTEXT, "What splits raw text?", "A tokenizer"),
    qa("en4", EN_CONTEXT, "Where does she sell sea shells?", "by the sea shore"),
    qa("en5", EN_CONTEXT, "What returns the rain?", "the sea", nth=1),
]
ZH = [
    qa("zh1", ZH_CONTEXT, "比赛在哪里？", "北京"),
    qa("zh2", ZH_CONTEXT, "比赛是什么时候？", "四月十二日"),
    qa("zh3", ZH_CONTEXT, "主队是谁？", "湖人队"),
    qa("zh4", ZH_CONTEXT, "客队是谁？", "国王队"),
]


@pytest.fixture(scope="module")
def toks() -> dict[str, Tokenizer]:
    return {
        "wordpiece": Tokenizer.train(CORPUS, TokenizerConfig(kind="wordpiece", vocab_size=300)),
        "bpe": Tokenizer.train(CORPUS, TokenizerConfig(kind="bpe", vocab_size=400)),
    }


@pytest.fixture(scope="module")
def gpt_tok() -> Tokenizer:
    """A GPT-2-like byte-level BPE whose only special token is <|endoftext|> (no cls/sep/pad)."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    tok = Tokenizer.from_backend(backend)
    assert tok.cls_id is tok.sep_id is tok.pad_id is tok.bos_id is None and tok.eos_id is not None
    return tok


def ctx_ids(tok: Tokenizer, text: str) -> list[int]:
    return tok.backend.encode(text, add_special_tokens=False).ids


def label_text(f: QAFeatures, row: int, ex: QAExample) -> str:
    s, e = int(f.start_positions[row]), int(f.end_positions[row])
    return ex.context[f.context_offsets[row, s, 0] : f.context_offsets[row, e, 1]]


def span_positions(f: QAFeatures, row: int, start_char: int, end_char: int) -> tuple[int, int]:
    """First and last position in `row` whose context span overlaps [start_char, end_char)."""
    off = f.context_offsets[row]
    hit = np.flatnonzero((off[:, 0] < end_char) & (off[:, 1] > start_char))
    return int(hit[0]), int(hit[-1])


def word_positions(f: QAFeatures, row: int, ex: QAExample, word: str, nth: int = 0) -> tuple[int, int]:
    start = -1
    for _ in range(nth + 1):
        start = ex.context.index(word, start + 1)
    return span_positions(f, row, start, start + len(word))


def perfect_logits(f: QAFeatures) -> tuple[np.ndarray, np.ndarray]:
    start = np.full(f.input_ids.shape, -10.0, dtype=np.float32)
    end = start.copy()
    rows = np.flatnonzero(f.start_positions > 0)
    start[rows, f.start_positions[rows]] = 10.0
    end[rows, f.end_positions[rows]] = 10.0
    return start, end


# ----------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_row_layout(toks: dict[str, Tokenizer], kind: str) -> None:
    tok = toks[kind]
    f = build_qa_features([EN[0], ZH[0]], tok, max_len=512)
    assert len(f) == 2 and f.num_examples == 2 and list(f.example_index) == [0, 1]
    assert f.input_ids.dtype == np.int32 and f.attention_mask.dtype == bool
    for row, ex in enumerate([EN[0], ZH[0]]):
        q, c = ctx_ids(tok, ex.question), ctx_ids(tok, ex.context)
        n = 3 + len(q) + len(c)
        assert f.input_ids[row, :n].tolist() == [tok.cls_id, *q, tok.sep_id, *c, tok.sep_id]
        assert (f.input_ids[row, n:] == tok.pad_id).all()
        assert f.attention_mask[row].tolist() == [True] * n + [False] * (f.input_ids.shape[1] - n)
        types = f.token_type_ids[row].tolist()
        assert types == [0] * (len(q) + 2) + [1] * (len(c) + 1) + [0] * (f.input_ids.shape[1] - n)
        # Offsets only on context tokens; trimmed spans are never empty and never start/end on space.
        off = f.context_offsets[row]
        assert (off[: len(q) + 2] == -1).all() and (off[n - 1 :] == -1).all()
        spans = [ex.context[a:b] for a, b in off[len(q) + 2 : n - 1].tolist() if a >= 0]
        assert spans and all(s and s == s.strip() for s in spans)


def test_decoder_tokenizer_frames_with_eos_and_pads_with_zero(gpt_tok: Tokenizer) -> None:
    f = build_qa_features([EN[0], EN[2]], gpt_tok, max_len=512)
    eos = gpt_tok.eos_id
    q = ctx_ids(gpt_tok, EN[2].question)
    row = f.input_ids[1]
    assert row[0] == eos and row[len(q) + 1] == eos
    last = int(f.attention_mask[1].sum()) - 1
    assert row[last] == eos and last < f.input_ids.shape[1] - 1
    assert (row[last + 1 :] == 0).all()
    assert label_text(f, 0, EN[0]) == "quick brown fox"


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
@pytest.mark.parametrize(("max_len", "stride"), [(40, 8), (48, 16), (40, 1000)])
def test_windows_cover_context_with_overlap(
    toks: dict[str, Tokenizer], kind: str, max_len: int, stride: int
) -> None:
    tok = toks[kind]
    ex = EN[0]
    f = build_qa_features([ex], tok, max_len=max_len, doc_stride=stride, max_query_len=16)
    full, q = ctx_ids(tok, ex.context), ctx_ids(tok, ex.question)
    room = max_len - len(q) - 3
    step = min(stride, room)  # a stride beyond the room is capped so no token is skipped
    assert len(full) > room
    assert len(f) == 1 + -(-(len(full) - room) // step)
    spans = []
    for j in range(len(f)):
        types, mask = f.token_type_ids[j].astype(bool), f.attention_mask[j]
        window = f.input_ids[j][types & mask][:-1].tolist()  # drop the closing SEP
        assert window == full[j * step : j * step + room]
        spans.append((j * step, j * step + len(window)))
    assert spans[0][0] == 0 and spans[-1][1] == len(full), "windows run from the first to the last token"
    for (_, end), (nxt, _) in itertools.pairwise(spans):
        assert end - nxt == room - step, "neighbours overlap by room - doc_stride tokens"


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_gold_answers_map_back_exactly(toks: dict[str, Tokenizer], kind: str, lang: str) -> None:
    examples = EN if lang == "en" else ZH
    f = build_qa_features(examples, toks[kind], max_len=40, doc_stride=6, max_query_len=16)
    assert f.unmapped_answers == 0
    for i, ex in enumerate(examples):
        rows = np.flatnonzero(f.example_index == i)
        assert len(rows) >= 2, "small windows: each example spans several"
        a = ex.answers[0]
        a_end = a.start + len(a.text)
        raw = toks[kind].backend.encode(ex.context, add_special_tokens=False).offsets
        # Tokens with text overlapping the answer (BPE's lone "Ġ" inside "brown fox" has none).
        n_answer_tokens = sum(s < a_end and e > a.start and ex.context[s:e].strip() != "" for s, e in raw)
        labelled = [r for r in rows if f.start_positions[r] > 0]
        assert labelled, f"{ex.id}: some window holds the whole answer"
        for r in rows:
            off = f.context_offsets[r]
            held = int(np.sum((off[:, 0] < a_end) & (off[:, 1] > a.start)))
            if f.start_positions[r] > 0:
                assert held == n_answer_tokens
                assert f.token_type_ids[r, f.start_positions[r]] == 1
                assert f.start_positions[r] <= f.end_positions[r]
                assert label_text(f, r, ex).strip() == a.text.strip()
            else:  # a window holding none or only part of the answer points at CLS
                assert held < n_answer_tokens and f.end_positions[r] == 0


def test_partial_tokens_count_as_inside(toks: dict[str, Tokenizer]) -> None:
    """Byte-level BPE merges across Chinese characters: the label covers every overlapping token."""
    ex = qa("zh5", ZH_CONTEXT, "你爱哪里？", "天安门")
    for kind in ("wordpiece", "bpe"):
        f = build_qa_features([ex], toks[kind])
        text = label_text(f, 0, ex)
        assert "天安门" in text
        if kind == "wordpiece":  # one token per CJK character: exact
            assert text == "天安门"


def test_long_question_is_truncated(toks: dict[str, Tokenizer]) -> None:
    tok = toks["wordpiece"]
    long_q = " ".join([EN[0].question] * 6)
    ex = QAExample("long", "t", EN_CONTEXT, long_q, EN[0].answers)
    f = build_qa_features([ex], tok, max_len=64, max_query_len=5, doc_stride=16)
    assert (f.input_ids[:, 1:6] == ctx_ids(tok, long_q)[:5]).all()
    assert (f.input_ids[:, 6] == tok.sep_id).all()
    assert (f.token_type_ids[:, :7] == 0).all() and (f.token_type_ids[:, 7] == 1).all()
    assert f.input_ids.shape[1] <= 64


def test_unmapped_answer_is_counted_and_labelled_cls(
    toks: dict[str, Tokenizer], caplog: pytest.LogCaptureFixture
) -> None:
    space = EN_CONTEXT.index(" ")
    ex = QAExample("ws", "t", EN_CONTEXT, "What is between?", [Answer(" ", space)])
    with caplog.at_level(logging.WARNING, logger="lmforge.tasks.spans"):
        f = build_qa_features([ex, EN[0]], toks["wordpiece"])
    assert f.unmapped_answers == 1
    assert f.start_positions[0] == f.end_positions[0] == 0 and f.start_positions[1] > 0
    assert "cover no context token" in caplog.text


def test_without_labels_and_empty_context(toks: dict[str, Tokenizer]) -> None:
    ex = QAExample("none", "t", "", "Anything?", [])
    f = build_qa_features([ex, EN[0]], toks["wordpiece"], with_labels=False)
    assert f.start_positions is None and f.end_positions is None
    assert (f.context_offsets[0] == -1).all() and f.attention_mask[0].sum() == 3 + len(
        ctx_ids(toks["wordpiece"], "Anything?")
    )


def test_feature_errors(toks: dict[str, Tokenizer]) -> None:
    tok = toks["wordpiece"]
    with pytest.raises(LmforgeError, match="max_len=60 leaves no room"):
        build_qa_features(EN, tok, max_len=60, max_query_len=64)
    with pytest.raises(LmforgeError, match="doc_stride=0"):
        build_qa_features(EN, tok, doc_stride=0)
    with pytest.raises(LmforgeError, match="no QA examples"):
        build_qa_features([], tok)
    with pytest.raises(LmforgeError, match=r"question x has no gold answer.*with_labels=False"):
        build_qa_features([QAExample("x", "t", "c", "q", [])], tok)
    bare = Tokenizer.from_backend(
        tokenizers.Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    )
    with pytest.raises(LmforgeError, match="neither"):
        build_qa_features(EN, bare)


# ----------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_window(toks: dict[str, Tokenizer]) -> tuple[QAFeatures, list[QAExample]]:
    examples = [EN[0], ZH[0]]  # two lengths, so row 1 has padding
    return build_qa_features(examples, toks["wordpiece"], max_len=512), examples


def test_decode_picks_span_and_ignores_non_context_tokens(one_window) -> None:
    f, examples = one_window
    start = np.full(f.input_ids.shape, -5.0, dtype=np.float32)
    end = start.copy()
    not_context = f.context_offsets[:, :, 0] < 0  # CLS, question, SEPs, padding
    assert (~f.attention_mask).any()
    start[not_context] = end[not_context] = 100.0
    s, e = word_positions(f, 0, examples[0], "brown")[0], word_positions(f, 0, examples[0], "fox")[1]
    start[0, s], end[0, e] = 5.0, 5.0
    s, e = word_positions(f, 1, examples[1], "湖人队")
    start[1, s], end[1, e] = 3.0, 3.0
    p = decode_spans(start, end, f, examples)
    assert p.answers == {"en1": "brown fox", "zh1": "湖人队"}
    best = p.nbest["en1"][0]
    assert best == {"text": "brown fox", "score": 10.0, "start_char": 10, "end_char": 19}
    assert EN_CONTEXT[best["start_char"] : best["end_char"]] == "brown fox"
    # Same answers from torch tensors (bf16 included).
    pt = decode_spans(torch.from_numpy(start), torch.from_numpy(end).bfloat16(), f, examples)
    assert pt.answers == p.answers


def test_decode_requires_end_after_start(one_window) -> None:
    f, examples = one_window
    start = np.full(f.input_ids.shape, -100.0, dtype=np.float32)
    end = start.copy()
    ex = examples[0]
    start[0, word_positions(f, 0, ex, "lazy")[0]] = 10.0  # best start ...
    end[0, word_positions(f, 0, ex, "brown")[1]] = 10.0  # ... and best end lie before it
    start[0, word_positions(f, 0, ex, "quick")[0]] = 3.0
    p = decode_spans(start, end, f, examples)
    assert p.answers["en1"] == "quick brown"
    for cands in p.nbest.values():
        assert all(c["start_char"] < c["end_char"] for c in cands)
        assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)
        assert len(cands) <= 20


def test_decode_respects_max_answer_len(one_window) -> None:
    f, examples = one_window
    ex = examples[0]
    start = np.full(f.input_ids.shape, -100.0, dtype=np.float32)
    end = start.copy()
    start[0, word_positions(f, 0, ex, "The")[0]] = 10.0
    start[0, word_positions(f, 0, ex, "lazy")[0]] = 5.0
    end[0, word_positions(f, 0, ex, "dog")[1]] = 10.0
    full = decode_spans(start, end, f, examples)
    assert full.answers["en1"] == "The quick brown fox jumps over the lazy dog"
    short = decode_spans(start, end, f, examples, max_answer_len=3)
    assert short.answers["en1"] == "lazy dog"
    assert decode_spans(start, end, f, examples, n_best=1).nbest["en1"][0]["text"] == full.answers["en1"]


def test_decode_merges_windows_by_best_score(toks: dict[str, Tokenizer]) -> None:
    ex = EN[4]
    f = build_qa_features([ex], toks["wordpiece"], max_len=40, doc_stride=8, max_query_len=16)
    assert len(f) >= 3
    first = EN_CONTEXT.index("the sea")
    shells = EN_CONTEXT.index("sea shells")
    rows_with = [r for r in range(len(f)) if (f.context_offsets[r, :, 0] == first).any()]
    assert len(rows_with) >= 2, "the first 'the sea' lies in two overlapping windows"
    last = len(f) - 1
    assert (f.context_offsets[last, :, 0] == shells).any()
    start = np.full(f.input_ids.shape, -50.0, dtype=np.float32)
    end = start.copy()
    # The same character span scores 4 and 7 in two windows; "sea shells" scores 6 in the last one.
    for r, v in zip(rows_with[:2], (2.0, 3.5)):
        s, e = span_positions(f, r, first, first + len("the sea"))
        start[r, s] = end[r, e] = v
    s, e = span_positions(f, last, shells, shells + len("sea shells"))
    start[last, s] = end[last, e] = 3.0
    p = decode_spans(start, end, f, [ex])
    assert p.answers["en5"] == "the sea"
    top = p.nbest["en5"][:2]
    assert [(c["text"], c["score"]) for c in top] == [("the sea", 7.0), ("sea shells", 6.0)]
    assert sum(c["start_char"] == first and c["text"] == "the sea" for c in p.nbest["en5"]) == 1
    # Lower the overlapping windows: the last window's span wins.
    start[rows_with[:2]] = end[rows_with[:2]] = -50.0
    assert decode_spans(start, end, f, [ex]).answers["en5"] == "sea shells"


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_perfect_logits_score_100(toks: dict[str, Tokenizer], kind: str) -> None:
    examples = EN + ZH
    f = build_qa_features(examples, toks[kind], max_len=40, doc_stride=6, max_query_len=16)
    start, end = perfect_logits(f)
    p = decode_spans(start, end, f, examples)
    m = squad_metrics(p.answers, examples)
    assert m["exact_match"] == m["f1"] == 100.0 and m["missing"] == 0
    assert p.answers["zh2"] == "四月十二日"


def test_no_valid_span_answers_empty(toks: dict[str, Tokenizer]) -> None:
    examples = [
        QAExample("empty", "t", "", "Anything?", []),
        QAExample("spaces", "t", "  \n\n  ", "Anything?", []),
        EN[0],
    ]
    f = build_qa_features(examples, toks["bpe"], with_labels=False)
    start = np.random.default_rng(0).normal(size=f.input_ids.shape).astype(np.float32)
    p = decode_spans(start, start, f, examples)
    assert p.answers["empty"] == p.answers["spaces"] == ""
    assert p.nbest["empty"] == p.nbest["spaces"] == []
    assert p.answers["en1"]
    neg = np.full(f.input_ids.shape, -np.inf, dtype=np.float32)
    assert decode_spans(neg, neg, f, examples).answers == {"empty": "", "spaces": "", "en1": ""}


def test_decode_errors(one_window) -> None:
    f, examples = one_window
    logits = np.zeros(f.input_ids.shape, dtype=np.float32)
    with pytest.raises(LmforgeError, match="do not match"):
        decode_spans(logits[:, :-1], logits[:, :-1], f, examples)
    with pytest.raises(LmforgeError, match="do not match"):
        decode_spans(logits[:1], logits[:1], f, examples)
    wide = np.pad(logits, ((0, 0), (0, 8)), constant_values=1e4)  # padding columns are ignored
    assert decode_spans(wide, wide, f, examples).answers == decode_spans(logits, logits, f, examples).answers
    with pytest.raises(LmforgeError, match="built from 2 examples but 1"):
        decode_spans(logits, logits, f, examples[:1])
    with pytest.raises(LmforgeError, match="max_answer_len=0"):
        decode_spans(logits, logits, f, examples, max_answer_len=0)
    with pytest.raises(LmforgeError, match="not unique"):
        decode_spans(logits, logits, f, [examples[0], examples[0]])


def test_write_predictions_json(tmp_path) -> None:
    path = tmp_path / "out" / "predictions.json"
    answers = {"zh1": "北京", "en1": "quick brown fox", "none": ""}
    write_predictions_json(answers, path)
    assert json.loads(path.read_text("utf-8")) == answers
    assert "北京" in path.read_bytes().decode("utf-8")  # not \u-escaped
    assert [p.name for p in path.parent.iterdir()] == ["predictions.json"]
    with pytest.raises(LmforgeError, match="not a string"):
        write_predictions_json({"q": ["a"]}, path)  # type: ignore[dict-item]


# ----------------------------------------------------------------------------------------------------
# Shared SQuAD dev file (skipped when absent)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_squad_dev_subset_round_trip() -> None:
    path = shared_data_path("squad", "dev-v1.1.json")
    if path is None:
        pytest.skip("shared dataset file squad/dev-v1.1.json not available")
    examples = read_squad(path)[:400]
    tok = Tokenizer.train(
        sorted({ex.context for ex in examples}), TokenizerConfig(kind="wordpiece", vocab_size=2000)
    )
    f = build_qa_features(examples, tok, max_len=128, doc_stride=48)
    assert f.unmapped_answers == 0 and len(f) > len(examples)
    start, end = perfect_logits(f)
    m = squad_metrics(decode_spans(start, end, f, examples).answers, examples)
    # Below 100 only where an answer is part of a word ("1990s" for "1990") or longer than a window.
    assert m["exact_match"] > 95.0 and m["missing"] == 0
