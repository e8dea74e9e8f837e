"""Batches of task features: shuffled per epoch, padded per batch, resumable at any step.

The order of epoch e is a permutation drawn from (seed, e), so the position (epoch, index) is the
whole state: a resumed run sees exactly the batches an uninterrupted one would have seen. Batches
hold `batch_size` examples, or with a token budget (`max_tokens`, as translation trains) as many
examples of similar length as fit in it, padding counted.
Padding goes only to the longest example of the batch; with an encoder the padded positions
cost almost nothing anyway (it runs its per-token layers on the real tokens only).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.models.heads import IGNORE

# Padding value per variable-length field; fields not listed are fixed-size per example.
PAD_VALUES = {
    "input_ids": None,
    "token_type_ids": 0,
    "piece_labels": IGNORE,
    "word_pos": 0,
    "word_labels": IGNORE,
    "target_ids": IGNORE,  # an encoder-decoder's targets (the decoder's inputs are these shifted)
    "lm_labels": IGNORE,  # chat: the next token where the assistant wrote it
    "segments": -1,  # packed rows: the conversation of each token (padding: a segment of its own)
    "positions": 0,  # packed rows: each token's position within its conversation
}


def collate(features: list[dict[str, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Pad a list of features into a batch dict of tensors.

    `attention_mask` is None when no example is shorter than the longest (no padding at all), and
    `token_index` lists the flat positions of the real tokens, which the encoder's unpadded path
    would otherwise compute with a device sync. `word_mask` marks real words for tagging.
    """
    lengths = np.asarray([len(f["input_ids"]) for f in features], np.int64)
    B, T = len(features), int(lengths.max())
    batch: dict[str, torch.Tensor | None] = {"lengths": torch.from_numpy(lengths)}
    real = np.arange(T)[None, :] < lengths[:, None]
    for key in features[0]:
        if key in PAD_VALUES:
            width = (
                T
                if key in ("input_ids", "token_type_ids", "piece_labels")
                else max(len(f[key]) for f in features)
            )
            fill = pad_id if key == "input_ids" else PAD_VALUES[key]
            arr = np.full((B, max(width, 1)), fill, np.int64)
            for i, f in enumerate(features):
                arr[i, : len(f[key])] = f[key]
            batch[key] = torch.from_numpy(arr)
        else:
            batch[key] = torch.from_numpy(np.stack([f[key] for f in features]))
    if "word_pos" in batch:
        n_words = np.asarray([len(f["word_pos"]) for f in features])
        width = batch["word_pos"].size(1)
        batch["word_mask"] = torch.from_numpy(np.arange(width)[None, :] < n_words[:, None])
    padded = bool((lengths < T).any())
    batch["attention_mask"] = torch.from_numpy(real) if padded else None
    batch["token_index"] = torch.from_numpy(np.flatnonzero(real.reshape(-1))) if padded else None
    return batch


