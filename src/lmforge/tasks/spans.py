"""Extractive QA (SQuAD v1.1): model inputs from `QAExample`s, and answer spans back from logits.

A context longer than the model's window is cut into overlapping windows; every window becomes one
row `[CLS] question [SEP] context-window [SEP]`, and each row remembers which example it came from
and the character span of each of its context tokens. Those spans are what make decoding exact:
the predicted answer is a slice of the original context string, never detokenised text, so
WordPiece's lowercasing/spacing and byte-level BPE's byte pieces (Chinese included) cannot leak into
the answer.

Token spans come from the `tokenizers` offsets (character offsets into the original string), with
surrounding whitespace trimmed: byte-level BPE folds the preceding space into a token (`"Ġcat"`),
and a token that is only whitespace (`"Ċ"`) gets no span at all, so it can sit inside an answer but
never start or end one.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tasks.readers import QAExample
from lmforge.tokenizer import Tokenizer
from lmforge.utils.io import atomic_write_text

log = logging.getLogger(__name__)

_DECODE_CHUNK = 2048  # windows scored at once: bounds the (chunk, k, k) score tensor's memory
_FILL_CHUNK = 8192  # windows filled at once: bounds the flat index arrays' memory


@dataclass(eq=False)
class QAFeatures:
    """One row per context window, padded to the longest window (`N` windows, `T` positions).

    Row layout: `[CLS] question [SEP] context-window [SEP] pad...`; position 0 is always the CLS
    token, which is also the "no answer in this window" label. `context_offsets` holds each context
    token's (start, end) character span in its example's context (end exclusive), and (-1, -1) for
    everything that is not context text: CLS, question, SEP, padding and whitespace-only tokens.
    """

    input_ids: np.ndarray  # (N, T) int32 (nn.Embedding takes int32; `.long()` if a model wants int64)
    token_type_ids: np.ndarray  # (N, T) int32: 0 for CLS question SEP, 1 for context and its SEP
    attention_mask: np.ndarray  # (N, T) bool
    example_index: np.ndarray  # (N,) int64: index into the examples the features were built from
    context_offsets: np.ndarray  # (N, T, 2) int32
    start_positions: np.ndarray | None = None  # (N,) int64, with labels only
    end_positions: np.ndarray | None = None  # (N,) int64, with labels only
    num_examples: int = 0
    unmapped_answers: int = 0  # labelled examples whose first answer overlaps no context token

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class QAPredictions:
    """`answers` is the official SQuAD prediction shape; `nbest` the ranked candidates per question."""

    answers: dict[str, str]
    nbest: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------


def _frame_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """(CLS, SEP) ids; decoder tokenizers without them frame the row with bos/eos instead."""
    cls_id = next((i for i in (tokenizer.cls_id, tokenizer.bos_id, tokenizer.eos_id) if i is not None), None)
    sep_id = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    if cls_id is None or sep_id is None:
        raise LmforgeError(
            "the tokenizer has neither [CLS]/[SEP] nor bos/eos special tokens to frame QA inputs; "
            "use a tokenizer trained with `lmforge tokenizer train` or one with an end-of-text token"
        )
    return int(cls_id), int(sep_id)


@functools.cache
def _is_space_table() -> np.ndarray:
    """`str.isspace` for every BMP code point (none lies beyond it; the last is U+3000)."""
    return np.array([chr(c).isspace() for c in range(0x10000)] + [False])


def _trim_offsets(texts: Sequence[str], offsets: Sequence[np.ndarray]) -> np.ndarray:
    """Each text's token spans, shrunk past leading/trailing whitespace, concatenated into (M, 2).

    Whitespace-only spans become (-1, -1). Vectorised over all texts at once: they are joined with
    a non-space separator (so no trimming crosses a text's end), `nxt[i]` is the first non-space
    position >= i and `prv[e]` the largest end <= e that follows a non-space character.
    """
    sizes = np.array([len(o) for o in offsets], dtype=np.int64)
    flat = np.concatenate([o.reshape(-1, 2) for o in offsets]) if sizes.sum() else np.zeros((0, 2), np.int64)
    room = np.array([len(t) + 1 for t in texts], dtype=np.int64)  # each text plus its separator
    base = np.cumsum(room) - room
    flat = flat + np.repeat(base, sizes)[:, None]
    joined = "\0".join(texts)
    n = len(joined)
    table = _is_space_table()
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    solid = ~table[np.minimum(cp, len(table) - 1)]
    pos = np.arange(n + 1)
    nxt = np.minimum.accumulate(np.where(np.append(solid, True), pos, n)[::-1])[::-1]
    prv = np.maximum.accumulate(np.where(np.insert(solid, 0, True), pos, 0))
    start, end = nxt[flat[:, 0]], prv[flat[:, 1]]
    keep = start < end
    out = np.full_like(flat, -1)
    base_of = np.repeat(base, sizes)
    out[keep, 0] = start[keep] - base_of[keep]
    out[keep, 1] = end[keep] - base_of[keep]
    return out


def _ragged(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, index within row) for every item of rows of the given lengths, flattened."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, within


def _answer_tokens(examples: Sequence[QAExample], token_offsets: list[np.ndarray]) -> np.ndarray:
    """(E, 2) first/last context token of each example's first answer; (-1, -1) when none overlaps."""
    out = np.full((len(examples), 2), -1, dtype=np.int64)
    for i, (ex, off) in enumerate(zip(examples, token_offsets)):
        a = ex.answers[0]
        hit = np.flatnonzero((off[:, 0] < a.start + len(a.text)) & (off[:, 1] > a.start))
        if len(hit):
            out[i] = hit[0], hit[-1]
    return out


@dataclass(eq=False)
class _Tokens:
    """The questions (cut to max_query_len) and the distinct contexts of a set of examples, tokenised:
    flat id arrays with each row's length and start, and each example's context slot."""

    q_len: np.ndarray  # (E,) question tokens per example
    q_flat: np.ndarray  # all question ids, concatenated
    q_base: np.ndarray  # (E,) start of each question in q_flat
    c_len: np.ndarray  # (C,) tokens per distinct context
    c_base: np.ndarray  # (C,) start of each context in c_flat / o_flat
    c_flat: np.ndarray  # all context ids, concatenated
    o_flat: np.ndarray  # (sum c_len, 2) trimmed character span of every context token
    slots: np.ndarray  # (E,) each example's context


def _checked_examples(
    examples: Sequence[QAExample], max_len: int, doc_stride: int, max_query_len: int, with_labels: bool
) -> list[QAExample]:
    """The examples as a list, after checking the window geometry leaves room and labels exist."""
    if max_query_len < 1 or doc_stride < 1:
        raise LmforgeError(
            f"max_query_len={max_query_len} and doc_stride={doc_stride} must both be >= 1; "
            "the defaults are 64 and 128"
        )
    if max_len - max_query_len - 3 < 1:
        raise LmforgeError(
            f"max_len={max_len} leaves no room for context after a {max_query_len}-token question and "
            f"3 special tokens; raise max_len above {max_query_len + 3} or lower max_query_len"
        )
    examples = list(examples)
    if not examples:
        raise LmforgeError("no QA examples to build features from; check the SQuAD file")
    if with_labels and (bad := next((ex for ex in examples if not ex.answers), None)):
        raise LmforgeError(
            f"question {bad.id} has no gold answer to label; pass with_labels=False for unlabelled data"
        )
    return examples


def _tokenise(examples: list[QAExample], tokenizer: Tokenizer, max_query_len: int) -> _Tokens:
    """Tokenise every question, and every distinct context once (many questions share a paragraph)."""
    backend = tokenizer.backend
    q_lists = [
        e.ids[:max_query_len]
        for e in backend.encode_batch([ex.question for ex in examples], add_special_tokens=False)
    ]
    ctx_slot: dict[str, int] = {}
    for ex in examples:
        ctx_slot.setdefault(ex.context, len(ctx_slot))
    contexts = list(ctx_slot)
    c_encs = backend.encode_batch(contexts, add_special_tokens=False)
    c_len = np.array([len(e.ids) for e in c_encs], dtype=np.int64)
    c_flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in c_encs), np.int64, int(c_len.sum()))
    o_flat = _trim_offsets(contexts, [np.asarray(e.offsets, dtype=np.int64) for e in c_encs])
    q_len = np.array([len(q) for q in q_lists], dtype=np.int64)
    q_flat = np.fromiter(itertools.chain.from_iterable(q_lists), np.int64, int(q_len.sum()))
    slots = np.array([ctx_slot[ex.context] for ex in examples], dtype=np.int64)
    return _Tokens(q_len=q_len, q_flat=q_flat, q_base=np.cumsum(q_len) - q_len, c_len=c_len,
                   c_base=np.cumsum(c_len) - c_len, c_flat=c_flat, o_flat=o_flat, slots=slots)  # fmt: skip


