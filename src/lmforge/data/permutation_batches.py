"""Permutation-LM batches (XLNet): windows of the token stream plus a sampled factorisation order.

For each row a random order z of the T positions is drawn; the model predicts the tokens at the last
P ~= T/K positions of that order (partial prediction). The orders are drawn with NumPy from (seed,
epoch, position), so a resumed run sees the same orders and the device never waits on the host.
See `lmforge.objectives.plm` for the objective and `lmforge.models.permutation` for the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError

_TRAIN_TAG, _VAL_TAG = 23, 29  # keep the order streams apart from other samplers of the same seed


def num_predict(seq_len: int, predict_k: float) -> int:
    """Targets per row: about seq_len/predict_k, at least 1, and at least one context token left.

    The count is fixed per row so that the query stream is a dense (B, P, d) tensor.
    """
    if seq_len < 2:
        raise LmforgeError(f"train.seq_len={seq_len} is too short for permutation LM; use at least 2")
    return int(min(seq_len - 1, max(1, round(seq_len / predict_k))))


def sample_orders(
    rng: np.random.Generator, batch_size: int, seq_len: int, n_predict: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random factorisation orders: (rank (B, T), target positions (B, P)).

    rank[b, i] is the step at which position i comes in row b's order (a permutation of 0..T-1);
    the targets are the positions of the last P steps, in order.
    """
    order = rng.permuted(np.broadcast_to(np.arange(seq_len), (batch_size, seq_len)), axis=1)  # (B, T)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(seq_len)[None, :].repeat(batch_size, axis=0), axis=1)
    return rank, np.ascontiguousarray(order[:, seq_len - n_predict :])


def permutation_batch(
    input_ids: torch.Tensor, rng: np.random.Generator, predict_k: float, device: torch.device
) -> dict[str, torch.Tensor]:
    """A PLM batch from input windows (B, T): the ids plus a sampled order per row, on `device`.

    Returns input_ids (B, T), perm_rank (B, T) and target_positions (B, P), all int64.
    """
    B, T = input_ids.shape
    rank, targets = sample_orders(rng, B, T, num_predict(T, predict_k))

    def dev(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a.astype(np.int64))
        if device.type == "cuda":
            t = t.pin_memory()
        return t.to(device, non_blocking=True)

    return {"input_ids": input_ids.to(device), "perm_rank": dev(rank), "target_positions": dev(targets)}


class PermutationLMBatches:
    """Endless, resumable PLM batches: `CausalLMBatches` windows plus a factorisation order per row.

    The windows' shifted targets are dropped (the targets are the inputs themselves). Sampling and
    resume state are the windows' own (epoch, position); the orders are drawn from (seed, epoch, the
    row's place in the epoch), so they follow the windows on resume without any state of their own.
    """

    def __init__(self, windows: Any, predict_k: float) -> None:
        self.windows, self.predict_k = windows, predict_k
        self.n_predict = num_predict(windows.seq_len, predict_k)

    @property
    def batch_size(self) -> int:
        return self.windows.batch_size

    @property
    def seq_len(self) -> int:
        return self.windows.seq_len

    def state_dict(self) -> dict[str, int]:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.windows.load_state_dict(state)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """input_ids (B, T), perm_rank (B, T), target_positions (B, P), on the windows' device."""
        w = self.windows
        x, _ = w.next_batch()
        st = w.state  # after the call, so an epoch rollover inside next_batch is already applied
        first = st.position - w.global_batch + w.rank * w.batch_size  # this rank's first window in the epoch
        rng = np.random.Generator(np.random.PCG64([w.seed, st.epoch, first, _TRAIN_TAG]))
        return permutation_batch(x, rng, self.predict_k, w.device)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()


def permutation_eval_batches(
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    max_batches: int,
    *,
    predict_k: float,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[dict[str, torch.Tensor]]:
    """The same validation windows *and orders* at every evaluation, so successive losses compare."""
    from lmforge.data.batches import eval_windows

    device = torch.device(device)
    windows = eval_windows(tokens, seq_len, batch_size, max_batches, rank=rank, world_size=world_size)
    for i, (x, _) in enumerate(windows):
        if x.size(1) < 2:  # a one-token split: nothing to predict from
            return
        rng = np.random.Generator(np.random.PCG64([seed, 1 << 20, i * world_size + rank, _VAL_TAG]))
        yield permutation_batch(x, rng, predict_k, device)


__all__ = [
    "PermutationLMBatches",
    "num_predict",
    "permutation_batch",
    "permutation_eval_batches",
    "sample_orders",
]
