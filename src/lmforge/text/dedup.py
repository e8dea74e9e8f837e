"""Exact and near-duplicate detection, vectorised in NumPy.

Duplicated text makes a language model memorise instead of generalise, so the cleaner removes
exact copies (a hash of the normalised text) and near copies (MinHash + LSH): pages that differ
only by a date, a signature or a few edited words.

How it works, and why each step:

* Shingling (`shingle_batch`). Text is lower-cased and split into tokens: runs of letters/digits
  for space-separated languages, single characters for scripts written without spaces (Chinese,
  Japanese, Thai), where words cannot be found by splitting. Consecutive tokens form 5-gram
  shingles. All of this runs on UTF-32 code-point arrays for a whole batch of documents at once,
  because per-token Python loops would be the bottleneck of data preparation.
* MinHash (`MinHasher`). Shingles are hashed with the universal family
  `h(x) = (a*x + b) mod (2**61 - 1)` on uint64 arrays (the Mersenne modulus reduces with a mask,
  a shift and an add). With one-permutation hashing (the default) a single hash per shingle picks
  one of `num_perm` bins and each bin keeps its minimum; the "classic" method applies `num_perm`
  hash functions. Either way P[signatures agree at a position] = Jaccard(A, B).
* LSH (`NearDuplicateIndex`). Signatures are cut into `bands` bands of `rows` rows; two documents
  become candidates when any band is identical. Candidates are confirmed by the estimated Jaccard
  similarity, so the banding can favour recall without wrongly dropping documents.

Memory grows only with the number of kept documents (~400 bytes each at the defaults for the
near-duplicate index, ~70 for the exact one); no text is stored.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from lmforge.errors import LmforgeError

# Character classes used for shingling and by the cleaner's symbol filter.
SPACE, LETTER, PUNCT, SYMBOL = 0, 1, 2, 3
N_CLASSES = 4

# ASCII punctuation that is markup or code noise rather than prose punctuation.
_SYMBOL_ASCII = "#*@\\_|~^`<>=+$"
_TABLE_SIZE = 0x40000  # planes 0-3: every script, CJK extensions and emoji; beyond is tags/private use
_PLANE_2 = 0x20000
_VS_SUPPLEMENT = (0xE0100, 0xE01EF)  # variation selectors: combining marks outside the table

MERSENNE_61 = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)
_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # signature of a document without shingles
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NGRAM_MUL = np.uint64(0x100000001B3)  # FNV prime: mixes each token into the running n-gram hash

# A document is shingled by characters when it has more than this many letters per whitespace
# character: English and German prose have 4-8, Chinese and Japanese text usually hundreds.
CHAR_MODE_LETTERS_PER_SPACE = 10.0

_SPARSE_BINS = 32  # sketches with at most this many non-empty bins are densified directly
_DENSIFY_ROUNDS = 8  # probe rounds for denser sketches before the rest is resolved in one gather
_MINHASH_ROWS = 1024  # shingles per vectorised block: two 1 MiB uint64 blocks stay in cache


@lru_cache(maxsize=1)
def char_class_table() -> np.ndarray:
    """uint8 class (SPACE/LETTER/PUNCT/SYMBOL) of every code point below 0x40000, built once.

    Letters, combining marks and digits of every script count as LETTER (so Chinese and Devanagari
    are text, not symbols); Unicode punctuation is PUNCT except the ASCII markup characters in
    `_SYMBOL_ASCII`; symbols, controls, private-use and unassigned code points are SYMBOL.
    """
    by_category = {}
    for cat in ("Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No"):
        by_category[cat] = LETTER
    for cat in ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"):
        by_category[cat] = PUNCT
    for cat in ("Zs", "Zl", "Zp"):
        by_category[cat] = SPACE
    category = unicodedata.category
    table = np.full(_TABLE_SIZE, LETTER, dtype=np.uint8)  # planes 2-3 hold only CJK ideographs
    table[:_PLANE_2] = np.fromiter(
        (by_category.get(category(chr(i)), SYMBOL) for i in range(_PLANE_2)), dtype=np.uint8, count=_PLANE_2
    )
    for ch in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85":
        table[ord(ch)] = SPACE
    for ch in _SYMBOL_ASCII:
        table[ord(ch)] = SYMBOL
    return table


def classify(cps: np.ndarray) -> np.ndarray:
    """Character class of each code point in a uint32 array."""
    cls = np.take(char_class_table(), cps, mode="clip")  # beyond the table: class of U+3FFFF
    if len(cps) and cps.max() >= _TABLE_SIZE:
        cls[cps >= _TABLE_SIZE] = SYMBOL
        vs = (cps >= _VS_SUPPLEMENT[0]) & (cps <= _VS_SUPPLEMENT[1])
        cls[vs] = LETTER
    return cls


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: spreads structured 64-bit values (code points, sums) over all bits."""
    x = x ^ (x >> np.uint64(30))
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _codepoints(text: str) -> np.ndarray:
    # surrogatepass: a lone surrogate (possible in un-normalised text) must not crash shingling.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@dataclass(frozen=True)
