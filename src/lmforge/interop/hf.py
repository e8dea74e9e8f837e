"""Hugging Face interop: export our models as GPT-2 / Llama / BERT checkpoints, import theirs.

The layouts map onto ours tensor for tensor:

* GPT-2 (pre-norm LayerNorm, learned positions, GELU, biases, multi-head) <-> `GPT2LMHeadModel`.
  GPT-2 stores its linear layers as `Conv1D`, whose weight is (in, out): the transpose of ours.
* Llama (pre-norm RMSNorm, RoPE, SwiGLU, grouped-query heads) <-> `LlamaForCausalLM`; Mistral
  imports the same way. Our RoPE uses Llama's rotate-half layout, so q/k need no permutation; our
  fused qkv matrix is simply q_proj, k_proj and v_proj stacked.
* BERT (post-norm encoder) <-> `BertForPreTraining` / `BertForMaskedLM`; see `hf_bert`.
* The encoder-decoder <-> BART / Marian / Pegasus / mBART (`AutoModelForSeq2SeqLM`); see `hf_seq2seq`;
  T5 and mT5 -> the encoder-decoder, see `hf_t5`.

Export writes the files `AutoModelForCausalLM` and `AutoTokenizer` read (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json,
generation_config.json); neither direction imports `transformers`, which is only needed to
*use* the exported directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from lmforge.chat_template import TEMPLATE_FILE as CHAT_TEMPLATE_FILE
from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.models.transformer import Transformer
from lmforge.models.weights import fused_weights, load_tensors, weights_for_save
from lmforge.utils.io import atomic_path, atomic_write_json, atomic_write_text, read_json

# Our activation name <-> GPT-2's `activation_function`. "gelu_new" is GPT-2's tanh approximation.
_GPT2_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_GPT2_ACT_IN = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
_LLAMA_LIKE = ("llama", "mistral")


# ----------------------------------------------------------------------------------------------
# Export


def _export_layout(cfg: ModelConfig) -> str:
    """'gpt2' or 'llama', or an error naming the config field that rules out both."""
    if cfg.arch != "decoder":
        raise LmforgeError(
            f"model.arch={cfg.arch!r} cannot be exported; only decoder models map to GPT-2/Llama"
        )
    if cfg.norm_position != "pre":
        raise LmforgeError("model.norm_position='post' cannot be exported; GPT-2 and Llama are pre-norm")
    if cfg.attn_scale is not None:
        raise LmforgeError(
            f"model.attn_scale={cfg.attn_scale} cannot be exported; GPT-2 and Llama scale by 1/sqrt(head_dim) "
            "(attn_scale=null)"
        )
    if cfg.norm == "layernorm":  # GPT-2
        if cfg.position != "learned":
            raise LmforgeError(
                f"model.position={cfg.position!r} cannot be exported: GPT-2 (norm=layernorm) uses learned "
                "positions; use position=learned, or norm=rmsnorm + position=rope + activation=swiglu for Llama"
            )
        if cfg.activation not in _GPT2_ACT:
            raise LmforgeError(
                f"model.activation={cfg.activation!r} cannot be exported as GPT-2 (norm=layernorm); "
                "use gelu, gelu_tanh or relu, or norm=rmsnorm for the Llama layout"
            )
        if not cfg.bias:
            raise LmforgeError("model.bias=False cannot be exported as GPT-2, whose layers all have biases")
        if cfg.kv_heads != cfg.n_head:
            raise LmforgeError(
                f"model.n_kv_head={cfg.n_kv_head} cannot be exported as GPT-2 (no grouped-query attention); "
                "use the Llama layout (norm=rmsnorm, position=rope, activation=swiglu)"
            )
        return "gpt2"
    if cfg.position != "rope":
        raise LmforgeError(
            f"model.position={cfg.position!r} cannot be exported: Llama (norm=rmsnorm) uses rope; "
            "use position=rope, or norm=layernorm for the GPT-2 layout"
        )
    if cfg.activation != "swiglu":
        raise LmforgeError(
            f"model.activation={cfg.activation!r} cannot be exported: Llama (norm=rmsnorm) uses swiglu"
        )
    return "llama"


def _gpt2_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "n_ctx": cfg.max_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.ff_dim,
        "activation_function": _GPT2_ACT[cfg.activation],
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
    }


def _llama_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_eps,
        # Both spellings: `rope_theta` for transformers 4.x, `rope_parameters` for 5.x.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
    }


def _gpt2_names(cfg: ModelConfig) -> list[tuple[str, str, bool]]:
    """(our name, GPT2LMHeadModel's name, transposed?) for every tensor: one table, both directions.

    GPT-2's Conv1D layers store their weights as (in, out), the transpose of nn.Linear's.
    """
    names = [
        ("tok_emb.weight", "transformer.wte.weight", False),
        ("pos_emb.weight", "transformer.wpe.weight", False),
        ("norm_f.weight", "transformer.ln_f.weight", False),
        ("norm_f.bias", "transformer.ln_f.bias", False),
    ]
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
            names += [
                (f"{ours}{a}.weight", f"{hf}{b}.weight", False),
                (f"{ours}{a}.bias", f"{hf}{b}.bias", False),
            ]
        for a, b in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                     ("mlp.proj", "mlp.c_proj")):  # fmt: skip
            names += [
                (f"{ours}{a}.weight", f"{hf}{b}.weight", True),
                (f"{ours}{a}.bias", f"{hf}{b}.bias", False),
            ]
    if not cfg.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight", False))
    return names


def _to_gpt2(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our tensors -> GPT2LMHeadModel's."""
    return {hf: sd[ours].t() if t else sd[ours] for ours, hf, t in _gpt2_names(cfg)}


def _to_llama(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our tensors -> LlamaForCausalLM's. The fused qkv rows split into q_proj, k_proj, v_proj."""
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm_f.weight"]}
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        out[f"{hf}input_layernorm.weight"] = sd[f"{ours}norm1.weight"]
        out[f"{hf}post_attention_layernorm.weight"] = sd[f"{ours}norm2.weight"]
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            wq, wk, wv = sd[f"{ours}attn.qkv.{suffix}"].split([q, kv, kv], dim=0)
            out[f"{hf}self_attn.q_proj.{suffix}"] = wq
            out[f"{hf}self_attn.k_proj.{suffix}"] = wk
            out[f"{hf}self_attn.v_proj.{suffix}"] = wv
            out[f"{hf}self_attn.o_proj.{suffix}"] = sd[f"{ours}attn.proj.{suffix}"]
            for name in ("gate", "up", "down"):
                out[f"{hf}mlp.{name}_proj.{suffix}"] = sd[f"{ours}mlp.{name}.{suffix}"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


_HF_ROLE_KEYS = ("bos", "eos", "unk", "pad", "mask", "cls", "sep")


def _write_tokenizer(tokenizer: Any, out: Path, model_max_length: int) -> dict[str, int | None]:
    """tokenizer.json plus the two small files AutoTokenizer reads; returns the HF special-token ids."""
    atomic_write_text(out / "tokenizer.json", tokenizer.backend.to_str(pretty=True))
    roles = dict(getattr(tokenizer, "special_tokens", {}) or {})
    special = {f"{role}_token": roles[role] for role in _HF_ROLE_KEYS if role in roles}
    atomic_write_json(out / "special_tokens_map.json", special)
    config: dict[str, Any] = {
        # The generic fast tokenizer loads tokenizer.json exactly as it is.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    template = getattr(tokenizer, "chat_template", None)
    if template:  # both places transformers reads it from, older releases the config entry only
        config["chat_template"] = template
        atomic_write_text(out / CHAT_TEMPLATE_FILE, template)
    else:
        (out / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
    atomic_write_json(out / "tokenizer_config.json", config)
    ids = {
        role: tokenizer.backend.token_to_id(roles[role]) if role in roles else None
        for role in ("bos", "eos", "pad")
    }
    # Without a bos token, GPT-2's convention applies: end-of-text also starts a document.
    return {
        "bos_token_id": ids["bos"] if ids["bos"] is not None else ids["eos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
    }


def export_hf(
    model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, *, pair_head: bool = True,
    source_tokenizer: Any = None,
) -> Path:  # fmt: skip
    """Write `model` (and `tokenizer`, unless None) as a Hugging Face checkpoint directory.

    A decoder loads with `AutoModelForCausalLM.from_pretrained(out_dir)`, its layout (GPT-2 or
    Llama) following from the model config; an encoder-decoder (or a fine-tuned seq2seq model,
    whose beam settings come along) with `AutoModelForSeq2SeqLM` (see `hf_seq2seq`); an encoder is
    written as BERT, `BertForPreTraining` with its NSP/SOP head when `pair_head` (runs trained with
    one), else `BertForMaskedLM`. A config
    no layout can express is an error naming the field to change. Weights keep the model's dtype;
    padded vocabulary rows (model vocab > tokenizer vocab) are kept. A seq2seq model with two
    vocabularies takes its `source_tokenizer` along (see `hf_seq2seq.export_seq2seq`).
    """
    from lmforge.interop import hf_bert, hf_seq2seq
    from lmforge.models.encoder import Encoder
    from lmforge.models.weights import write_safetensors

    model = getattr(model, "_orig_mod", model)
    if hf_seq2seq.seq2seq_parts(model) is not None:
        return hf_seq2seq.export_seq2seq(model, tokenizer, out_dir, source_tokenizer=source_tokenizer)
    if not isinstance(model, (Transformer, Encoder)):
        raise LmforgeError(
            f"{type(model).__name__} cannot be exported to transformers: only decoder (GPT-2/Llama), encoder "
            "(BERT) and encoder-decoder (BART/Marian/Pegasus/mBART) models can; for an ELECTRA run, export "
            "its discriminator (lmforge.load(run).model.discriminator)"
        )
    cfg = model.config
    if cfg.arch == "encoder":
        hf_bert.check_exportable(cfg)
        layout = "bert"
    else:
        layout = _export_layout(cfg)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise LmforgeError(
            f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size={cfg.vocab_size}; "
            "export the tokenizer the model was trained with"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    sd = {k: v.cpu() for k, v in fused_weights(model).items()}  # q/k/v as one qkv, either layout
    if layout == "bert":
        hf_sd = hf_bert.to_bert(sd, cfg, pair_head=pair_head)
    else:
        hf_sd = _to_gpt2(sd, cfg) if layout == "gpt2" else _to_llama(sd, cfg)
    # safetensors wants each tensor contiguous and owning its memory (no views of the fused qkv).
    hf_sd = {k: v.clone(memory_format=torch.contiguous_format) for k, v in hf_sd.items()}
    with atomic_path(out / "model.safetensors") as tmp:
        write_safetensors(hf_sd, tmp, metadata={"format": "pt"})

    if layout == "bert":
        hf_cfg = hf_bert.bert_config(cfg, pair_head=pair_head)
    else:
        hf_cfg = _gpt2_config(cfg) if layout == "gpt2" else _llama_config(cfg)
    # Explicit ids (even null) so transformers' defaults (GPT-2's 50256, Llama's 1/2) never apply.
    token_ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer is not None:
        token_ids = _write_tokenizer(tokenizer, out, cfg.max_len)
    hf_cfg.update(token_ids)
    hf_cfg["torch_dtype"] = str(next(iter(hf_sd.values())).dtype).removeprefix("torch.")
    atomic_write_json(out / "config.json", hf_cfg)
    generation = {"_from_model_config": True, **token_ids}
    template = getattr(tokenizer, "chat_template", None)
    if template:  # generate() stops at the end of an assistant turn (<|im_end|>) as well as at eos
        from lmforge.chat_template import turn_end_ids

        ends = turn_end_ids(tokenizer, template)
        if len(ends) > 1:
            generation["eos_token_id"] = ends
    atomic_write_json(out / "generation_config.json", generation)
    return out


# ----------------------------------------------------------------------------------------------
# Import


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: (sharded) safetensors, else (sharded) pytorch_model.bin."""
    from lmforge.models.weights import read_safetensors

    index = d / "model.safetensors.index.json"
    if index.is_file():  # sharded: the index names the shard files
        files = _index_shards(index)
    elif (d / "model.safetensors").is_file():
        files = [d / "model.safetensors"]
    else:
        files = sorted(d.glob("*.safetensors"))
    if files:
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(read_safetensors(f))  # a truncated or damaged file is a one-line error
        return sd
    bins = sorted(d.glob("pytorch_model*.bin"))
    if bins:
        sd = {}
        for f in bins:
            try:
                # weights_only: a pickle can run arbitrary code; tensors-only loading cannot.
                sd.update(torch.load(f, map_location="cpu", weights_only=True))
            except Exception as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise LmforgeError(
                    f"{f}: cannot be read as plain tensors ({first}); convert it to safetensors"
                ) from None
        return sd
    raise LmforgeError(
        f"{d}: no model.safetensors or pytorch_model.bin found; pass a Hugging Face model directory"
    )


def _index_shards(index: Path) -> list[Path]:
    """The shard files a sharded checkpoint's index names, which must be plain file names in the
    model folder: an index is data from the internet, and must not make us read other files."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise LmforgeError(f"{index}: no 'weight_map' of tensor names to shard files; the index is damaged")
    names = {str(name) for name in weight_map.values()}
    for name in sorted(names):
        if Path(name).name != name or name in (".", "..") or "\\" in name:
            raise LmforgeError(
                f"{index}: names {name!r}, which is not a file in {index.parent} (an index may only name "
                "shard files beside it); the index is damaged or not to be trusted"
            )
    return [index.parent / name for name in sorted(names)]


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def _gpt2_model_config(c: dict[str, Any], where: Path) -> ModelConfig:
    act = c.get("activation_function", "gelu_new")
    if act not in _GPT2_ACT_IN:
        raise LmforgeError(
            f"{where}: activation_function={act!r} is not supported; lmforge has gelu, gelu_new and relu"
        )
    for key, ok in (
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
        ("scale_attn_weights", True),
    ):
        if c.get(key, ok) != ok:
            raise LmforgeError(f"{where}: {key}={c[key]} is not supported by lmforge's GPT-2 layout")
    return ModelConfig(
        vocab_size=c["vocab_size"],
        n_layer=c["n_layer"],
        n_head=c["n_head"],
        d_model=c["n_embd"],
        d_ff=c.get("n_inner"),
        max_len=c.get("n_positions", c.get("n_ctx", 1024)),
        norm="layernorm",
        norm_position="pre",
        norm_eps=c.get("layer_norm_epsilon", 1e-5),
        position="learned",
        activation=_GPT2_ACT_IN[act],
        bias=True,
        tie_embeddings=c.get("tie_word_embeddings", True),
        dropout=c.get("resid_pdrop", 0.0),
        init_std=c.get("initializer_range", 0.02),
    )


def _llama_model_config(c: dict[str, Any], where: Path) -> ModelConfig:
    model_type = c["model_type"]
    if c.get("hidden_act", "silu") != "silu":
        raise LmforgeError(
            f"{where}: hidden_act={c['hidden_act']!r} is not supported; the Llama layout uses silu"
        )
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise LmforgeError(
            f"{where}: rope scaling {rope_type!r} is not supported; lmforge implements plain RoPE"
        )
    theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    n_head = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // n_head
    if head_dim * n_head != c["hidden_size"]:
        raise LmforgeError(
            f"{where}: head_dim={head_dim} x num_attention_heads={n_head} != hidden_size={c['hidden_size']}; "
            "lmforge derives head_dim as hidden_size / heads"
        )
    attn_bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise LmforgeError(
            f"{where}: attention_bias={attn_bias} but mlp_bias={mlp_bias}; lmforge's `bias` covers both or neither"
        )
    max_len = c.get("max_position_embeddings", 2048)
    window = c.get("sliding_window") if c.get("use_sliding_window", model_type == "mistral") else None
    if window:
        # Within one window sliding-window attention is plain causal attention: cap the length there.
        max_len = min(max_len, window)
    cfg = ModelConfig(
        vocab_size=c["vocab_size"],
        n_layer=c["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=c.get("num_key_value_heads") or n_head,
        d_model=c["hidden_size"],
        d_ff=c["intermediate_size"],
        max_len=max_len,
        norm="rmsnorm",
        norm_position="pre",
        norm_eps=c.get("rms_norm_eps", 1e-6),
        position="rope",
        rope_theta=float(theta),
        activation="swiglu",
        bias=attn_bias,
        tie_embeddings=c.get("tie_word_embeddings", False),
        dropout=c.get("attention_dropout", 0.0) or 0.0,
        init_std=c.get("initializer_range", 0.02),
    )
    if cfg.d_ff == dataclasses.replace(cfg, d_ff=None).ff_dim:
        cfg.d_ff = None  # the default width: keep the config as it would have been written
    return cfg


def _from_gpt2(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's tensors -> ours (checkpoints come with or without the `transformer.` prefix)."""
    hf = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v for k, v in hf.items()}
    return {ours: hf[name].t() if t else hf[name] for ours, name, t in _gpt2_names(cfg)}


def _from_llama(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM's tensors -> ours: q/k/v projections are stacked into the fused qkv."""
    hf = _strip(hf, "model.")
    sd = {"tok_emb.weight": hf["embed_tokens.weight"], "norm_f.weight": hf["norm.weight"]}
    for i in range(cfg.n_layer):
        ours, p = f"blocks.{i}.", f"layers.{i}."
        sd[f"{ours}norm1.weight"] = hf[f"{p}input_layernorm.weight"]
        sd[f"{ours}norm2.weight"] = hf[f"{p}post_attention_layernorm.weight"]
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            qkv = [hf[f"{p}self_attn.{n}_proj.{suffix}"] for n in "qkv"]
            sd[f"{ours}attn.qkv.{suffix}"] = torch.cat(qkv, dim=0)
            sd[f"{ours}attn.proj.{suffix}"] = hf[f"{p}self_attn.o_proj.{suffix}"]
            for name in ("gate", "up", "down"):
                sd[f"{ours}mlp.{name}.{suffix}"] = hf[f"{p}mlp.{name}_proj.{suffix}"]
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = hf["lm_head.weight"]
    return sd


def _read_tokenizer(d: Path, model_type: str) -> Any:
    """Our Tokenizer from tokenizer.json, or from GPT-2's vocab.json + merges.txt.

    Special-token roles our Tokenizer cannot recognise by name (e.g. a custom eos) are taken from
    the directory's special_tokens_map.json / tokenizer_config.json.
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors

    from lmforge.tokenizer import Tokenizer

    declared: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (d / name).is_file():
            for role in _HF_ROLE_KEYS:
                value = read_json(d / name).get(f"{role}_token")
                if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
                    value = value.get("content")
                if isinstance(value, str):
                    declared[role] = value

    if (d / "tokenizer.json").is_file():
        tok = Tokenizer.load(d / "tokenizer.json")
    elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        # GPT-2's original files: byte-level BPE without a prefix space.
        backend = tokenizers.Tokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        specials = set(declared.values())
        if model_type == "gpt2" and backend.token_to_id("<|endoftext|>") is not None:
            specials.add("<|endoftext|>")
        backend.add_special_tokens(sorted(specials))  # marks the existing vocabulary entries special
        tok = Tokenizer.from_backend(backend)
    else:
        raise LmforgeError(
            f"{d}: no tokenizer.json (or vocab.json + merges.txt) found; save the tokenizer into the model "
            "directory (tokenizer.save_pretrained)"
        )
    for role, token in declared.items():
        token_id = tok.backend.token_to_id(token)
        if role not in tok.special_tokens and token_id is not None:
            tok.special_tokens[role] = token
            setattr(tok, f"{role}_id", token_id)
    tok.chat_template = _read_chat_template(d)
    return tok


def _read_chat_template(d: Path) -> str | None:
    """A model folder's chat template: chat_template.jinja, else tokenizer_config.json's entry (a
    string, or a list of named templates of which "default" is the one transformers uses)."""
    if (d / CHAT_TEMPLATE_FILE).is_file():
        return (d / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if not (d / "tokenizer_config.json").is_file():
        return None
    entry = read_json(d / "tokenizer_config.json").get("chat_template")
    if isinstance(entry, list):
        named = {t.get("name"): t.get("template") for t in entry if isinstance(t, dict)}
        entry = named.get("default")
    return entry if isinstance(entry, str) and entry else None


def import_hf(hf_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    """Load a Hugging Face GPT-2, Llama, Mistral, BERT, BART, Marian, Pegasus or mBART checkpoint
    directory as (our model, our tokenizer).

    Reads config.json, the weights (*.safetensors, else pytorch_model.bin loaded tensors-only) and
    tokenizer.json (or GPT-2's vocab.json + merges.txt, or Marian's SentencePiece files); an
    encoder-decoder's tokenizer is its target side's (`hf_seq2seq.source_tokenizer_of` gives a
    separate source one). The model comes back in float32 and in
    eval mode, as `from_pretrained` returns it.
    """
    d = Path(hf_dir)
    c = read_json(d / "config.json")
    model_type = c.get("model_type")
    from lmforge.interop import hf_seq2seq

    if model_type in hf_seq2seq.LAYOUTS or model_type in hf_seq2seq.T5_TYPES:
        return hf_seq2seq.import_seq2seq(d, c)
    if model_type in ("gpt2", "bert", *_LLAMA_LIKE):
        from lmforge.interop.hf_bert import bert_model_config

        read_config = {"gpt2": _gpt2_model_config, "bert": bert_model_config}.get(
            model_type, _llama_model_config
        )
        try:
            cfg = read_config(c, d / "config.json")
        except KeyError as e:
            raise LmforgeError(
                f"{d / 'config.json'}: no {e.args[0]!r} entry, which a {model_type} config needs; "
                "the file is incomplete"
            ) from None
        except ValueError as e:
            raise LmforgeError(f"{d / 'config.json'}: {e}") from None
    elif model_type == "qwen2":
        raise LmforgeError(
            f"{d / 'config.json'}: qwen2 has biases on q/k/v but not on the output projection, which "
            "lmforge's single `bias` flag cannot express; import gpt2, llama or mistral checkpoints"
        )
    else:
        raise LmforgeError(
            f"{d / 'config.json'}: model_type={model_type!r} is not supported; lmforge imports "
            f"gpt2, bert, {', '.join(_LLAMA_LIKE)} and the encoder-decoders {', '.join(hf_seq2seq.LAYOUTS)}, t5, mt5"
        )

    hf_sd = _read_weights(d)
    model: torch.nn.Module
    if model_type == "bert":
        from lmforge.interop.hf_bert import from_bert
        from lmforge.models.encoder import Encoder

        model = Encoder(cfg)
    else:
        model = Transformer(cfg)
    try:
        if model_type == "bert":
            sd = from_bert(hf_sd, cfg, fresh=weights_for_save(model))
        else:
            sd = _from_gpt2(hf_sd, cfg) if model_type == "gpt2" else _from_llama(hf_sd, cfg)
    except KeyError as e:
        raise LmforgeError(
            f"{d}: the weights lack tensor {e.args[0]!r} that config.json implies; the checkpoint is "
            "incomplete or its config does not match it"
        ) from None
    load_tensors(model, sd, str(d))
    tokenizer = _read_tokenizer(d, model_type)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise LmforgeError(
            f"{d}: the tokenizer has {tokenizer.vocab_size} tokens but config.json vocab_size="
            f"{cfg.vocab_size}; the tokenizer does not belong to this model"
        )
    return model.eval(), tokenizer


def import_run(
    hf_dir: str | Path, run_dir: str | Path, *, overwrite: bool = False
) -> tuple[torch.nn.Module, Path]:
    """Import a Hugging Face checkpoint directory as a run directory; returns (model, run_dir).

    The run records the objective the checkpoint's heads were trained for (clm for causal LMs;
    mlm+nsp for BertForPreTraining, whose NSP head came along; mlm otherwise; seq2seq for an
    encoder-decoder, with its decoder start token and beam settings), so that evaluation and a
    later export treat it like a run trained here.
    """
    import shutil

    from lmforge.run import claim_output_folder, write_run

    run_dir = claim_output_folder(run_dir, overwrite=overwrite, what="import hf")
    model, tokenizer = import_hf(hf_dir)
    shutil.rmtree(run_dir / "train_state", ignore_errors=True)  # checkpoints of whatever was there
    objective = "clm"
    hf_config = read_json(Path(hf_dir) / "config.json")
    if model.config.arch == "encoder":
        archs = hf_config.get("architectures") or []
        objective = "mlm+nsp" if "BertForPreTraining" in archs else "mlm"
    config: dict[str, Any] = {"imported_from": str(hf_dir), "objective": objective}
    source_tokenizer = None
    if model.config.arch == "encoder-decoder":
        from lmforge.interop.hf_seq2seq import run_config, source_tokenizer_of

        config.update(run_config(Path(hf_dir), hf_config))
        source_tokenizer = source_tokenizer_of(hf_dir)
    return model, write_run(
        run_dir, model=model, model_config=model.config, tokenizer=tokenizer, config=config,
        source_tokenizer=source_tokenizer,
    )  # fmt: skip


__all__ = ["export_hf", "import_hf", "import_run"]