def _window_labels(
    spans: np.ndarray, ex_r: np.ndarray, start_r: np.ndarray, len_r: np.ndarray, c0_r: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Start/end positions per window (0, the CLS, where the window does not hold the whole answer),
    and how many examples' answers cover no context token at all."""
    first, last = spans[ex_r, 0], spans[ex_r, 1]
    whole = (first >= start_r) & (last < start_r + len_r)  # unmapped (-1) fails the first test
    start_pos = np.where(whole, c0_r + first - start_r, 0)
    end_pos = np.where(whole, c0_r + last - start_r, 0)
    unmapped = int(np.sum(spans[:, 0] < 0))
    if unmapped:
        log.warning(
            "%d of %d answer(s) cover no context token and are labelled as CLS; check their offsets",
            unmapped,
            len(spans),
        )
    return start_pos, end_pos, unmapped


def build_qa_features(
    examples: Sequence[QAExample],
    tokenizer: Tokenizer,
    *,
    max_len: int = 384,
    doc_stride: int = 128,
    max_query_len: int = 64,
    with_labels: bool = True,
) -> QAFeatures:
    """Turn examples into windowed model inputs (and start/end labels for training).

    Questions are cut to `max_query_len` tokens. Each context is tokenised once and cut into
    windows of `room = max_len - len(question) - 3` tokens; `doc_stride` is the step between the
    starts of consecutive windows (as in the original BERT `run_squad.py`, not HF's newer
    "overlap" meaning), so neighbours share `room - doc_stride` tokens. The step is capped at
    `room`, so no context token is ever skipped, and the last window ends at the context's end.

    Labels are the window positions of the first gold answer's first and last tokens (a token
    partly inside the answer counts as inside), or 0 (CLS) for a window that does not hold the whole
    answer. Answers that overlap no token at all are counted in `unmapped_answers` and labelled 0.
    """
    examples = _checked_examples(examples, max_len, doc_stride, max_query_len, with_labels)
    cls_id, sep_id = _frame_ids(tokenizer)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    tok = _tokenise(examples, tokenizer, max_query_len)
    q_len, q_flat, q_base = tok.q_len, tok.q_flat, tok.q_base
    c_len, c_base, c_flat, o_flat, slots = tok.c_len, tok.c_base, tok.c_flat, tok.o_flat, tok.slots

    # Window geometry, per example then per row (window).
    n = c_len[slots]
    c0 = q_len + 2  # first context position: after CLS, the question and SEP
    room = max_len - c0 - 1
    step = np.minimum(doc_stride, room)
    n_win = 1 + np.maximum(0, -(-(n - room) // step))  # ceil((n - room) / step) more when too long
    ex_r = np.repeat(np.arange(len(examples)), n_win)
    start_r = (np.arange(len(ex_r)) - (np.cumsum(n_win) - n_win)[ex_r]) * step[ex_r]
    len_r = np.minimum(room[ex_r], n[ex_r] - start_r)
    c0_r = c0[ex_r]
    end_r = c0_r + len_r  # the final SEP
    n_rows, width = len(ex_r), int(end_r.max()) + 1

    input_ids = np.full((n_rows, width), pad_id, dtype=np.int32)
    offsets = np.full((n_rows, width, 2), -1, dtype=np.int32)
    all_rows = np.arange(n_rows)
    input_ids[:, 0] = cls_id
    input_ids[all_rows, c0_r - 1] = sep_id
    input_ids[all_rows, end_r] = sep_id
    for lo in range(0, n_rows, _FILL_CHUNK):  # chunks bound the flat index arrays' memory
        hi = min(lo + _FILL_CHUNK, n_rows)
        ex_c = ex_r[lo:hi]
        rows, within = _ragged(q_len[ex_c])
        input_ids[lo + rows, 1 + within] = q_flat[q_base[ex_c][rows] + within]
        rows, within = _ragged(len_r[lo:hi])
        src = c_base[slots[ex_c]][rows] + start_r[lo:hi][rows] + within
        cols = c0_r[lo:hi][rows] + within
        input_ids[lo + rows, cols] = c_flat[src]
        offsets[lo + rows, cols] = o_flat[src]
    positions = np.arange(width)
    token_type_ids = ((positions >= c0_r[:, None]) & (positions <= end_r[:, None])).astype(np.int32)
    attention_mask = positions <= end_r[:, None]

    start_pos = end_pos = None
    unmapped = 0
    if with_labels:
        spans = _answer_tokens(examples, [o_flat[c_base[j] : c_base[j] + c_len[j]] for j in slots])
        start_pos, end_pos, unmapped = _window_labels(spans, ex_r, start_r, len_r, c0_r)
    return QAFeatures(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        example_index=ex_r,
        context_offsets=offsets,
        start_positions=start_pos,
        end_positions=end_pos,
        num_examples=len(examples),
        unmapped_answers=unmapped,
    )


# ----------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------


def _as_numpy(x: Any, name: str) -> np.ndarray:
    """float32 numpy from a numpy array or a torch tensor (any device or dtype, bf16 included)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise LmforgeError(f"{name} must be (windows, positions), got shape {arr.shape}")
    return arr


def _window_candidates(
    start: np.ndarray, end: np.ndarray, eligible: np.ndarray, n_best: int, max_answer_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(window, start token, end token, score) of each window's best `n_best` valid spans.

    Scores all pairs of the top-k starts and top-k ends of every window as one (n, k, k) tensor.
    Ties go to the earlier position (stable sorts), so decoding is deterministic.
    """
    n, t = start.shape
    k = min(n_best, t)
    s_masked = np.where(eligible, start, -np.inf)
    e_masked = np.where(eligible, end, -np.inf)
    si = np.argsort(-s_masked, axis=1, kind="stable")[:, :k]
    ei = np.argsort(-e_masked, axis=1, kind="stable")[:, :k]
    sv = np.take_along_axis(s_masked, si, 1)
    ev = np.take_along_axis(e_masked, ei, 1)
    score = sv[:, :, None] + ev[:, None, :]
    length = ei[:, None, :] - si[:, :, None] + 1
    ok = (length >= 1) & (length <= max_answer_len) & (score > -np.inf)
    score = np.where(ok, score, -np.inf).reshape(n, k * k)
    m = min(n_best, k * k)
    top = np.argsort(-score, axis=1, kind="stable")[:, :m]
    top_score = np.take_along_axis(score, top, 1)
    keep = top_score > -np.inf
    win = np.broadcast_to(np.arange(n)[:, None], top.shape)[keep]
    flat = top[keep]
    rows = np.arange(n).repeat(keep.sum(1))
    return win, si[rows, flat // k], ei[rows, flat % k], top_score[keep]


def decode_spans(
    start_logits: Any,
    end_logits: Any,
    features: QAFeatures,
    examples: Sequence[QAExample],
    *,
    n_best: int = 20,
    max_answer_len: int = 30,
) -> QAPredictions:
    """Best answer per example from (N, T) start/end logits (numpy or torch) over `features`' rows.

    A span must start and end on context tokens of one window, with end >= start and at most
    `max_answer_len` tokens; its score is start logit + end logit. Candidates from all of an
    example's windows are pooled, a character span found by two overlapping windows keeps its best
    score, and the top `n_best` are returned sorted by score. The answer is the context slice
    `context[start_char:end_char]`; an example with no valid span answers "". Logits wider than
    T (batches padded further) are accepted; the extra columns are ignored.
    """
    if n_best < 1 or max_answer_len < 1:
        raise LmforgeError(f"n_best={n_best} and max_answer_len={max_answer_len} must both be >= 1")
    examples = list(examples)
    if len(examples) != features.num_examples:
        raise LmforgeError(
            f"features were built from {features.num_examples} examples but {len(examples)} were "
            "given; pass the same example list to build_qa_features and decode_spans"
        )
    if len({ex.id for ex in examples}) != len(examples):
        raise LmforgeError("question ids are not unique; predictions are keyed by id, so give each a new id")
    start = _as_numpy(start_logits, "start_logits")
    end = _as_numpy(end_logits, "end_logits")
    n_rows, width = features.input_ids.shape
    if start.shape != end.shape or start.shape[0] != n_rows or start.shape[1] < width:
        raise LmforgeError(
            f"logits of shape {start.shape} / {end.shape} do not match the features' input_ids "
            f"{features.input_ids.shape}; run the model on every feature row, in order"
        )
    start, end = start[:, :width], end[:, :width]  # wider batches only add padding columns
    offsets = features.context_offsets
    parts = []
    for lo in range(0, len(features), _DECODE_CHUNK):
        hi = min(lo + _DECODE_CHUNK, len(features))
        w, s, e, sc = _window_candidates(
            start[lo:hi], end[lo:hi], offsets[lo:hi, :, 0] >= 0, n_best, max_answer_len
        )
        parts.append((w + lo, s, e, sc))
    win, s_tok, e_tok, score = (np.concatenate(p) for p in zip(*parts))
    ex_idx = features.example_index[win]
    s_char = offsets[win, s_tok, 0]
    e_char = offsets[win, e_tok, 1]

    # Rank by example, then score (best first), then earlier/shorter span; drop repeated char spans
    # (overlapping windows find the same answer) keeping the first, i.e. best-scoring, one.
    order = np.lexsort((e_char, s_char, -score, ex_idx))
    key = np.stack([ex_idx, s_char, e_char], axis=1)[order]
    _, first = np.unique(key, axis=0, return_index=True)
    order = order[np.sort(first)]
    ex_sorted = ex_idx[order]
    rank = np.arange(len(order)) - np.searchsorted(ex_sorted, ex_sorted, side="left")
    order = order[rank < n_best]

    nbest: dict[str, list[dict[str, Any]]] = {ex.id: [] for ex in examples}
    for j in order.tolist():
        ex = examples[int(ex_idx[j])]
        a, b = int(s_char[j]), int(e_char[j])
        nbest[ex.id].append(
            {"text": ex.context[a:b], "score": float(score[j]), "start_char": a, "end_char": b}
        )
    answers = {qid: (cands[0]["text"] if cands else "") for qid, cands in nbest.items()}
    return QAPredictions(answers=answers, nbest=nbest)


def write_predictions_json(answers: Mapping[str, str], path: str | Path) -> None:
    """Write `{question_id: answer_text}` as the official SQuAD evaluation script reads it.

    UTF-8 without escaping (Chinese answers stay readable), written atomically so an interrupted
    evaluation never leaves a truncated file for the scorer.
    """
    bad = next((qid for qid, text in answers.items() if not isinstance(text, str)), None)
    if bad is not None:
        raise LmforgeError(f"prediction for question {bad} is not a string; pass QAPredictions.answers")
    atomic_write_text(path, json.dumps(dict(answers), ensure_ascii=False) + "\n")
