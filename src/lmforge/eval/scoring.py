"""Total negative log-likelihood of a token stream under a model, the one computation behind
`lmforge eval` (per-token perplexity, bits per byte) and `lmforge compare` (per-word perplexity).

A Transformer scores the stream in windows of its context (`score_stream`); with `stride` <
context, windows overlap and only the last `stride` targets of each are scored, so every scored
token sees at least `context - stride` tokens of history. A recurrent model, whose forward takes a
`state`, instead carries its state from one window to the next (`score_carried`), as recurrent
LMs are evaluated in the literature; a fresh state per window would understate them.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError


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


def takes_state(model: torch.nn.Module) -> bool:
    """Whether `model(idx, state)` carries a state across windows (the recurrent baselines)."""
    try:
        return "state" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def score_carried(
    model: torch.nn.Module,
    ids: np.ndarray,
    *,
    context: int,
    streams: int = 8,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Total NLL and scored tokens of a stateful model, its state carried from window to window.

    The targets are cut into `streams` contiguous pieces read side by side, window after window
    of `context` tokens, each window starting from the state the previous one ended in; so a token
    has the whole of its piece before it as history (only `streams` - 1 points restart from a
    fresh state), which is how recurrent LMs are evaluated. Every target is scored exactly once.
    """
    n = len(ids) - 1  # targets
    if n < 1:
        return 0.0, 0
    B = max(1, min(int(streams), n // max(context, 1) or 1))
    seg = -(-n // B)
    pad = B * seg - n
    src = np.concatenate([ids, np.zeros(pad, dtype=ids.dtype)])
    x_all = torch.from_numpy(src[:-1].reshape(B, seg)).to(device)
    y_all = torch.from_numpy(src[1:].reshape(B, seg)).to(device)
    valid = (torch.arange(B * seg, device=device) < n).view(B, seg)
    total, state = torch.zeros((), dtype=torch.float64, device=device), None
    for t in range(0, seg, context):
        out = model(x_all[:, t : t + context], state)
        logits, state = out[0], out[1]
        y = y_all[:, t : t + context]
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        total += (nll.view_as(y) * valid[:, t : t + context]).sum().double()
    return float(total), n
