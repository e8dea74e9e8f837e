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

`open_session(..., compiled=True)` gives a Transformer's session (decoder-only or encoder-decoder)
whose steps run through `torch.compile`: each step writes at a position held in a tensor and
attends over the cache's full capacity, with a key mask hiding what is not written yet, so every
step has the same shapes and one compiled graph serves them all (`CompiledTransformerSession`,
`CompiledSeq2SeqSession`). The prefill stays eager; the first steps pay the compilation.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from lmforge.errors import LmforgeError
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


# ----------------------------------------------------------------------------------------------
# Compiled steps over fixed shapes

COMPILE_BACKEND = "inductor"
"""The `torch.compile` backend of compiled sessions (tests use a lighter one)."""


class _WriteAt:
    """A `KVCache`'s buffers as a compiled step uses them: `update` writes this step's keys and
    values at position `at` (a (1,) tensor, not a Python int, so it is no constant of the graph)
    and returns every position of the buffers; the step's key mask hides the unwritten ones."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], at: torch.Tensor, cross: Any = None):
        self.k, self.v, self.at, self._cross = k, v, at, cross

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Cast as the eager cache's slice assignment does (under autocast k, v may be bf16).
        self.k[layer].index_copy_(1, self.at, k.transpose(1, 2).to(self.k[layer].dtype))
        self.v[layer].index_copy_(1, self.at, v.transpose(1, 2).to(self.v[layer].dtype))
        return self.k[layer].transpose(1, 2), self.v[layer].transpose(1, 2)

    def cross(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cross[0][layer], self._cross[1][layer]


def _decoder_step(
    model: Any,
    ids: torch.Tensor,
    positions: torch.Tensor,
    key_mask: torch.Tensor,
    at: torch.Tensor,
    k: list[torch.Tensor],
    v: list[torch.Tensor],
) -> torch.Tensor:
    """One step of a decoder-only Transformer: ids (B, 1) at `positions` (B, 1) -> logits (B, V)."""
    x = model.embed(ids, positions=positions)
    cache = _WriteAt(k, v, at)
    x = model.run_blocks(x, rope=model.rotary(1, 0, positions), attn_mask=key_mask, cache=cache)
    return model.lm_head(x)[:, -1]


def _seq2seq_step(
    model: Any,
    ids: torch.Tensor,
    positions: torch.Tensor,
    key_mask: torch.Tensor,
    at: torch.Tensor,
    k: list[torch.Tensor],
    v: list[torch.Tensor],
    cross: tuple[list[torch.Tensor], list[torch.Tensor]],
    src_mask: torch.Tensor | None,
) -> torch.Tensor:
    """One decoder step of an encoder-decoder over its cached cross keys/values: logits (B, V)."""
    dec = model.decoder
    x = dec.embed(ids, positions=positions)
    cache = _WriteAt(k, v, at, cross)
    x = dec.run_blocks(
        x, rope=dec.rotary(1, 0, positions), attn_mask=key_mask, cache=cache, memory_mask=src_mask
    )  # fmt: skip
    if model.config.head_scale != 1.0:
        x = x * model.config.head_scale
    return model.lm_head(x)[:, -1]


@functools.cache
def _compiled(step: Callable[..., torch.Tensor], backend: str) -> Callable[..., torch.Tensor]:
    """`step` under torch.compile, made once per process: later sessions reuse its graphs. A new
    batch size or cache capacity recompiles (the second time with those sizes symbolic), and so
    do another model and another grad mode; past Dynamo's recompile limit, `_run_step` decodes
    eagerly instead."""
    return torch.compile(step, backend=backend, fullgraph=True)


def _run_step(step: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """`step(*args)` compiled, or eagerly (the same function, the same result) once Dynamo has
    made as many graphs of it as it allows: many models, or many shapes, in one process."""
    try:
        return _compiled(step, COMPILE_BACKEND)(*args)
    except torch._dynamo.exc.FailOnRecompileLimitHit:
        return step(*args)


class _FixedShapeSteps:
    """What the two compiled sessions add to the eager ones (it comes first in their bases): the
    write position, the key mask over the whole cache and each row's next position, all on the
    device and updated in place; set up after the eager prefill, reordered with the rows."""

    cache: Any
    key_mask: torch.Tensor | None = None  # (B, 1, 1, max_len) the columns written; None before a prefill

    def prefill(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().prefill(ids, attention_mask)  # type: ignore[misc]
        B, T = ids.shape
        mask, next_pos = getattr(self, "mask", None), getattr(self, "next_pos", None)  # a padded decoder's
        if mask is None or next_pos is None:
            mask = torch.zeros(B, self.cache.max_len, dtype=torch.bool, device=ids.device)
            mask[:, :T] = True
            next_pos = torch.full((B,), T, dtype=torch.long, device=ids.device)
        self.at = torch.zeros(1, dtype=torch.long, device=ids.device)
        self.key_mask = mask[:, None, None, :].clone()
        self.positions = next_pos[:, None].clone()  # (B, 1)
        return logits

    def reorder(self, index: torch.Tensor, inputs: torch.Tensor | None = None) -> None:
        super().reorder(index, inputs)  # type: ignore[misc]  # the cache (and a decoder's padding)
        if self.key_mask is not None:
            index = index.to(self.key_mask.device)
            self.key_mask = self.key_mask.index_select(0, index)
            self.positions = self.positions.index_select(0, index)

    def _next_column(self) -> int:
        """Open the next cache column for writing and attending; returns it."""
        column = self.cache.length
        if column >= self.cache.max_len:
            raise LmforgeError(
                f"KV cache holds {self.cache.max_len} positions and all are used; prefill a shorter window"
            )
        assert self.key_mask is not None, "prefill before stepping"
        self.at.fill_(column)
        self.key_mask[:, 0, 0, column] = True
        return column

    def _advance(self, column: int) -> None:
        self.cache.length = column + 1
        self.positions += 1


class CompiledTransformerSession(_FixedShapeSteps, TransformerSession):
    """A decoder-only Transformer's session whose steps are one compiled graph (see the module
    docstring); the prefill is `TransformerSession`'s. Greedy outputs equal the eager session's."""

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        column = self._next_column()
        logits = _run_step(
            _decoder_step, self.model, next_ids[:, None], self.positions, self.key_mask, self.at, self.cache.k,
            self.cache.v,
        )  # fmt: skip
        self._advance(column)
        return logits


class CompiledSeq2SeqSession(_FixedShapeSteps, Seq2SeqSession):
    """An encoder-decoder's session whose decoder steps are one compiled graph over the cached
    cross keys/values; encoding and the prefill are `Seq2SeqSession`'s."""

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        column = self._next_column()
        cache = self.cache
        cross = (cache.cross_k, cache.cross_v)
        logits = _run_step(
            _seq2seq_step, self.model, next_ids[:, None], self.positions, self.key_mask, self.at, cache.k, cache.v, cross,
            self.src_mask,
        )  # fmt: skip
        self._advance(column)
        return logits


