"""Words to integer ids: the vocabulary of an n-gram model and the token stream it is counted on.

Counting and scoring work on int arrays, never on strings, so every sentence is turned into ids
once, here. The ids of the three special words are fixed (`<unk>` 0, `<s>` 1, `</s>` 2) so that
code elsewhere can test for them without a lookup, and regular words follow in order of falling
frequency, which makes a model's ARPA file list its frequent words first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np

from lmforge.errors import LmforgeError

UNK_WORD, BOS_WORD, EOS_WORD = "<unk>", "<s>", "</s>"
SPECIAL_WORDS = (UNK_WORD, BOS_WORD, EOS_WORD)
UNK, BOS, EOS = 0, 1, 2


# Python's str.split() also splits on these; KenLM (and bytes.split) split on ASCII whitespace only.
_UNICODE_ONLY_SPACE = re.compile("[\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_ASCII_SPACE = re.compile(r"[ \t\n\r\x0b\x0c]+")


def split_words(line: str) -> list[str]:
    """Words of a line, split on ASCII whitespace as KenLM does (a no-break space stays inside a word)."""
    if _UNICODE_ONLY_SPACE.search(line) is None:
        return line.split()
    return [w for w in _ASCII_SPACE.split(line) if w]


def split_sentences(lines: Iterable[str], lowercase: bool = False) -> list[list[str]]:
    """Tokenize one sentence per line; an empty line is an empty sentence (`<s> </s>`).

    One regex scan of the whole batch decides whether plain `str.split` is safe for every line
    (no Unicode-only whitespace anywhere), which keeps the per-line loop in C.
    """
    lines = [line.lower() for line in lines] if lowercase else list(lines)
    if _UNICODE_ONLY_SPACE.search("\n".join(lines)) is None:
        return list(map(str.split, lines))
    return [split_words(line) for line in lines]


@dataclass(frozen=True)
class Vocabulary:
    """The words a model knows, id-ordered; every other word is read as `<unk>`."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if tuple(self.words[:3]) != SPECIAL_WORDS:
            raise ValueError(f"a vocabulary starts with {SPECIAL_WORDS}, got {self.words[:3]}")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._index  # type: ignore[attr-defined]

    @property
    def index(self) -> dict[str, int]:
        """word -> id (read-only by convention: it is shared, not copied)."""
        return self._index  # type: ignore[attr-defined]

    def id(self, word: str) -> int:
        return self._index.get(word, UNK)  # type: ignore[attr-defined]

    def ids(self, words: Sequence[str]) -> np.ndarray:
        """Word ids, unknown words as `<unk>`; `map` with a bound `dict.get` keeps the loop in C."""
        get = self._index.get  # type: ignore[attr-defined]
        return np.fromiter(map(get, words, repeat(UNK)), dtype=np.int64, count=len(words))

    @classmethod
    def build(
        cls, words: Sequence[str], counts: Sequence[int] | np.ndarray, min_count: int = 1,
        max_vocab: int | None = None,
    ) -> Vocabulary:  # fmt: skip
        """Keep words seen at least `min_count` times, at most `max_vocab` of them (most frequent first).

        Ties are broken alphabetically so the same corpus always gives the same ids. `max_vocab`
        counts regular words only: the three special words are always in.
        """
        if min_count < 1:
            raise LmforgeError(f"min_count={min_count} must be at least 1 (1 keeps every word)")
        if max_vocab is not None and max_vocab < 1:
            raise LmforgeError(f"max_vocab={max_vocab} must be at least 1, or None for no limit")
        counts = np.asarray(counts, dtype=np.int64)
        alphabetical = np.empty(len(words), dtype=np.int64)
        alphabetical[sorted(range(len(words)), key=words.__getitem__)] = np.arange(len(words))
        order = np.lexsort((alphabetical, -counts))  # by falling count, then alphabetically
        order = order[counts[order] >= min_count]
        kept = [words[i] for i in order.tolist() if words[i] not in SPECIAL_WORDS]
        if max_vocab is not None:
            kept = kept[:max_vocab]
        return cls((*SPECIAL_WORDS, *kept))


