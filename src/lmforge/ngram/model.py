"""`NGramLM`: a backoff n-gram model held as sorted NumPy tables, scored like KenLM.

A trained model and one read from an ARPA file are the same object: per order, the sorted int64
keys `prefix_row * V + word` of its n-grams (row = position in the table of the order below),
float32 log10 probabilities and float32 log10 backoff weights. Looking an n-gram up is a binary
search (`np.searchsorted`), done for a whole file of positions at once, so scoring a test set costs
a handful of vectorised passes per order rather than a Python loop per word.

Scoring follows the ARPA backoff rule that KenLM and SRILM implement: the probability of w after
context h is that of the longest n-gram `h' w` in the model (h' a suffix of h), plus the backoff
weights of the contexts longer than h' that are in the model. Sentences are scored as
`<s> w1 .. wk </s>`: `</s>` is predicted and counted, `<s>` is not; unknown words (and a literal
`<unk>`) are read as `<unk>` and scored with p(`<unk>`), like KenLM's default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.ngram.counts import unique_inverse_counts
from lmforge.ngram.vocab import BOS, UNK, Vocabulary, sentence_stream, split_sentences, split_words

_CHUNK_SENTENCES = 50_000  # sentences scored per vectorised pass: bounds memory on huge files
_SORT_QUERIES_ABOVE = 2048  # below this, sorting the lookups costs more than it saves


@dataclass(frozen=True)
class WordScore:
    """One predicted word of a sentence: its log10 probability and the n-gram length that matched."""

    word: str
    log10_prob: float
    ngram_length: int
    oov: bool


@dataclass
class NGramEval:
    """Perplexity of a text, KenLM/SRILM convention: `</s>` counted in `tokens`, `<s>` not; OOVs included."""

    perplexity: float
    perplexity_excluding_oov: float
    log10_prob: float
    tokens: int  # words + one </s> per sentence
    words: int
    sentences: int
    oov: int  # words read as <unk> (unknown, or a literal <unk>)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class NGramLM:
    """A backoff n-gram language model (see the module docstring for the representation)."""

    vocab: Vocabulary
    keys: list[np.ndarray]  # per order n >= 2: sorted int64 prefix_row * V + word; order 1: row == id
    logprob: list[np.ndarray]  # per order: float32 log10 p
    backoff: list[np.ndarray]  # per order: float32 log10 backoff weight, 0 where the n-gram has none
    has_backoff: list[np.ndarray]  # per order: bool, the weight is written to ARPA
    meta: dict[str, Any] = field(default_factory=dict)  # smoothing, discounts, lowercase, ...

    # ------------------------------------------------------------------ properties

    @property
    def order(self) -> int:
        return len(self.logprob)

    @property
    def words(self) -> tuple[str, ...]:
        return self.vocab.words

    @property
    def lowercase(self) -> bool:
        return bool(self.meta.get("lowercase", False))

    @property
    def smoothing(self) -> str | None:
        return self.meta.get("smoothing")

    def ngram_counts(self) -> list[int]:
        """How many n-grams of each order the model stores (the ARPA header's counts)."""
        return [len(lp) for lp in self.logprob]

    def __repr__(self) -> str:
        return (
            f"NGramLM(order={self.order}, smoothing={self.smoothing!r}, vocab={len(self.vocab)}, "
            f"ngrams={self.ngram_counts()})"
        )

    # ------------------------------------------------------------------ the vectorised core

    def _lookup(self, n: int, prefix_rows: np.ndarray, words: np.ndarray) -> np.ndarray:
        """Rows of the n-grams (prefix row, word) in the order-n table, -1 where absent."""
        keys = self.keys[n - 1]
        if len(keys) == 0 or len(words) == 0:
            return np.full(len(words), -1, dtype=np.int64)
        q = prefix_rows * len(self.vocab) + words
        if len(q) < _SORT_QUERIES_ABOVE:
            pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
            return np.where(keys[pos] == q, pos, -1)
        # Binary search is ~10x faster on sorted queries (cache-friendly), and text repeats n-grams.
        uq, inverse, _ = unique_inverse_counts(q, int(q.max()) + 1)
        pos = np.minimum(np.searchsorted(keys, uq), len(keys) - 1)
        return np.where(keys[pos] == uq, pos, -1)[inverse]

    def _score_stream(
        self, ids: np.ndarray, first: np.ndarray, max_order: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """log10 p and matched n-gram length of every position of `ids`.

        `first` marks positions that begin a segment (a sentence): nothing before them is context.
        The value at a `<s>` that opens a sentence is meaningless and left for the caller to drop.
        `max_order` limits the n-grams looked up (not the context whose backoffs are charged); the
        ARPA reader uses it to give an absent context n-gram the probability the backoff rule implies.
        """
        L = min(self.order, max_order or self.order)  # longest n-gram looked up
        C = min(L, self.order - 1)  # longest context whose backoff weight can be charged
        T = len(ids)
        best = self.logprob[0][ids].astype(np.float64)
        length = np.ones(T, dtype=np.int64)
        # bows[m - 1, j]: backoff weight of the m-gram ending at position j (0 when absent).
        bows = np.zeros((C, T), dtype=np.float64)
        if C >= 1:
            bows[0] = self.backoff[0][ids]
        rows = ids.astype(np.int64, copy=False)
        for n in range(2, L + 1):
            prev = np.empty(T, dtype=np.int64)
            prev[:1] = -1
            prev[1:] = rows[:-1]
            prev[first] = -1
            ok = np.flatnonzero(prev >= 0)
            rows = np.full(T, -1, dtype=np.int64)
            rows[ok] = self._lookup(n, prev[ok], ids[ok])
            hit = np.flatnonzero(rows >= 0)
            if len(hit) == 0:
                break  # prefixes of longer n-grams are in the model, so nothing longer can match
            best[hit] = self.logprob[n - 1][rows[hit]]
            length[hit] = n
            if n <= C:
                bows[n - 1, hit] = self.backoff[n - 1][rows[hit]]
        if C >= 1:
            # Backoff is charged for each context m-gram (ending at j - 1) longer than the match's.
            ctx = np.zeros_like(bows)
            ctx[:, 1:] = bows[:, :-1]
            ctx[:, first] = 0.0
            m = np.arange(1, C + 1, dtype=np.int64)[:, None]
            best += np.where(m >= length[None, :], ctx, 0.0).sum(axis=0)
        return best, length

    def _tokenize_all(self, sentences: Sequence[str | Sequence[str]]) -> list[list[str]]:
        if all(isinstance(s, str) for s in sentences):
            return split_sentences(sentences, lowercase=self.lowercase)  # type: ignore[arg-type]
        return [self._tokenize(s) for s in sentences]

    def _tokenize(self, sentence: str | Sequence[str]) -> list[str]:
        if isinstance(sentence, str):
            return split_words(sentence.lower() if self.lowercase else sentence)
        return [w.lower() for w in sentence] if self.lowercase else list(sentence)

    def _score_sentences(
        self, sentences: Sequence[Sequence[str]], bos: bool = True, eos: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Scores of the predicted positions of many sentences: (ids, log10 p, n-gram length, sentence)."""
        ids, starts = sentence_stream(sentences, self.vocab, bos=bos, eos=eos)
        first = np.zeros(len(ids), dtype=bool)
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences)) + int(bos) + int(eos)
        first[starts[lengths > 0]] = True
        lp, ln = self._score_stream(ids, first)
        predicted = np.ones(len(ids), dtype=bool)
        if bos:
            predicted[starts[lengths > 0]] = False
        sent = np.repeat(np.arange(len(sentences)), lengths)
        keep = np.flatnonzero(predicted)
        return ids[keep], lp[keep], ln[keep], sent[keep]

    # ------------------------------------------------------------------ sentence scoring

    def score(self, sentence: str | Sequence[str], bos: bool = True, eos: bool = True) -> float:
        """Total log10 probability of a sentence, like `kenlm.Model.score`."""
        _, lp, _, _ = self._score_sentences([self._tokenize(sentence)], bos, eos)
        return float(lp.sum())

    def score_sentences(
        self, sentences: Iterable[str | Sequence[str]], bos: bool = True, eos: bool = True
    ) -> np.ndarray:
        """Total log10 probability of each sentence, scored in vectorised passes (fast for many)."""
        out = []
        for chunk in _chunks(sentences, _CHUNK_SENTENCES):
            toks = self._tokenize_all(chunk)
            _, lp, _, sent = self._score_sentences(toks, bos, eos)
            out.append(np.bincount(sent, weights=lp, minlength=len(toks)))
        return np.concatenate(out) if out else np.zeros(0)

    def full_scores(
        self, sentence: str | Sequence[str], bos: bool = True, eos: bool = True
    ) -> list[WordScore]:
        """Per predicted word (and `</s>` when `eos`): log10 p, matched n-gram length, OOV flag."""
        words = self._tokenize(sentence)
        ids, lp, ln, _ = self._score_sentences([words], bos, eos)
        shown = [*words, "</s>"] if eos else words
        return [
            WordScore(w, float(p), int(n), bool(i == UNK))
            for w, p, n, i in zip(shown, lp.tolist(), ln.tolist(), ids.tolist())
        ]

    def logprob_of(self, word: str, context: str | Sequence[str] = (), bos: bool = True) -> float:
        """log10 p(word | context); the context starts a sentence (after `<s>`) when `bos`."""
        ctx = self._tokenize(context)
        word = word.lower() if self.lowercase else word
        ids, _ = sentence_stream([[*ctx, word]], self.vocab, bos=bos, eos=False)
        first = np.zeros(len(ids), dtype=bool)
        first[0] = True
        lp, _ = self._score_stream(ids, first)
        return float(lp[-1])

    def prob(self, word: str, context: str | Sequence[str] = (), bos: bool = True) -> float:
        """p(word | context), a probability in [0, 1]; `word` may be `</s>`."""
        return 10.0 ** self.logprob_of(word, context, bos)

    # ------------------------------------------------------------------ next-word distribution

    def next_word_log10probs(self, context: str | Sequence[str] = (), bos: bool = True) -> np.ndarray:
        """log10 p(w | context) for every vocabulary id w (`self.words[i]`); `<s>` gets -inf.

        Vectorised over the vocabulary: start from the unigram column plus every context backoff,
        then overwrite, order by order, the words the model has seen after each context suffix.
        """
        ctx = self._tokenize(context)
        ids = self.vocab.ids(ctx)
        if bos:
            ids = np.concatenate([[BOS], ids]).astype(np.int64)
        ids = ids[len(ids) - min(len(ids), self.order - 1) :]
        # rows[m - 1]: row of the context's last m words (-1 when the model does not have them).
        rows = [self._row_of(ids[len(ids) - m :]) for m in range(1, len(ids) + 1)]
        rows += [-1] * (self.order - 1 - len(rows))
        bow = [float(self.backoff[m - 1][r]) if r >= 0 else 0.0 for m, r in enumerate(rows, 1)]
        V = len(self.vocab)
        out = self.logprob[0].astype(np.float64) + sum(bow)
        for n in range(2, self.order + 1):
            r = rows[n - 2]
            if r < 0:
                break
            keys = self.keys[n - 1]
            lo, hi = np.searchsorted(keys, [r * V, (r + 1) * V])
            out[keys[lo:hi] - r * V] = self.logprob[n - 1][lo:hi] + sum(bow[n - 1 :])
        out[BOS] = -np.inf
        return out

    def _row_of(self, ids: np.ndarray) -> int:
        """Row of the n-gram `ids` in its order's table, -1 when the model does not have it."""
        row = int(ids[0])
        for n in range(2, len(ids) + 1):
            row = int(self._lookup(n, np.array([row]), ids[n - 1 : n])[0])
            if row < 0:
                return -1
        return row

    def next_word_distribution(self, context: str | Sequence[str] = (), bos: bool = True) -> dict[str, float]:
        """p(w | context) for every word the model can predict (the vocabulary without `<s>`, with `</s>`)."""
        lp = self.next_word_log10probs(context, bos)
        probs = np.power(10.0, lp)
        return {w: p for i, (w, p) in enumerate(zip(self.vocab.words, probs.tolist())) if i != BOS}

    # ------------------------------------------------------------------ perplexity

    def perplexity(self, sentences: Iterable[str | Sequence[str]]) -> NGramEval:
        """Perplexity over sentences (one per item; an empty one is scored as just `</s>`, like KenLM)."""
        total, oov_lp, tokens, words, n_sent, oov = 0.0, 0.0, 0, 0, 0, 0
        for chunk in _chunks(sentences, _CHUNK_SENTENCES):
            toks = self._tokenize_all(chunk)
            ids, lp, _, _ = self._score_sentences(toks, bos=True, eos=True)
            is_oov = ids == UNK
            total += float(lp.sum())
            oov_lp += float(lp[is_oov].sum())
            tokens += len(ids)
            n_sent += len(toks)
            words += len(ids) - len(toks)
            oov += int(is_oov.sum())
        if tokens == 0:
            raise LmforgeError("no sentences to score; give at least one line of text")
        ppl = 10.0 ** (-total / tokens)
        kept = tokens - oov
        ppl_in = 10.0 ** (-(total - oov_lp) / kept) if kept else math.nan
        return NGramEval(ppl, ppl_in, total, tokens, words, n_sent, oov)

    def perplexity_file(self, data: str | Path | Sequence[str | Path]) -> NGramEval:
        """Perplexity of text files (a file, directory, glob or list), one sentence per line."""
        from lmforge.text.corpus import read_lines

        return self.perplexity(read_lines(data))

    def __contains__(self, word: object) -> bool:
        return word in self.vocab


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf
