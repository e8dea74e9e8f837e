"""What masked-LM data needs to know about tokens, and the masking itself (all NumPy, no token loops).

Three facts about every vocabulary entry are computed once per tokenizer (`TokenTables`):
- whether it is special ([CLS], [SEP], [PAD], end of text...): never masked, never predicted;
- whether it can continue the word before it (WordPiece's "##ing"; a BPE/Unigram piece with no
  leading space after an alphanumeric piece), which defines the words of whole-word masking;
- whether it ends a sentence ("." before a capital, "!", "?", "。", "！", "？", a newline), which is
  how sentence pairs for next-sentence prediction are cut out of token shards.

Chinese has no spaces, so its words come from a segmenter (jieba, as Chinese BERT-wwm used a
segmenter): runs of single-character CJK tokens are joined, segmented once per corpus, and each
word's first character marks a word start. That needs a tokenizer that keeps CJK characters as
tokens of their own (WordPiece with BERT's CJK split, or char); with byte-level BPE a CJK token is
already a multi-character unit and is treated as one word.

`mask_tokens` applies BERT's rule: pick `rate` of the maskable tokens (token by token, whole words,
or SpanBERT-style spans of whole words), then replace 80% of the picked ones with [MASK], 10% with a
random token and leave 10% unchanged; the model must predict all picked tokens.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lmforge.errors import LmforgeError


@dataclass
class MaskingConfig:
    rate: float = 0.15  # share of (non-special) tokens the model must predict
    mask_prob: float = 0.8  # of those: replaced by [MASK]
    random_prob: float = 0.1  # of those: replaced by a random token (the rest stay unchanged)
    # Mask whole words (all pieces of a word together); Chinese words come from jieba.
    whole_word: bool = False
    # Mask spans of whole words with geometric lengths (SpanBERT) instead of single words/tokens.
    span: bool = False
    span_p: float = 0.2  # geometric parameter of span lengths, in words (mean about 1/p before clipping)
    span_max: int = 10  # longest span, in words
    # How Chinese words are found for whole-word masking: jieba, or none (each character is a word).
    chinese_words: Literal["jieba", "none"] = "jieba"
    # Share of sentence-pair examples cut shorter than the maximum length (BERT: 0.1), so the model
    # also sees the short inputs of fine-tuning.
    short_seq_prob: float = 0.1

    def validate(self) -> None:
        for name in ("rate", "mask_prob", "random_prob", "span_p", "short_seq_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise LmforgeError(f"mlm.{name}={v} must be between 0 and 1")
        if self.rate <= 0:
            raise LmforgeError("mlm.rate must be above 0 (the share of tokens to predict, e.g. 0.15)")
        if self.mask_prob + self.random_prob > 1.0:
            raise LmforgeError(
                f"mlm.mask_prob + mlm.random_prob = {self.mask_prob + self.random_prob} exceeds 1"
            )
        if self.span_p <= 0 or self.span_max < 1:
            raise LmforgeError("mlm.span_p must be > 0 and mlm.span_max >= 1")


_CJK_IDEOGRAPH = re.compile(
    "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f]"
)
_STRONG_END = set("!?。！？…")
_CLOSERS = "\"')]}”’」』】》〉"
_OPENERS = "\"'([{“‘「『【《〈"


def _is_alnum(ch: str) -> bool:
    return bool(ch) and ch.isalnum() and not _CJK_IDEOGRAPH.match(ch)


@dataclass
class TokenTables:
    """Per-vocabulary-entry facts as boolean arrays indexed by token id (see the module docstring)."""

    special: np.ndarray  # never masked or predicted
    glues: np.ndarray  # continues an alphanumeric token right before it (no space between)
    bare_space: np.ndarray  # only whitespace (byte-level BPE's lone "Ġ"): starts the word that follows
    ends_alnum: np.ndarray  # ends in a letter or digit (a following gluing token continues its word)
    strong_end: np.ndarray  # ends a sentence whatever follows ("!", "?", "。", newline)
    weak_end: np.ndarray  # ends a sentence if the next token opens one ("." before a capital)
    opens: np.ndarray  # can open a sentence (capital letter, digit, quote, CJK character)
    cjk_char: np.ndarray  # exactly one CJK ideograph (words come from the segmenter)
    random_ids: np.ndarray  # ids drawn for the 10% random replacements (no special tokens)
    texts: list[str]  # surface text of each id (for the segmenter)
    mask_id: int
    cls_id: int
    sep_id: int
    pad_id: int

    @classmethod
    def build(cls, tokenizer: Any) -> TokenTables:
        """Tables for `tokenizer` (an lmforge Tokenizer); it must have [MASK], [CLS], [SEP] and [PAD]."""
        missing = [r for r in ("mask", "cls", "sep", "pad") if getattr(tokenizer, f"{r}_id") is None]
        if missing:
            raise LmforgeError(
                f"the tokenizer has no {', '.join('[' + m.upper() + ']' for m in missing)} token, which masked-LM "
                "training needs; train a new one (lmforge tokenizer train --kind wordpiece) or add it as a special token"
            )
        V = tokenizer.vocab_size
        special_ids = {tokenizer.token_to_id(t) for t in tokenizer.special_tokens.values()}
        special_ids |= set(tokenizer.backend.get_added_tokens_decoder())
        special_ids.discard(None)
        kind = tokenizer.kind
        texts: list[str] = []
        arrays = {
            k: np.zeros(V, dtype=bool)
            for k in ("glues", "bare", "ends_alnum", "strong", "weak", "opens", "cjk")
        }
        for i in range(V):
            raw = tokenizer.id_to_token(i) or ""
            if i in special_ids:
                texts.append("")
                continue
            if kind == "bpe":
                text = tokenizer.backend.decode([i], skip_special_tokens=False)
            elif kind == "unigram":
                text = raw.replace("\u2581", " ")
            else:
                text = raw
            continues = False
            if kind == "wordpiece":
                continues = text.startswith("##")
                text = text[2:] if continues else text
            body = unicodedata.normalize("NFC", text).strip()
            texts.append(body)
            cjk = bool(body) and bool(_CJK_IDEOGRAPH.match(body[0]))
            arrays["cjk"][i] = cjk and len(body) == 1
            if kind == "wordpiece":
                arrays["glues"][i] = continues
                arrays["ends_alnum"][i] = True  # "##" alone decides
            else:
                arrays["glues"][i] = bool(body) and not text[:1].isspace() and _is_alnum(body[0])
                arrays["bare"][i] = bool(text) and not body
                arrays["ends_alnum"][i] = bool(body) and not text[-1:].isspace() and _is_alnum(body[-1])
            core = body.rstrip(_CLOSERS)
            arrays["strong"][i] = "\n" in text or (bool(core) and core[-1] in _STRONG_END)
            arrays["weak"][i] = bool(core) and core[-1] == "."
            first = body[:1]
            opens = bool(first) and (first.isupper() or first.isdigit() or first in _OPENERS or cjk)
            if kind == "bpe":  # byte-level BPE keeps spaces: a sentence opens after one (or a bare space)
                opens = text[:1].isspace() and (opens or not body)
            arrays["opens"][i] = opens
        special = np.zeros(V, dtype=bool)
        special[sorted(special_ids)] = True
        return cls(
            special=special, glues=arrays["glues"], bare_space=arrays["bare"], ends_alnum=arrays["ends_alnum"], strong_end=arrays["strong"],
            weak_end=arrays["weak"], opens=arrays["opens"], cjk_char=arrays["cjk"],
            random_ids=np.flatnonzero(~special), texts=texts, mask_id=int(tokenizer.mask_id),
            cls_id=int(tokenizer.cls_id), sep_id=int(tokenizer.sep_id), pad_id=int(tokenizer.pad_id),
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Sentences and words of a token array


def sentence_ends(tokens: np.ndarray, tables: TokenTables) -> np.ndarray:
    """Bool (n,): token i ends a sentence (strong punctuation, or a "." before a sentence opener)."""
    t = np.asarray(tokens)
    ends = tables.strong_end[t]
    if len(t) > 1:
        ends[:-1] |= tables.weak_end[t[:-1]] & tables.opens[t[1:]]
    if len(t):
        ends[-1] |= tables.weak_end[t[-1]]  # nothing follows: the text ends there
    return ends


def word_starts(tokens: np.ndarray, tables: TokenTables, *, chinese_words: str = "jieba") -> np.ndarray:
    """Bool (n,): token i starts a word (whole-word masking groups each start with what follows).

    A token continues a word when it glues to the token before it (WordPiece "##", or no space
    between two alphanumeric pieces). Runs of CJK characters are segmented by jieba.
    """
    t = np.asarray(tokens)
    starts = ~tables.glues[t]
    starts[:1] = True
    if len(t) > 1:
        prev = t[:-1]
        starts[1:] |= ~tables.ends_alnum[prev] | tables.special[prev]
        # " " + "word" (a lone space token, then a piece without one) is one word, begun by the space.
        starts[1:] &= ~(tables.bare_space[prev] & tables.glues[t[1:]])
    starts |= tables.special[t]
    if chinese_words == "jieba":
        cjk = tables.cjk_char[t]
        if cjk.any():
            _segment_chinese(t, cjk, starts, tables)
    return starts


def _segment_chinese(t: np.ndarray, cjk: np.ndarray, starts: np.ndarray, tables: TokenTables) -> None:
    """Mark the first character of every jieba word in runs of CJK-character tokens (in place)."""
    try:
        import jieba
    except ImportError:
        raise LmforgeError(
            "whole-word masking of Chinese needs jieba: pip install jieba (or set --mlm.chinese_words none)"
        ) from None
    import logging

    jieba.setLogLevel(logging.WARNING)
    positions = np.flatnonzero(cjk)
    # Runs of consecutive CJK tokens, joined with newlines (which jieba never puts inside a word).
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    chars = np.asarray(tables.texts, dtype=object)[t[positions]]
    chars[breaks] = ["\n" + c for c in chars[breaks]]
    text = "".join(chars)
    is_start = np.zeros(len(positions), dtype=bool)
    cursor = 0
    for word in jieba.cut(text, HMM=True):
        if word == "\n":
            continue
        is_start[cursor] = True
        cursor += len(word)
    starts[positions] = is_start


# ------------------------------------------------------------------------------------------------
# Masking


def mask_tokens(
    ids: np.ndarray,
    maskable: np.ndarray,
    word_start: np.ndarray | None,
    cfg: MaskingConfig,
    tables: TokenTables,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask a (B, T) batch of ids.

    `maskable` (B, T) marks the positions that may be picked (real, non-special tokens);
    `word_start` (B, T) marks word starts (needed for whole-word and span masking).
    Returns (masked ids, flat positions of the picked tokens (N,), their original ids (N,)).
    """
    B, T = ids.shape
    if cfg.span or cfg.whole_word:
        if word_start is None:
            raise ValueError("whole-word or span masking needs word_start")
        ws = word_start | ~maskable  # a special token or pad is a word on its own
        if cfg.span:
            picked = _span_pick(ws, maskable, cfg, rng)
        else:
            # Each word's start position; every token copies the draw made at its word's start.
            start_of = np.maximum.accumulate(np.where(ws, np.arange(T)[None, :], 0), axis=1)
            u = rng.random((B, T))
            picked = maskable & (np.take_along_axis(u, start_of, axis=1) < cfg.rate)
    else:
        picked = maskable & (rng.random((B, T)) < cfg.rate)

    positions = np.flatnonzero(picked)
    flat = ids.reshape(-1)
    targets = flat[positions].copy()
    out = flat.copy()
    r = rng.random(len(positions))
    to_mask = r < cfg.mask_prob
    to_random = (r >= cfg.mask_prob) & (r < cfg.mask_prob + cfg.random_prob)
    out[positions[to_mask]] = tables.mask_id
    out[positions[to_random]] = rng.choice(tables.random_ids, size=int(to_random.sum()))
    return out.reshape(B, T), positions, targets


