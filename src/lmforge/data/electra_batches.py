"""ELECTRA's batches: masked-LM batches plus one uniform number per masked position.

The generator's replacements are sampled from these uniforms by inverse CDF
(`lmforge.models.electra.sample_tokens`), so they are a pure function of the batch: resume is
exact, ranks differ, and the fixed validation batches get the same replacements at every
evaluation. No RNG is consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class ElectraBatches:
    """Masked-LM batches plus `sample_u` (N,) float32: a uniform number per masked position.

    Wraps a `MaskedLMBatches` (mode "mlm") and keeps its resumable state; the uniforms of a
    batch come from (seed, epoch, position, rank) before it is drawn, so they are restored with it.
    """

    def __init__(self, inner: Any, seed: int, rank: int = 0) -> None:
        self.inner, self.seed, self.rank = inner, seed, rank

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    @property
    def seq_len(self) -> int:
        return self.inner.seq_len

    @property
    def tokens_per_batch(self) -> int:
        return self.inner.tokens_per_batch

    def state_dict(self) -> dict[str, int]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.inner.load_state_dict(state)

    def _with_uniforms(self, batch: dict[str, Any], key: list[int]) -> dict[str, Any]:
        positions = batch["mlm_positions"]
        u = np.random.Generator(np.random.PCG64(key)).random(positions.numel(), dtype=np.float32)
        t = torch.from_numpy(u)
        if positions.device.type == "cuda":
            t = t.pin_memory()
        batch["sample_u"] = t.to(positions.device, non_blocking=True)
        return batch

    def next_batch(self) -> dict[str, Any]:
        st = self.inner.state
        key = [self.seed, st.epoch, st.position, self.rank, 17]  # before the draw moves the state
        return self._with_uniforms(self.inner.next_batch(), key)

    def eval_batches(self, max_batches: int | None = None) -> Iterator[dict[str, Any]]:
        """The inner source's fixed validation batches, each with fixed uniforms."""
        for i, batch in enumerate(self.inner.eval_batches(max_batches)):
            yield self._with_uniforms(batch, [self.seed, 1 << 20, i, self.rank, 19])


__all__ = ["ElectraBatches"]
