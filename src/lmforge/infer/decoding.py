"""The decoding protocol that every generation loop shares: prefill the prompts once, then step.

    session = open_session(model, batch_size, max_len)
    logits = session.prefill(ids, attention_mask)  # (B, T) left-padded prompts -> (B, V) next-token logits
    logits = session.step(next_ids)                # (B,) one token per row -> (B, V)
    session.reorder(index)                         # (B',) rows to keep, drop or duplicate (beams)

Sampling (`lmforge.infer.generate`) drives it today; beam search, chat and a server's scheduler
over decoder-only models need nothing more. A session owns its model's decoding memory: the KV
cache of a Transformer (`TransformerSession`), the carried state of a recurrent or n-gram
baseline (`RecurrentSession`). An encoder-decoder's session will take the encoder's output (and
its padding mask, which `reorder` must then carry along) at `prefill`, and fill the cache's cross
entries from it once (`KVCache.set_cross`).

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
    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (B',) of the memory, in that order (rows may repeat); B becomes B'."""


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

    def reorder(self, index: torch.Tensor) -> None:
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

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache.state is not None:
            index = index.to(self.cache.state[0].device)
            self.cache.state = tuple(s.index_select(self.batch_dim, index) for s in self.cache.state)
        self.cache.batch_size = index.numel()


def open_session(model: Any, batch_size: int, max_len: int) -> DecodeSession:
    """The session that decodes with `model` (eager, in eval mode) for `batch_size` rows of up to
    `max_len` positions."""
    if model.config.arch in BASELINE_ARCHS:
        return RecurrentSession(model, batch_size, max_len)
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


__all__ = ["DecodeSession", "RecurrentSession", "TransformerSession", "left_pad", "open_session"]
