"""The encoder-decoder Transformer ("Attention Is All You Need"): translation, summarisation, T5/BART.

    source ids -> encoder: TransformerStack(causal=False)          -> memory (B, S, d_model)
    target ids -> decoder: TransformerStack(causal=True, cross=True) over the memory
               -> lm_head -> next-token logits (B, T, vocab)

Both halves are the stack GPT and BERT are made of; the decoder's blocks add a cross-attention
sublayer over the encoder's output. Pre-norm stacks end in their own final norm; post-norm ones
(the paper's) normalise the embedding sum instead, as BERT does, so either choice trains
(`emb_norm` overrides that embedding norm either way, for Marian's and mBART's layouts). The
decoder's self-attention keys and values go to a `KVCache` one step at a time, and the memory's
cross-attention keys and values are computed once per source and kept in the same cache.

With `share_embeddings` the encoder and the decoder read one token embedding (a joint source and
target vocabulary); with `tie_embeddings` the output projection is the decoder's embedding: both
together are the paper's three-way tie. Two vocabularies (a source and a target tokenizer) give the
encoder `src_vocab_size` embedding rows and the decoder and output layer `vocab_size`.

Parameter names (the safetensors keys): `encoder.tok_emb`, `encoder.pos_emb` (learned positions),
`encoder.blocks.{i}.*`, `encoder.norm_f`/`encoder.emb_norm`, `decoder.*` alike with
`decoder.blocks.{i}.cross_attn.{q,kv,proj}` and `decoder.blocks.{i}.norm_cross`, `lm_head` (with
`lm_head.bias` under `head_bias`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.models.heads import IGNORE
from lmforge.models.layers import KVCache, OutputLayer, init_transformer
from lmforge.models.transformer import TransformerStack, decoder_cache


class EncoderDecoder(nn.Module):
    """Source ids (B, S) and target ids (B, T) -> next-token logits of the target (B, T, vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch != "encoder-decoder":
            raise LmforgeError(
                f"EncoderDecoder built from model.arch={cfg.arch!r}; use model.arch=encoder-decoder"
            )
        self.config = cfg
        post = cfg.norm_position == "post"
        emb_norm = post if cfg.emb_norm is None else cfg.emb_norm
        enc_cfg = dataclasses.replace(cfg, vocab_size=cfg.source_vocab)
        self.encoder = TransformerStack(enc_cfg, causal=False, emb_norm=emb_norm)
        dec_cfg = dataclasses.replace(cfg, n_layer=cfg.dec_layers)
        self.decoder = TransformerStack(dec_cfg, causal=True, cross=True, emb_norm=emb_norm)
        if cfg.share_embeddings:
            self.decoder.tok_emb = self.encoder.tok_emb
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.decoder.tok_emb.weight
        # GPT-2's 1/sqrt(2 * layers) residual scaling is for a pre-norm residual stream, with the
        # depth of the deeper half.
        init_transformer(
            self, dataclasses.replace(cfg, n_layer=max(cfg.n_layer, cfg.dec_layers)), scale_residual=not post
        )

    # ------------------------------------------------------------ the two halves

    def encode(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        *,
        token_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Source ids (B, S) -> the memory (B, S, d_model) the decoder attends over.

        `src_mask` (B, S), True for real tokens, masks padding (None: no padding); the per-token
        layers skip it (`TransformerStack.run_padded`, which `token_index` spares a sync).
        """
        enc = self.encoder
        x = enc.embed(src)
        return enc.run_padded(x, src_mask, token_index=token_index, rope=enc.rotary(src.size(1)))

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor | None,
        src_mask: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Target ids (B, T) over the memory -> the decoder's final hidden states (B, T, d_model),
        times `head_scale`, as the output layer reads them.

        With a `cache`, tgt holds the positions after the cached ones (the decoder's start token,
        then one token per step) and their keys/values are appended; the memory's cross keys and
        values are computed at the first call and reused, so later calls may pass memory=None.
        Targets are never left-padded (every row starts with the start token), so the decoder
        needs no padding mask of its own: right padding is hidden by the causal mask.
        """
        dec = self.decoder
        T = tgt.size(1)
        start = cache.length if cache is not None else 0
        if cache is not None and start + T > cache.max_len:
            raise LmforgeError(
                f"KV cache holds {cache.max_len} positions but {start + T} are needed; "
                "create it with a larger max_len (model.new_cache)"
            )
        x = dec.embed(tgt, start=start)
        x = dec.run_blocks(
            x, rope=dec.rotary(T, start), cache=cache, memory=memory, memory_mask=src_mask
        )  # fmt: skip
        if cache is not None:
            cache.length += T
        return x if self.config.head_scale == 1.0 else x * self.config.head_scale

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        *,
        src_mask: torch.Tensor | None = None,
        token_index: torch.Tensor | None = None,
        features: bool = False,
    ) -> torch.Tensor:
        """Teacher forcing: source ids (B, S) and decoder inputs (B, T) -> logits (B, T, vocab).

        With `features`, the decoder's final hidden states (B, T, d_model) instead, which the
        objectives fuse with `output_layer()` into the loss without holding the logits.
        """
        h = self.decode(tgt, self.encode(src, src_mask, token_index=token_index), src_mask)
        return h if features else self.lm_head(h)

    def output_layer(self) -> OutputLayer:
        """The vocabulary projection as the objectives' fused loss takes it (biased with `head_bias`)."""
        return OutputLayer(self.lm_head.weight, self.lm_head.bias)

    # ------------------------------------------------------------ decoding

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty decoder cache for `batch_size` targets of up to `max_len` positions (default
        model.max_len); its cross entries are filled from the memory at the first decode call."""
        return decoder_cache(
            self.config, self.config.dec_layers, self.lm_head.weight, batch_size, max_len, device, dtype
        )

    # ------------------------------------------------------------ counts

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, shared ones counted once; `non_embedding` leaves out the lookup tables
        (position tables and the token embeddings that are not also the output projection)."""
        n = sum(p.numel() for p in self.parameters())
        if not non_embedding:
            return n
        for stack in (self.encoder, self.decoder):
            if isinstance(getattr(stack, "pos_emb", None), nn.Embedding):
                n -= stack.pos_emb.weight.numel()
            if getattr(stack, "rel_bias", None) is not None:  # T5's relative-position table
                n -= sum(p.numel() for p in stack.rel_bias.parameters())
        embeddings = {id(self.encoder.tok_emb.weight): self.encoder.tok_emb.weight}
        embeddings[id(self.decoder.tok_emb.weight)] = self.decoder.tok_emb.weight
        embeddings.pop(id(self.lm_head.weight), None)  # the output projection does multiply-adds
        return n - sum(w.numel() for w in embeddings.values())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per position of a batch that holds a source and a target token there (the
        token-budget batches count max(source, target) positions per pair): 6 per weight, since
        the source token passes the encoder and the target token the decoder and the head, plus
        the attention term of `Transformer.flops_per_token` for each attention (a decoder block
        has two). An upper bound where one side is shorter."""
        cfg = self.config
        attentions = cfg.n_layer + 2 * cfg.dec_layers
        return 6.0 * self.num_params(non_embedding=True) + 12.0 * attentions * cfg.d_model * seq_len


# ----------------------------------------------------------------------------------------------
# Framing: what the decoder reads, shared by fine-tuning (tasks.seq2seq) and pretraining (span, denoise)


@dataclass(frozen=True)
class Seq2SeqTokens:
    """The special ids an encoder-decoder's inputs and outputs are framed with."""

    start: int  # the decoder's first input
    eos: int  # ends every source and target
    pad: int  # pads sources in a batch


def seq2seq_tokens(tokenizer: Any, start: int = -1) -> Seq2SeqTokens:
    """The framing ids of `tokenizer` (the decoder's `start` when one is given, >= 0); a tokenizer
    without an end-of-text token cannot end a target."""
    eos = tokenizer.eos_id
    if eos is None:
        raise LmforgeError(
            "the tokenizer has no end-of-text token, which ends every source and target of a seq2seq "
            "model; train one with lmforge tokenizer train (its kinds all have <|endoftext|>)"
        )
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos
    return Seq2SeqTokens(start=pad if start < 0 else start, eos=eos, pad=pad)


def shift_right(targets: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """Teacher forcing's decoder inputs: the targets (B, T) one position later, behind `start`,
    with the ignored positions (padding) read as `pad`."""
    inputs = targets.new_full(targets.shape, pad)
    inputs[:, 0] = start
    inputs[:, 1:] = targets[:, :-1].masked_fill(targets[:, :-1] == IGNORE, pad)
    return inputs


__all__ = ["EncoderDecoder", "Seq2SeqTokens", "seq2seq_tokens", "shift_right"]
