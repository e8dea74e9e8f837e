"""The pretrained network under a task head: an `Encoder` or a `Transformer` decoder, seen alike.

A task only needs hidden states (B, T, d) for token ids, so an encoder (BERT-like, bidirectional)
and a decoder (GPT-like, causal) serve alike; what differs is where a sentence's summary lives
(the first token for an encoder, the last real token for a decoder). `Backbone` hides that, and
numbers the layers so that layer-wise learning-rate decay and freezing can say "the embeddings" or
"the bottom N blocks" for either kind.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig


class Backbone(nn.Module):
    """Token ids -> final hidden states (B, T, d_model), for an `Encoder` or a `Transformer` decoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config: ModelConfig = model.config
        if self.config.arch not in ("encoder", "decoder", "encoder-decoder"):
            raise LmforgeError(
                f"model.arch={self.config.arch} cannot be fine-tuned on these tasks; "
                "use an encoder (BERT-like), decoder (GPT-like) or encoder-decoder run"
            )
        self.arch = self.config.arch
        self.hidden_size = self.config.d_model
        # An encoder-decoder's blocks count upwards through the encoder, then the decoder.
        seq2seq = self.arch == "encoder-decoder"
        self.n_layer = self.config.n_layer + (self.config.dec_layers if seq2seq else 0)
        if seq2seq:
            return  # its output projection is what it is trained through
        # The language-modelling heads are not used by a task: frozen, so that the optimizer and
        # DDP leave them alone (an encoder's pooler stays trainable: classification may use it).
        for name, p in model.named_parameters():
            if name.startswith(("mlm_head.", "mlm_bias", "cls_head.")) or (
                name.startswith("lm_head.") and not self.config.tie_embeddings
            ):
                p.requires_grad_(False)

    def freeze_pooler(self) -> None:
        """Freeze an encoder's pooler, for heads that never read the pooled [CLS] vector: a trainable
        parameter without a gradient would make DDP wait for it forever (and AdamW skips it anyway)."""
        pooler = getattr(self.model, "pooler", None)
        if pooler is not None:
            pooler.requires_grad_(False)

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
        if self.arch == "encoder-decoder":
            raise LmforgeError(
                "an encoder-decoder reads a source and a target; fine-tune it with lmforge finetune seq2seq"
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
        """Depth of a backbone parameter: 0 = embeddings, 1..n_layer = blocks, n_layer + 1 = above them.

        An encoder-decoder's encoder blocks come first, then the decoder's; both embeddings are 0.
        """
        half = re.match(r"(encoder|decoder)\.(.*)", name)
        if half:
            offset = self.config.n_layer if half.group(1) == "decoder" else 0
            if half.group(2).startswith("norm_f"):
                return offset + (self.config.n_layer if offset == 0 else self.config.dec_layers)
            depth = self.layer_of(half.group(2))
            return depth + offset if 0 < depth <= self.n_layer else min(depth, self.n_layer + 1)
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            return int(m.group(1)) + 1
        if name.startswith(("tok_emb", "pos_emb", "type_emb", "emb_norm", "embed")):
            return 0
        return self.n_layer + 1