@dataclass
class CorpusIds:
    """A tokenized corpus as ints: every distinct word once, and each token as an index into those."""

    types: list[str]  # distinct words in order of first occurrence
    counts: np.ndarray  # int64 occurrences of each type
    tokens: np.ndarray  # int64 type index of every token, sentences concatenated
    lengths: np.ndarray  # int64 words per sentence

    @classmethod
    def from_sentences(cls, sentences: Sequence[Sequence[str]]) -> CorpusIds:
        """Index already tokenized sentences (see `from_lines`)."""
        return cls._build([sentences])

    @classmethod
    def from_lines(cls, lines: Iterable[str], lowercase: bool = False, chunk: int = 100_000) -> CorpusIds:
        """Tokenize and index one sentence per line, `chunk` lines at a time.

        Only the ints are kept between chunks, so peak memory is the id array plus one chunk of
        Python strings rather than a string object for every token of the corpus. Literal `<s>` and
        `</s>` are refused: they would make sentence boundaries ambiguous.
        """
        return cls._build(split_sentences(c, lowercase) for c in _chunked(lines, chunk))

    @classmethod
    def _build(cls, chunks: Iterable[Sequence[Sequence[str]]]) -> CorpusIds:
        # Per chunk: one C-level pass finds the new types, one indexes the tokens (no per-token Python).
        index: dict[str, int] = {}
        types: list[str] = []
        tokens, lengths = [], []
        done = 0
        for sents in chunks:
            flat = list(chain.from_iterable(sents))
            new = [w for w in dict.fromkeys(flat) if w not in index]
            index.update(zip(new, range(len(types), len(types) + len(new))))
            types.extend(new)
            if BOS_WORD in new or EOS_WORD in new:
                word = BOS_WORD if BOS_WORD in new else EOS_WORD
                line = done + next(i for i, s in enumerate(sents, 1) if word in s)
                raise LmforgeError(
                    f"training sentence {line} contains the reserved word {word!r}; remove or rename it "
                    "(sentence boundaries are added automatically)"
                )
            tokens.append(np.fromiter(map(index.__getitem__, flat), dtype=np.int64, count=len(flat)))
            lengths.append(np.fromiter(map(len, sents), dtype=np.int64, count=len(sents)))
            done += len(sents)
        tok = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
        counts = np.bincount(tok, minlength=len(types)).astype(np.int64)
        return cls(types, counts, tok, np.concatenate(lengths) if lengths else np.zeros(0, np.int64))

    def vocab_ids(self, vocab: Vocabulary) -> np.ndarray:
        """The tokens as ids of `vocab` (words it lacks become `<unk>`)."""
        remap = np.fromiter(
            map(vocab.index.get, self.types, repeat(UNK)), dtype=np.int64, count=len(self.types)
        )
        return remap[self.tokens]


def _chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    buf: list[str] = []
    for item in items:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def sentence_stream(
    sentences: Sequence[Sequence[str]], vocab: Vocabulary, bos: bool = True, eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """All sentences as one id array `<s> w1 .. wk </s> <s> ...`, plus where each sentence starts.

    One flat array lets counting and scoring treat a whole corpus with a few NumPy calls; the start
    offsets say where an n-gram may not reach back across a sentence boundary.
    """
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    return stream_from_ids(vocab.ids(list(chain.from_iterable(sentences))), lengths, bos, eos)


def stream_from_ids(
    word_ids: np.ndarray, lengths: np.ndarray, bos: bool = True, eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """`sentence_stream` for words already turned into ids (`lengths` words per sentence)."""
    sizes = lengths + int(bos) + int(eos)
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(sizes[:-1], out=starts[1:])
    total = int(sizes.sum())
    ids = np.empty(total, dtype=np.int64)
    is_word = np.ones(total, dtype=bool)
    if bos:
        ids[starts] = BOS
        is_word[starts] = False
    if eos:
        ends = starts + sizes - 1
        ids[ends[sizes > 0]] = EOS
        is_word[ends[sizes > 0]] = False
    ids[is_word] = word_ids
    return ids, starts