class ShingleBatch:
    """Distinct shingles of a batch of documents, flat: document i owns hashes[offsets[i]:offsets[i+1]]."""

    hashes: np.ndarray  # uint64 distinct n-gram hashes, document after document
    offsets: np.ndarray  # int64, n_docs + 1
    ngram_counts: np.ndarray  # int64 [n_docs]: n-grams including repeats (repetition = 1 - distinct/all)
    class_counts: np.ndarray  # int64 [n_docs, 4]: whitespace, letters/digits, punctuation, symbols
    char_mode: np.ndarray  # bool [n_docs]: shingled by characters (no-space script)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def distinct_counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def select(self, docs: np.ndarray) -> ShingleBatch:
        """A batch holding only the documents at indices `docs` (in that order)."""
        docs = np.asarray(docs, dtype=np.int64)
        counts = self.distinct_counts()[docs]
        new_offsets = _offsets(counts)
        idx = np.repeat(self.offsets[docs] - new_offsets[:-1], counts) + np.arange(new_offsets[-1])
        return ShingleBatch(
            self.hashes[idx],
            new_offsets,
            self.ngram_counts[docs],
            self.class_counts[docs],
            self.char_mode[docs],
        )


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _per_doc(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """How many of the sorted `positions` fall in each document's [offsets[i], offsets[i+1])."""
    return np.diff(np.searchsorted(positions, offsets))


_POW_CACHE_MAX = 1 << 21  # 2 x 16 MiB kept for reuse; longer (rare, huge-chunk) batches compute their own
_POW_CACHE: list[np.ndarray] = [np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64)]


def _power_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    inv = pow(int(_NGRAM_MUL), -1, 1 << 64)
    tables = []
    for base in (int(_NGRAM_MUL), inv):
        steps = np.full(size, base, dtype=np.uint64)
        steps[0] = 1
        tables.append(np.cumprod(steps, dtype=np.uint64))
    return tables[0], tables[1]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B**i and B**-i modulo 2**64 for i < n (B is odd, hence invertible)."""
    if n > _POW_CACHE_MAX:
        return _power_tables(n)
    if len(_POW_CACHE[0]) < n:
        _POW_CACHE[:] = _power_tables(min(max(n, 2 * len(_POW_CACHE[0]), 1 << 16), _POW_CACHE_MAX))
    return _POW_CACHE[0][:n], _POW_CACHE[1][:n]


def _word_tokens(cps: np.ndarray, is_l: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start position, hash) of every letter run; runs never cross document boundaries.

    The hash of a run is its polynomial sum(c_i * B**i) taken from a prefix sum and shifted back
    by B**-start, so every word is hashed in O(1) NumPy passes instead of a Python loop.
    """
    n = len(cps)
    starts = is_l.copy()
    starts[1:] &= ~is_l[:-1]
    ends = is_l.copy()
    ends[:-1] &= ~is_l[1:]
    inner = offsets[1:-1]
    inner = inner[(inner > 0) & (inner < n)]
    starts[inner] = is_l[inner]
    ends[inner - 1] = is_l[inner - 1]
    pw, inv = _powers(n + 1)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(cps * pw[:n], out=prefix[1:])
    s, e = np.flatnonzero(starts), np.flatnonzero(ends)
    return s, (prefix[e + 1] - prefix[s]) * inv[s]


