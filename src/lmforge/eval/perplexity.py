"""Held-out evaluation of a causal LM: loss, perplexity and bits per byte.

The text is read document by document, and each document is followed by the end-of-text token,
with one more in front, so that every token of the text (and each document end) is predicted.
Perplexity is per token of *this* tokenizer, so it only compares models that share one;
bits per byte divides the total log-loss by the UTF-8 size of the text (each end-of-document
counted as one byte, like a newline) and compares any two models.

Long texts are scored in windows of the model's context. With `stride` < context, windows
overlap and only the last `stride` targets of each are scored, so every scored token sees at
least `context - stride` tokens of history (the usual sliding-window perplexity). Recurrent
models (whose forward takes a `state`) instead carry their state from one window to the next.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError


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


def token_stream(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, int]:
    """[eos] doc1 [eos] doc2 [eos] ... as int64, and the UTF-8 byte count it stands for."""
    eos = tokenizer.eos_id
    parts: list[np.ndarray] = [] if eos is None else [np.array([eos], dtype=np.int64)]
    nbytes = 0
    for start in range(0, len(texts), 256):
        batch = texts[start : start + 256]
        for text, ids in zip(batch, tokenizer.encode_batch(batch)):
            parts.append(np.asarray(ids, dtype=np.int64))
            nbytes += len(text.encode("utf-8"))
            if eos is not None:
                parts.append(np.array([eos], dtype=np.int64))
                nbytes += 1
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), nbytes


@torch.no_grad()
def score_stream(
    model: torch.nn.Module, ids: np.ndarray, *, context: int, stride: int | None = None, batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:  # fmt: skip
    """Total NLL (nats) and number of scored tokens over a token stream, in batched windows."""
    stride = stride or context
    if not 0 < stride <= context:
        raise LmforgeError(f"--stride must be between 1 and the context ({context}), got {stride}")
    n = len(ids)
    if n < 2:
        return 0.0, 0
    # Window w covers inputs ids[b : b+L] and targets ids[b+1 : b+L+1]; it scores the targets not
    # already scored by the previous window.
    windows: list[tuple[int, int, int]] = []  # (begin, length, first scored target index within window)
    prev_end, begin = 0, 0
    while prev_end < n - 1:
        end = min(begin + context, n - 1)
        windows.append((begin, end - begin, prev_end - begin))
        prev_end, begin = end, begin + stride
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for length in sorted({w[1] for w in windows}):  # batch windows of equal length together
        group = [w for w in windows if w[1] == length]
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            starts = np.array([w[0] for w in chunk])
            idx = starts[:, None] + np.arange(length + 1)[None, :]
            block = torch.from_numpy(ids[idx]).to(device)
            x, y = block[:, :-1], block[:, 1:]
            logits = model(x)
            logits = getattr(logits, "logits", logits)
            if isinstance(logits, tuple):  # a recurrent model's (logits, state), from a fresh state
                logits = logits[0]
            nll = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none"
            )
            nll = nll.view(len(chunk), length)
            keep = (
                torch.arange(length, device=device)[None, :]
                >= torch.tensor([w[2] for w in chunk], device=device)[:, None]
            )
            total += (nll * keep).sum().double()
            count += int(keep.sum())
    return float(total), count


def evaluate_lm(
    lm: Any, data: Any, *, batch_size: int = 8, stride: int | None = None, txt_unit: str = "file",
    text_field: str = "text", encoding: str = "utf-8",
) -> EvalResult:  # fmt: skip
    """Loss, perplexity and bits per byte of a loaded run (`lmforge.load`) on held-out text."""
    from lmforge.data.corpus import read_documents

    texts = [
        d.text for d in read_documents(data, txt_unit=txt_unit, text_field=text_field, encoding=encoding)
    ]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise LmforgeError(f"{data}: no text to evaluate on; give a file with held-out text")
    from lmforge.eval.compare import score_carried, takes_state

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
