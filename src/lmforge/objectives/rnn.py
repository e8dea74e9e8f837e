"""Causal LM for the classic baselines (model.arch lstm/gru/nnlm): truncated BPTT with carried state.

Zaremba et al. (2014) train an LSTM on a long token stream cut into `batch_size` parallel streams;
each batch is the next window of T tokens of every stream, and the hidden state at the end of one
window is the initial state of the next. Gradients stop at the window boundary (the state is
detached: truncated backpropagation through time), but the forward pass sees the whole history, so
the model learns dependencies longer than T and is scored with full context. Batches come from
`lmforge.data.stream_batches.StreamBatches`; the state lives in the loss object here.

- training: the state is carried from each batch to the next, detached, and reset to the start
  state (zeros; for the NNLM, "no tokens yet") at the first batch of every epoch;
- validation: the val split cut into streams and read in order with its own state, reset at the
  start of every evaluation, so every evaluation sees the same batches from the same state;
- exact resume: `state_tensors()` / `load_state_tensors()` hand the training state to the trainer,
  which saves it with each checkpoint (lmforge.train.checkpoint), so a resumed run continues from
  the very state an uninterrupted one would have had.

`lmforge pretrain --arch lstm` (or `--model.arch lstm`) with the default objective, clm, trains
through this module (see `lmforge.objectives.setup_objective`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from lmforge.models.weights import unwrap
from lmforge.objectives.base import ObjectiveSetup
from lmforge.objectives.losses import output_layer_loss

State = tuple[torch.Tensor, ...]


class CarriedStateLoss:
    """Mean next-token cross-entropy of a baseline model, with its state carried across calls.

    `batches` is the training batch source; its `first_of_epoch` (True after serving an epoch's
    first batch) says when to start from a fresh state. A source without it is taken to have no
    continuity between batches, and every training batch then starts fresh. The model is called
    as `model(x, state, features=True) -> (features, new_state)` and its `output_layer()` fused
    with the loss; eval mode (`model.eval()`) uses a
    separate state, reset by `reset_eval()`.
    """

    def __init__(self, batches: Any = None) -> None:
        self.batches = batches
        self.train_state: State | None = None
        self.train_rows = 0  # batch rows the training state belongs to
        self.eval_state: State | None = None

    def reset_eval(self) -> None:
        """Start validation streams from the start state (called at the start of every evaluation)."""
        self.eval_state = None

    def __call__(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch  # (B, T) each
        training = unwrap(model).training
        if training:
            fresh = getattr(self.batches, "first_of_epoch", True)
            state = None if fresh else self.train_state
        else:
            state = self.eval_state
        features, new_state = model(x, state, features=True)
        loss = output_layer_loss(features, unwrap(model).output_layer(), y)
        # Detached: the next window's gradients stop here (truncated BPTT), and the graph of this
        # window is freed once its backward has run.
        carried = tuple(s.detach() for s in new_state)
        if training:
            self.train_state, self.train_rows = carried, x.size(0)
        else:
            self.eval_state = carried
        return loss, {}

    # -- exact resume: the trainer saves these with each checkpoint (one file per rank)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The carried training state as named tensors ({} before the first batch), with the number
        of rows (streams) it belongs to."""
        if self.train_state is None:
            return {}
        rows = torch.tensor(self.train_rows, dtype=torch.int64)
        return {"rows": rows, **{f"train_state.{i}": t for i, t in enumerate(self.train_state)}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` returned ({} = no state yet).

        A state saved for another number of streams (train.batch_size changed on resume) belongs
        to streams that no longer exist: training then restarts from a fresh state.
        """
        rows = int(tensors["rows"]) if "rows" in tensors else None
        if rows is not None and rows != getattr(self.batches, "batch_size", rows):
            warnings.warn(
                f"the carried state was saved for {rows} streams, the batches now have "
                f"{self.batches.batch_size}; starting from a fresh state",
                stacklevel=2,
            )
            tensors = {}
        keys = sorted(
            (k for k in tensors if k.startswith("train_state.")), key=lambda k: int(k.split(".")[1])
        )
        self.train_state = tuple(tensors[k] for k in keys) or None
        self.train_rows = rows or 0


def setup(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> ObjectiveSetup:
    """A baseline model, stream batches, in-order validation streams and the carried-state loss."""
    from lmforge.data.stream_batches import StreamBatches, stream_eval_windows
    from lmforge.models import build_model
    from lmforge.objectives.clm import causal_lm

    tcfg = cfg.train
    model = build_model(cfg.model)
    batches = StreamBatches(
        shards.tokens("train"), seq_len, tcfg.batch_size, seed=tcfg.seed, rank=dist.rank,
        world_size=dist.world_size, device=device,
    )  # fmt: skip
    loss = CarriedStateLoss(batches)
    val = shards.tokens("val")
    val_batches = None
    if len(val) > 1:

        def val_batches() -> Any:
            loss.reset_eval()
            return stream_eval_windows(
                val, seq_len, tcfg.batch_size, tcfg.eval_batches, rank=dist.rank, world_size=dist.world_size
            )

    return ObjectiveSetup(model, batches, val_batches, causal_lm(loss), model.flops_per_token(seq_len))


__all__ = ["CarriedStateLoss", "setup"]
