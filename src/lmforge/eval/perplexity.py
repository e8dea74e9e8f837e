"""Held-out evaluation of a causal LM: loss, perplexity and bits per byte.

The text is read document by document, and each document is followed by the end-of-text token,
with one more in front, so that every token of the text (and each document end) is predicted.
Perplexity is per token of *this* tokenizer, so it only compares models that share one;
bits per byte divides the total log-loss by the UTF-8 size of the text (each end-of-document
counted as one byte, like a newline) and compares any two models.

Long texts are scored in windows of the model's context, or with a recurrent model's state carried
from window to window (`lmforge.eval.scoring`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.eval import TXT_UNIT
from lmforge.eval.scoring import score_carried, score_stream, takes_state, token_stream


@dataclass
class EvalResult:
    loss: float  # mean negative log-likelihood, nats per token
    perplexity: float
    bits_per_byte: float
    tokens: int  # tokens scored
    bytes: int
    documents: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_lm(
    lm: Any, data: Any, *, batch_size: int = 8, stride: int | None = None, txt_unit: str = TXT_UNIT,
    text_field: str = "text", encoding: str = "utf-8",
) -> EvalResult:  # fmt: skip
    """Loss, perplexity and bits per byte of a loaded run (`lmforge.load`) on held-out text."""
    from lmforge.text.corpus import read_documents

    if lm.model_config.arch == "encoder-decoder":
        raise LmforgeError(
            f"{lm.run_dir} is an encoder-decoder, which gives no perplexity of text: fine-tune it with "
            f"lmforge finetune seq2seq --model {lm.run_dir}, then use lmforge translate / evaluate"
        )
    texts = [
        d.text for d in read_documents(data, txt_unit=txt_unit, text_field=text_field, encoding=encoding)
    ]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise LmforgeError(f"{data}: no text to evaluate on; give a file with held-out text")
    ids, nbytes = token_stream(lm.tokenizer, texts)
    model = lm.model.eval()
    if takes_state(model) and stride is None:
        # Recurrent models carry their state from window to window, as they are evaluated in the
        # literature; a fresh state per window would understate them.
        nll, count = score_carried(
            model, ids, context=lm.model_config.max_len, streams=batch_size, device=lm.device
        )
    else:
        nll, count = score_stream(
            model,
            ids,
            context=lm.model_config.max_len,
            stride=stride,
            batch_size=batch_size,
            device=lm.device,
        )
    if count == 0:
        raise LmforgeError(f"{data}: too little text to score (needs at least two tokens)")
    loss = nll / count
    return EvalResult(
        loss=loss, perplexity=math.exp(min(loss, 700)), bits_per_byte=nll / math.log(2) / nbytes,
        tokens=count, bytes=nbytes, documents=len(texts),
    )  # fmt: skip
