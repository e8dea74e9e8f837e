"""The bidirectional encoder (BERT): the decoder's blocks without the causal mask, plus the heads
masked-LM pretraining needs.

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
from lmforge.models.layers import (
    Block,
    OutputLayer,
    RotaryEmbedding,
    check_length,
    init_normal,
    init_transformer,
    make_activation,
    make_norm,
    sinusoidal_table,
)


class MLMHead(nn.Module):
    """BERT's prediction-head transform: dense -> activation -> LayerNorm, before the vocab projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = make_activation("gelu_tanh" if cfg.activation == "gelu_tanh" else "gelu")
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))


class Encoder(nn.Module):
    """A bidirectional Transformer encoder with masked-LM and sentence-pair (NSP/SOP) heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise LmforgeError(
                f"model.vocab_size={cfg.vocab_size}; set it to the tokenizer's vocabulary size "
                "(or build the model through the trainer, which fills it in)"
            )
        if cfg.arch != "encoder":
            raise LmforgeError(f"Encoder built from model.arch={cfg.arch!r}; use model.arch=encoder")
        self.config = cfg
        d = cfg.d_model

        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.rope: RotaryEmbedding | None = None
        if cfg.position == "learned":
            self.pos_emb = nn.Embedding(cfg.max_len, d)
        elif cfg.position == "sinusoidal":
            self.register_buffer("pos_emb", sinusoidal_table(cfg.max_len, d), persistent=False)
        else:
            self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_len, cfg.rope_theta)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, d) if cfg.type_vocab_size > 0 else None
        # Post-norm blocks take their input unnormalised, so BERT normalises the embedding sum;
        # pre-norm blocks normalise their own inputs and instead need a final norm.
        post = cfg.norm_position == "post"
        self.emb_norm = make_norm(cfg) if post else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.norm_f = nn.Identity() if post else make_norm(cfg)

        self.pooler = nn.Linear(d, d)
        self.mlm_head = MLMHead(cfg)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.cls_head = nn.Linear(d, 2)  # next-sentence (NSP) or sentence-order (SOP) prediction
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

        # The GPT-2 depth scaling only makes sense for a pre-norm residual stream.
        init_transformer(self, cfg, scale_residual=not post)

    def _init_weights(self, module: nn.Module) -> None:
        init_normal(module, self.config.init_std)

    # ------------------------------------------------------------ backbone

    def embed(self, idx: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token + position (+ segment) embeddings, normalised for post-norm models: (B, T, d_model)."""
        T = idx.size(1)
        check_length(T, self.config.max_len)
        x = self.tok_emb(idx)
        if self.rope is None:
            table = self.pos_emb.weight if isinstance(self.pos_emb, nn.Embedding) else self.pos_emb
            x = x + table[:T]
        if self.type_emb is not None:
            # No segment ids means "all sentence A", as in BERT: add row 0 without an index lookup.
            x = x + (self.type_emb.weight[0] if token_type_ids is None else self.type_emb(token_type_ids))
        return self.drop(self.emb_norm(x))

    def forward(
        self,
        idx: torch.Tensor,
        *,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> final hidden states (B, T, d_model) (zeros at padded positions).

        `attention_mask` (B, T), True/1 for real tokens and False/0 for padding, keeps every query
        from attending to padding; None means no padding. With padding, everything but the
        attention itself runs on the real tokens only (gathered into (N, d_model)), so a batch
        that is 30% padding costs about 30% less; `token_index`, the flat indices of the real
        tokens, may be passed in precomputed (the data loader knows them) to spare a device sync.
        """
        B, T = idx.shape
        x = self.embed(idx, token_type_ids)
        rope = self.rope(0, T) if self.rope is not None else None
        if attention_mask is None:
            for block in self.blocks:
                x = block(x, rope=rope, causal=False)
            return self.norm_f(x)
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): broadcast over heads and queries
        if token_index is None:
            token_index = attention_mask.reshape(-1).nonzero().squeeze(1)
        unpad = (token_index, B, T)
        x = x.reshape(B * T, -1).index_select(0, token_index)  # (N, d_model): the real tokens
        for block in self.blocks:
            x = block(x, rope=rope, causal=False, attn_mask=mask, unpad=unpad)
        x = self.norm_f(x)
        return x.new_zeros(B * T, x.size(-1)).index_copy(0, token_index, x).view(B, T, -1)

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

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (tied tensors once); non_embedding drops the lookup tables, as the decoder's."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if isinstance(getattr(self, "pos_emb", None), nn.Embedding):
                n -= self.pos_emb.weight.numel()
            if self.type_emb is not None:
                n -= self.type_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.tok_emb.weight.numel()
        return n

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
