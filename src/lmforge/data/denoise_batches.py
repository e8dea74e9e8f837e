"""BART denoising batches: text infilling and sentence permutation over document windows.

Lewis et al. 2020 ("BART: Denoising Sequence-to-Sequence Pre-training", sections 2.2 and 5), the
setting the paper found best and trained BART with:

- sentence permutation: the window is split after every sentence end (a token whose text ends in
  ".", "!" or "?", or their full-width forms, or the end-of-text token) and the sentences are
  shuffled;
- text infilling: ceil(mask_ratio * L) of the window's L tokens are masked, in spans whose lengths
  are drawn from Poisson(poisson_lambda) until they cover that many (the last one cut to fit);
  each span becomes ONE mask token (the tokenizer's), and a span of length 0 inserts a mask token
  between two tokens. The spans (and insertions) are placed uniformly at random among the kept
  tokens and do not overlap, so exactly that many tokens are masked.

The target is the original window followed by the end-of-text token, so the window is seq_len - 1
tokens; the input, which masking makes about a fifth shorter, ends in the end-of-text token too.
Windows, their order, resume and ranks are those of `lmforge.data.span_batches.DocumentWindowBatches`;
the noise is drawn per window with NumPy from the batch's key, so it is reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lmforge.data.span_batches import IGNORE, DocumentWindowBatches

SENTENCE_END = (".", "!", "?", "。", "！", "？")


def sentence_end_table(tokenizer: Any) -> np.ndarray:
    """Bool (vocabulary,): the ids whose text, trailing spaces dropped, ends a sentence, and the
    end-of-text token."""
    V = tokenizer.vocab_size
    texts = tokenizer.backend.decode_batch([[i] for i in range(V)], skip_special_tokens=False)
    ends = np.fromiter((t.rstrip().endswith(SENTENCE_END) for t in texts), dtype=bool, count=V)
    if tokenizer.eos_id is not None:
        ends[tokenizer.eos_id] = True
    return ends


def permute_sentences(tokens: np.ndarray, ends: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The window's sentences (cut after each token `ends` marks) in a random order."""
    cuts = np.flatnonzero(ends[tokens[:-1]]) + 1
    if not len(cuts):
        return tokens
    sentences = np.split(tokens, cuts)
    return np.concatenate([sentences[i] for i in rng.permutation(len(sentences))])


def infill(
    tokens: np.ndarray, mask_id: int, mask_ratio: float, poisson_lambda: float, rng: np.random.Generator
) -> np.ndarray:
    """BART's text infilling of one window (see the module docstring): the noised tokens."""
    L = len(tokens)
    to_mask = min(L, math.ceil(L * mask_ratio))
    if to_mask == 0:
        return tokens
    lengths = rng.poisson(poisson_lambda, size=to_mask)
    while lengths.sum() < to_mask:
        lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, size=to_mask)])
    total = np.cumsum(lengths)
    last = int(np.searchsorted(total, to_mask))  # the first span that reaches the count
    lengths = lengths[: last + 1].copy()
    lengths[last] = to_mask - (total[last - 1] if last else 0)
    lengths = rng.permutation(lengths)  # the cut span anywhere, not always last
    events = len(lengths)
    slots = L - to_mask + events  # kept tokens and spans, in some order
    is_span = np.zeros(slots, dtype=bool)
    is_span[np.sort(rng.choice(slots, size=events, replace=False))] = True
    consumed = np.ones(slots, dtype=np.int64)
    consumed[is_span] = lengths
    source = np.cumsum(consumed) - consumed  # where each slot's tokens begin in the window
    return np.where(is_span, mask_id, tokens[np.minimum(source, L - 1)])


class DenoisingBatches(DocumentWindowBatches):
    """BART denoising batches (see the module docstring): windows of seq_len - 1 tokens."""

    TAG = 37

    def __init__(
        self,
        tokens: np.ndarray,
        doc_offsets: np.ndarray,
        seq_len: int,
        batch_size: int,
        *,
        mask_id: int,
        sentence_ends: np.ndarray,
        mask_ratio: float = 0.3,
        poisson_lambda: float = 3.0,
        permute: bool = True,
        **kwargs: Any,
    ) -> None:
        self.mask_id, self.ends = int(mask_id), sentence_ends
        self.mask_ratio, self.poisson_lambda, self.permute = mask_ratio, poisson_lambda, permute
        self.target_len = seq_len
        super().__init__(tokens, doc_offsets, seq_len - 1, batch_size, seq_len=seq_len, **kwargs)

    def make_examples(
        self, windows: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        B = len(lengths)
        rows = []
        for b in range(B):
            x = windows[b, : lengths[b]]
            if self.permute:
                x = permute_sentences(x, self.ends, rng)
            x = infill(x, self.mask_id, self.mask_ratio, self.poisson_lambda, rng)
            rows.append(x[: self.seq_len - 1])  # insertions could only in theory outgrow the window
        input_lengths = np.asarray([len(r) + 1 for r in rows], dtype=np.int64)
        inputs = np.full((B, int(input_lengths.max())), self.pad_id, dtype=np.int64)
        for b, r in enumerate(rows):
            inputs[b, : len(r)] = r
            inputs[b, len(r)] = self.eos_id
        targets = np.full((B, int(lengths.max()) + 1), IGNORE, dtype=np.int64)
        real = np.arange(targets.shape[1] - 1)[None, :] < lengths[:, None]
        targets[:, :-1][real] = windows[real]
        targets[np.arange(B), lengths] = self.eos_id
        return inputs, input_lengths, targets


__all__ = ["SENTENCE_END", "DenoisingBatches", "infill", "permute_sentences", "sentence_end_table"]
