"""The Transformer language model: embeddings, a stack of Blocks, a final norm, an LM head.

With the default config this is GPT-2; switch `norm`, `position` and `activation` and it is a
Llama. Parameter names are the safetensors keys of our checkpoints, so they are kept short and
stable: `tok_emb.weight`, `pos_emb.weight`, `blocks.{i}.attn.qkv.weight`, `blocks.{i}.mlp.fc.weight`,
`norm_f.weight`, `lm_head.weight`, ...
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.models.layers import (
    Block,
    KVCache,
    OutputLayer,
    RotaryEmbedding,
    check_length,
    init_normal,
    init_transformer,
    make_norm,
    sinusoidal_table,
)


class Transformer(nn.Module):
    """A decoder-only (GPT) language model: token ids (B, T) -> next-token logits (B, T, vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise LmforgeError(
                f"model.vocab_size={cfg.vocab_size}; set it to the tokenizer's vocabulary size "
                "(or build the model through the trainer, which fills it in)"
            )
        if cfg.arch != "decoder":
            raise LmforgeError(f"model.arch={cfg.arch!r} is not available yet; use model.arch=decoder")
        self.config = cfg

        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope: RotaryEmbedding | None = None
        if cfg.position == "learned":
            self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        elif cfg.position == "sinusoidal":
            self.register_buffer("pos_emb", sinusoidal_table(cfg.max_len, cfg.d_model), persistent=False)
        else:
            self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_len, cfg.rope_theta)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        # Pre-norm leaves the residual stream unnormalised, so it needs one last norm; post-norm
        # blocks already end in one.
        self.norm_f = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

        init_transformer(self, cfg)

    def _init_weights(self, module: nn.Module) -> None:
        init_normal(module, self.config.init_std)

    def forward(
        self, idx: torch.Tensor, *, cache: KVCache | None = None, features: bool = False
    ) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab_size).

        With a `cache`, idx holds the positions after the cached ones (a prompt, then one token
        per step); their keys/values are appended and `cache.length` advances by T.

        With `features`, returns instead the final hidden states (B, T, d_model) that the LM head
        reads: objectives fuse `output_layer()` with the loss on those (`clm_loss`), which never
        holds the (B, T, vocab_size) logits. The call still goes through `forward`, so DDP and
        torch.compile wrappers see it.
        """
        T = idx.size(1)
        start = cache.length if cache is not None else 0
        check_length(start + T, self.config.max_len)
        if cache is not None and start + T > cache.max_len:
            raise LmforgeError(
                f"KV cache holds {cache.max_len} positions but {start + T} are needed; "
                "create it with a larger max_len (model.new_cache) or reset it"
            )

        x = self._trunk(idx, start, cache)
        if cache is not None:
            cache.length += T
        if features:
            return x
        return self.lm_head(x)  # (B, T, vocab_size)

    def output_layer(self) -> OutputLayer:
        """The LM head as the objectives' fused loss takes it (no bias)."""
        return OutputLayer(self.lm_head.weight, None)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> the final hidden states (B, T, d_model) that the LM head reads.

        Task heads (classification, tagging, QA) start from these. The attention is causal, so
        right padding changes nothing at real positions: position t sees tokens 0..t only.
        """
        check_length(idx.size(1), self.config.max_len)
        return self._trunk(idx, 0, None)

    def _trunk(self, idx: torch.Tensor, start: int, cache: KVCache | None) -> torch.Tensor:
        T = idx.size(1)
        x = self.tok_emb(idx)  # (B, T, d_model)
        rope = None
        if self.rope is not None:
            rope = self.rope(start, T)
        else:
            # Both position tables are (max_len, d_model); slicing skips an index lookup.
            table = self.pos_emb.weight if isinstance(self.pos_emb, nn.Embedding) else self.pos_emb
            x = x + table[start : start + T]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope=rope, causal=True, cache=cache)
        return self.norm_f(x)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied embedding counted once).

        non_embedding=True leaves out the lookup tables, i.e. counts the weights that do
        multiply-adds for every token: position embeddings are dropped, and so is the token
        embedding unless it is tied to the LM head (then it is the head's matrix). This is the
        N of scaling laws and of `flops_per_token`.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if isinstance(getattr(self, "pos_emb", None), nn.Embedding):
                n -= self.pos_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6*N + 12*n_layer*d_model*seq_len.

        N = num_params(non_embedding=True). Each weight costs 2 FLOPs (multiply + add) per token in
        the forward pass and 4 in the backward (gradients w.r.t. input and weight): 6N. Attention
        scores (QK^T) and the weighted sum (AV) add 2*2*seq_len*d_model per layer forward, times 3
        for forward + backward: 12*n_layer*d_model*seq_len. From PaLM (appendix B), as in nanoGPT's
        estimate_mfu; it ignores norms, softmax and the causal mask's skipped half.
        """
        cfg = self.config
        return 6.0 * self.num_params(non_embedding=True) + 12.0 * cfg.n_layer * cfg.d_model * seq_len

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` (default model.max_len)
        positions, on the model's device and in its dtype unless told otherwise."""
        cfg = self.config
        max_len = max_len or cfg.max_len
        check_length(max_len, cfg.max_len)
        ref = self.lm_head.weight
        return KVCache(
            cfg.n_layer,
            batch_size,
            cfg.kv_heads,
            max_len,
            cfg.head_dim,
            device=device if device is not None else ref.device,
            dtype=dtype if dtype is not None else ref.dtype,
        )


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg.arch` names (randomly initialised, on the CPU, in float32): a `Transformer`
    decoder, an `Encoder`, or one of the classic baselines (`lmforge.models.rnn`)."""
    if cfg.arch == "encoder":
        from lmforge.models.encoder import Encoder

        return Encoder(cfg)
    if cfg.arch in ("lstm", "gru", "nnlm"):
        from lmforge.models.rnn import build_baseline

        return build_baseline(cfg)
    return Transformer(cfg)
