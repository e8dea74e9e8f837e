"""Batches for causal language modelling, read straight from memory-mapped token shards.

The token stream is cut into windows of seq_len+1 tokens (inputs and shifted targets). Each
epoch visits every window once in an order drawn from (seed, epoch), starting at an offset also
drawn from (seed, epoch) so that window boundaries move between epochs. The sampler's whole
state is two integers (epoch, position): saving them in a checkpoint makes resume exact, and each
rank of a distributed run reads its own slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lmforge.errors import LmforgeError


@dataclass
class SamplerState:
    epoch: int = 0
    position: int = 0  # windows already consumed (by all ranks) in this epoch

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


class CausalLMBatches:
    """Endless, resumable (B, T) input/target batches over a 1-D token array."""

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
        self.global_batch = batch_size * world_size
        self.state = SamplerState()
        windows = (len(tokens) - 1) // seq_len
        if windows < self.global_batch:
            raise LmforgeError(
                f"the {name} split has {len(tokens):,} tokens: only {windows} windows of seq_len={seq_len}, "
                f"fewer than one batch ({self.global_batch}); lower --train.batch_size or --train.seq_len, "
                "or give more data"
            )
        self._order: np.ndarray | None = None
        self._offset = 0
        self._order_epoch = -1
        self._pin = self.device.type == "cuda"

    def _epoch_plan(self, epoch: int) -> None:
        """Window order and start offset of `epoch`, a pure function of (seed, epoch)."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        self._offset = int(rng.integers(0, self.seq_len)) if epoch > 0 else 0
        windows = (len(self.tokens) - 1 - self._offset) // self.seq_len
        self._order = rng.permutation(windows)
        self._order_epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return self.state.to_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = SamplerState(int(state["epoch"]), int(state["position"]))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (inputs, targets) pair for this rank, each (B, T) int64 on the device."""
        st = self.state
        if self._order_epoch != st.epoch:
            self._epoch_plan(st.epoch)
        assert self._order is not None
        if st.position + self.global_batch > len(self._order):  # drop the ragged tail of the epoch
            st.epoch, st.position = st.epoch + 1, 0
            self._epoch_plan(st.epoch)
        lo = st.position + self.rank * self.batch_size
        starts = self._order[lo : lo + self.batch_size] * self.seq_len + self._offset
        st.position += self.global_batch
        # One gather from the memmap: (B, T+1) offsets -> tokens; no Python loop over tokens.
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        chunk = torch.from_numpy(self.tokens[idx].astype(np.int64))
        if self._pin:
            chunk = chunk.pin_memory()
        chunk = chunk.to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()


def eval_windows(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int, *, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same fixed validation batches at every evaluation, so successive val losses compare.

    Windows are consecutive and non-overlapping from the start of the split; a split shorter than
    one window gives a single shorter window. Ranks take interleaved batches.
    """
    n = len(tokens)
    if n < 2:
        return
    t = min(seq_len, n - 1)
    windows = (n - 1) // t
    starts = np.arange(windows, dtype=np.int64) * t
    batches = [starts[i : i + batch_size] for i in range(0, len(starts), batch_size)][:max_batches]
    for b in batches[rank::world_size]:
        idx = b[:, None] + np.arange(t + 1)[None, :]
        chunk = torch.from_numpy(tokens[idx].astype(np.int64))
        yield chunk[:, :-1], chunk[:, 1:]