def _ngrams(tok: np.ndarray, tok_doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of all n-token windows that stay inside one document (tokens in document order)."""
    m = len(tok) - n + 1
    if m <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    g = tok[:m].copy()
    for j in range(1, n):
        g *= _NGRAM_MUL
        g ^= tok[j : j + m]
    valid = tok_doc[:m] == tok_doc[n - 1 :]
    return mix64(g[valid]), tok_doc[:m][valid]


def _short_doc_shingles(
    tok: np.ndarray, tok_doc: np.ndarray, counts: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """One shingle (the whole token sequence) for documents with 1..n-1 tokens."""
    short = np.flatnonzero((counts > 0) & (counts < n))
    if not len(short):
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    starts = _offsets(counts)
    mul, mask = int(_NGRAM_MUL), (1 << 64) - 1
    out = np.empty(len(short), np.uint64)
    for k, d in enumerate(short.tolist()):
        g = 0
        for t in tok[starts[d] : starts[d + 1]].tolist():
            g = ((g * mul) & mask) ^ t
        out[k] = g
    return mix64(out), short.astype(np.int64)


def _tokens(
    cps: np.ndarray, cls: np.ndarray, offsets: np.ndarray, class_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens in text order with their document: words, or letters for no-space documents."""
    n_docs = len(offsets) - 1
    is_l = cls == LETTER
    cps64 = cps.astype(np.uint64)
    w_start, w_hash = _word_tokens(cps64, is_l, offsets)
    runs = _per_doc(w_start, offsets)
    char_mode = class_counts[:, LETTER] > CHAR_MODE_LETTERS_PER_SPACE * np.maximum(class_counts[:, SPACE], 1)
    w_doc = np.repeat(np.arange(n_docs, dtype=np.int64), runs)
    keep = ~char_mode[w_doc]
    tok, tok_doc = w_hash[keep], w_doc[keep]
    if char_mode.any():
        lens = np.diff(offsets)
        c_pos = np.flatnonzero(is_l & np.repeat(char_mode, lens))
        c_doc = np.repeat(np.arange(n_docs, dtype=np.int64), _per_doc(c_pos, offsets))
        tok = np.concatenate((tok, cps64[c_pos]))
        tok_doc = np.concatenate((tok_doc, c_doc))
        order = np.argsort(tok_doc, kind="stable")  # two sorted runs: a linear-time merge
        tok, tok_doc = tok[order], tok_doc[order]
    return tok, tok_doc, char_mode


def _distinct(grams: np.ndarray, gram_doc: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct hashes per document via one sort of (document << 40 | top 40 hash bits) keys."""
    keys = (gram_doc.astype(np.uint64) << np.uint64(40)) | (grams >> np.uint64(24))
    keys.sort()
    keep = np.ones(len(keys), dtype=bool)
    keep[1:] = keys[1:] != keys[:-1]
    keys = keys[keep]
    doc = (keys >> np.uint64(40)).astype(np.int64)
    counts = np.bincount(doc, minlength=n_docs)
    return mix64(keys & np.uint64((1 << 40) - 1)), counts


def shingle_batch(texts: Sequence[str], n: int = 5) -> ShingleBatch:
    """Distinct token n-gram shingles and character-class counts of many documents in one pass.

    Everything runs on one UTF-32 code-point array of the whole (lower-cased) batch, so the cost
    is a few NumPy passes over the text rather than Python work per word.
    """
    lowered = [t.lower() for t in texts]
    n_docs = len(lowered)
    lens = np.fromiter(map(len, lowered), dtype=np.int64, count=n_docs)
    offsets = _offsets(lens)
    cps = _codepoints("".join(lowered))
    cls = classify(cps)
    class_counts = np.empty((n_docs, N_CLASSES), dtype=np.int64)
    for c in (SPACE, PUNCT, SYMBOL):
        class_counts[:, c] = _per_doc(np.flatnonzero(cls == c), offsets)
    class_counts[:, LETTER] = lens - class_counts[:, [SPACE, PUNCT, SYMBOL]].sum(axis=1)

    tok, tok_doc, char_mode = _tokens(cps, cls, offsets, class_counts)
    grams, gram_doc = _ngrams(tok, tok_doc, n)
    tok_counts = np.bincount(tok_doc, minlength=n_docs)
    short, short_doc = _short_doc_shingles(tok, tok_doc, tok_counts, n)
    grams = np.concatenate((grams, short))
    gram_doc = np.concatenate((gram_doc, short_doc))
    ngram_counts = np.bincount(gram_doc, minlength=n_docs)
    hashes, distinct = _distinct(grams, gram_doc, n_docs)
    return ShingleBatch(hashes, _offsets(distinct), ngram_counts, class_counts, char_mode)


MinHashMethod = Literal["oph", "classic"]


class MinHasher:
    """MinHash signatures of shingle sets, so that matching positions estimate Jaccard similarity.

    Both methods hash with the universal family `h(x) = (a*x + b) mod p`, `p = 2**61 - 1`: as in
    datasketch, `a` and `b` are random below `p`, the product wraps modulo 2**64 (mixing like
    multiply-shift hashing) and the reduction mod `p` is `(y & p) + (y >> 61)` on uint64 arrays.

    * "oph" (default): one-permutation hashing with optimal densification (Shrivastava 2017). A
      single hash per shingle picks one of `num_perm` bins by its top bits; each bin keeps its
      minimum; an empty bin copies the first non-empty bin of its fixed random probe order, the
      same for every document, so P[bins equal] is still the Jaccard similarity. Cost is O(1)
      per shingle instead of O(num_perm), which is what keeps data preparation fast.
    * "classic": `num_perm` independent hash functions, the minimum of each; num_perm times the
      work, for users who want the textbook estimator.
    """

    def __init__(self, num_perm: int = 128, seed: int = 1, method: MinHashMethod = "oph"):
        if method not in ("oph", "classic"):
            raise LmforgeError(f"minhash method {method!r} is not known; use 'oph' or 'classic'")
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.method = method
        n_funcs = num_perm if method == "classic" else 1
        self.a = rng.integers(1, int(MERSENNE_61), size=(n_funcs, 1), dtype=np.uint64)
        self.b = rng.integers(0, int(MERSENNE_61), size=(n_funcs, 1), dtype=np.uint64)
        # Row i: the order in which an empty bin i probes the others (a random permutation, the
        # same for every document, which is what keeps densified bins comparable).
        self._probe_order = np.argsort(rng.random((num_perm, num_perm)), axis=1)
        self._probe_rank = np.argsort(self._probe_order, axis=1).astype(np.int32)  # bin j's place in row i

    def signatures(self, batch: ShingleBatch) -> np.ndarray:
        """uint64 [n_docs, num_perm]; a document without shingles gets all-ones (never matches)."""
        docs = np.flatnonzero(batch.distinct_counts())
        if self.method == "oph":
            return self._oph(batch, docs)
        sig = np.full((self.num_perm, len(batch)), _EMPTY, dtype=np.uint64)
        if len(docs):
            self._classic(sig, batch.hashes & _MASK32, docs, batch.offsets)
        return np.ascontiguousarray(sig.T)

    def _universal(self, x: np.ndarray, k: int = 0) -> np.ndarray:
        h = x * self.a[k]
        h += self.b[k]
        low = h & MERSENNE_61
        h >>= np.uint64(61)
        h += low
        return h

    def _oph(self, batch: ShingleBatch, docs: np.ndarray) -> np.ndarray:
        k = self.num_perm
        sig = np.full((len(batch), k), _EMPTY, dtype=np.uint64)
        if not len(docs):
            return sig
        h = self._universal(batch.hashes)
        bins = ((h >> np.uint64(29)) * np.uint64(k)) >> np.uint64(32)  # top bits pick the bin
        np.minimum(bins, np.uint64(k - 1), out=bins)  # h may exceed 2**61 by a few after the fold
        owner = np.repeat(np.arange(len(batch), dtype=np.uint64), batch.distinct_counts())
        np.minimum.at(sig.reshape(-1), owner * np.uint64(k) + bins, h)
        self._densify(sig, docs)
        return sig

    def _densify(self, sig: np.ndarray, docs: np.ndarray) -> None:
        """Fill each empty bin i from the first non-empty bin in its fixed random probe order.

        Sparse sketches (short documents) are resolved directly: among their few non-empty bins,
        the one ranked first in bin i's probe order. Dense ones take a few vectorised probe rounds,
        and the rare leftovers one gather over their whole probe orders.
        """
        original = sig[docs]
        nonempty = original != _EMPTY
        counts = nonempty.sum(axis=1)
        filled = original.copy()
        sparse = np.flatnonzero(counts <= _SPARSE_BINS)
        if len(sparse):
            filled[sparse] = self._densify_sparse(original[sparse], nonempty[sparse])
        rows, cols = np.nonzero(~nonempty & (counts > _SPARSE_BINS)[:, None])
        for rank in range(_DENSIFY_ROUNDS):
            if not len(rows):
                break
            value = original[rows, self._probe_order[cols, rank]]
            ok = value != _EMPTY
            filled[rows[ok], cols[ok]] = value[ok]
            rows, cols = rows[~ok], cols[~ok]
        if len(rows):
            values = original[rows[:, None], self._probe_order[cols]]  # [remaining, num_perm]
            first = np.argmax(values != _EMPTY, axis=1)
            filled[rows, cols] = values[np.arange(len(rows)), first]
        sig[docs] = filled

    def _densify_sparse(self, original: np.ndarray, nonempty: np.ndarray) -> np.ndarray:
        n = len(original)
        # Each sketch's non-empty bins first (at most _SPARSE_BINS of them), then padding.
        top = np.argsort(~nonempty, axis=1, kind="stable")[:, :_SPARSE_BINS]
        valid = np.take_along_axis(nonempty, top, axis=1)
        ranks = self._probe_rank[:, top].transpose(1, 0, 2)  # [n, num_perm, _SPARSE_BINS]
        ranks = np.where(valid[:, None, :], ranks, np.iinfo(ranks.dtype).max)
        choice = np.take_along_axis(top, ranks.argmin(axis=2), axis=1)  # [n, num_perm]
        donor = original[np.arange(n)[:, None], choice]
        return np.where(nonempty, original, donor)

    def _classic(self, sig: np.ndarray, x: np.ndarray, docs: np.ndarray, offsets: np.ndarray) -> None:
        """Permutation-major blocks so each document's minimum is a contiguous reduceat."""
        starts, ends = offsets[docs], offsets[docs + 1]
        buf = np.empty((self.num_perm, _MINHASH_ROWS), dtype=np.uint64)
        low = np.empty_like(buf)
        for c0 in range(0, len(x), _MINHASH_ROWS):
            c1 = min(c0 + _MINHASH_ROWS, len(x))
            h, lo = buf[:, : c1 - c0], low[:, : c1 - c0]
            np.multiply(self.a, x[c0:c1], out=h)
            h += self.b
            np.bitwise_and(h, MERSENNE_61, out=lo)
            h >>= np.uint64(61)
            h += lo
            first = np.searchsorted(ends, c0, side="right")
            last = np.searchsorted(starts, c1, side="left")
            seg = np.maximum(starts[first:last], c0) - c0
            rows = docs[first:last]
            sig[:, rows] = np.minimum(sig[:, rows], np.minimum.reduceat(h, seg, axis=1))


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # renamed in NumPy 2.0


@lru_cache(maxsize=16)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) whose S-curve best separates pairs above/below `threshold`.

    Misses are weighted 4x more than false candidates because every candidate is verified by its
    estimated Jaccard similarity, so a false candidate costs only a comparison.
    """
    s = np.linspace(0.0, 1.0, 501)
    below, above = s < threshold, s >= threshold
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = 1.0 - (1.0 - s**rows) ** bands
            fp = _trapezoid(p[below], s[below]) if below.sum() > 1 else 0.0
            fn = _trapezoid(1.0 - p[above], s[above]) if above.sum() > 1 else 0.0
            err = 0.2 * fp + 0.8 * fn
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


class _SortedRuns:
    """Append-only uint64 -> int multimap as a few sorted runs (an LSM tree in miniature).

    Python dicts cost ~100 bytes per entry; sorted NumPy runs cost 12, and a whole batch of lookups
    is one `searchsorted` per run. Runs merge like a binary counter, so there are O(log n) of them.
    """

    def __init__(self) -> None:
        self.keys: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []

    def add(self, keys: np.ndarray, vals: np.ndarray) -> None:
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self.keys.append(keys[order])
        self.vals.append(vals[order].astype(np.int32))
        while len(self.keys) > 1 and len(self.keys[-1]) * 2 >= len(self.keys[-2]):
            k = np.concatenate((self.keys.pop(-2), self.keys.pop(-1)))
            v = np.concatenate((self.vals.pop(-2), self.vals.pop(-1)))
            order = np.argsort(k, kind="stable")
            self.keys.append(k[order])
            self.vals.append(v[order])

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `keys`, stored values) of every hit (first match per run)."""
        where, found = [], []
        for run_keys, run_vals in zip(self.keys, self.vals):
            pos = np.searchsorted(run_keys, keys)
            pos_c = np.minimum(pos, len(run_keys) - 1)
            hit = np.flatnonzero(run_keys[pos_c] == keys)
            where.append(hit)
            found.append(run_vals[pos_c[hit]])
        if not where:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        return np.concatenate(where), np.concatenate(found)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.vals))


