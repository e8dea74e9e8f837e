"""From counts to probabilities and backoff weights, for each smoothing method.

Every method produces the same thing: for each order, the probability of each counted n-gram and,
for each n-gram that is the context of a longer one, a backoff weight. That is exactly what an ARPA
file stores, so the trained model, its ARPA file and KenLM all compute the same numbers: a word
never seen after context h gets `backoff(h) * p(word | h minus its first word)`.

- `mle`: relative frequencies; unseen events get probability 0 (-99 in log10, like SRILM).
- `add-k`: k is added to every count of an order; the mass of unseen words is handed to the
  next-lower order and renormalized over the words not seen after h (SRILM's `-addsmooth`).
- `kneser-ney`: interpolated, one absolute discount D per order from counts-of-counts.
- `modified-kneser-ney`: interpolated, three discounts D1, D2, D3+ per order (Chen & Goodman).

Both Kneser-Ney variants use continuation counts below the highest order and interpolate the
unigrams with the uniform distribution over the vocabulary (without `<s>`), as KenLM does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.ngram.counts import OrderCounts, context_rows, continuation_counts, counts_of_counts
from lmforge.ngram.vocab import BOS

SMOOTHING_METHODS = ("mle", "add-k", "kneser-ney", "modified-kneser-ney")
LOG10_ZERO = -99.0  # log10(0) as ARPA files write it (and <s>'s probability)
# What KenLM's `--discount_fallback` uses when counts-of-counts cannot give valid discounts.
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


class DiscountFallbackWarning(UserWarning):
    """Counts-of-counts were too sparse for Chen & Goodman's estimate; fixed discounts were used."""


@dataclass
class Estimate:
    """Per order: log10 probabilities of the counted n-grams and log10 backoff weights (0 if none)."""

    logprob: list[np.ndarray]  # float32
    backoff: list[np.ndarray]  # float32
    has_backoff: list[np.ndarray]  # bool: written to ARPA (the n-gram is a context)
    discounts: list[list[float]]  # per order: [D] or [D1, D2, D3+]; empty for mle/add-k
    fallback_orders: list[int]  # orders whose discounts fell back to FALLBACK_DISCOUNTS


def check_smoothing(smoothing: str, k: float) -> None:
    if smoothing not in SMOOTHING_METHODS:
        raise LmforgeError(f"smoothing={smoothing!r} is not known; use one of {', '.join(SMOOTHING_METHODS)}")
    if smoothing == "add-k" and not k > 0:
        raise LmforgeError(f"k={k} must be > 0 for add-k smoothing (1 is Laplace); use mle for k=0")


def kn_discounts(coc: np.ndarray, modified: bool) -> list[float] | None:
    """Chen & Goodman's estimates from counts-of-counts t1..t4, or None when they are not valid.

    Y = t1 / (t1 + 2 t2); D = Y (one discount), or D_k = k - (k + 1) Y t_{k+1} / t_k for k = 1, 2, 3
    (modified). Valid means every t used is positive and 0 < D_k < k.
    """
    t = coc.astype(np.float64)
    needed = 4 if modified else 2
    if np.any(t[1 : needed + 1] <= 0):
        return None
    y = t[1] / (t[1] + 2 * t[2])
    if not modified:
        return [float(y)] if 0 < y < 1 else None
    d = [k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3)]
    if not all(0 < dk < k for k, dk in zip((1, 2, 3), d)):
        return None
    return [float(x) for x in d]


def _discount_of(adjusted: np.ndarray, discounts: list[float]) -> np.ndarray:
    """D(c) for each count c: D for one discount, D1/D2/D3+ by count for three; 0 for c = 0."""
    table = np.zeros(4, dtype=np.float64)
    table[1:] = discounts if len(discounts) == 3 else discounts * 3
    return table[np.minimum(adjusted, 3)]


def _log10(p: np.ndarray) -> np.ndarray:
    """float32 log10, floored at -99 (what ARPA files write for probability 0)."""
    zero = p <= 10.0**LOG10_ZERO
    with np.errstate(divide="ignore"):
        out = np.log(p)  # ln then a multiply: NumPy's log10 is ~2.5x slower than its log
    out *= 1.0 / np.log(10.0)
    out[zero] = LOG10_ZERO
    return out.astype(np.float32)


def estimate(tables: list[OrderCounts], smoothing: str, k: float = 1.0) -> Estimate:
    """Probabilities and backoff weights for counts from `count_ngrams` (see the module docstring)."""
    check_smoothing(smoothing, k)
    if smoothing in ("kneser-ney", "modified-kneser-ney"):
        return _kneser_ney(tables, modified=smoothing == "modified-kneser-ney")
    return _additive(tables, k=0.0 if smoothing == "mle" else float(k))


