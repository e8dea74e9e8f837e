"""Encoder-decoder pretraining batches from token shards: T5's span corruption, and the windows they share.

Each document of a split (its tokens, without the end-of-text token that closes it in the shards)
is cut into windows of `window` tokens; a window never crosses a document boundary, so neither
side of an example ever holds another document's text or an end-of-text token before its end. A
document shorter than a window is one (shorter) example. From epoch 1 on, the grid of each
document longer than a window starts at an offset drawn from (seed, epoch), so the cuts move
between epochs; the order of the windows is a permutation drawn from the same key. The state is
two integers (epoch, position), as for the other batch sources, and the noise of a batch is drawn
from (seed, epoch, its first window), so a resumed run sees exactly the batches an uninterrupted
one would have. Each rank takes its own slice of every global batch; validation batches are the
first windows of epoch 0 with noise drawn from a fixed key, the same at every evaluation.

Span corruption (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", section 3.1.4),
as T5's `random_spans_noise_mask` and `noise_span_to_unique_sentinel` define it:

- of a window of L tokens, round(L * noise_density) are noise (at least 1, at most L - 1), in
  round(noise / mean_span_length) spans (at least 1);
- the noise tokens and the other tokens are each split into that many non-empty runs by a random
  segmentation (a uniformly random choice of the cut points), and the runs alternate, starting
  with a non-noise run, so the window ends in noise;
- the input keeps the non-noise tokens and replaces each noise span by one sentinel; the target
  is each sentinel followed by the tokens of its span; both end in the end-of-text token.

Our tokenizers have no `<extra_id_N>` tokens, so the sentinels are `num_sentinels` ids reserved at
the top of the model's vocabulary, above every tokenizer id: sentinel i is `vocab_size - 1 - i`
(the first sentinel is the highest id, as in T5). The window is the longest whose input fits in
`seq_len` (T5's `compute_input_and_target_lengths`): 568 tokens for inputs of 512 at the defaults.

Batches are dicts of `input_ids` (B, S) padded with the padding id, `attention_mask` (B, S) bool
and `token_index` (the flat indices of the real input tokens), both None when no row is padded,
and `target_ids` (B, T) padded with -100: the layout of `lmforge.tasks.batches.collate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lmforge.data.batches import SamplerState
from lmforge.errors import LmforgeError

MIN_WINDOW = 2  # tokens a window needs: one to keep and one to corrupt
IGNORE = -100  # target padding, which the loss skips (the value of lmforge.models.heads.IGNORE)


# ------------------------------------------------------------------------------------------------
# T5's span arithmetic


def span_counts(length: Any, noise_density: float, mean_span_length: float) -> tuple[Any, Any]:
    """(noise tokens, noise spans) of windows of `length` tokens (scalars or arrays), with T5's
    guards: at least one noise and one non-noise token, at least one span. Rounding is half to
    even, as in T5."""
    length = np.maximum(np.asarray(length, dtype=np.int64), 2)
    noise = np.rint(length * noise_density).astype(np.int64)
    noise = np.minimum(np.maximum(noise, 1), length - 1)
    spans = np.maximum(np.rint(noise / mean_span_length).astype(np.int64), 1)
    return noise, spans


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float, mean_span_length: float
) -> tuple[int, int]:
    """(window, target length): the most raw tokens whose span-corrupted input, one sentinel per
    span and the end-of-text token included, fits in `inputs_length`, and the length of the
    target it gives (sentinels and end-of-text token included). T5's computation, with the
    guards of `span_counts` (which only matter for windows of a few tokens, where T5's formula
    counts no span but its mask makes one)."""

    def lengths(tokens: int) -> tuple[int, int]:
        noise, spans = (int(v) for v in span_counts(tokens, noise_density, mean_span_length))
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = inputs_length - 1
    while lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    _, targets = lengths(tokens)
    # T5's adjustment: at density 0.5 the target would be one longer than the input.
    if noise_density == 0.5 and targets > inputs_length:
        tokens, targets = tokens - 1, targets - 1
    return tokens, targets


def random_segmentation(
    num_items: np.ndarray, num_segments: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per row, `num_items` items cut into `num_segments` runs at uniformly random points: the run
    lengths (B, max segments), each row's summing to its items (runs past its count are 0). Where
    a row asks for more runs than it has items, every item is a run of its own and the rest are 0."""
    num_items = np.asarray(num_items, dtype=np.int64)
    num_segments = np.asarray(num_segments, dtype=np.int64)
    B = len(num_items)
    gaps = max(int(num_items.max(initial=1)) - 1, 0)
    keys = rng.random((B, gaps))
    keys[np.arange(gaps)[None, :] >= (num_items - 1)[:, None]] = 2.0  # not a gap of this row
    rank = np.empty((B, gaps), dtype=np.int64)
    np.put_along_axis(rank, np.argsort(keys, axis=1), np.broadcast_to(np.arange(gaps), (B, gaps)), axis=1)
    starts_run = rank < (num_segments - 1)[:, None]  # the item after gap j opens a new run
    run_of = np.concatenate([np.zeros((B, 1), np.int64), np.cumsum(starts_run, axis=1)], axis=1)
    width = int(num_segments.max(initial=1))
    real = np.arange(gaps + 1)[None, :] < num_items[:, None]
    flat = (np.arange(B)[:, None] * width + run_of)[real]
    return np.bincount(flat, minlength=B * width).reshape(B, width)


