"""Hugging Face interop for encoders: our `Encoder` <-> `BertForPreTraining` / `BertForMaskedLM`.

BERT is our encoder with `norm_position=post`, LayerNorm, learned positions, segment embeddings
and biases, so the mapping is one tensor table used in both directions; the only reshaping is our
fused qkv matrix, which is BERT's query, key and value stacked. Runs trained with a sentence-pair
objective (NSP or SOP) export as `BertForPreTraining`, whose `cls.seq_relationship` is our
`cls_head`; masked-LM-only runs export as `BertForMaskedLM` (no pooler, no pair head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig

_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
_ACT_IN = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def check_exportable(cfg: ModelConfig) -> None:
    """Raise an error naming the first config field that BERT's layout cannot express."""
    wants = {
        "norm_position": "post",
        "norm": "layernorm",
        "position": "learned",
        "bias": True,
    }
    for key, value in wants.items():
        if getattr(cfg, key) != value:
            raise LmforgeError(
                f"model.{key}={getattr(cfg, key)!r} cannot be exported as BERT, which needs {key}={value!r}"
            )
    if cfg.activation not in _ACT:
        raise LmforgeError(f"model.activation={cfg.activation!r} cannot be exported as BERT; use gelu")
    if cfg.kv_heads != cfg.n_head:
        raise LmforgeError(
            f"model.n_kv_head={cfg.n_kv_head} cannot be exported as BERT (no grouped-query attention)"
        )
    if cfg.type_vocab_size < 1:
        raise LmforgeError("model.type_vocab_size=0 cannot be exported as BERT, which has segment embeddings")


def bert_names(cfg: ModelConfig, *, pair_head: bool) -> list[tuple[str, str]]:
    """(our name, BertForPreTraining's name) for every tensor except the split qkv (see below)."""
    names = [
        ("tok_emb.weight", "bert.embeddings.word_embeddings.weight"),
        ("pos_emb.weight", "bert.embeddings.position_embeddings.weight"),
        ("type_emb.weight", "bert.embeddings.token_type_embeddings.weight"),
        ("emb_norm.weight", "bert.embeddings.LayerNorm.weight"),
        ("emb_norm.bias", "bert.embeddings.LayerNorm.bias"),
        ("mlm_head.dense.weight", "cls.predictions.transform.dense.weight"),
        ("mlm_head.dense.bias", "cls.predictions.transform.dense.bias"),
        ("mlm_head.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
        ("mlm_head.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
        ("mlm_bias", "cls.predictions.bias"),
    ]
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"bert.encoder.layer.{i}."
        for a, b in (("attn.proj", "attention.output.dense"), ("norm1", "attention.output.LayerNorm"),
                     ("mlp.fc", "intermediate.dense"), ("mlp.proj", "output.dense"), ("norm2", "output.LayerNorm")):  # fmt: skip
            names += [(f"{ours}{a}.weight", f"{hf}{b}.weight"), (f"{ours}{a}.bias", f"{hf}{b}.bias")]
    if not cfg.tie_embeddings:
        names.append(("lm_head.weight", "cls.predictions.decoder.weight"))
    if pair_head:
        names += [
            ("pooler.weight", "bert.pooler.dense.weight"),
            ("pooler.bias", "bert.pooler.dense.bias"),
            ("cls_head.weight", "cls.seq_relationship.weight"),
            ("cls_head.bias", "cls.seq_relationship.bias"),
        ]
    return names


def to_bert(sd: dict[str, torch.Tensor], cfg: ModelConfig, *, pair_head: bool) -> dict[str, torch.Tensor]:
    """Our tensors -> BertForPreTraining's (or BertForMaskedLM's without `pair_head`)."""
    out = {hf: sd[ours] for ours, hf in bert_names(cfg, pair_head=pair_head)}
    # transformers ties the decoder's bias to `cls.predictions.bias` only together with the
    # embeddings; written out explicitly, an untied checkpoint loads with the right bias too.
    out["cls.predictions.decoder.bias"] = sd["mlm_bias"].clone()
    d = cfg.d_model
    for i in range(cfg.n_layer):
        hf = f"bert.encoder.layer.{i}.attention.self."
        for suffix in ("weight", "bias"):
            for name, part in zip(
                ("query", "key", "value"), sd[f"blocks.{i}.attn.qkv.{suffix}"].split(d, dim=0)
            ):
                out[f"{hf}{name}.{suffix}"] = part
    return out


def from_bert(
    hf: dict[str, torch.Tensor], cfg: ModelConfig, fresh: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """BERT checkpoint tensors -> ours. Keys may lack the `bert.` prefix (a bare BertModel).

    Heads the checkpoint does not have (a BertModel has no MLM head; a BertForMaskedLM no pooler
    or pair head) keep the freshly initialised tensors of `fresh`, to be trained by fine-tuning.
    """
    hf = {k if k.startswith(("bert.", "cls.")) else f"bert.{k}": v for k, v in hf.items()}
    sd = dict(fresh)
    for ours, name in bert_names(cfg, pair_head=True):
        if name in hf:
            sd[ours] = hf[name]
        elif not name.startswith(("cls.", "bert.pooler.")):
            raise KeyError(name)
    if not cfg.tie_embeddings and "cls.predictions.decoder.weight" not in hf:
        sd["lm_head.weight"] = hf["bert.embeddings.word_embeddings.weight"]
    for i in range(cfg.n_layer):
        p = f"bert.encoder.layer.{i}.attention.self."
        for suffix in ("weight", "bias"):
            sd[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat(
                [hf[f"{p}{n}.{suffix}"] for n in ("query", "key", "value")]
            )
    return sd


def bert_config(cfg: ModelConfig, *, pair_head: bool) -> dict[str, Any]:
    """config.json for transformers' BERT."""
    return {
        "architectures": ["BertForPreTraining" if pair_head else "BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.ff_dim,
        "hidden_act": _ACT[cfg.activation],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.init_std,
        "layer_norm_eps": cfg.norm_eps,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": False,
    }


def bert_model_config(c: dict[str, Any], where: Path) -> ModelConfig:
    """Our ModelConfig of a BERT config.json (model_type bert)."""
    act = c.get("hidden_act", "gelu")
    if act not in _ACT_IN:
        raise LmforgeError(
            f"{where}: hidden_act={act!r} is not supported; lmforge's BERT layout has gelu, gelu_new, relu"
        )
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise LmforgeError(
            f"{where}: position_embedding_type={c['position_embedding_type']!r} is not supported; "
            "lmforge imports BERT with absolute positions"
        )
    if c.get("is_decoder") or c.get("add_cross_attention"):
        raise LmforgeError(f"{where}: decoder/cross-attention BERT variants are not supported")
    return ModelConfig(
        arch="encoder",
        vocab_size=c["vocab_size"],
        n_layer=c["num_hidden_layers"],
        n_head=c["num_attention_heads"],
        d_model=c["hidden_size"],
        d_ff=c.get("intermediate_size"),
        max_len=c.get("max_position_embeddings", 512),
        norm="layernorm",
        norm_position="post",
        norm_eps=c.get("layer_norm_eps", 1e-12),
        position="learned",
        activation=_ACT_IN[act],
        bias=True,
        tie_embeddings=c.get("tie_word_embeddings", True),
        type_vocab_size=c.get("type_vocab_size", 2),
        dropout=c.get("hidden_dropout_prob", 0.1),
        init_std=c.get("initializer_range", 0.02),
    )


__all__ = ["bert_config", "bert_model_config", "bert_names", "check_exportable", "from_bert", "to_bert"]
