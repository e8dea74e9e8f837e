"""Masked-LM batches from token shards: sentence pairs for NSP/SOP, full-sentence chunks for MLM.

The shards hold documents as token runs, each followed by the end-of-text token. Sentences are
found on the tokens themselves (see `lmforge.data.masking.sentence_ends`), so any prepared shard
set works, English or Chinese, without re-tokenizing. Then, as in BERT:

- mode "nsp": each document is cut into chunks of whole sentences that fill the maximum length; a
  chunk is split at a random sentence boundary into segment A and the true continuation B, or
  (half the time) B is replaced by a chunk of another document. Label 0 = B follows A.
- mode "sop" (ALBERT): A and B are the two parts of one chunk, swapped half the time. Label 0 = in
  order.
- mode "mlm" (RoBERTa's FULL-SENTENCES): chunks of whole sentences that may cross document
  boundaries (the end-of-text token between documents stays as a separator), no pairs.

Inputs are `[CLS] A [SEP] B [SEP] [PAD]...` (or `[CLS] A [SEP] ...`), with segment ids 0 for A, 1
for B. A pair longer than the budget is trimmed from its longer segment, from the front or the back
at random. A chunk with a single sentence is split at a random token instead (the documented
fallback for text without sentence punctuation).

Everything is vectorised over examples with NumPy: the chunk grid is re-drawn every epoch (a random
shift, so chunk boundaries move), and masks are drawn per batch from (seed, epoch, position). The
state is two integers, as for causal-LM batches, so resume is exact; masks change every epoch
(dynamic masking) but are reproducible.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from lmforge.data.batches import SamplerState
from lmforge.data.masking import MaskingConfig, TokenTables, mask_tokens, sentence_ends, word_starts
from lmforge.errors import LmforgeError

Mode = Literal["mlm", "nsp", "sop"]
_SCAN = 1 << 24  # tokens per block when scanning a split for sentence ends (bounded memory)


@dataclass
class Examples:
    """One epoch's examples as parallel arrays (segment B has length 0 in mode "mlm")."""

    a_start: np.ndarray
    a_len: np.ndarray
    b_start: np.ndarray
    b_len: np.ndarray
    label: np.ndarray  # NSP/SOP label per example (0 in mode "mlm")

    def __len__(self) -> int:
        return len(self.a_start)

    def take(self, sel: np.ndarray | slice) -> Examples:
        return Examples(
            self.a_start[sel], self.a_len[sel], self.b_start[sel], self.b_len[sel], self.label[sel]
        )