def random_spans_noise_mask(
    lengths: np.ndarray, noise_density: float, mean_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """T5's noise mask of windows of `lengths` tokens: (B, max length) bool, True at noise tokens,
    False past each row's length. Non-noise and noise runs alternate, a non-noise run first."""
    lengths = np.asarray(lengths, dtype=np.int64)
    B, W = len(lengths), int(lengths.max(initial=0))
    noise, spans = span_counts(lengths, noise_density, mean_span_length)
    noise_runs = random_segmentation(noise, spans, rng)
    keep_runs = random_segmentation(lengths - noise, spans, rng)
    interleaved = np.stack([keep_runs, noise_runs], axis=2).reshape(B, -1)
    run_starts = np.cumsum(interleaved, axis=1)[:, :-1]
    opens = np.zeros((B, W + 1), dtype=np.int64)
    np.add.at(opens, (np.repeat(np.arange(B), run_starts.shape[1]), run_starts.reshape(-1)), 1)
    is_noise = np.cumsum(opens[:, :W], axis=1) % 2 == 1
    return is_noise & (np.arange(W)[None, :] < lengths[:, None])


def _compact(values: np.ndarray, keep: np.ndarray, end: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """The kept values of each row moved to its front, then `end`, then `fill`: ((B, width), lengths
    with `end` counted)."""
    B = len(values)
    n = keep.sum(axis=1)
    out = np.full((B, int(n.max(initial=0)) + 1), fill, dtype=np.int64)
    rows, cols = np.nonzero(keep)
    out[rows, (np.cumsum(keep, axis=1) - 1)[rows, cols]] = values[rows, cols]
    out[np.arange(B), n] = end
    return out, n + 1


def _sentinelled(tokens: np.ndarray, spans: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """T5's `noise_span_to_unique_sentinel`: each run of `spans` becomes one sentinel (the k-th
    run's is top - k); returns the values and which positions survive."""
    prev = np.zeros_like(spans)
    prev[:, 1:] = spans[:, :-1]
    first = spans & ~prev
    values = np.where(first, top + 1 - np.cumsum(first, axis=1), tokens)
    return values, ~(spans & prev)


def corrupt_spans(
    tokens: np.ndarray, lengths: np.ndarray, noise: np.ndarray, *, sentinel_top: int, eos_id: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs and targets of windows (B, W) of `lengths` tokens under a noise mask (B, W): (inputs
    (B, S) padded with `pad_id`, their lengths, targets (B, T) padded with -100)."""
    real = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    kept = real & ~noise
    inp_values, inp_keep = _sentinelled(tokens, noise & real, sentinel_top)
    tgt_values, tgt_keep = _sentinelled(tokens, kept, sentinel_top)
    inputs, input_lengths = _compact(inp_values, inp_keep & real, eos_id, pad_id)
    targets, _ = _compact(tgt_values, tgt_keep & real, eos_id, IGNORE)
    return inputs, input_lengths, targets


# ------------------------------------------------------------------------------------------------
# Windows of documents, resumable


class DocumentWindowBatches(ABC):
    """Endless, resumable encoder-decoder batches over the document windows of one split.

    Subclasses turn a batch of windows into inputs and targets (`make_examples`); this class cuts
    the windows, orders and slices them, and pads and moves the batch.
    """

    TAG = 0  # keeps the random streams of the subclasses apart

    def __init__(
        self,
        tokens: np.ndarray,
        doc_offsets: np.ndarray,
        window: int,
        batch_size: int,
        *,
        seq_len: int,
        eos_id: int,
        pad_id: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        name: str = "train",
        drop_last: bool = True,
    ) -> None:
        """`window`: raw tokens per example at most; `seq_len`: the longest input a batch holds.
        `drop_last`: training serves only full batches (so the split must hold at least one);
        evaluation sets it False and also scores a final partial batch."""
        if window < MIN_WINDOW:
            raise LmforgeError(
                f"train.seq_len={seq_len} is too short for encoder-decoder pretraining; use at least 8"
            )
        self.tokens, self.window, self.batch_size, self.seq_len = tokens, window, batch_size, seq_len
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)
        self.seed, self.rank, self.world_size, self.name = seed, rank, world_size, name
        self.device = torch.device(device)
        self.global_batch = batch_size * world_size
        self.state = SamplerState()
        self._pin = self.device.type == "cuda"
        offsets = np.asarray(doc_offsets, dtype=np.int64)
        start, end = offsets[:-1], offsets[1:].copy()
        if len(end):  # a document's text stops before the end-of-text token that closes it
            last = np.asarray(tokens[np.maximum(end - 1, 0)])
            end -= (last == self.eos_id) & (end > start)
        keep = end - start >= MIN_WINDOW
        self.doc_start, self.doc_len = start[keep], (end - start)[keep]
        if not len(self.doc_start):
            raise LmforgeError(f"the {name} split has no document of {MIN_WINDOW} tokens or more to train on")
        self._epoch: int | None = None
        self._plan_cache: tuple[np.ndarray, np.ndarray] | None = None
        n = len(self._plan(0)[0])
        if drop_last and n < self.global_batch:
            raise LmforgeError(
                f"the {name} split gives only {n} windows of up to {window} tokens, fewer than one batch "
                f"({self.global_batch}); lower --train.batch_size, or give more data"
            )

    # ------------------------------------------------------------ windows

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of every window of `epoch`, in serving order: a function of (seed, epoch)."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, self.TAG]))
        w, start, length = self.window, self.doc_start, self.doc_len
        shift = rng.integers(0, w, size=len(start)) if epoch > 0 else np.zeros(len(start), np.int64)
        shift = np.where(length > w, shift, 0)
        first = np.minimum(np.where(shift > 0, w - shift, w), length)  # the first window's length
        count = 1 + -(-(length - first) // w)
        doc = np.repeat(np.arange(len(start)), count)
        k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        offset = np.where(k == 0, 0, first[doc] + (k - 1) * w)
        lengths = np.minimum(np.where(k == 0, first[doc], w), length[doc] - offset)
        starts = start[doc] + offset
        ok = lengths >= MIN_WINDOW
        starts, lengths = starts[ok], lengths[ok]
        order = rng.permutation(len(starts))
        return starts[order], lengths[order]

    def _windows_of(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._epoch != epoch:
            self._plan_cache, self._epoch = self._plan(epoch), epoch
        assert self._plan_cache is not None
        return self._plan_cache

    # ------------------------------------------------------------ batches

    def state_dict(self) -> dict[str, int]:
        return self.state.to_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = SamplerState(int(state["epoch"]), int(state["position"]))

    def next_batch(self) -> dict[str, torch.Tensor | None]:
        """This rank's part of the next global batch (see the module docstring for its fields)."""
        st = self.state
        starts, lengths = self._windows_of(st.epoch)
        if st.position + self.global_batch > len(starts):  # drop the ragged tail of the epoch
            st.epoch, st.position = st.epoch + 1, 0
            starts, lengths = self._windows_of(st.epoch)
        lo = st.position + self.rank * self.batch_size
        rng = np.random.Generator(np.random.PCG64([self.seed, st.epoch, lo, self.TAG + 1]))
        st.position += self.global_batch
        sel = slice(lo, lo + self.batch_size)
        return self.assemble(starts[sel], lengths[sel], rng)

    def eval_batches(self, max_batches: int | None = None) -> Iterator[dict[str, torch.Tensor | None]]:
        """The same validation batches (windows and noise) at every call; ranks take every
        world_size-th batch."""
        starts, lengths = self._plan(0)
        firsts = list(range(0, len(starts), self.batch_size))
        if max_batches:
            firsts = firsts[:max_batches]
        for i, lo in enumerate(firsts):
            if i % self.world_size != self.rank:
                continue
            rng = np.random.Generator(np.random.PCG64([self.seed, 1 << 20, lo, self.TAG + 2]))
            sel = slice(lo, lo + self.batch_size)
            yield self.assemble(starts[sel], lengths[sel], rng)

    def window_tokens(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The windows' tokens (B, longest), int64, padded with the padding id."""
        W = int(lengths.max(initial=0))
        pos = np.arange(W)[None, :]
        real = pos < lengths[:, None]
        ids = np.asarray(self.tokens[np.where(real, starts[:, None] + pos, 0)]).astype(np.int64)
        ids[~real] = self.pad_id
        return ids

    @abstractmethod
    def make_examples(
        self, windows: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs (B, S) padded with the padding id, their lengths, targets (B, T) padded with -100)."""

    def assemble(
        self, starts: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
    ) -> dict[str, torch.Tensor | None]:
        inputs, input_lengths, targets = self.make_examples(self.window_tokens(starts, lengths), lengths, rng)
        if inputs.shape[1] > self.seq_len:  # the lengths are chosen so that this cannot happen
            raise AssertionError(f"an input of {inputs.shape[1]} tokens, over seq_len={self.seq_len}")
        real = np.arange(inputs.shape[1])[None, :] < input_lengths[:, None]
        padded = not bool(real.all())

        def dev(a: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(np.ascontiguousarray(a))
            if self._pin:
                x = x.pin_memory()
            return x.to(self.device, non_blocking=True)

        return {
            "input_ids": dev(inputs),
            "attention_mask": dev(real) if padded else None,
            "token_index": dev(np.flatnonzero(real)) if padded else None,
            "target_ids": dev(targets),
        }

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len


class SpanCorruptionBatches(DocumentWindowBatches):
    """T5 span-corruption batches (see the module docstring); `vocab_size` is the model's, whose
    top `num_sentinels` ids are the sentinels."""

    TAG = 31

    def __init__(
        self,
        tokens: np.ndarray,
        doc_offsets: np.ndarray,
        seq_len: int,
        batch_size: int,
        *,
        vocab_size: int,
        noise_density: float = 0.15,
        mean_span_length: float = 3.0,
        num_sentinels: int = 100,
        **kwargs: Any,
    ) -> None:
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.sentinel_top = vocab_size - 1
        window, self.target_len = compute_input_and_target_lengths(seq_len, noise_density, mean_span_length)
        _, spans = span_counts(window, noise_density, mean_span_length)
        if int(spans) > num_sentinels:
            raise LmforgeError(
                f"span corruption of {window}-token windows makes {int(spans)} spans, but span.num_sentinels="
                f"{num_sentinels}; raise span.num_sentinels or lower train.seq_len"
            )
        super().__init__(tokens, doc_offsets, window, batch_size, seq_len=seq_len, **kwargs)

    def make_examples(
        self, windows: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        noise = random_spans_noise_mask(lengths, self.noise_density, self.mean_span_length, rng)
        return corrupt_spans(
            windows, lengths, noise, sentinel_top=self.sentinel_top, eos_id=self.eos_id, pad_id=self.pad_id
        )


__all__ = [
    "DocumentWindowBatches",
    "SpanCorruptionBatches",
    "compute_input_and_target_lengths",
    "corrupt_spans",
    "random_segmentation",
    "random_spans_noise_mask",
    "span_counts",
]