# ----------------------------------------------------------------------------------------------
# Slots: rows that join and leave between steps (continuous batching)


class _WriteRows:
    """A `KVCache`'s first `rows` rows as a slot step uses them: `update` writes each row's keys
    and values at that row's own position (`at`, (rows,)) and returns the first `width` positions;
    the step's key mask hides what a row has not written."""

    def __init__(self, cache: Any, rows: int, at: torch.Tensor, width: int):
        self.cache, self.rows, self.at, self.width = cache, rows, at, width
        self.index = torch.arange(rows, device=at.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kb, vb = self.cache.k[layer], self.cache.v[layer]  # (slots, max_len, n_kv_head, head_dim)
        kb[self.index, self.at] = k[:, :, 0].to(kb.dtype)
        vb[self.index, self.at] = v[:, :, 0].to(vb.dtype)
        return kb[: self.rows, : self.width].transpose(1, 2), vb[: self.rows, : self.width].transpose(1, 2)


class SlotSession:
    """A decoder's KV cache as `slots` rows that sequences join and leave between steps, each at
    its own length: the memory of continuous batching (`lmforge.infer.engine`).

    The live sequences are always rows 0..live-1, so a step runs on a view of the buffers, never a
    copy: `admit` prefills the prompts that arrived as one left-padded batch and puts each one's
    keys and values in the next free row, from position 0; `retire`
    moves the last live row into the freed one (one row copied, once per finished sequence). A
    step feeds one token per live row at that row's position and attends over the positions up to
    the longest row's, a key mask hiding the rest, so rows of any lengths share it. Lengths are
    kept on the host as well, where the scheduler needs them, so a step never waits on the device.
    """

    def __init__(self, model: Any, slots: int, max_len: int):
        self.model = model
        self.cache = model.new_cache(slots, max_len=max_len)
        device = self.cache.k[0].device
        self.key_mask = torch.zeros(slots, 1, 1, max_len, dtype=torch.bool, device=device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)  # next position per row
        self.lengths: list[int] = []  # per live row, on the host
        self.device = device

    @property
    def live(self) -> int:
        return len(self.lengths)

    @property
    def slots(self) -> int:
        return self.cache.batch_size

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    @torch.inference_mode()
    def admit(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill prompts into the next free rows, as one left-padded batch (each row attends to
        its own tokens, at its own positions); returns their next-token logits (n, V)."""
        n = len(prompts)
        if self.live + n > self.slots:
            raise LmforgeError(
                f"{n} prompts do not fit the {self.slots - self.live} free slots; retire sequences first"
            )
        for ids in prompts:
            if not 0 < len(ids) < self.max_len:
                raise LmforgeError(
                    f"a prompt of {len(ids)} tokens does not fit {self.max_len} positions with room to reply"
                )
        ids, real = left_pad(prompts, 0)
        ids, real = ids.to(self.device), real.to(self.device)
        T = ids.size(1)
        batch = self.model.new_cache(n, max_len=T)
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        padded = not bool(real.all())
        logits = self.model(
            ids, cache=batch, attention_mask=real if padded else None, positions=positions if padded else None
        )[:, -1]
        for i, prompt in enumerate(prompts):
            row, length = self.live, len(prompt)
            for layer in range(len(self.cache.k)):  # the row's real columns, left-aligned in its slot
                self.cache.k[layer][row, :length] = batch.k[layer][i, T - length :]
                self.cache.v[layer][row, :length] = batch.v[layer][i, T - length :]
            self.key_mask[row].zero_()
            self.key_mask[row, ..., :length] = True
            self.positions[row] = length
            self.lengths.append(length)
        return logits

    def retire(self, row: int) -> int | None:
        """Free `row`; the last live row moves into it. Returns the row that moved (now `row`), or None."""
        last = self.live - 1
        moved = None
        if row != last:
            n = self.lengths[last]
            for layer in range(len(self.cache.k)):
                self.cache.k[layer][row, :n] = self.cache.k[layer][last, :n]
                self.cache.v[layer][row, :n] = self.cache.v[layer][last, :n]
            self.key_mask[row] = self.key_mask[last]
            self.positions[row] = self.positions[last]
            self.lengths[row] = n
            moved = last
        self.lengths.pop()
        return moved

    @torch.inference_mode()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """One token per live row, next_ids (live,), each at its row's position: logits (live, V)."""
        rows = self.live
        if max(self.lengths) >= self.max_len:
            raise LmforgeError(f"a row has used all {self.max_len} positions; retire it before stepping")
        width = max(self.lengths) + 1
        at = self.positions[:rows]
        self.key_mask[torch.arange(rows, device=self.device), 0, 0, at] = True
        model = self.model
        pos = at[:, None]
        x = model.embed(next_ids[:, None].to(self.device), positions=pos)
        cache = _WriteRows(self.cache, rows, at, width)
        x = model.run_blocks(
            x, rope=model.rotary(1, 0, pos), attn_mask=self.key_mask[:rows, ..., :width], cache=cache
        )
        self.positions[:rows] += 1
        self.lengths = [n + 1 for n in self.lengths]
        return model.lm_head(x)[:, -1]


def _compilable(model: Any) -> bool:
    """Whether a Transformer can take fixed-shape steps: not with T5's relative positions, whose
    bias depends on how many positions are cached (those models decode eagerly)."""
    stacks = [model.decoder] if hasattr(model, "decoder") else [model]
    return all(getattr(s, "rel_bias", None) is None for s in stacks)


Source = tuple[torch.Tensor, torch.Tensor | None]
"""An encoder-decoder's input: source ids (B, S) and their padding mask (B, S) (True = real), or None."""


def open_session(
    model: Any, batch_size: int, max_len: int, source: Source | None = None, *, compiled: bool = False
) -> DecodeSession:
    """The session that decodes with `model` (eager, in eval mode) for `batch_size` rows of up to
    `max_len` positions; an encoder-decoder needs the `source` it translates.

    `compiled`: steps through torch.compile over fixed shapes (Transformers without T5 positions;
    the others, and recurrent baselines, decode eagerly as before).
    """
    arch = model.config.arch
    if arch in BASELINE_ARCHS:
        return RecurrentSession(model, batch_size, max_len)
    compiled = compiled and _compilable(model)
    if arch == "encoder-decoder":
        if source is None:
            raise ValueError("an encoder-decoder decodes from a source: pass source=(ids, mask)")
        session = CompiledSeq2SeqSession if compiled else Seq2SeqSession
        return session(model, batch_size, max_len, source)
    if source is not None:
        raise ValueError(f"a {arch} model reads no source; put the text in the prompt")
    return (CompiledTransformerSession if compiled else TransformerSession)(model, batch_size, max_len)


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
    "CompiledSeq2SeqSession",
    "CompiledTransformerSession",
    "DecodeSession",
    "RecurrentSession",
    "Seq2SeqSession",
    "SlotSession",
    "Source",
    "TransformerSession",
    "left_pad",
    "open_session",
]
