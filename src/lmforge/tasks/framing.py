"""The special tokens that frame a task input, as each kind of backbone was pretrained to see them.

An encoder reads `[CLS] a [SEP] b [SEP]` (with segment ids 0 and 1); a decoder reads `a <sep> b <eos>`
and summarises the text in its last token. The features (`lmforge.tasks.features`) and the padding of
batches take these ids from here, so one tokenizer serves every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError


@dataclass
class Specials:
    """The ids that frame a task input: [CLS] a [SEP] b [SEP] for an encoder, a <sep> b <eos> for a decoder."""

    cls: int | None  # first token (encoders); None: nothing is prepended
    sep: int  # between and after the segments
    pad: int


def specials_of(tokenizer: Any, arch: str) -> Specials:
    """The framing ids of `tokenizer` for an `arch` backbone; an encoder falls back to bos/eos when the
    tokenizer has no [CLS]/[SEP], and padding to the end-of-text id when it has no pad token."""
    eos = tokenizer.eos_id
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (eos if eos is not None else 0)
    if arch == "encoder":
        cls = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
        sep = tokenizer.sep_id if tokenizer.sep_id is not None else eos
        if cls is None or sep is None:
            raise LmforgeError(
                "the encoder's tokenizer has no [CLS]/[SEP] (or bos/eos) tokens to frame task inputs; "
                "pretrain the encoder with a WordPiece tokenizer (--tokenizer.kind wordpiece)"
            )
        return Specials(cls, sep, pad)
    sep = tokenizer.sep_id if tokenizer.sep_id is not None else eos
    if sep is None:
        raise LmforgeError("the decoder's tokenizer has no end-of-text token to close task inputs")
    return Specials(None, sep, pad)
