"""Fill-mask: the most likely tokens for each [MASK] in a text, from a masked-LM encoder.

`[MASK]` may be written literally whatever the tokenizer calls its mask token (a byte-level BPE
tokenizer's is `<|mask|>`), so the same prompt works for every run. The text is wrapped as the
model saw its training inputs, `[CLS] text [SEP]`, and for each mask the top-k tokens come with
their probabilities and the text with that token filled in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from lmforge.errors import LmforgeError


@dataclass
class Prediction:
    token: str  # the token as the vocabulary spells it (e.g. "##ing")
    token_id: int
    score: float  # probability
    text: str  # the input with this token in place of the mask (other masks left as they are)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MASK_LITERAL = "[MASK]"


def masked_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The module with the masked-LM head: an Encoder, or the generator of an ELECTRA model."""
    if hasattr(model, "mlm_logits"):
        return model
    generator = getattr(model, "generator", None)
    if generator is not None and hasattr(generator, "mlm_logits"):
        return generator
    raise LmforgeError(
        "fill-mask needs a masked-LM run (pretrained with --objective mlm, mlm+nsp, mlm+sop or electra)"
    )


@torch.no_grad()
def fill_mask(model: torch.nn.Module, tokenizer: Any, text: str, *, top_k: int = 5) -> list[list[Prediction]]:
    """For each mask in `text` (left to right), the `top_k` predictions, most likely first."""
    if top_k < 1:
        raise LmforgeError(f"--top_k must be at least 1, got {top_k}")
    mlm = masked_lm(model)
    mask_token = tokenizer.special_tokens.get("mask")
    if tokenizer.mask_id is None or mask_token is None:
        raise LmforgeError("the run's tokenizer has no mask token; fill-mask needs a masked-LM run")
    if mask_token != MASK_LITERAL:
        text = text.replace(MASK_LITERAL, mask_token)
    if mask_token not in text:
        raise LmforgeError(f"no mask in the text; write {MASK_LITERAL} where a word should be predicted")
    ids = tokenizer.encode(text)
    ids = [tokenizer.cls_id, *ids, tokenizer.sep_id] if tokenizer.cls_id is not None else ids
    max_len = mlm.config.max_len
    if len(ids) > max_len:
        raise LmforgeError(
            f"the text is {len(ids)} tokens long but the model takes at most {max_len}; shorten it"
        )
    device = next(mlm.parameters()).device
    x = torch.tensor([ids], device=device)
    was_training = mlm.training
    mlm.eval()
    h = mlm(x)
    mlm.train(was_training)
    positions = (x[0] == tokenizer.mask_id).nonzero().flatten()
    probs = mlm.mlm_logits(h[0, positions]).float().softmax(-1)  # (masks, vocab)
    k = min(top_k, probs.size(-1))
    top_p, top_i = probs.topk(k, dim=-1)
    results = []
    for m, pos in enumerate(positions.tolist()):
        preds = []
        for p, i in zip(top_p[m].tolist(), top_i[m].tolist()):
            filled = list(ids)
            filled[pos] = i
            preds.append(Prediction(
                token=tokenizer.id_to_token(i) or "", token_id=i, score=p,
                text=tokenizer.decode([t for t in filled if t not in (tokenizer.cls_id, tokenizer.sep_id)],
                                      skip_special_tokens=False),
            ))  # fmt: skip
        results.append(preds)
    return results


__all__ = ["MASK_LITERAL", "Prediction", "fill_mask", "masked_lm"]
