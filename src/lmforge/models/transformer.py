"""The Transformer stack, and the causal language model (GPT) built from it.

`TransformerStack` is everything a Transformer is made of, written once: token and position
embeddings (learned, sinusoidal or rotary), optional segment embeddings, the embedding norm that
post-norm encoders need, the blocks (with cross-attention for an encoder-decoder's decoder), the
final norm, the vocabulary check, the initialisation and the parameter count. `Transformer` (a
causal decoder with an LM head) and `lmforge.models.encoder.Encoder` (bidirectional, with BERT's
heads) are configurations of it plus their heads.

With the default config the decoder is GPT-2; switch `norm`, `position` and `activation` and it
is a Llama. Parameter names are the safetensors keys of our checkpoints, so they are kept short and
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
    RelativePositionBias,
    Rope,
    RotaryEmbedding,
    Unpad,
    check_length,
    init_normal,
    init_transformer,
    make_norm,
    sinusoidal_table,
    with_position_bias,
)


class TransformerStack(nn.Module):
    """Embeddings -> Blocks -> final norm, shared by every Transformer architecture.

    `causal` hides later positions (decoders); `segments` adds segment (token type) embeddings of
    `cfg.type_vocab_size` rows; `emb_norm` normalises the embedding sum (post-norm blocks take their
    input unnormalised, so BERT does); `cross` gives every block a cross-attention over a memory.
    Subclasses add their heads and then call `init_weights`, so that modules are created, and
    the seeded initialisation draws, in the order that the checkpoints' weights were made in.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        causal: bool,
        segments: bool = False,
        emb_norm: bool = False,
        cross: bool = False,
    ):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise LmforgeError(
                f"model.vocab_size={cfg.vocab_size}; set it to the tokenizer's vocabulary size "
                "(or build the model through the trainer, which fills it in)"
            )
        self.config, self.causal = cfg, causal
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.rope: RotaryEmbedding | None = None
        self.rel_bias: RelativePositionBias | None = None
        if cfg.position == "learned":
            self.pos_emb = nn.Embedding(cfg.max_len, d)
        elif cfg.position in ("sinusoidal", "sinusoidal_halves"):
            table = sinusoidal_table(cfg.max_len, d, halves=cfg.position == "sinusoidal_halves")
            self.register_buffer("pos_emb", table, persistent=False)
        elif cfg.position == "rope":
            self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_len, cfg.rope_theta)
        else:  # t5: positions enter as a bias on the self-attention scores only
            self.rel_bias = RelativePositionBias(cfg, bidirectional=not causal)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, d) if segments and cfg.type_vocab_size > 0 else None
        self.emb_norm = make_norm(cfg) if emb_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList([Block(cfg, i, cross=cross) for i in range(cfg.n_layer)])
        # Pre-norm leaves the residual stream unnormalised, so it needs one last norm; post-norm
        # blocks already end in one.
        self.norm_f = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()

    def init_weights(self, *, scale_residual: bool = True) -> None:
        """GPT-2/BERT initialisation of every module, heads included, and with `scale_residual`
        GPT-2's 1/sqrt(2*n_layer) on the projections into the residual stream."""
        init_transformer(self, self.config, scale_residual=scale_residual)

    def _init_weights(self, module: nn.Module) -> None:
        init_normal(module, self.config.init_std)

    def embed(
        self,
        idx: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        *,
        start: int = 0,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token + position (+ segment) embeddings of idx (B, T), normalised with `emb_norm`: (B, T, d).

        Positions are start..start+T-1, or per row `positions` (B, T) (left-padded batches).
        """
        T = idx.size(1)
        check_length(start + T, self.config.max_len)
        x = self.tok_emb(idx)  # (B, T, d_model)
        if self.config.scale_embeddings:
            x = x * self.config.d_model**0.5
        if self.rope is None and self.rel_bias is None:
            # Both position tables are (max_len, d_model); slicing skips an index lookup.
            table = self.pos_emb.weight if isinstance(self.pos_emb, nn.Embedding) else self.pos_emb
            x = x + (table[start : start + T] if positions is None else table[positions])
        if self.type_emb is not None:
            # No segment ids means "all sentence A", as in BERT: add row 0 without an index lookup.
            x = x + (self.type_emb.weight[0] if token_type_ids is None else self.type_emb(token_type_ids))
        return self.drop(self.emb_norm(x))

    def rotary(self, T: int, start: int = 0, positions: torch.Tensor | None = None) -> Rope | None:
        """RoPE cos/sin for positions start..start+T-1, (T, head_dim), or per row `positions` (B, T):
        (B, 1, T, head_dim), which broadcasts over the heads. None without rotary positions."""
        if self.rope is None:
            return None
        if positions is None:
            return self.rope(start, T)
        return self.rope.cos[positions][:, None], self.rope.sin[positions][:, None]

    def run_blocks(
        self,
        x: torch.Tensor,
        *,
        rope: Rope | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        unpad: Unpad | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeddings x (B, T, d) (or (N, d) with `unpad`) through every block and the final norm.

        With T5 positions the stack's relative bias for these queries (after the cached positions)
        is computed once and folded with `attn_mask` and the causal triangle into one float mask
        that every block's self-attention adds to its scores.
        """
        causal = self.causal
        if self.rel_bias is not None:
            T = unpad[2] if unpad is not None else x.size(1)
            start = cache.length if cache is not None else 0
            bias = self.rel_bias(start, T, start + T).to(x.dtype)
            attn_mask, causal = with_position_bias(bias, attn_mask, causal=causal), False
        for block in self.blocks:
            x = block(
                x, rope=rope, causal=causal, attn_mask=attn_mask, cache=cache, unpad=unpad,
                memory=memory, memory_mask=memory_mask,
            )  # fmt: skip
        return self.norm_f(x)

    def run_padded(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        token_index: torch.Tensor | None = None,
        rope: Rope | None = None,
    ) -> torch.Tensor:
        """Bidirectional blocks over a padded batch x (B, T, d): (B, T, d), zeros at padding.

        `attention_mask` (B, T), True/1 for real tokens, keeps every query from attending to
        padding; None means no padding. With padding, everything but the attention itself runs
        on the real tokens only (gathered into (N, d_model)), so a batch that is 30% padding costs
        about 30% less; `token_index`, the flat indices of the real tokens, may be passed in
        precomputed (the data loader knows them) to spare a device sync.
        """
        if attention_mask is None:
            return self.run_blocks(x, rope=rope)
        B, T = attention_mask.shape
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): broadcast over heads and queries
        if token_index is None:
            token_index = attention_mask.reshape(-1).nonzero().squeeze(1)
        x = x.reshape(B * T, -1).index_select(0, token_index)  # (N, d_model): the real tokens
        x = self.run_blocks(x, rope=rope, attn_mask=mask, unpad=(token_index, B, T))
        return x.new_zeros(B * T, x.size(-1)).index_copy(0, token_index, x).view(B, T, -1)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied embedding counted once).

        non_embedding=True leaves out the lookup tables, i.e. counts the weights that do
        multiply-adds for every token: position and segment embeddings are dropped, and so is the
        token embedding unless it is tied to the LM head (then it is the head's matrix). This is
        the N of scaling laws and of `flops_per_token`.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if isinstance(getattr(self, "pos_emb", None), nn.Embedding):
                n -= self.pos_emb.weight.numel()
            if getattr(self, "rel_bias", None) is not None:  # T5's table: a lookup, no multiply-adds
                n -= sum(p.numel() for p in self.rel_bias.parameters())
            if self.type_emb is not None:
                n -= self.type_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.tok_emb.weight.numel()
        return n


class Transformer(TransformerStack):
    """A decoder-only (GPT) language model: token ids (B, T) -> next-token logits (B, T, vocab)."""

    def __init__(self, cfg: ModelConfig):
        if cfg.arch != "decoder":
            raise LmforgeError(
                f"Transformer is the causal decoder, not model.arch={cfg.arch!r}; build other architectures "
                "with lmforge.models.build_model"
            )
        super().__init__(cfg, causal=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    def forward(
        self,
        idx: torch.Tensor,
        *,
        cache: KVCache | None = None,
        features: bool = False,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab_size).

        With a `cache`, idx holds the positions after the cached ones (a prompt, then one token
        per step); their keys/values are appended and `cache.length` advances by T.

        Batches of left-padded prompts pass `attention_mask` (B, cache.length + T), True for real
        tokens, over the cached and the new positions alike, and `positions` (B, T), each row's own
        positions (counted from its first real token). A padded query sees only itself, so nothing
        turns into NaN; real queries never see padding.

        Packed rows (several documents or conversations one after another, no cache) pass
        `segments` (B, T), the index of the document each token belongs to: a token attends only
        to the earlier tokens of its own document, so packing changes no document's logits when
        `positions` restart at each document too.

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
        x = self.embed(idx, start=start, positions=positions)
        mask = None if attention_mask is None else _key_mask(attention_mask, T)
        if segments is not None:
            if cache is not None or mask is not None:
                raise LmforgeError(
                    "packed segments are for training and scoring: pass no cache or attention_mask"
                )
            mask = (segments[:, :, None] == segments[:, None, :])[:, None]  # (B, 1, T, T); causal below
        x = self.run_blocks(x, rope=self.rotary(T, start, positions), attn_mask=mask, cache=cache)
        if cache is not None:
            cache.length += T
        if features:
            return x
        return self.lm_head(x)  # (B, T, vocab_size)

    def resize_vocab(self, vocab_size: int) -> None:
        """Grow the token embedding (and an untied LM head) to `vocab_size` rows, for tokens added
        to the tokenizer (a chat template's): the new rows start at the mean of the old ones, so a
        new token begins as an average word rather than as noise (Hewitt's recipe)."""
        import dataclasses

        old = self.config.vocab_size
        if vocab_size <= old:
            return
        weight = self.tok_emb.weight
        grown = nn.Embedding(vocab_size, weight.size(1), device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            grown.weight[:old] = weight
            grown.weight[old:] = weight.mean(0)
        self.tok_emb = grown
        if self.config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        else:
            head = nn.Linear(weight.size(1), vocab_size, bias=False, device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                head.weight[:old] = self.lm_head.weight
                head.weight[old:] = self.lm_head.weight.mean(0)
            self.lm_head = head
        self.config = dataclasses.replace(self.config, vocab_size=vocab_size)

    def output_layer(self) -> OutputLayer:
        """The LM head as the objectives' fused loss takes it (no bias)."""
        return OutputLayer(self.lm_head.weight, None)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> the final hidden states (B, T, d_model) that the LM head reads.

        Task heads (classification, tagging, QA) start from these. The attention is causal, so
        right padding changes nothing at real positions: position t sees tokens 0..t only.
        """
        return self.run_blocks(self.embed(idx), rope=self.rotary(idx.size(1)))

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
        return decoder_cache(
            self.config, self.config.n_layer, self.lm_head.weight, batch_size, max_len, device, dtype
        )


def decoder_cache(
    cfg: ModelConfig,
    n_layer: int,
    ref: torch.Tensor,
    batch_size: int,
    max_len: int | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> KVCache:
    """An empty KV cache for `n_layer` decoder blocks of `cfg`: `batch_size` rows of up to `max_len`
    (default cfg.max_len) positions, on `ref`'s device and in its dtype unless told otherwise."""
    max_len = max_len or cfg.max_len
    check_length(max_len, cfg.max_len)
    return KVCache(
        n_layer,
        batch_size,
        cfg.kv_heads,
        max_len,
        cfg.head_dim,
        device=device if device is not None else ref.device,
        dtype=dtype if dtype is not None else ref.dtype,
    )


def _key_mask(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """(B, S) real-token mask over all key positions -> (B, 1, T, S) for the last T queries.

    Each query may also see its own key, so that a padded query (left padding) attends to
    something: a row of nothing but -inf would be NaN and spread through the padded keys' values.
    """
    keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    S = keys.size(-1)
    own = torch.arange(S, device=keys.device)[None, :] == torch.arange(S - T, S, device=keys.device)[:, None]
    return keys | own  # (B, 1, T, S)
