"""Batches for truncated backpropagation through time: consecutive windows of parallel streams.

A recurrent LM carries its state from one batch to the next, which only means something if row b
of batch k+1 continues row b of batch k. So, as in Zaremba et al. (2014) and PyTorch's
word_language_model (`batchify`), the token stream is cut into `batch_size * world_size` contiguous
streams of equal length L (the ragged tail is dropped), and the k-th batch holds window k of every
stream:

    stream s = tokens[off + s*L : off + (s+1)*L]          (targets: the same shifted by one)
    batch k, row b = stream (rank*batch_size + b)[k*T : (k+1)*T]

Each rank reads its own contiguous slice of the streams. An epoch is L // T windows; epoch 0
starts at off = 0, later epochs at an offset drawn from (seed, epoch) in [0, T), so that window
boundaries move between epochs (the carried state is reset at each epoch start anyway). The whole
state is two integers (epoch, windows served in the epoch), as for `CausalLMBatches`: resuming
from them serves exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmforge.data.batches import SamplerState
from lmforge.errors import LmforgeError


class StreamBatches:
    """Endless, resumable (B, T) input/target batches whose rows continue across batches."""

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        name: str = "train",
    ) -> None:
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.streams = batch_size * world_size
        self.state = SamplerState()
        # Whether the batch served last opened its epoch: the carried state is reset there.
        self.first_of_epoch = False
        if self._stream_len(seq_len - 1) < seq_len:  # even the largest offset must leave one window
            need = self.streams * seq_len + seq_len
            raise LmforgeError(
                f"the {name} split has {len(tokens):,} tokens, fewer than the {need:,} that {self.streams} "
                f"streams (train.batch_size x processes) of one seq_len={seq_len} window need; lower "
                "--train.batch_size or --train.seq_len, or give more data"
            )
        self._plan_epoch = -1
        self._offset = self._len = 0
        self._windows = 0
        self._pin = self.device.type == "cuda"

    def _stream_len(self, offset: int) -> int:
        """Tokens per stream when the streams start at `offset` (one more token is read for targets)."""
        return (len(self.tokens) - 1 - offset) // self.streams

    def _epoch_plan(self, epoch: int) -> None:
        """Offset and stream length of `epoch`, a pure function of (seed, epoch)."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        self._offset = int(rng.integers(0, self.seq_len)) if epoch > 0 else 0
        self._len = self._stream_len(self._offset)
        self._windows = self._len // self.seq_len
        self._plan_epoch = epoch

    @property
    def windows_per_epoch(self) -> int:
        """Batches in the current epoch (L // T)."""
        if self._plan_epoch != self.state.epoch:
            self._epoch_plan(self.state.epoch)
        return self._windows

    def state_dict(self) -> dict[str, int]:
        return self.state.to_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = SamplerState(int(state["epoch"]), int(state["position"]))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (inputs, targets) pair for this rank, each (B, T) int64 on the device."""
        st = self.state
        if self._plan_epoch != st.epoch:
            self._epoch_plan(st.epoch)
        if st.position >= self._windows:
            st.epoch, st.position = st.epoch + 1, 0
            self._epoch_plan(st.epoch)
        self.first_of_epoch = st.position == 0
        T = self.seq_len
        rows = np.arange(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        starts = self._offset + rows * self._len + st.position * T  # (B,)
        st.position += 1
        # One gather from the memmap: (B, T+1) offsets -> tokens; no Python loop over tokens.
        idx = starts[:, None] + np.arange(T + 1)[None, :]
        chunk = torch.from_numpy(self.tokens[idx].astype(np.int64))
        if self._pin:
            chunk = chunk.pin_memory()
        chunk = chunk.to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()


def stream_eval_windows(
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    max_batches: int,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Validation batches in stream order, the same at every call: the split cut into
    `batch_size * world_size` streams (fewer if the split is tiny), this rank's streams read window
    by window from the start, the last window shorter so that every stream is read to its end.

    Carrying the state through them scores each token with all the context before it in its
    stream, as a recurrent model is evaluated in the literature. At most `max_batches` windows.
    """
    n = len(tokens)
    if n < 2:
        return
    streams = max(1, min(batch_size * world_size, n - 1))
    length = (n - 1) // streams
    mine = np.array_split(np.arange(streams), world_size)[rank]
    if len(mine) == 0:
        return
    for k, lo in enumerate(range(0, length, seq_len)):
        if k >= max_batches:
            return
        t = min(seq_len, length - lo)
        idx = (mine * length + lo)[:, None] + np.arange(t + 1)[None, :]  # (B, t+1)
        chunk = torch.from_numpy(tokens[idx].astype(np.int64))
        yield chunk[:, :-1], chunk[:, 1:]


__all__ = ["StreamBatches", "stream_eval_windows"]
