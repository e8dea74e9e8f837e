"""The bidirectional encoder (BERT): the decoder's `TransformerStack` without the causal mask, with
segment embeddings, plus the heads masked-LM pretraining needs.

    ids, segments -> token + position + segment embeddings -> (LayerNorm) -> Blocks(causal=False)
                  -> hidden states (B, T, d_model)
    hidden[masked positions] -> mlm_head (dense, GELU, LayerNorm) -> tied vocab projection + bias
    hidden[:, 0] ([CLS]) -> pooler (dense, tanh) -> cls_head: 2 classes (NSP / SOP)

Everything that distinguishes BERT from GPT-2 is configuration of the shared pieces: post-norm
blocks (`norm_position=post`), exact GELU, learned positions, and the embedding LayerNorm that
post-norm models need because no block normalises their input. The masked-LM head runs on the
masked positions only (about 15%), never on the whole (B, T, vocab) grid, which is where most of
the speed over a straightforward BERT comes from.

Parameter names (the safetensors keys): `tok_emb`, `pos_emb`, `type_emb`, `emb_norm`, `blocks.{i}.*`
as in the decoder, `norm_f` (pre-norm only), `pooler`, `mlm_head.{dense,norm}`, `mlm_bias`,
`lm_head` (tied to `tok_emb` unless `tie_embeddings=false`), `cls_head`.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.models.layers import OutputLayer, make_activation
from lmforge.models.transformer import TransformerStack


class MLMHead(nn.Module):
    """BERT's prediction-head transform: dense -> activation -> LayerNorm, before the vocab projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = make_activation("gelu_tanh" if cfg.activation == "gelu_tanh" else "gelu")
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))


class Encoder(TransformerStack):
    """A bidirectional Transformer encoder with masked-LM and sentence-pair (NSP/SOP) heads."""

    def __init__(self, cfg: ModelConfig):
        if cfg.arch != "encoder":
            raise LmforgeError(f"Encoder built from model.arch={cfg.arch!r}; use model.arch=encoder")
        # Post-norm blocks take their input unnormalised, so BERT normalises the embedding sum;
        # pre-norm blocks normalise their own inputs and instead need a final norm.
        post = cfg.norm_position == "post"
        super().__init__(cfg, causal=False, segments=True, emb_norm=post)
        d = cfg.d_model
        self.pooler = nn.Linear(d, d)
        self.mlm_head = MLMHead(cfg)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.cls_head = nn.Linear(d, 2)  # next-sentence (NSP) or sentence-order (SOP) prediction
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # The GPT-2 depth scaling only makes sense for a pre-norm residual stream.
        self.init_weights(scale_residual=not post)

    # ------------------------------------------------------------ backbone

    def forward(
        self,
        idx: torch.Tensor,
        *,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> final hidden states (B, T, d_model) (zeros at padded positions).

        `attention_mask` (B, T), True/1 for real tokens, masks padding (None: none); the per-token
        layers then skip the padding (see `TransformerStack.run_padded`, which `token_index`, the
        flat indices of the real tokens, spares a device sync).
        """
        x = self.embed(idx, token_type_ids)
        return self.run_padded(x, attention_mask, token_index=token_index, rope=self.rotary(idx.size(1)))

    # ------------------------------------------------------------ heads

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., vocab_size) of hidden states (..., d_model)."""
        return self.output_layer().logits(self.mlm_head(h))

    def mlm_features(self, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The masked-LM head's transform at flat `positions` (N,) of h (B, T, d): (N, d_model), the
        features `output_layer()` projects. Only the masked positions pass through the head."""
        return self.mlm_head(h.flatten(0, 1).index_select(0, positions))

    def output_layer(self) -> OutputLayer:
        """The tied vocabulary projection with its bias, as the masked-LM objectives fuse it with the loss."""
        return OutputLayer(self.lm_head.weight, self.mlm_bias)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """BERT's pooled [CLS] representation: tanh(dense(h[:, 0])), (B, d_model)."""
        return torch.tanh(self.pooler(h[:, 0]))

    def pair_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Sentence-pair logits (B, 2): NSP (0 = B follows A) or SOP (0 = in order)."""
        return self.cls_head(self.pool(h))

    # ------------------------------------------------------------ counts

    def flops_per_token(self, seq_len: int, predicted_fraction: float = 1.0) -> float:
        """Training FLOPs per input token: 6 per weight per token for the backbone, the attention
        term 12*n_layer*d_model*seq_len (as for the decoder), and the masked-LM head (its dense
        transform and the vocab projection) only for the `predicted_fraction` of tokens it runs on.
        """
        cfg = self.config
        head = self.mlm_head.dense.weight.numel() + self.lm_head.weight.numel()
        body = self.num_params(non_embedding=True) - head  # the vocab matrix counts once, in `head`
        return 6.0 * body + 6.0 * head * predicted_fraction + 12.0 * cfg.n_layer * cfg.d_model * seq_len


__all__ = ["Encoder", "MLMHead"]