class TaskBatches:
    """Resumable shuffled batches over a list of features (the Trainer's batch-source protocol)."""

    GROUP = 50  # with group_by_length: batches drawn from windows of GROUP batches sorted by length

    def __init__(
        self,
        features: list[dict[str, np.ndarray]],
        batch_size: int,
        pad_id: int,
        *,
        seed: int = 0,
        group_by_length: bool = False,
        max_tokens: int = 0,
    ) -> None:
        if not features:
            raise ValueError("no training examples")
        self.features, self.batch_size, self.pad_id, self.seed = features, batch_size, pad_id, seed
        self.group_by_length, self.max_tokens = group_by_length, max_tokens
        # An example's padded cost: its longest variable-length field (an encoder-decoder's source
        # or target, whichever is longer, as fairseq counts it).
        keys = [k for k in PAD_VALUES if k in features[0]]
        self._lengths = np.asarray([max(len(f[k]) for k in keys) for f in features])
        if max_tokens and int(self._lengths.max()) > max_tokens:
            raise LmforgeError(
                f"--max_tokens={max_tokens} is less than the longest example ({int(self._lengths.max())} "
                "tokens); raise max_tokens or lower max_len"
            )
        self.epoch, self.index = 0, 0
        self._order, self._starts = self._plan(0)
        # The Trainer reports tokens/s from batch_size * seq_len: the mean real length, and with a
        # token budget the mean number of examples per batch.
        self.seq_len = max(1, round(float(self._lengths.mean())))
        if max_tokens:
            self.batch_size = max(1, round(len(features) / len(self._starts)))

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's example order, and where each of its batches starts in it."""
        order = self._permutation(epoch)
        if not self.max_tokens:
            return order, np.arange(0, len(order), self.batch_size)
        return self._budget_batches(epoch, order)

    def _budget_batches(self, epoch: int, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token-budget batches: the shuffled examples sorted by length (ties stay shuffled), cut
        greedily wherever one more example would take the padded batch over `max_tokens`, and the
        batches shuffled. Examples of similar length share a batch, so little is padding."""
        order = order[np.argsort(self._lengths[order], kind="stable")]
        lengths = self._lengths[order]
        batches, start = [], 0
        for i in range(1, len(order) + 1):
            if i == len(order) or (i - start + 1) * lengths[i] > self.max_tokens:
                batches.append(order[start:i])
                start = i
        rng = np.random.default_rng([self.seed, epoch, 1])
        batches = [batches[i] for i in rng.permutation(len(batches))]
        starts = np.cumsum([0] + [len(b) for b in batches[:-1]])
        return np.concatenate(batches), starts

    def _permutation(self, epoch: int) -> np.ndarray:
        """The epoch's order: a seeded shuffle, or with group_by_length a shuffle whose windows of
        GROUP batches are sorted by length and whose batches are then shuffled again. Batches hold
        examples of similar length (less padding, faster attention) and still arrive in random
        order; the result is a function of (seed, epoch), so resume stays exact."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.features))
        if not self.group_by_length:
            return order
        window = self.GROUP * self.batch_size
        for start in range(0, len(order), window):
            part = order[start : start + window]
            order[start : start + window] = part[np.argsort(-self._lengths[part], kind="stable")]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return np.concatenate([batches[i] for i in rng.permutation(len(batches))])

    def next_batch(self) -> dict[str, torch.Tensor | None]:
        """The next batch; an epoch's last partial batch is kept (every example is seen each epoch)."""
        if self.index >= len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order, self._starts = self._plan(self.epoch)
        k = int(np.searchsorted(self._starts, self.index, side="right"))  # the batch after `index`
        end = int(self._starts[k]) if k < len(self._starts) else len(self._order)
        take = self._order[self.index : end]
        self.index = end
        return collate([self.features[i] for i in take], self.pad_id)

    @property
    def steps_per_epoch(self) -> int:
        return len(self._starts)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": len(self.features),
                "group_by_length": self.group_by_length, "max_tokens": self.max_tokens}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n") != len(self.features):
            raise ValueError(
                f"the training data changed since the checkpoint ({state.get('n')} examples then, "
                f"{len(self.features)} now); resume with the same --train file"
            )
        self.seed = int(state["seed"])
        self.group_by_length = bool(state.get("group_by_length", False))
        if int(state.get("max_tokens", 0)) != self.max_tokens:
            raise ValueError(
                f"the checkpoint batched by max_tokens={state.get('max_tokens', 0)}, this run by "
                f"{self.max_tokens}; resume with the same --max_tokens"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order, self._starts = self._plan(self.epoch)


def eval_batches(features: list[dict[str, np.ndarray]], batch_size: int, pad_id: int) -> Iterator[dict]:
    """Batches in file order, for evaluation and prediction. Sorting by length would pad less, but
    the encoder's unpadded path already skips the padding, and file order keeps outputs aligned."""
    for i in range(0, len(features), batch_size):
        yield collate(features[i : i + batch_size], pad_id)