def _finish(
    probs: list[np.ndarray], weights: list[np.ndarray], tables: list[OrderCounts]
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    is_ctx = context_rows(tables)
    logprob = [_log10(p) for p in probs]
    logprob[0][BOS] = LOG10_ZERO
    backoff = []
    for n, ctx in enumerate(is_ctx):
        b = np.zeros(len(ctx), dtype=np.float32)
        if n < len(weights):
            b[ctx] = _log10(weights[n][ctx])
        backoff.append(b)
    return logprob, backoff, is_ctx


def _kneser_ney(tables: list[OrderCounts], modified: bool) -> Estimate:
    adjusted = continuation_counts(tables)
    vocab_size = len(tables[0])
    discounts, fallback = [], []
    for n, a in enumerate(adjusted, 1):
        d = kn_discounts(counts_of_counts(a), modified)
        if d is None:
            d = list(FALLBACK_DISCOUNTS) if modified else [FALLBACK_DISCOUNTS[0]]
            fallback.append(n)
        discounts.append(d)
    if fallback:
        warnings.warn(
            f"counts-of-counts of order(s) {fallback} are too sparse to estimate Kneser-Ney discounts; "
            f"used {discounts[fallback[0] - 1]} (more data or a lower order avoids this)",
            DiscountFallbackWarning,
            stacklevel=3,
        )

    # Unigrams: discounted continuation counts interpolated with the uniform distribution over the
    # words that can be predicted (everything but <s>).
    a1 = adjusted[0].astype(np.float64)
    d1 = _discount_of(adjusted[0], discounts[0])
    total = a1.sum()
    if total <= 0:
        raise LmforgeError("the training text has no words; give at least one non-empty sentence")
    gamma0 = d1.sum() / total
    p = np.maximum(a1 - d1, 0.0) / total + gamma0 / (vocab_size - 1)
    p[BOS] = 0.0
    probs, weights = [p], []
    for n in range(2, len(tables) + 1):
        t, a = tables[n - 1], adjusted[n - 1]
        n_ctx = len(tables[n - 2])
        af = a.astype(np.float64)
        d = _discount_of(a, discounts[n - 1])
        ctx_total = np.bincount(t.prefix, weights=af, minlength=n_ctx)
        ctx_discount = np.bincount(t.prefix, weights=d, minlength=n_ctx)
        gamma = np.divide(ctx_discount, ctx_total, out=np.ones(n_ctx), where=ctx_total > 0)
        p = np.maximum(af - d, 0.0) / ctx_total[t.prefix] + gamma[t.prefix] * probs[-1][t.suffix]
        probs.append(p)
        weights.append(gamma)
    logprob, backoff, is_ctx = _finish(probs, weights, tables)
    return Estimate(logprob, backoff, is_ctx, discounts, fallback)


def _additive(tables: list[OrderCounts], k: float) -> Estimate:
    """Add-k (k > 0) or maximum likelihood (k = 0) with Katz-style renormalized backoff."""
    vocab_size = len(tables[0])
    c1 = tables[0].count.astype(np.float64)
    c1[BOS] = 0.0
    total = c1.sum()
    if total <= 0:
        raise LmforgeError("the training text has no words; give at least one non-empty sentence")
    p = (c1 + k) / (total + k * (vocab_size - 1))
    p[BOS] = 0.0
    probs, weights = [p], []
    for n in range(2, len(tables) + 1):
        t = tables[n - 1]
        n_ctx = len(tables[n - 2])
        c = t.count.astype(np.float64)
        ctx_total = np.bincount(t.prefix, weights=c, minlength=n_ctx)
        p = (c + k) / (ctx_total[t.prefix] + k * (vocab_size - 1))
        n_seen = np.bincount(t.prefix, minlength=n_ctx)
        # The mass of the words not seen after each context, in closed form (exactly 0 for mle).
        denom = ctx_total + k * (vocab_size - 1)
        left = np.divide(k * (vocab_size - 1 - n_seen), denom, out=np.zeros(n_ctx), where=denom > 0)
        seen_lower = np.bincount(t.prefix, weights=probs[-1][t.suffix], minlength=n_ctx)
        lower_left = 1.0 - seen_lower  # what the lower order gives those same words
        w = np.divide(left, lower_left, out=np.zeros(n_ctx), where=lower_left > 1e-12)
        probs.append(p)
        weights.append(w)
    logprob, backoff, is_ctx = _finish(probs, weights, tables)
    return Estimate(logprob, backoff, is_ctx, [], [])
