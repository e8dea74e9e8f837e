"""Examples -> model inputs: token ids with their segment ids and the labels the head trains on.

Every feature is a dict of NumPy arrays (variable length per example); `TaskBatches` pads them
into batches. The texts of a file are tokenised in one `encode_batch` call (Rust, all cores).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.models.heads import IGNORE
from lmforge.tasks.framing import Specials
from lmforge.tasks.readers import ClassificationExample, LabelMap, TokenExample


@dataclass
class Encoded:
    """Features of one file, plus what had to be changed to fit `max_len`."""

    features: list[dict[str, np.ndarray]]
    truncated: int = 0  # examples cut to max_len (classification)
    split: int = 0  # sentences spread over several windows (NER)
    notes: list[str] = field(default_factory=list)


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.backend.encode_batch(texts, add_special_tokens=False)]


def truncate_pair(a: list[int], b: list[int] | None, room: int) -> tuple[list[int], list[int] | None, bool]:
    """Longest-first truncation (BERT's): trim the longer segment one token at a time, here in O(1)."""
    if b is None:
        return a[:room], None, len(a) > room
    if len(a) + len(b) <= room:
        return a, b, False
    la, lb = len(a), len(b)
    excess = la + lb - room
    d = min(excess, abs(la - lb))  # first the longer segment down towards the shorter
    if la > lb:
        la -= d
    else:
        lb -= d
    excess -= d
    lb -= (excess + 1) // 2  # then both alike; on a tie BERT trims the second segment first
    la -= excess // 2
    return a[:la], b[:lb], True


def encode_classification(
    examples: list[ClassificationExample],
    tokenizer: Any,
    specials: Specials,
    labels: LabelMap | None,
    max_len: int,
    *,
    source: str = "",
) -> Encoded:
    """[CLS] a [SEP] (b [SEP]) for encoders; a (<sep> b) <eos> for decoders; label ids when known."""
    a_ids = _ids(tokenizer, [e.text for e in examples])
    pairs = [e.text_pair for e in examples]
    b_ids = _ids(tokenizer, [p or "" for p in pairs]) if any(p is not None for p in pairs) else None
    n_special = (1 if specials.cls is not None else 0) + (2 if b_ids is not None else 1)
    room = max_len - n_special
    if room < 2:
        raise ValueError(f"max_len={max_len} leaves no room for text")
    out, truncated = [], 0
    for i, ex in enumerate(examples):
        a, b, cut = truncate_pair(a_ids[i], b_ids[i] if b_ids is not None else None, room)
        truncated += cut
        head = [specials.cls] if specials.cls is not None else []
        ids = head + a + [specials.sep]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, specials.sep]
            types += [1] * (len(b) + 1)
        feat = {"input_ids": np.asarray(ids, np.int64), "token_type_ids": np.asarray(types, np.int64)}
        if labels is not None and ex.label is not None:
            feat["label"] = np.asarray(labels.id(ex.label, source=source, line=ex.line), np.int64)
        out.append(feat)
    return Encoded(out, truncated=truncated)


def _word_pieces(tokenizer: Any, sentences: list[list[str]]) -> list[list[list[int]]]:
    """Pieces of every word, each word encoded as it appears inside running text.

    Byte-level BPE marks a word that follows a space with a leading 'Ġ'; encoding bare words would
    give pieces the model rarely saw in pretraining, so words after the first get their space.
    """
    spaced = tokenizer.kind == "bpe"  # byte-level BPE
    flat: list[str] = []
    for words in sentences:
        flat += [(" " + w if spaced and j else w) for j, w in enumerate(words)]
    pieces = _ids(tokenizer, flat) if flat else []
    out, k = [], 0
    for words in sentences:
        out.append(pieces[k : k + len(words)])
        k += len(words)
    return out


def encode_tokens(
    examples: list[TokenExample],
    tokenizer: Any,
    specials: Specials,
    labels: LabelMap | None,
    max_len: int,
    *,
    label_all_pieces: bool = False,
    source: str = "",
) -> Encoded:
    """Word-tagged sentences -> pieces with labels on the first piece of each word (or on all).

    Each feature keeps `word_pos` (the position of every word's first piece) so that predictions
    are made per word, which is what CoNLL scoring counts. A word that tokenises to nothing (a
    stray control character) gets the unknown token so that it still receives a prediction.
    Sentences longer than `max_len` are split at word boundaries into several windows, and their
    predictions joined back (`sentence` and `word_offset` say where each window belongs).
    """
    unk = tokenizer.unk_id if tokenizer.unk_id is not None else specials.sep
    all_pieces = _word_pieces(tokenizer, [e.tokens for e in examples])
    room = max_len - (1 if specials.cls is not None else 0) - 1
    out, split = [], 0
    for s, (ex, word_pieces) in enumerate(zip(examples, all_pieces)):
        word_pieces = [p if p else [unk] for p in word_pieces]
        word_pieces = [p[:room] for p in word_pieces]  # a single word longer than a window: keep its start
        tag_ids = (
            [labels.id(t, source=source, line=ex.line) for t in ex.tags]
            if labels is not None and ex.tags
            else None
        )
        start = 0
        windows = 0
        while start < len(word_pieces):  # an empty sentence gets no window (and no tags)
            n, end = 0, start
            while end < len(word_pieces) and n + len(word_pieces[end]) <= room:
                n += len(word_pieces[end])
                end += 1
            ids = [specials.cls] if specials.cls is not None else []
            word_pos, piece_labels = [], [IGNORE] * len(ids)
            for w in range(start, end):
                word_pos.append(len(ids))
                ids += word_pieces[w]
                if tag_ids is not None:
                    first = tag_ids[w]
                    rest = _inside_of(labels, first) if label_all_pieces else IGNORE
                    piece_labels += [first] + [rest] * (len(word_pieces[w]) - 1)
            ids.append(specials.sep)
            piece_labels.append(IGNORE)
            feat = {
                "input_ids": np.asarray(ids, np.int64),
                "token_type_ids": np.zeros(len(ids), np.int64),
                "word_pos": np.asarray(word_pos, np.int64),
                "sentence": np.asarray(s, np.int64),
                "word_offset": np.asarray(start, np.int64),
            }
            if tag_ids is not None:
                feat["piece_labels"] = np.asarray(piece_labels, np.int64)
                feat["word_labels"] = np.asarray(tag_ids[start:end], np.int64)
            out.append(feat)
            windows += 1
            start = end
        split += windows > 1
    return Encoded(out, split=split)


def _inside_of(labels: LabelMap, tag_id: int) -> int:
    """The label of a word's later pieces under label_all_pieces: B-X continues as I-X."""
    name = labels.name(tag_id)
    if name.startswith("B-"):
        inside = "I-" + name[2:]
        if inside in labels.names:
            return labels.id(inside)
    return tag_id