class MaskedLMBatches:
    """Endless, resumable masked-LM batches (dicts of tensors, see `next_batch`) over one split."""

    def __init__(
        self,
        tokens: np.ndarray,
        doc_offsets: np.ndarray,
        tokenizer: Any,
        seq_len: int,
        batch_size: int,
        *,
        mode: Mode = "nsp",
        masking: MaskingConfig | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        name: str = "train",
        eos_id: int | None = None,
        drop_last: bool = True,
    ) -> None:
        """`drop_last`: training serves only full batches (so the split must hold at least one);
        evaluation sets it False and also scores a final partial batch."""
        self.masking = masking or MaskingConfig()
        self.masking.validate()
        self.tokens, self.seq_len, self.batch_size, self.mode = tokens, seq_len, batch_size, mode
        self.seed, self.rank, self.world_size, self.name = seed, rank, world_size, name
        self.device = torch.device(device)
        self.global_batch = batch_size * world_size
        self.tables = TokenTables.build(tokenizer)
        self.budget = seq_len - (3 if mode != "mlm" else 2)  # room left by [CLS]/[SEP]s
        if self.budget < 2:
            raise LmforgeError(f"train.seq_len={seq_len} is too short for masked-LM examples; use at least 8")
        self.state = SamplerState()
        self._warned_one_document = False
        eos = tokenizer.eos_id if eos_id is None else eos_id
        self._index_sentences(np.asarray(doc_offsets, dtype=np.int64), eos)
        self.word_start: np.ndarray | None = None
        if self.masking.whole_word or self.masking.span:
            self.word_start = word_starts(
                np.asarray(tokens), self.tables, chinese_words=self.masking.chinese_words
            )
        self._epoch: int | None = None
        self._examples: Examples | None = None
        self._pin = self.device.type == "cuda"
        n = len(self._plan(0))
        if drop_last and n < self.global_batch:
            raise LmforgeError(
                f"the {name} split gives only {n} masked-LM examples of up to {seq_len} tokens, fewer than one batch "
                f"({self.global_batch}); lower --train.batch_size or --train.seq_len, or give more data"
            )

    # ------------------------------------------------------------ sentences and chunks

    def _index_sentences(self, offsets: np.ndarray, eos: int | None) -> None:
        """Sentence start positions, the document of each, and each document's content range."""
        n = len(self.tokens)
        doc_start = offsets[:-1]
        doc_end = offsets[1:].copy()
        if eos is not None and len(doc_end):
            # The content of a document excludes its trailing end-of-text token.
            last = np.asarray(self.tokens[np.maximum(doc_end - 1, 0)])
            doc_end -= (last == eos) & (doc_end > doc_start)
        keep = doc_end > doc_start
        self.doc_start, self.doc_end = doc_start[keep], doc_end[keep]
        if not len(self.doc_start):
            raise LmforgeError(f"the {self.name} split has no text to build masked-LM examples from")
        ends = []
        for lo in range(0, n, _SCAN):  # blocks of the memmap, so memory stays flat on big splits
            hi = min(n, lo + _SCAN + 1)
            e = np.flatnonzero(
                sentence_ends(np.asarray(self.tokens[lo:hi]), self.tables)[: hi - lo - (hi < n)]
            )
            ends.append(e + lo)
        after_end = np.concatenate(ends) + 1 if ends else np.zeros(0, dtype=np.int64)
        starts = np.union1d(after_end, self.doc_start)
        doc = np.searchsorted(self.doc_start, starts, side="right") - 1
        inside = (doc >= 0) & (starts < self.doc_end[np.maximum(doc, 0)])
        starts, doc = starts[inside], doc[inside]
        ends_at = np.minimum(np.append(starts[1:], n), self.doc_end[doc])  # never across documents
        # A "sentence" longer than an example (text without punctuation) is cut into example-sized
        # pieces, so that it yields several examples rather than one truncated one.
        pieces = np.maximum((ends_at - starts - 1) // self.budget, 0) + 1
        first = np.repeat(np.cumsum(pieces) - pieces, pieces)
        k = np.arange(int(pieces.sum())) - first  # piece index within its sentence
        self.sent_start = np.repeat(starts, pieces) + k * self.budget
        self.sent_doc = np.repeat(doc, pieces)
        self.sent_end = np.minimum(np.append(self.sent_start[1:], n), self.doc_end[self.sent_doc])
        if self.mode == "nsp" and len(self.doc_start) < 2 and self.name == "train":
            raise LmforgeError(
                f"next-sentence prediction needs at least two documents (random segments come from another "
                f"document), but the {self.name} split is one document; use --objective mlm+sop or mlm, or split "
                "the corpus into documents (e.g. --prep.txt_unit paragraph)"
            )

    def _plan(self, epoch: int) -> Examples:
        """All examples of `epoch`, in the order they are served: a pure function of (seed, epoch)."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 7]))
        s_start, s_end, s_doc = self.sent_start, self.sent_end, self.sent_doc
        # Grid the sentences into chunks of about `budget` tokens; the grid moves every epoch.
        shift = int(rng.integers(0, self.budget)) if epoch > 0 else 0
        if self.mode == "mlm":  # across documents: one global grid
            cell = (s_start + shift) // self.budget
            new = np.ones(len(s_start), dtype=bool)
            new[1:] = cell[1:] != cell[:-1]
        else:
            cell = (s_start - self.doc_start[s_doc] + shift) // self.budget
            new = np.ones(len(s_start), dtype=bool)
            new[1:] = (cell[1:] != cell[:-1]) | (s_doc[1:] != s_doc[:-1])
        first = np.flatnonzero(new)  # first sentence of each chunk
        last = np.append(first[1:], len(s_start)) - 1
        c_start = s_start[first]
        if self.mode == "mlm":
            c_end = np.append(s_start[first[1:]], s_end[-1])  # up to the next chunk (incl. separators)
        else:
            c_end = s_end[last]
        c_doc, n_sent = s_doc[first], last - first + 1
        length = c_end - c_start
        ok = length >= (2 if self.mode != "mlm" else 1)
        first, c_start, c_end, c_doc, n_sent, length = (
            a[ok] for a in (first, c_start, c_end, c_doc, n_sent, length)
        )
        m = len(c_start)
        if m == 0:
            raise LmforgeError(f"the {self.name} split has no document long enough for a masked-LM example")

        if self.mode == "mlm":
            ex = Examples(
                c_start, length, np.zeros(m, np.int64), np.zeros(m, np.int64), np.zeros(m, np.int64)
            )
        else:
            # Split point: a random sentence boundary inside the chunk, else a random token.
            j = np.floor(rng.random(m) * np.maximum(n_sent - 1, 1)).astype(np.int64) + 1
            sent_split = s_start[np.minimum(first + j, len(s_start) - 1)]
            tok_split = c_start + 1 + np.floor(rng.random(m) * (length - 1)).astype(np.int64)
            a_end = np.where(n_sent >= 2, sent_split, tok_split)
            a_start, a_len = c_start, a_end - c_start
            b_start, b_len = a_end, c_end - a_end
            label = (rng.random(m) < 0.5).astype(np.int64)
            if self.mode == "sop":  # label 1: the two segments swapped
                sw = label == 1
                a_start, b_start = np.where(sw, b_start, a_start), np.where(sw, a_start, b_start)
                a_len, b_len = np.where(sw, b_len, a_len), np.where(sw, a_len, b_len)
            else:  # NSP, label 1: B is a chunk of another document
                other = self._random_chunks(rng, c_doc, m)
                rnd = label == 1
                b_start = np.where(rnd, c_start[other], b_start)
                b_len = np.where(rnd, length[other], b_len)
            ex = Examples(a_start, a_len, b_start, b_len, label)
        self._truncate(ex, rng)
        return ex.take(rng.permutation(m))

    def _random_chunks(self, rng: np.random.Generator, c_doc: np.ndarray, m: int) -> np.ndarray:
        """For each chunk, another chunk from a different document (redrawn until it is)."""
        other = rng.integers(0, m, size=m)
        for _ in range(64):
            same = c_doc[other] == c_doc
            if not same.any():
                return other
            other[same] = rng.integers(0, m, size=int(same.sum()))
        if len(np.unique(c_doc)) < 2:  # a one-document validation split: any chunk but this one
            if not self._warned_one_document:
                self._warned_one_document = True
                warnings.warn(
                    f"the {self.name} split is a single document: NSP's random segments come from the same "
                    "document",
                    stacklevel=3,
                )
            return np.where(other == np.arange(m), (other + max(1, m // 2)) % m, other)
        return other  # vanishingly rare leftovers; their label is still correct about order

    def _truncate(self, ex: Examples, rng: np.random.Generator) -> None:
        """Trim to the budget (shorter for `short_seq_prob` of examples) as BERT's truncate_seq_pair:
        repeatedly drop a token from the longer segment, from its front or back at random."""
        m = len(ex)
        budget = np.full(m, self.budget, dtype=np.int64)
        short = rng.random(m) < self.masking.short_seq_prob
        budget[short] = rng.integers(2, self.budget + 1, size=int(short.sum()))
        la, lb = ex.a_len, ex.b_len
        if self.mode == "mlm":
            new_a, new_b = np.minimum(la, budget), lb
        else:
            over = la + lb > budget
            shorter = np.minimum(la, lb)
            half_fits = shorter <= budget // 2
            # The shorter segment survives whole when it fits in half; otherwise both end at half.
            a_fix = np.where(la <= lb, la, budget - lb)
            b_fix = np.where(la <= lb, budget - la, lb)
            a_half, b_half = (budget + 1) // 2, budget // 2
            new_a = np.where(over, np.where(half_fits, a_fix, a_half), la)
            new_b = np.where(over, np.where(half_fits, b_fix, b_half), lb)
        front_a = rng.random(m) < 0.5
        front_b = rng.random(m) < 0.5
        ex.a_start = ex.a_start + np.where(front_a, la - new_a, 0)
        ex.b_start = ex.b_start + np.where(front_b, lb - new_b, 0)
        ex.a_len, ex.b_len = new_a, new_b

    # ------------------------------------------------------------ batches

    def state_dict(self) -> dict[str, int]:
        return self.state.to_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = SamplerState(int(state["epoch"]), int(state["position"]))

    def _examples_of(self, epoch: int) -> Examples:
        if self._epoch != epoch:
            self._examples, self._epoch = self._plan(epoch), epoch
        assert self._examples is not None
        return self._examples

    def next_batch(self) -> dict[str, torch.Tensor | None]:
        """The next batch for this rank (see `assemble` for its fields)."""
        st = self.state
        ex = self._examples_of(st.epoch)
        if st.position + self.global_batch > len(ex):  # drop the ragged tail of the epoch
            st.epoch, st.position = st.epoch + 1, 0
            ex = self._examples_of(st.epoch)
        lo = st.position + self.rank * self.batch_size
        rng = np.random.Generator(np.random.PCG64([self.seed, st.epoch, lo, 11]))
        st.position += self.global_batch
        return self.assemble(ex.take(slice(lo, lo + self.batch_size)), rng)

    def eval_batches(self, max_batches: int | None = None) -> Iterator[dict[str, torch.Tensor | None]]:
        """The same validation batches (pairs and masks) every time, so successive evaluations compare.
        Ranks take interleaved batches."""
        ex = self._plan(0)
        n = len(ex)
        starts = list(range(0, n, self.batch_size))
        if max_batches:
            starts = starts[:max_batches]
        for i, lo in enumerate(starts):
            if i % self.world_size != self.rank:
                continue
            rng = np.random.Generator(np.random.PCG64([self.seed, 1 << 20, lo, 13]))
            yield self.assemble(ex.take(slice(lo, lo + self.batch_size)), rng)

    def assemble(self, ex: Examples, rng: np.random.Generator) -> dict[str, torch.Tensor | None]:
        """Build `[CLS] A [SEP] (B [SEP])` rows and mask them.

        Returns a dict of tensors on the device:
          input_ids (B, T) int64, token_type_ids (B, T) or None (mode "mlm"),
          attention_mask (B, T) bool or None when no row is padded, token_index: the flat indices
          of the real (unpadded) tokens or None, mlm_positions (N,) flat indices
          into (B, T) of the tokens to predict, mlm_targets (N,) their ids, pair_labels (B,) or None.
        """
        t, T = self.tables, self.seq_len
        p = np.arange(T)[None, :]
        la, lb = ex.a_len[:, None], ex.b_len[:, None]
        in_a = (p >= 1) & (p <= la)
        in_b = (p >= la + 2) & (p < la + 2 + lb)
        src = np.where(in_a, ex.a_start[:, None] + p - 1, np.where(in_b, ex.b_start[:, None] + p - la - 2, 0))
        ids = np.asarray(self.tokens[src]).astype(np.int64)
        text = in_a | in_b
        ids[~text] = t.pad_id
        rows = np.arange(len(ex))
        ids[:, 0] = t.cls_id
        ids[rows, ex.a_len + 1] = t.sep_id
        pair = self.mode != "mlm"
        if pair:
            ids[rows, ex.a_len + ex.b_len + 2] = t.sep_id
        used = p < (ex.a_len + (ex.b_len + 3 if pair else 2))[:, None]
        ws = None
        if self.word_start is not None:
            ws = self.word_start[src] | ~text
            ws[:, 1] = True  # a segment trimmed at its front starts a word
            if pair:
                ws[rows, np.minimum(ex.a_len + 2, T - 1)] = True
        maskable = text & ~t.special[ids]
        masked, positions, targets = mask_tokens(ids, maskable, ws, self.masking, t, rng)

        def dev(a: np.ndarray | None) -> torch.Tensor | None:
            if a is None:
                return None
            x = torch.from_numpy(np.ascontiguousarray(a))
            if self._pin:
                x = x.pin_memory()
            return x.to(self.device, non_blocking=True)

        return {
            "input_ids": dev(masked),
            "token_type_ids": dev((in_b | (p == (la + lb + 2))).astype(np.int64)) if pair else None,
            "attention_mask": None if used.all() else dev(used),
            "token_index": None if used.all() else dev(np.flatnonzero(used)),  # real tokens, flat
            "mlm_positions": dev(positions.astype(np.int64)),
            "mlm_targets": dev(targets.astype(np.int64)),
            "pair_labels": dev(ex.label.astype(np.int64)) if pair else None,
        }

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len


__all__ = ["Examples", "MaskedLMBatches", "Mode"]