class NearDuplicateIndex:
    """Remembers kept documents and tells whether a new one is a near duplicate of any of them.

    Memory grows only with the number of kept documents: per document `bands` 12-byte band entries
    plus a `num_perm` x 16-bit signature for verification (about 400 bytes at the defaults); text is
    never stored. Documents are processed in order, so the first of a group of near copies is kept.
    """

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        *,
        ngram: int = 5,
        seed: int = 1,
        method: MinHashMethod = "oph",
    ):
        if not 0.0 < threshold <= 1.0:
            raise LmforgeError(f"near_dedup_threshold={threshold} must be in (0, 1]; 0.8 is a good default")
        if num_perm < 8:
            raise LmforgeError(f"num_perm={num_perm} is too small for MinHash; use 64-256")
        self.threshold = threshold
        self.ngram = ngram
        self.hasher = MinHasher(num_perm, seed, method)
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        self._band_mul = mix64(np.arange(1, self.rows + 1, dtype=np.uint64))
        self._band_salt = np.arange(self.bands, dtype=np.uint64) * _GOLDEN
        self._runs = _SortedRuns()
        self._sigs = np.empty((1024, num_perm), dtype=np.uint16)
        self._n = 0

    def __len__(self) -> int:
        """Number of documents kept so far."""
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the index (band runs + verification signatures)."""
        return self._runs.nbytes + self._sigs.nbytes

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """uint64 [n, bands]: one hash per band of each signature, salted by band number."""
        used = sig[:, : self.bands * self.rows].reshape(len(sig), self.bands, self.rows)
        h = (used * self._band_mul).sum(axis=2, dtype=np.uint64)
        return mix64(h + self._band_salt)

    def add_if_new(self, text: str) -> bool:
        """True (and remember it) unless `text` is a near duplicate of a document kept before."""
        return bool(self.add_batch([text])[0])

    def add_batch(self, texts: Sequence[str]) -> np.ndarray:
        """`add_if_new` for many texts at once (same result as calling it on each in order)."""
        batch = shingle_batch(texts, self.ngram)
        return self.add_signatures(self.hasher.signatures(batch))

    def add_signatures(self, sig: np.ndarray) -> np.ndarray:
        """Bool per signature row: new (kept and remembered) or near duplicate (dropped)."""
        n = len(sig)
        is_new = np.ones(n, dtype=bool)
        if not n:
            return is_new
        has_shingles = sig[:, 0] != _EMPTY
        keys = self.band_keys(sig)
        sig16 = (sig & np.uint64(0xFFFF)).astype(np.uint16)
        where, found = self._runs.lookup(keys.ravel())
        old_cands: dict[int, set[int]] = {}
        for row, cand in zip((where // self.bands).tolist(), found.tolist()):
            old_cands.setdefault(row, set()).add(cand)

        batch_seen: dict[int, int] = {}  # band key -> batch row, for near copies inside this batch
        kept_rows: list[int] = []
        key_lists = keys.tolist()
        for row in range(n):
            if not has_shingles[row]:
                continue  # nothing to compare: keep it, but do not index an empty signature
            cands = [c for c in old_cands.get(row, ())]
            batch_cands = {batch_seen[k] for k in key_lists[row] if k in batch_seen}
            if self._is_duplicate(sig16[row], cands, batch_cands, sig16):
                is_new[row] = False
                continue
            for k in key_lists[row]:
                batch_seen.setdefault(k, row)
            kept_rows.append(row)
        self._remember(np.asarray(kept_rows, dtype=np.int64), keys, sig16)
        return is_new

    def _is_duplicate(self, s: np.ndarray, old: list[int], batch: set[int], batch_sig16: np.ndarray) -> bool:
        for c in old:
            if np.count_nonzero(self._sigs[c] == s) >= self.threshold * len(s):
                return True
        return any(np.count_nonzero(batch_sig16[r] == s) >= self.threshold * len(s) for r in batch)

    def _remember(self, rows: np.ndarray, keys: np.ndarray, sig16: np.ndarray) -> None:
        if not len(rows):
            return
        ids = np.arange(self._n, self._n + len(rows), dtype=np.int64)
        while self._n + len(rows) > len(self._sigs):
            grown = np.empty((2 * len(self._sigs), self._sigs.shape[1]), dtype=np.uint16)
            grown[: self._n] = self._sigs[: self._n]
            self._sigs = grown
        self._sigs[self._n : self._n + len(rows)] = sig16[rows]
        self._n += len(rows)
        self._runs.add(keys[rows].ravel(), np.repeat(ids, self.bands))


class ExactDeduplicator:
    """Set of 64-bit BLAKE2b digests of kept texts: ~70 bytes per kept document, never the text."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def add_if_new(self, text: str) -> bool:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        key = int.from_bytes(digest, "little")
        if key in self._seen:
            return False
        self._seen.add(key)
        return True