def _span_pick(
    ws: np.ndarray, maskable: np.ndarray, cfg: MaskingConfig, rng: np.random.Generator
) -> np.ndarray:
    """SpanBERT: spans of whole words, lengths ~ Geometric(span_p) clipped to span_max, until about
    `rate` of the tokens are covered (in expectation)."""
    B, T = ws.shape
    lengths = np.minimum(rng.geometric(cfg.span_p, size=(B, T)), cfg.span_max)
    # Expected span length in words, and tokens per word in this batch: the start probability that
    # makes the expected share of masked tokens `rate`.
    k = np.arange(1, cfg.span_max + 1)
    pmf = cfg.span_p * (1 - cfg.span_p) ** (k - 1)
    mean_words = float((k * pmf).sum() + cfg.span_max * (1 - pmf.sum()))
    words = max(1, int((ws & maskable).sum()))
    tokens_per_word = max(1.0, int(maskable.sum()) / words)
    p_start = min(1.0, cfg.rate / (mean_words * tokens_per_word))
    word_idx = np.cumsum(ws, axis=1) - 1  # (B, T) index of each token's word
    starts = ws & maskable & (rng.random((B, T)) < p_start)
    reach = np.where(starts, word_idx + lengths, -1)
    reach = np.maximum.accumulate(reach, axis=1)  # furthest word covered by a span started so far
    return maskable & (word_idx < reach)


__all__ = ["MaskingConfig", "TokenTables", "mask_tokens", "sentence_ends", "word_starts"]
