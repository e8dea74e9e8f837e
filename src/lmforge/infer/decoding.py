"""The decoding protocol that every generation loop shares: prefill the prompts once, then step.

    session = open_session(model, batch_size, max_len)
    logits = session.prefill(ids, attention_mask)  # (B, T) left-padded prompts -> (B, V) next-token logits
    logits = session.step(next_ids)                # (B,) one token per row -> (B, V)
    session.reorder(index, inputs)                 # (B',) rows to keep, drop or duplicate (beams)

Sampling (`lmforge.infer.generate`) and beam search (`lmforge.infer.beam`) drive it, whatever
the model. A session owns its model's decoding memory: the KV cache of a Transformer decoder
(`TransformerSession`), the carried state of a recurrent baseline (`RecurrentSession`), or an
encoder-decoder's decoder cache over its encoded source (`Seq2SeqSession`: the source is given
when the session opens, and its prompts are the decoder's start tokens).

Prompts of different lengths are left-padded into one (B, T) batch (`left_pad`), so that every
row's newest token sits in the last column and one step serves all rows. The mask says which
columns are real; each row counts its positions from its own first token, so a padded row gets
the same logits as the same prompt decoded alone (to float rounding).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from lmforge.models.config import BASELINE_ARCHS


class DecodeSession(ABC):
    """What all sessions share: the memory's capacity, and how many positions are used."""

    cache: Any

    @property
    def length(self) -> int:
        """Positions (columns, padding included) the memory holds."""
        return self.cache.length

    @property
    def max_len(self) -> int:
        """Positions the memory can hold; when `length` reaches it, prefill a shorter window."""
        return self.cache.max_len

    @abstractmethod
    def prefill(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Forget everything, read the prompts ids (B, T), and return the next-token logits (B, V).

        `attention_mask` (B, T), True for real tokens, marks left padding; None means none.
        """

    @abstractmethod
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Append one token per row, next_ids (B,), and return the next-token logits (B, V)."""

    @abstractmethod
    def reorder(self, index: torch.Tensor, inputs: torch.Tensor | None = None) -> None:
        """Keep rows `index` (B',) of the memory, in that order (rows may repeat); B becomes B'.

        `inputs` (A',): a caller that keeps its rows grouped by input (the same number of
        consecutive rows per input, as beam search does) names the inputs kept, as increasing
        positions among the current ones. An encoder-decoder then keeps one copy of each source's
        encoding rather than one per row; other sessions need not care.
        """


class TransformerSession(DecodeSession):
    """A Transformer decoder's session: a `KVCache`, plus the padding mask and per-row positions
    of a left-padded batch (kept on the device: a step never waits for the host)."""

    def __init__(self, model: Any, batch_size: int, max_len: int):
        self.model = model
        self.cache = model.new_cache(batch_size, max_len=max_len)
        self.mask: torch.Tensor | None = None  # (B, max_len) real cached columns; None = no padding
        self.next_pos: torch.Tensor | None = None  # (B,) each row's next position, with padding

    def prefill(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.cache.reset()
        if attention_mask is None:
            self.mask = self.next_pos = None
            return self.model(ids, cache=self.cache)[:, -1]
        B, T = ids.shape
        real = attention_mask.to(device=ids.device, dtype=torch.bool)
        self.mask = real.new_zeros(B, self.cache.max_len)
        self.mask[:, :T] = real
        positions = (real.long().cumsum(1) - 1).clamp(min=0)  # (B, T): 0 at each row's first token
        self.next_pos = positions[:, -1] + 1
        return self.model(ids, cache=self.cache, attention_mask=real, positions=positions)[:, -1]

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        if self.mask is None or self.next_pos is None:
            return self.model(next_ids[:, None], cache=self.cache)[:, -1]
        end = self.cache.length + 1
        self.mask[:, end - 1] = True
        logits = self.model(
            next_ids[:, None],
            cache=self.cache,
            attention_mask=self.mask[:, :end],
            positions=self.next_pos[:, None],
        )[:, -1]
        self.next_pos = self.next_pos + 1
        return logits

    def reorder(self, index: torch.Tensor, inputs: torch.Tensor | None = None) -> None:
        self.cache.reorder(index)
        if self.mask is not None and self.next_pos is not None:
            index = index.to(self.mask.device)
            self.mask, self.next_pos = self.mask.index_select(0, index), self.next_pos.index_select(0, index)


class RecurrentSession(DecodeSession):
    """A baseline's session (`lmforge.models.rnn`): its `StateCache` carries the state.

    A recurrence cannot skip padding, so a left-padded prefill runs the rows of each prompt length
    together, unpadded, and gathers their states into one batch (one host read of the lengths per
    prefill; the steps are batched as for a Transformer).
    """

    def __init__(self, model: Any, batch_size: int, max_len: int):
        self.model = model
        self.cache = model.new_cache(batch_size, max_len=max_len)
        self.batch_dim = 0 if model.config.arch == "nnlm" else 1  # NNLM: (B, c-1) ids; RNN: (layers, B, H)

    def prefill(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.cache.reset()
        if attention_mask is None:
            return self.model(ids, cache=self.cache)[:, -1]
        B, T = ids.shape
        lengths = attention_mask.to(ids.device).long().sum(1)  # (B,)
        logits: torch.Tensor | None = None
        state: list[torch.Tensor] = []
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero().squeeze(1)
            out = self.model(ids.index_select(0, rows)[:, T - n :])
            if logits is None:
                logits = out.output.new_empty(B, out.output.size(-1))
                state = [
                    s.new_empty(*s.shape[: self.batch_dim], B, *s.shape[self.batch_dim + 1 :])
                    for s in out.state
                ]
            logits[rows] = out.output[:, -1]
            for full, part in zip(state, out.state):
                full.index_copy_(self.batch_dim, rows, part)
        assert logits is not None  # B >= 1
        self.cache.state, self.cache.length = tuple(state), T
        return logits

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        return self.model(next_ids[:, None], cache=self.cache)[:, -1]

    def reorder(self, index: torch.Tensor, inputs: torch.Tensor | None = None) -> None:
        if self.cache.state is not None:
            index = index.to(self.cache.state[0].device)
            self.cache.state = tuple(s.index_select(self.batch_dim, index) for s in self.cache.state)
        self.cache.batch_size = index.numel()


class Seq2SeqSession(DecodeSession):
    """An encoder-decoder's session: the source ids (B, S) and their padding mask, encoded once per
    prefill into the cache's cross entries, and the decoder's `KVCache`.

    The decoder's prompts are its start tokens (plus any forced prefix), never padded; the source's
    padding mask goes to every cross-attention and is reordered with the cache, as the source is
    (a later prefill, when the target outgrows the cache, encodes it again).
    """

    def __init__(self, model: Any, batch_size: int, max_len: int, source: Source):
        src, src_mask = source
        if src.size(0) != batch_size:
            raise ValueError(f"the source has {src.size(0)} rows for a batch of {batch_size}")
        self.model = model
        self.cache = model.new_cache(batch_size, max_len=max_len)
        self.src = src
        self.src_mask = None if src_mask is None else src_mask.to(device=src.device, dtype=torch.bool)

    def prefill(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("an encoder-decoder's decoder prompts are not padded")
        self.cache.reset()
        memory = self.model.encode(self.src, self.src_mask)
        h = self.model.decode(ids, memory, self.src_mask, cache=self.cache)[:, -1:]
        return self.model.lm_head(h)[:, -1]

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        h = self.model.decode(next_ids[:, None], None, self.src_mask, cache=self.cache)
        return self.model.lm_head(h)[:, -1]

    def reorder(self, index: torch.Tensor, inputs: torch.Tensor | None = None) -> None:
        kept = _inputs_needed(index, inputs, self.cache.batch_size, self.src.size(0))
        self.cache.reorder(index, kept)  # the cross entries are per input, like the source
        if kept is not None:
            kept = kept.to(self.src.device)
            self.src = self.src.index_select(0, kept)
            if self.src_mask is not None:
                self.src_mask = self.src_mask.index_select(0, kept)


def _inputs_needed(
    index: torch.Tensor, inputs: torch.Tensor | None, rows: int, n_inputs: int
) -> torch.Tensor | None:
    """The inputs (source rows) that `rows` decoder rows need once reordered by `index`, or None
    where they are the ones held. Rows are grouped by input, rows // n_inputs consecutive ones each;
    without `inputs`, each new row gets its own copy of its input."""
    if inputs is not None:
        return None if inputs.numel() == n_inputs else inputs
    per_input = rows // n_inputs
    return index if per_input == 1 else index.div(per_input, rounding_mode="floor")


Source = tuple[torch.Tensor, torch.Tensor | None]
"""An encoder-decoder's input: source ids (B, S) and their padding mask (B, S) (True = real), or None."""


def open_session(model: Any, batch_size: int, max_len: int, source: Source | None = None) -> DecodeSession:
    """The session that decodes with `model` (eager, in eval mode) for `batch_size` rows of up to
    `max_len` positions; an encoder-decoder needs the `source` it translates."""
    arch = model.config.arch
    if arch in BASELINE_ARCHS:
        return RecurrentSession(model, batch_size, max_len)
    if arch == "encoder-decoder":
        if source is None:
            raise ValueError("an encoder-decoder decodes from a source: pass source=(ids, mask)")
        return Seq2SeqSession(model, batch_size, max_len, source)
    if source is not None:
        raise ValueError(f"a {arch} model reads no source; put the text in the prompt")
    return TransformerSession(model, batch_size, max_len)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ids (B, T) with each row right-aligned behind `pad_id`s, and the mask (B, T)
    (True for real tokens) that `DecodeSession.prefill` takes. Every prompt needs a token."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p) :] = True
    return ids, mask


__all__ = [
    "DecodeSession",
    "RecurrentSession",
    "Seq2SeqSession",
    "Source",
    "TransformerSession",
    "left_pad",
    "open_session",
]
