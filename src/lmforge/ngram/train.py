"""Training an n-gram model: sentences -> vocabulary -> counts -> smoothed tables -> `NGramLM`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.ngram.arpa import write_arpa
from lmforge.ngram.counts import count_ngrams
from lmforge.ngram.model import NGramLM
from lmforge.ngram.smoothing import check_smoothing, estimate
from lmforge.ngram.vocab import CorpusIds, Vocabulary, stream_from_ids


def fit_ngram(
    sentences: Iterable[str],
    order: int = 3,
    smoothing: str = "modified-kneser-ney",
    *,
    k: float = 1.0,
    min_count: int = 1,
    max_vocab: int | None = None,
    lowercase: bool = False,
) -> NGramLM:
    """Train on sentences, one whitespace-tokenized string each; see `train_ngram` for the options."""
    if not isinstance(order, int) or order < 1:
        raise LmforgeError(f"order={order!r} must be a positive integer (3 for a trigram model)")
    check_smoothing(smoothing, k)
    t0 = time.perf_counter()
    corpus = CorpusIds.from_lines(sentences, lowercase=lowercase)
    if len(corpus.lengths) == 0:
        raise LmforgeError("the training text has no lines; give at least one sentence")
    vocab = Vocabulary.build(corpus.types, corpus.counts, min_count=min_count, max_vocab=max_vocab)
    ids, _ = stream_from_ids(corpus.vocab_ids(vocab), corpus.lengths)
    tables = count_ngrams(ids, len(vocab), order)
    longest = int(corpus.lengths.max()) + 2
    if len(tables[-1]) == 0:
        raise LmforgeError(
            f"order={order} is longer than any training sentence (the longest has {longest} tokens with "
            f"<s> and </s>); use order {longest} or less, or more data"
        )
    est = estimate(tables, smoothing, k)
    keys = [t.word if n == 0 else t.prefix * len(vocab) + t.word for n, t in enumerate(tables)]
    meta = {
        "smoothing": smoothing,
        "order": order,
        "k": k if smoothing == "add-k" else None,
        "discounts": est.discounts,
        "discount_fallback_orders": est.fallback_orders,
        "min_count": min_count,
        "max_vocab": max_vocab,
        "lowercase": lowercase,
        "training_sentences": len(corpus.lengths),
        "training_tokens": int(len(ids) - len(corpus.lengths)),  # words + </s>, like perplexity's tokens
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    return NGramLM(vocab, keys, est.logprob, est.backoff, est.has_backoff, meta)


def train_ngram(
    data: str | Path | Sequence[str | Path],
    order: int = 3,
    smoothing: str = "modified-kneser-ney",
    *,
    k: float = 1.0,
    min_count: int = 1,
    max_vocab: int | None = None,
    lowercase: bool = False,
    out: str | Path | None = None,
) -> NGramLM:
    """Train an n-gram language model on text files and optionally write it as ARPA.

    `data` is a file, directory, glob or list of them, read one sentence per line (whitespace-
    tokenized; empty lines are empty sentences). `smoothing` is one of mle, add-k (with `k`; k=1 is
    Laplace), kneser-ney or modified-kneser-ney. Words seen fewer than `min_count` times, or beyond
    the `max_vocab` most frequent, become `<unk>`. The `lmforge ngram train` command is this call.
    """
    from lmforge.text.corpus import read_lines

    model = fit_ngram(
        read_lines(data), order, smoothing, k=k, min_count=min_count, max_vocab=max_vocab, lowercase=lowercase
    )
    if out is not None:
        write_arpa(model, out)
    return model
