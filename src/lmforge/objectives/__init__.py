"""Pretraining objectives: loss functions, and the setup that pairs each with its model and data.

`OBJECTIVES` maps every `--objective` name to the function that sets it up:
`setup(cfg, shards, seq_len, dist, device) -> ObjectiveSetup` (the model, resumable training
batches, fixed validation batches, the `Objective` and the FLOPs per token).

What a new objective touches:
  - its batch source, if the existing ones do not fit: `lmforge/data/<name>_batches.py`
    (resumable: next_batch, state_dict/load_state_dict, batch_size, seq_len);
  - its model, if it needs more than `build_model(cfg.model)`: `lmforge/models/<name>.py`
    (returning logits or features, never a loss);
  - its loss and setup: `lmforge/objectives/<name>.py`;
  - one line in `OBJECTIVES` below, and the name in `PretrainConfig.objective`'s Literal;
  - if it trains an architecture other than the decoder, its name in the tuple of
    `lmforge.pretraining.resolve_arch` (ENCODER_OBJECTIVES, SEQ2SEQ_OBJECTIVES).
The trainer never changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lmforge.objectives import clm, denoise, electra, mlm, plm, rnn, span
from lmforge.objectives.base import Loss, Objective, ObjectiveSetup

Setup = Callable[[Any, Any, int, Any, torch.device], ObjectiveSetup]

OBJECTIVES: dict[str, Setup] = {
    "clm": clm.setup,  # causal LM (GPT)
    "mlm": mlm.setup,  # masked LM on full sentences (RoBERTa)
    "mlm+nsp": mlm.setup,  # masked LM + next-sentence prediction (BERT)
    "mlm+sop": mlm.setup,  # masked LM + sentence-order prediction (ALBERT)
    "plm": plm.setup,  # permutation LM (XLNet)
    "electra": electra.setup,  # replaced token detection (ELECTRA)
    "span": span.setup,  # span corruption of an encoder-decoder (T5)
    "denoise": denoise.setup,  # text infilling + sentence permutation of an encoder-decoder (BART)
    # clm for the classic baselines (model.arch lstm/gru/nnlm): truncated BPTT, state carried
    "clm-carried-state": rnn.setup,
}


def setup_objective(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> ObjectiveSetup:
    """The ObjectiveSetup of `cfg.objective` (cfg is a PretrainConfig)."""
    from lmforge.models.config import BASELINE_ARCHS

    name = cfg.objective
    if name == "clm" and cfg.model.arch in BASELINE_ARCHS:
        name = "clm-carried-state"
    return OBJECTIVES[name](cfg, shards, seq_len, dist, device)


__all__ = ["OBJECTIVES", "Loss", "Objective", "ObjectiveSetup", "setup_objective"]
