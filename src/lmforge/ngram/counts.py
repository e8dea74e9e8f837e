"""N-gram counting with NumPy: sorting int64 keys instead of filling dicts of tuples.

Every n-gram is named by two ints: the row of its first n-1 words (its *prefix*) in the table of
order n-1, and its last word. `prefix * V + word` is then one int64 key whose sort order is the
lexicographic order of the words, so one `np.unique` per order gives the distinct n-grams sorted,
their counts, and (through the inverse) the row of the n-gram at every corpus position, which is
the prefix of the next order. The same trick gives each n-gram's *suffix* (its last n-1 words),
from which Kneser-Ney's continuation counts are one `np.bincount`.

The corpus is the flat `<s> w1 .. wk </s> <s> ...` array from `sentence_stream`; an n-gram never
crosses a sentence boundary, and n-grams shorter than the model's order that start with `<s>`
(the start of a sentence) are counted like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.ngram.vocab import BOS


@dataclass
class OrderCounts:
    """The distinct n-grams of one order, sorted by `prefix * V + word`.

    For order 1 the rows are the vocabulary ids themselves (so `prefix` is empty and row == id),
    which keeps every unigram, seen or not, addressable.
    """

    order: int
    prefix: np.ndarray  # int64 row of the first n-1 words in the order n-1 table (empty for n=1)
    word: np.ndarray  # int64 id of the last word
    count: np.ndarray  # int64 raw count (for n=1: occurrences as a predicted word, 0 for <s>)
    suffix: np.ndarray  # int64 row of the last n-1 words in the order n-1 table (empty for n=1)
    starts_with_bos: np.ndarray  # bool: first word is <s>, so nothing can precede the n-gram

    def __len__(self) -> int:
        return len(self.word)


def count_ngrams(ids: np.ndarray, vocab_size: int, order: int) -> list[OrderCounts]:
    """Counts of every order 1..`order` in the sentence stream `ids` (see the module docstring)."""
    V = int(vocab_size)
    unigram_count = np.bincount(ids[ids != BOS], minlength=V).astype(np.int64)
    words = np.arange(V, dtype=np.int64)
    empty = np.empty(0, dtype=np.int64)
    tables = [OrderCounts(1, empty, words, unigram_count, empty, words == BOS)]

    row_prev = ids.astype(np.int64, copy=False)  # row of the (n-1)-gram starting at each position
    valid_prev = np.ones(len(ids), dtype=bool)  # that (n-1)-gram lies inside one sentence
    not_bos = ids != BOS
    for n in range(2, order + 1):
        m = len(ids) - n + 1
        if m <= 0:
            tables.append(_empty_order(n))
            continue
        # A window is valid when its first n-1 words are and its last word does not begin a sentence.
        valid = valid_prev[:m] & not_bos[n - 1 :]
        positions = np.flatnonzero(valid)
        keys = row_prev[positions] * V + ids[positions + n - 1]
        uniq, inverse, count, one = group_keys(keys, len(tables[-1]) * V)
        suffix = row_prev[positions[one] + 1]  # any occurrence names the same suffix
        prefix = uniq // V
        tables.append(
            OrderCounts(
                n, prefix, uniq % V, count.astype(np.int64), suffix, tables[-1].starts_with_bos[prefix]
            )
        )
        row = np.full(m, -1, dtype=np.int64)
        row[positions] = inverse
        row_prev, valid_prev = row, valid
    return tables


def unique_inverse_counts(keys: np.ndarray, key_bound: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`np.unique(keys, return_inverse=True, return_counts=True)` for int64 keys in [0, key_bound)."""
    uniq, inverse, counts, _ = group_keys(keys, key_bound)
    return uniq, inverse, counts


def group_keys(keys: np.ndarray, key_bound: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct keys (sorted), the group of every key, group sizes, and one member index per group.

    NumPy sorts int64 values several times faster than it argsorts them, so when the key and the
    position fit together in 63 bits we sort `key << bits | position` and read the permutation off
    the low bits; otherwise we fall back to `np.unique`.
    """
    n = len(keys)
    pos_bits = max(int(n - 1).bit_length(), 1)
    if n == 0 or int(key_bound - 1).bit_length() + pos_bits > 63:
        uniq, one, inverse, counts = np.unique(
            keys, return_index=True, return_inverse=True, return_counts=True
        )
        return uniq, inverse, counts, one
    packed = np.sort((keys << pos_bits) | np.arange(n, dtype=np.int64))
    perm = packed & ((1 << pos_bits) - 1)
    sorted_keys = packed >> pos_bits
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    group = np.cumsum(new, dtype=np.int64) - 1
    inverse = np.empty(n, dtype=np.int64)
    inverse[perm] = group
    counts = np.empty(len(starts), dtype=np.int64)
    np.subtract(starts[1:], starts[:-1], out=counts[:-1])
    counts[-1] = n - starts[-1]
    return sorted_keys[starts], inverse, counts, perm[starts]


def _empty_order(n: int) -> OrderCounts:
    e = np.empty(0, dtype=np.int64)
    return OrderCounts(n, e, e, e, e, np.empty(0, dtype=bool))


def continuation_counts(tables: list[OrderCounts]) -> list[np.ndarray]:
    """Kneser-Ney's adjusted counts: how many distinct words precede each n-gram.

    Following Chen & Goodman as implemented in KenLM: the highest order keeps raw counts, and so do
    n-grams starting with `<s>` (nothing can precede them); every other n-gram of a lower order is
    counted by the number of distinct (n+1)-grams it ends. `<s>` as a unigram gets 0 (never predicted).
    """
    adjusted = []
    for n, t in enumerate(tables, 1):
        if n == len(tables):
            adjusted.append(t.count.copy())
            continue
        left = np.bincount(tables[n].suffix, minlength=len(t)).astype(np.int64)
        adjusted.append(np.where(t.starts_with_bos, t.count, left))
    adjusted[0][BOS] = 0
    return adjusted


def counts_of_counts(adjusted: np.ndarray, up_to: int = 4) -> np.ndarray:
    """`t[k]` = number of n-grams whose (adjusted) count is exactly k, for k = 1..up_to (t[0] unused)."""
    a = adjusted[(adjusted >= 1) & (adjusted <= up_to)]
    return np.bincount(a, minlength=up_to + 1).astype(np.int64)


def context_rows(tables: list[OrderCounts]) -> list[np.ndarray]:
    """For each order n < N, which n-grams are the context of some (n+1)-gram (need a backoff weight)."""
    out = []
    for n in range(1, len(tables)):
        is_ctx = np.zeros(len(tables[n - 1]), dtype=bool)
        is_ctx[tables[n].prefix] = True
        out.append(is_ctx)
    out.append(np.zeros(len(tables[-1]), dtype=bool))
    return out
