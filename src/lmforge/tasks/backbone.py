"""The pretrained network under a task head: our encoder or decoder runs, or a Hugging Face directory.

A task only needs hidden states (B, T, d) for token ids, so an encoder (BERT-like, bidirectional)
and a decoder (GPT-like, causal) serve alike; what differs is where a sentence's summary lives
(the first token for an encoder, the last real token for a decoder) and how a text pair is
joined. `Backbone` hides that, and numbers the layers so that layer-wise learning-rate decay and
freezing can say "the embeddings" or "the bottom N blocks" for either kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig


@dataclass
class Specials:
    """The ids that frame a task input: [CLS] a [SEP] b [SEP] for an encoder, a <sep> b <eos> for a decoder."""

    cls: int | None  # first token (encoders); None: nothing is prepended
    sep: int  # between and after the segments
    pad: int


def specials_of(tokenizer: Any, arch: str) -> Specials:
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


class Backbone(nn.Module):
    """Token ids -> final hidden states (B, T, d_model), for an `Encoder` or a `Transformer` decoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config: ModelConfig = model.config
        if self.config.arch not in ("encoder", "decoder"):
            raise LmforgeError(
                f"model.arch={self.config.arch} cannot be fine-tuned on these tasks; "
                "use an encoder (BERT-like) or decoder (GPT-like) run"
            )
        self.arch = self.config.arch
        self.hidden_size = self.config.d_model
        self.n_layer = self.config.n_layer
        # The language-modelling heads are not used by a task: frozen, so that the optimizer and
        # DDP leave them alone (an encoder's pooler stays trainable: classification may use it).
        for name, p in model.named_parameters():
            if name.startswith(("mlm_head.", "mlm_bias", "cls_head.")) or (
                name.startswith("lm_head.") and not self.config.tie_embeddings
            ):
                p.requires_grad_(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        token_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.arch == "encoder":
            return self.model(
                input_ids,
                token_type_ids=token_type_ids,
                attention_mask=attention_mask,
                token_index=token_index,
            )
        return self.model.hidden_states(input_ids)  # causal: right padding never reaches real tokens

    def pool(
        self, h: torch.Tensor, mode: str, lengths: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One vector per sequence (B, d): `cls` (an encoder's pooler over the first token), `first`,
        `last` (the last real token: the only one a decoder lets see the whole text) or `mean`."""
        if mode == "cls":
            if self.arch != "encoder":
                raise LmforgeError(
                    "pooling=cls needs an encoder backbone; use pooling=last (or mean) for a decoder"
                )
            return self.model.pool(h)
        if mode == "first":
            return h[:, 0]
        if mode == "last":
            return h[torch.arange(h.size(0), device=h.device), lengths - 1]
        if mode == "mean":
            if mask is None:
                return h.mean(1)
            m = mask.to(h.dtype).unsqueeze(-1)
            return (h * m).sum(1) / m.sum(1).clamp_min(1)
        raise LmforgeError(f"pooling={mode!r} is not one of cls, first, last, mean")

    def layer_of(self, name: str) -> int:
        """Depth of a backbone parameter: 0 = embeddings, 1..n_layer = blocks, n_layer + 1 = above them."""
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            return int(m.group(1)) + 1
        if name.startswith(("tok_emb", "pos_emb", "type_emb", "emb_norm", "embed")):
            return 0
        return self.n_layer + 1


def load_backbone(source: str | Path, *, from_scratch: bool = False) -> tuple[Backbone, Any, dict[str, Any]]:
    """(backbone, tokenizer, the source's config dict) from a run directory or a Hugging Face directory.

    `from_scratch` keeps the architecture and tokenizer but not the weights: the baseline that
    shows what pretraining is worth.
    """
    from lmforge.models import build_model

    src = Path(source)
    if not src.is_dir():
        raise LmforgeError(
            f"{src}: no such directory; give a run directory (lmforge pretrain --out) or a HF model dir"
        )
    if (src / "config.yaml").is_file():
        from lmforge.config import load_yaml
        from lmforge.run import load

        task = task_section(load_yaml(src / "config.yaml"))
        if task:
            raise LmforgeError(
                f"{src} is a fine-tuned task run; fine-tune from the pretrained run it started from ({task.get('model')})"
            )
        lm = load(src)
        model, tokenizer, config = lm.model, lm.tokenizer, lm.config
        if hasattr(model, "discriminator"):  # ELECTRA: the discriminator is the encoder to fine-tune
            model = model.discriminator
    elif (src / "config.json").is_file():
        from lmforge.interop.hf import import_hf

        model, tokenizer = import_hf(src)
        config = {"imported_from": str(src)}
    else:
        raise LmforgeError(
            f"{src}: neither a run directory (config.yaml) nor a Hugging Face model directory (config.json)"
        )
    if from_scratch:
        torch.manual_seed(0)
        model = build_model(model.config)
    return Backbone(model.train()), tokenizer, config


def task_section(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("task") or {}
