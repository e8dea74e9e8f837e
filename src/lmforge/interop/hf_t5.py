"""Import of Hugging Face T5 and mT5 checkpoints (`T5ForConditionalGeneration`) into our `EncoderDecoder`.

T5 is our pre-norm encoder-decoder with five switches set (`lmforge.models.config`):

    position: t5         one relative-position bias table per stack, in its first block's self-attention
    attn_scale: 1        scores are q.k unscaled (T5's initialisation folds 1/sqrt(d_kv) into q)
    norm: rmsnorm        T5LayerNorm: no mean, no bias, statistics in float32, eps layer_norm_epsilon
    bias: false          no bias anywhere
    head_scale           d_model^-0.5 on the decoder's output (T5 1.0; T5 1.1 and mT5 leave it out)

and its feed-forward is `relu` (T5 1.0), `gated-gelu` (T5 1.1, mT5: our `geglu`, with the tanh
GELU) or `gated-silu` (our `swiglu`). The decoder starts from `decoder_start_token_id` (the padding
token, 0), as here.

Tensor names (ours <- transformers'), for the encoder (`layer.1` is its feed-forward) and the
decoder (`layer.1` its cross-attention, `layer.2` its feed-forward):

    encoder.tok_emb / decoder.tok_emb / lm_head     shared, {encoder,decoder}.embed_tokens, lm_head
    encoder.rel_bias.bias                            encoder.block.0.layer.0.SelfAttention.relative_attention_bias
    encoder.blocks.{i}.attn.qkv / .attn.proj         encoder.block.{i}.layer.0.SelfAttention.{q,k,v} stacked / .o
    .norm1, .norm2                                   .layer.0.layer_norm, .layer.{1|2}.layer_norm
    .mlp.fc, .mlp.proj  (relu, gelu)                 .layer.{1|2}.DenseReluDense.wi, .wo
    .mlp.gate, .mlp.up, .mlp.down  (gated)           .layer.{1|2}.DenseReluDense.wi_0, .wi_1, .wo
    decoder.blocks.{i}.cross_attn.q / .kv / .proj    decoder.block.{i}.layer.1.EncDecAttention.q / {k,v} / .o
    decoder.blocks.{i}.norm_cross                    decoder.block.{i}.layer.1.layer_norm
    {encoder,decoder}.norm_f                         {encoder,decoder}.final_layer_norm

UMT5 (a bias table in every layer) and LongT5 (local attention) compute something else and are
refused, naming the model type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.interop.hf_seq2seq import build_imported
from lmforge.models.config import ModelConfig
from lmforge.models.seq2seq import EncoderDecoder

SUPPORTED = ("t5", "mt5")
# T5's feed_forward_proj -> our activation.
_FFN = {"relu": "relu", "gelu": "gelu", "gated-gelu": "geglu", "gated-silu": "swiglu"}


def _config_fields(c: dict[str, Any], where: Path) -> dict[str, Any]:
    """The ModelConfig fields of a T5 config.json (the embeddings' ties follow from the weights)."""
    ffn = c.get("feed_forward_proj", "relu")
    if ffn not in _FFN:
        raise LmforgeError(
            f"{where}: feed_forward_proj={ffn!r} is not supported; lmforge's T5 layout has {', '.join(_FFN)}"
        )
    d_model, heads, d_kv = c["d_model"], c["num_heads"], c["d_kv"]
    if heads * d_kv != d_model:
        raise LmforgeError(
            f"{where}: num_heads={heads} x d_kv={d_kv} = {heads * d_kv} differs from d_model={d_model}; "
            "lmforge's attention splits d_model into its heads"
        )
    layers = c["num_layers"]
    dec_layers = c.get("num_decoder_layers") or layers
    # T5 1.0 scales the decoder's output by d_model^-0.5 and ties the output layer; T5 1.1 does
    # neither, and its configs say so with tie_word_embeddings=false. transformers 5 writes the
    # scaling as scale_decoder_outputs (and always ties); the weights decide the tie here.
    scaled = bool(c.get("scale_decoder_outputs", c.get("tie_word_embeddings", True) is not False))
    return {
        "arch": "encoder-decoder",
        "vocab_size": c["vocab_size"],
        "n_layer": layers,
        "n_dec_layer": None if dec_layers == layers else dec_layers,
        "n_head": heads,
        "d_model": d_model,
        "d_ff": c["d_ff"],
        "max_len": int(c.get("n_positions") or 512),
        "norm": "rmsnorm",
        "norm_position": "pre",
        "norm_eps": float(c.get("layer_norm_epsilon", 1e-6)),
        "position": "t5",
        "relative_buckets": int(c.get("relative_attention_num_buckets", 32)),
        "relative_max_distance": int(c.get("relative_attention_max_distance", 128)),
        "activation": _FFN[ffn],
        "bias": False,
        "attn_scale": 1.0,
        "head_scale": d_model**-0.5 if scaled else 1.0,
        "scale_embeddings": False,
        "dropout": float(c.get("dropout_rate", 0.1) or 0.0),
        "init_std": float(c.get("initializer_factor", 1.0)) * d_model**-0.5,
    }


def _layer_names(cfg: ModelConfig) -> list[tuple[str, str | list[str]]]:
    """(our tensor, transformers' tensor or the tensors its rows stack) of every block and norm."""
    gated = cfg.activation in ("geglu", "swiglu")
    names: list[tuple[str, str | list[str]]] = []
    for side, n_layer in (("encoder", cfg.n_layer), ("decoder", cfg.dec_layers)):
        names.append((f"{side}.norm_f.weight", f"{side}.final_layer_norm.weight"))
        names.append(
            (
                f"{side}.rel_bias.bias.weight",
                f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            )
        )
        for i in range(n_layer):
            ours, hf = f"{side}.blocks.{i}", f"{side}.block.{i}.layer"
            ff = f"{hf}.{2 if side == 'decoder' else 1}"
            names += [
                (f"{ours}.attn.qkv.weight", [f"{hf}.0.SelfAttention.{p}.weight" for p in "qkv"]),
                (f"{ours}.attn.proj.weight", f"{hf}.0.SelfAttention.o.weight"),
                (f"{ours}.norm1.weight", f"{hf}.0.layer_norm.weight"),
                (f"{ours}.norm2.weight", f"{ff}.layer_norm.weight"),
            ]
            if gated:
                names += [(f"{ours}.mlp.{a}.weight", f"{ff}.DenseReluDense.{b}.weight")
                          for a, b in (("gate", "wi_0"), ("up", "wi_1"), ("down", "wo"))]  # fmt: skip
            else:
                names += [(f"{ours}.mlp.{a}.weight", f"{ff}.DenseReluDense.{b}.weight")
                          for a, b in (("fc", "wi"), ("proj", "wo"))]  # fmt: skip
            if side == "decoder":
                names += [
                    (f"{ours}.cross_attn.q.weight", f"{hf}.1.EncDecAttention.q.weight"),
                    (f"{ours}.cross_attn.kv.weight", [f"{hf}.1.EncDecAttention.{p}.weight" for p in "kv"]),
                    (f"{ours}.cross_attn.proj.weight", f"{hf}.1.EncDecAttention.o.weight"),
                    (f"{ours}.norm_cross.weight", f"{hf}.1.layer_norm.weight"),
                ]
    return names


def from_t5(
    hf: dict[str, torch.Tensor], fields: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """T5 tensors -> (our tensors, the ModelConfig fields they decide, tensors left unused).
    A KeyError names a tensor the checkpoint lacks."""
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return hf[name]

    cfg = ModelConfig(**fields)
    sd: dict[str, torch.Tensor] = {}
    for ours, theirs in _layer_names(cfg):
        sd[ours] = take(theirs) if isinstance(theirs, str) else torch.cat([take(n) for n in theirs])
    found = {n: take(n) for n in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                  "lm_head.weight") if n in hf}  # fmt: skip
    shared = next((found[n] for n in ("shared.weight", "encoder.embed_tokens.weight") if n in found), None)
    if shared is None:
        raise KeyError("shared.weight")
    enc = found.get("encoder.embed_tokens.weight", shared)
    dec = found.get("decoder.embed_tokens.weight", shared)
    head = found.get("lm_head.weight", dec)  # a checkpoint without one ties it to the embedding
    share, tie = torch.equal(enc, dec), torch.equal(head, dec)
    sd["encoder.tok_emb.weight"] = enc
    if not share:
        sd["decoder.tok_emb.weight"] = dec
    if not tie:
        sd["lm_head.weight"] = head
    unused = sorted(k for k in hf if k not in used)
    return sd, {"share_embeddings": share, "tie_embeddings": tie}, unused


def import_t5(d: Path, c: dict[str, Any]) -> tuple[EncoderDecoder, Any]:
    """(our EncoderDecoder, our tokenizer) of a T5 or mT5 checkpoint directory whose config.json is
    `c`; in float32 and eval mode, as `from_pretrained` returns it."""
    where = d / "config.json"
    model_type = str(c.get("model_type"))
    if model_type not in SUPPORTED:
        raise LmforgeError(
            f"{where}: model_type={model_type!r} is not supported: lmforge imports T5 and mT5 (one relative "
            "position table per stack, full attention); UMT5 has a table in every layer and LongT5 local "
            "attention"
        )
    try:
        fields = _config_fields(c, where)
        ModelConfig(**fields)  # sizes checked before the weights are read
    except KeyError as e:
        raise LmforgeError(
            f"{where}: no {e.args[0]!r} entry, which a {model_type} config needs; the file is incomplete"
        ) from None
    except ValueError as e:
        raise LmforgeError(f"{where}: {e}") from None
    return build_imported(d, model_type, fields, lambda hf: from_t5(hf, fields))


__all__ = ["SUPPORTED", "from_t5", "import_t5"]
