"""Held-out evaluation of masked-LM runs: masked-token loss and accuracy, and NSP/SOP accuracy.

The held-out text is tokenized document by document and turned into examples exactly as in
training (sentence pairs for NSP/SOP, full-sentence chunks for MLM), with masks drawn from a fixed
seed, so two runs evaluated on the same text are scored on the same masked positions.
Masked-token perplexity is exp(masked-token loss); it measures how well the model fills gaps,
which is not comparable with a causal LM's perplexity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.eval import TXT_UNIT


@dataclass
class MaskedEvalResult:
    mlm_loss: float  # mean cross-entropy of the masked tokens, nats
    mlm_perplexity: float
    mlm_accuracy: float  # share of masked tokens predicted exactly (top-1)
    masked_tokens: int
    pair_accuracy: float | None  # NSP/SOP accuracy; None for objective mlm
    pairs: int
    documents: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def document_tokens(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """doc1 [eos] doc2 [eos] ... as int64, and each document's start offset plus the total (as shards)."""
    eos = tokenizer.eos_id
    parts, lengths = [], []
    for start in range(0, len(texts), 256):
        for ids in tokenizer.encode_batch(texts[start : start + 256]):
            doc = ids + ([eos] if eos is not None else [])
            parts.append(np.asarray(doc, dtype=np.int64))
            lengths.append(len(doc))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), offsets


@torch.no_grad()
def evaluate_masked(
    lm: Any, data: Any, *, batch_size: int = 8, txt_unit: str = TXT_UNIT, text_field: str = "text",
    encoding: str = "utf-8", seed: int = 0,
) -> MaskedEvalResult:  # fmt: skip
    """Masked-LM metrics of a loaded encoder run (`lmforge.load`) on held-out text."""
    from lmforge.config import from_dict
    from lmforge.data.masking import MaskingConfig
    from lmforge.data.mlm_batches import MaskedLMBatches
    from lmforge.infer.fill_mask import masked_lm
    from lmforge.objectives.mlm import MODES
    from lmforge.text.corpus import read_documents

    objective = lm.config.get("objective", "mlm")
    if objective not in MODES and objective != "electra":
        raise LmforgeError(
            f"{lm.run_dir}: lmforge eval scores causal and masked-LM runs, not objective {objective!r}; "
            "its validation loss during training is in metrics.jsonl"
        )
    mode = MODES.get(objective, "mlm")
    masking = from_dict(MaskingConfig, lm.config.get("mlm", {}), prefix="mlm.")
    if objective == "electra":  # the generator is scored on the inputs it was trained on
        from lmforge.objectives.electra import electra_masking

        masking = electra_masking(masking)
    texts = [
        d.text for d in read_documents(data, txt_unit=txt_unit, text_field=text_field, encoding=encoding)
    ]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise LmforgeError(f"{data}: no text to evaluate on; give a file with held-out text")
    tokens, offsets = document_tokens(lm.tokenizer, texts)
    model = masked_lm(lm.model).eval()
    seq_len = lm.config.get("train", {}).get("seq_len") or model.config.max_len
    src = MaskedLMBatches(
        tokens, offsets, lm.tokenizer, min(seq_len, model.config.max_len), batch_size, mode=mode,
        masking=masking, seed=seed, device=lm.device, name="evaluation", drop_last=False,
    )  # fmt: skip
    nll, correct, masked, pair_correct, pairs = 0.0, 0, 0, 0, 0
    for batch in src.eval_batches():
        h = model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
            token_index=batch.get("token_index"),
        )
        logits = model.mlm_logits(h.flatten(0, 1).index_select(0, batch["mlm_positions"])).float()
        targets = batch["mlm_targets"]
        nll += float(F.cross_entropy(logits, targets, reduction="sum"))
        correct += int((logits.argmax(-1) == targets).sum())
        masked += targets.numel()
        labels = batch["pair_labels"]
        if labels is not None:
            pair_correct += int((model.pair_logits(h).argmax(-1) == labels).sum())
            pairs += labels.numel()
    if masked == 0:
        raise LmforgeError(
            f"{data}: too little text to evaluate (no token was masked); give more held-out text"
        )
    loss = nll / masked
    return MaskedEvalResult(
        mlm_loss=loss, mlm_perplexity=math.exp(min(loss, 700)), mlm_accuracy=correct / masked, masked_tokens=masked,
        pair_accuracy=pair_correct / pairs if pairs else None, pairs=pairs, documents=len(texts),
    )  # fmt: skip


__all__ = ["MaskedEvalResult", "document_tokens", "evaluate_masked"]
