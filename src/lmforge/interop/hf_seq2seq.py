"""Hugging Face interop for the encoder-decoder: our `EncoderDecoder` <-> BART, Marian, Pegasus, mBART.

transformers' BART family shares one layer layout, and it is ours tensor for tensor: attention
with biased q/k/v/out projections scaled by 1/sqrt(head_dim), an fc1 -> activation -> fc2 MLP,
one LayerNorm per sublayer (eps fixed at 1e-5), and absolute positions added to the (optionally
sqrt(d_model)-scaled) token embeddings. The four classes differ in exactly the two switches our
stacks have, where each sublayer's norm sits (`norm_position`) and whether the embedding sum is
normalised (`emb_norm`), so each of our layouts has one class that computes the same function:

    norm_position  emb_norm (default)  class                            embedding norm       final norm  positions
    post           true  (yes)         BartForConditionalGeneration     layernorm_embedding  none        stored, rows offset by 2
    post           false               MarianMTModel                    none                 none        fixed sin|cos, recomputed
    pre            false (yes)         PegasusForConditionalGeneration  none                 layer_norm  stored (a frozen table)
    pre            true                MBartForConditionalGeneration    layernorm_embedding  layer_norm  stored, rows offset by 2

Marian would fit neither default layout: it is post-norm without an embedding norm, which our
`emb_norm=false` expresses. The position table is written as it is: BART and mBART learn theirs
(`embed_positions.weight`, whose rows 0 and 1 are never read), and Pegasus keeps a table loaded from
the checkpoint rather than recomputing it, so learned positions and our interleaved sinusoidal
table both export there. Marian neither saves nor loads its table but recomputes it, so a Marian
export needs the table to be Marian's own: `position: sinusoidal_halves` (the sines in the first
half of the channels, the cosines in the second, as Marian and Pegasus compute them). A table
equal to one of our two sinusoidal ones imports as that `position` (Marian's and Pegasus's as
`sinusoidal_halves`); any other is copied as `position: learned`, which is exact.

Tensor names (ours <-> transformers'), for the encoder and likewise the decoder:

    encoder.tok_emb / decoder.tok_emb / lm_head   model.shared, model.{encoder,decoder}.embed_tokens, lm_head
    encoder.pos_emb                               model.encoder.embed_positions (after `offset` rows)
    encoder.emb_norm / encoder.norm_f             model.encoder.layernorm_embedding / model.encoder.layer_norm
    encoder.blocks.{i}.attn.qkv                   model.encoder.layers.{i}.self_attn.{q,k,v}_proj, stacked
    .attn.proj, .norm1                            .self_attn.out_proj, .self_attn_layer_norm
    .mlp.fc, .mlp.proj, .norm2                    .fc1, .fc2, .final_layer_norm
    decoder.blocks.{i}.cross_attn.q / .kv / .proj  .encoder_attn.q_proj / {k,v}_proj stacked / .out_proj
    decoder.blocks.{i}.norm_cross                 .encoder_attn_layer_norm
    lm_head.bias (`head_bias`)                    final_logits_bias (1, vocab), zeros without one

One embedding for source and target tied to the output projection (our default) is
`tie_word_embeddings` with the single `model.shared` matrix; any other combination is written as
separate matrices with `tie_word_embeddings=false`, which transformers 5 loads as four independent
tensors (older releases always tie the encoder's and decoder's embeddings to `model.shared`, so
they load only the shared ones right). A config these classes cannot express (rotary positions,
RMSNorm, SwiGLU, no biases, grouped-query heads, another norm eps) is refused, naming the field.

A run with two tokenizers exports its source one as the folder's tokenizer and the target one,
which decodes outputs, as `target_tokenizer/` (transformers has no fast tokenizer with two
vocabularies). Vocabularies of two sizes (`src_vocab_size`) export only as Marian, whose
`decoder_vocab_size` sizes the decoder's embedding and output layer apart from the encoder's
`vocab_size`.

An export writes config.json, model.safetensors, the tokenizer files, and a generation_config.json
with the decoder's start token (our convention: the padding token, else end-of-text) and, for a
fine-tuned seq2seq model, its beam settings. T5 and mT5 checkpoints are imported by `hf_t5`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.interop.hf import _read_tokenizer, _read_weights, _write_tokenizer
from lmforge.models.config import ModelConfig
from lmforge.models.layers import sinusoidal_table
from lmforge.models.seq2seq import EncoderDecoder
from lmforge.models.weights import fused_weights, load_tensors, unwrap, write_safetensors
from lmforge.utils.io import atomic_path, atomic_write_json

# Our activation <-> transformers' `activation_function`; gelu_new is GPT-2's tanh approximation.
_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
_ACT_IN = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
           "gelu_fast": "gelu_tanh"}  # fmt: skip
_LN_EPS = 1e-5  # nn.LayerNorm's default, which every LayerNorm of these classes uses
TARGET_TOKENIZER_DIR = "target_tokenizer"  # a two-vocabulary export's decoding tokenizer
T5_TYPES = ("t5", "mt5", "umt5", "longt5")


@dataclass(frozen=True)
class Layout:
    """One transformers encoder-decoder class, as the two switches of our stacks see it."""

    model_type: str
    architecture: str
    norm_position: str  # "post" or "pre"
    emb_norm: bool  # layernorm_embedding over the embedding sum
    offset: int  # rows of embed_positions before position 0 (BART's learned table has 2)
    fixed_positions: bool  # a sin|cos table the class computes itself when a checkpoint lacks one
    saves_positions: bool  # whether the table is a checkpoint tensor that from_pretrained loads


LAYOUTS = {
    "bart": Layout("bart", "BartForConditionalGeneration", "post", True, 2, False, True),
    "marian": Layout("marian", "MarianMTModel", "post", False, 0, True, False),
    "pegasus": Layout("pegasus", "PegasusForConditionalGeneration", "pre", False, 0, True, True),
    "mbart": Layout("mbart", "MBartForConditionalGeneration", "pre", True, 2, False, True),
}

# Config flags of releases that built all four from one class; current transformers ignore them and
# take the layout from model_type, so a flag that contradicts it means weights trained otherwise.
_LEGACY_FLAGS = {
    "normalize_before": lambda lay: lay.norm_position == "pre",
    "add_final_layer_norm": lambda lay: lay.norm_position == "pre",
    "normalize_embedding": lambda lay: lay.emb_norm,
    "static_position_embeddings": lambda lay: lay.fixed_positions,
}


def fixed_table(n_pos: int, dim: int) -> torch.Tensor:
    """Marian's and Pegasus's sinusoidal table (n_pos, dim): sin(pos / 10000^(2i/dim)) in the first
    ceil(dim/2) channels, the matching cosines after them; computed in float64 as they do."""
    return sinusoidal_table(n_pos, dim, halves=True)


def layout_of(cfg: ModelConfig) -> Layout:
    """The class that computes what `cfg`'s encoder-decoder computes, or an error naming the field."""
    layout = _layout_of(cfg)
    if cfg.source_vocab != cfg.vocab_size and layout.model_type != "marian":
        raise LmforgeError(
            f"model.src_vocab_size={cfg.src_vocab_size} (two vocabularies) cannot be exported as "
            f"{layout.architecture}: Marian (norm_position=post, emb_norm=false) is the one class of the "
            "BART family with a decoder vocabulary of its own; train with one joint tokenizer to export this layout"
        )
    return layout


def _layout_of(cfg: ModelConfig) -> Layout:
    if cfg.position in ("rope", "t5"):
        raise LmforgeError(
            f"model.position={cfg.position!r} cannot be exported: BART, Marian, Pegasus and mBART add absolute "
            "position embeddings; use position=learned or position=sinusoidal"
        )
    if cfg.norm != "layernorm":
        raise LmforgeError(
            f"model.norm={cfg.norm!r} cannot be exported: BART-family layers use norm=layernorm"
        )
    if cfg.attn_scale is not None or cfg.head_scale != 1.0:
        field = (
            f"attn_scale={cfg.attn_scale}" if cfg.attn_scale is not None else f"head_scale={cfg.head_scale}"
        )
        raise LmforgeError(
            f"model.{field} cannot be exported: BART-family attention scales by 1/sqrt(head_dim) and "
            "the output layer reads the decoder's states as they are; use attn_scale=null, head_scale=1"
        )
    if cfg.activation not in _ACT:
        raise LmforgeError(
            f"model.activation={cfg.activation!r} cannot be exported: BART-family MLPs are ungated; "
            "use gelu, gelu_tanh or relu"
        )
    if not cfg.bias:
        raise LmforgeError(
            "model.bias=False cannot be exported: BART-family layers all have biases; use bias=true"
        )
    if cfg.kv_heads != cfg.n_head:
        raise LmforgeError(
            f"model.n_kv_head={cfg.n_kv_head} cannot be exported: BART-family attention has no "
            "grouped-query heads; use n_kv_head=null"
        )
    if cfg.norm_eps != _LN_EPS:
        raise LmforgeError(
            f"model.norm_eps={cfg.norm_eps} cannot be exported: BART-family LayerNorms use eps "
            f"{_LN_EPS}; use norm_eps={_LN_EPS}"
        )
    post = cfg.norm_position == "post"
    emb_norm = post if cfg.emb_norm is None else cfg.emb_norm
    if post:
        return LAYOUTS["bart" if emb_norm else "marian"]
    return LAYOUTS["mbart" if emb_norm else "pegasus"]


def _names(cfg: ModelConfig, layout: Layout) -> list[tuple[str, str]]:
    """(our name, transformers' name) of every tensor but the embeddings, the position tables, the
    stacked attention projections and final_logits_bias: one table for both directions."""
    names: list[tuple[str, str]] = []

    def pair(ours: str, hf: str) -> None:
        names.extend([(f"{ours}.weight", f"{hf}.weight"), (f"{ours}.bias", f"{hf}.bias")])

    for side, n_layer in (("encoder", cfg.n_layer), ("decoder", cfg.dec_layers)):
        hf = f"model.{side}"
        if layout.emb_norm:
            pair(f"{side}.emb_norm", f"{hf}.layernorm_embedding")
        if layout.norm_position == "pre":
            pair(f"{side}.norm_f", f"{hf}.layer_norm")
        for i in range(n_layer):
            ours, theirs = f"{side}.blocks.{i}", f"{hf}.layers.{i}"
            for a, b in (("norm1", "self_attn_layer_norm"), ("attn.proj", "self_attn.out_proj"),
                         ("mlp.fc", "fc1"), ("mlp.proj", "fc2"), ("norm2", "final_layer_norm")):  # fmt: skip
                pair(f"{ours}.{a}", f"{theirs}.{b}")
            if side == "decoder":
                for a, b in (("norm_cross", "encoder_attn_layer_norm"), ("cross_attn.q", "encoder_attn.q_proj"),
                             ("cross_attn.proj", "encoder_attn.out_proj")):  # fmt: skip
                    pair(f"{ours}.{a}", f"{theirs}.{b}")
    return names


def _stacked(cfg: ModelConfig) -> list[tuple[str, list[str]]]:
    """(our fused projection, the transformers projections whose rows it stacks, in order)."""
    out = []
    for side, n_layer in (("encoder", cfg.n_layer), ("decoder", cfg.dec_layers)):
        for i in range(n_layer):
            ours, theirs = f"{side}.blocks.{i}", f"model.{side}.layers.{i}"
            for suffix in ("weight", "bias"):
                out.append(
                    (f"{ours}.attn.qkv.{suffix}", [f"{theirs}.self_attn.{p}_proj.{suffix}" for p in "qkv"])
                )
                if side == "decoder":
                    out.append(
                        (
                            f"{ours}.cross_attn.kv.{suffix}",
                            [f"{theirs}.encoder_attn.{p}_proj.{suffix}" for p in "kv"],
                        )
                    )
    return out


def _table(stack: nn.Module) -> torch.Tensor:
    """A stack's position table (max_len, d_model): learned weights or the sinusoidal buffer."""
    pos = stack.pos_emb
    return pos.weight if isinstance(pos, nn.Embedding) else pos


# ----------------------------------------------------------------------------------------------
# Export


def seq2seq_parts(model: nn.Module) -> tuple[EncoderDecoder, Any] | None:
    """(the EncoderDecoder, the fine-tuned seq2seq model around it or None) when `model` is one of
    the two (a task model's weights are the encoder-decoder's under `backbone.model.`), else None."""
    model = unwrap(model)
    if isinstance(model, EncoderDecoder):
        return model, None
    inner = getattr(getattr(model, "backbone", None), "model", None)
    if inner is not None and isinstance(unwrap(inner), EncoderDecoder):
        return unwrap(inner), model
    return None


def _framing(tokenizer: Any, task: Any) -> dict[str, int | None]:
    """decoder_start/eos/pad ids: the task model's own, or the tokenizer's under the seq2seq
    convention (the decoder starts from the padding token, else from end-of-text)."""
    tokens = getattr(task, "tokens", None)
    if tokens is None and tokenizer is not None and tokenizer.eos_id is not None:
        from lmforge.models.seq2seq import seq2seq_tokens

        tokens = seq2seq_tokens(tokenizer)
    if tokens is None:
        return {"decoder_start_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {"decoder_start_token_id": tokens.start, "eos_token_id": tokens.eos, "pad_token_id": tokens.pad}


def hf_config(cfg: ModelConfig, layout: Layout) -> dict[str, Any]:
    """config.json of the class `layout` names (token ids are added by the caller)."""
    share_tie = cfg.share_embeddings and cfg.tie_embeddings
    c: dict[str, Any] = {
        "architectures": [layout.architecture],
        "model_type": layout.model_type,
        "vocab_size": cfg.source_vocab,  # Marian's encoder vocabulary; the others have one
        "d_model": cfg.d_model,
        "encoder_layers": cfg.n_layer,
        "decoder_layers": cfg.dec_layers,
        "encoder_attention_heads": cfg.n_head,
        "decoder_attention_heads": cfg.n_head,
        "encoder_ffn_dim": cfg.ff_dim,
        "decoder_ffn_dim": cfg.ff_dim,
        "activation_function": _ACT[cfg.activation],
        "max_position_embeddings": cfg.max_len,
        "scale_embedding": cfg.scale_embeddings,
        "dropout": cfg.dropout,
        "attention_dropout": cfg.dropout,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "init_std": cfg.init_std,
        "is_encoder_decoder": True,
        "use_cache": True,
        "tie_word_embeddings": share_tie,
        "forced_eos_token_id": None,
        "forced_bos_token_id": None,
    }
    if layout.model_type == "marian":
        c["share_encoder_decoder_embeddings"] = cfg.share_embeddings
        c["decoder_vocab_size"] = cfg.vocab_size
    return c


def to_hf(model: EncoderDecoder, layout: Layout) -> dict[str, torch.Tensor]:
    """Our encoder-decoder's tensors under the names of the class `layout` names."""
    cfg = model.config
    sd = {k: v.detach().cpu() for k, v in fused_weights(model).items()}  # q/k/v stacked, either layout
    out = {hf: sd[ours] for ours, hf in _names(cfg, layout)}
    for ours, parts in _stacked(cfg):
        out.update(zip(parts, sd[ours].split(cfg.d_model, dim=0)))
    enc, dec = model.encoder.tok_emb.weight.detach().cpu(), model.decoder.tok_emb.weight.detach().cpu()
    if cfg.share_embeddings and cfg.tie_embeddings:
        out["model.shared.weight"] = enc
    else:
        if cfg.share_embeddings or layout.model_type != "marian":  # unshared Marian has no `shared`
            out["model.shared.weight"] = enc
        out["model.encoder.embed_tokens.weight"] = enc
        out["model.decoder.embed_tokens.weight"] = dec
        out["lm_head.weight"] = model.lm_head.weight.detach().cpu()
    for side in ("encoder", "decoder"):
        table = _table(getattr(model, side)).detach().cpu().float()
        if layout.saves_positions:
            out[f"model.{side}.embed_positions.weight"] = torch.cat(
                [table.new_zeros(layout.offset, cfg.d_model), table.to(enc.dtype)]
            )
        elif not torch.allclose(table, fixed_table(cfg.max_len, cfg.d_model), atol=1e-6, rtol=0):
            raise LmforgeError(
                f"model.position={cfg.position!r} cannot be exported with norm_position=post and "
                "emb_norm=false: that is Marian, which computes its own sin|cos position table and never "
                "loads one; train with position=sinusoidal_halves (that table), or use emb_norm=true "
                "(BART, which stores its table)"
            )
    bias = model.lm_head.bias
    bias = bias.detach().cpu() if bias is not None else enc.new_zeros(cfg.vocab_size)
    out["final_logits_bias"] = bias[None]  # (1, vocab)
    # safetensors wants each tensor contiguous and owning its memory (no views of the fused qkv).
    return {k: v.clone(memory_format=torch.contiguous_format) for k, v in out.items()}


def generation_config(
    cfg: ModelConfig, ids: dict[str, int | None], beam: Any = None, max_new_tokens: int = 0
) -> dict[str, Any]:
    """generation_config.json: the framing ids, and a fine-tuned model's beam settings (beam search
    as `lmforge.infer.beam` runs it, which is transformers' algorithm)."""
    gen: dict[str, Any] = {**ids, "forced_eos_token_id": None, "forced_bos_token_id": None}
    gen["max_length"] = cfg.max_len  # the start token plus max_len - 1 generated ones, as here
    if beam is not None:
        gen.update(
            do_sample=False,
            num_beams=beam.num_beams,
            length_penalty=beam.length_penalty,
            early_stopping=beam.early_stopping,
            no_repeat_ngram_size=beam.no_repeat_ngram_size,
            num_return_sequences=beam.num_return,
        )
        if beam.min_new_tokens:
            gen["min_new_tokens"] = beam.min_new_tokens
    if max_new_tokens:
        gen["max_new_tokens"] = min(max_new_tokens, cfg.max_len - 1)
    return gen


def export_seq2seq(
    model: nn.Module, tokenizer: Any, out_dir: str | Path, *, source_tokenizer: Any = None
) -> Path:
    """Write an `EncoderDecoder`, or a fine-tuned seq2seq model (its beam settings go to
    generation_config.json), as the checkpoint `AutoModelForSeq2SeqLM.from_pretrained` loads.

    With a `source_tokenizer` (a run with two tokenizers), that one is the folder's tokenizer
    (AutoTokenizer encodes the inputs with it) and the target one, which decodes the outputs, is a
    tokenizer folder of its own, `target_tokenizer/`; vocabularies of two sizes need the Marian
    layout (`decoder_vocab_size`)."""
    parts = seq2seq_parts(model)
    if parts is None:
        raise LmforgeError(f"{type(model).__name__} is not an encoder-decoder")
    ed, task = parts
    cfg = ed.config
    layout = layout_of(cfg)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise LmforgeError(
            f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size={cfg.vocab_size}; "
            "export the tokenizer the model was trained with"
        )
    if tokenizer is not None and cfg.src_vocab_size and source_tokenizer is None:
        raise LmforgeError(
            f"the model has two vocabularies (src_vocab_size={cfg.src_vocab_size}) but no source tokenizer "
            "was given; export the run, which holds both"
        )
    if source_tokenizer is not None and source_tokenizer.vocab_size > cfg.source_vocab:
        raise LmforgeError(
            f"source tokenizer has {source_tokenizer.vocab_size} tokens but the encoder only {cfg.source_vocab} "
            "rows; export the tokenizers the model was trained with"
        )
    hf_sd = to_hf(ed, layout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        write_safetensors(hf_sd, tmp, metadata={"format": "pt"})

    ids: dict[str, int | None] = {"bos_token_id": None}
    if source_tokenizer is None:  # one tokenizer: a target_tokenizer/ of an earlier export must go
        shutil.rmtree(out / TARGET_TOKENIZER_DIR, ignore_errors=True)
    if tokenizer is not None:
        target_dir = out / TARGET_TOKENIZER_DIR if source_tokenizer is not None else out
        target_dir.mkdir(exist_ok=True)
        ids["bos_token_id"] = _write_tokenizer(tokenizer, target_dir, cfg.max_len)["bos_token_id"]
        if source_tokenizer is not None:
            _write_tokenizer(source_tokenizer, out, cfg.max_len)
    ids.update(_framing(tokenizer, task))
    hf_cfg = {**hf_config(cfg, layout), **ids}
    hf_cfg["torch_dtype"] = str(hf_sd["final_logits_bias"].dtype).removeprefix("torch.")
    atomic_write_json(out / "config.json", hf_cfg)
    beam = getattr(task, "beam", None)
    max_new = getattr(task, "max_new_tokens", 0) or 0
    atomic_write_json(out / "generation_config.json", generation_config(cfg, ids, beam, max_new))
    return out


# ----------------------------------------------------------------------------------------------
# Import


def _config_fields(c: dict[str, Any], where: Path, layout: Layout) -> dict[str, Any]:
    """The ModelConfig fields that config.json alone decides (the embeddings' ties, the positions'
    kind and the head's bias follow from the weights)."""
    mt = layout.model_type
    act = c.get("activation_function", "gelu")
    if act not in _ACT_IN:
        raise LmforgeError(
            f"{where}: activation_function={act!r} is not supported; lmforge's {mt} layout has "
            "gelu, gelu_new and relu"
        )
    for enc_key, dec_key in (("encoder_attention_heads", "decoder_attention_heads"),
                             ("encoder_ffn_dim", "decoder_ffn_dim")):  # fmt: skip
        if c[enc_key] != c[dec_key]:
            raise LmforgeError(
                f"{where}: {enc_key}={c[enc_key]} but {dec_key}={c[dec_key]}; lmforge's encoder-decoder "
                "has one value for both stacks"
            )
    for flag, wants in _LEGACY_FLAGS.items():
        if flag in c and bool(c[flag]) != wants(layout):
            raise LmforgeError(
                f"{where}: {flag}={c[flag]} contradicts model_type={mt!r}, whose layout transformers "
                "fixes (and ignores the flag); the weights were trained for another layout"
            )
    if c.get("add_bias_logits"):
        raise LmforgeError(f"{where}: add_bias_logits=true is not supported")
    # Marian's decoder_vocab_size sizes the decoder's embedding and output layer apart from the
    # encoder's vocab_size: our vocab_size and src_vocab_size.
    vocab = c["vocab_size"]
    unshared = mt == "marian" and not c.get("share_encoder_decoder_embeddings", True)
    target_vocab = (c.get("decoder_vocab_size") or vocab) if unshared else vocab  # transformers' rule
    two = {"src_vocab_size": vocab, "share_embeddings": False} if target_vocab != vocab else {}
    post = layout.norm_position == "post"
    d_model, ffn = c["d_model"], c["encoder_ffn_dim"]
    return {
        "arch": "encoder-decoder",
        "vocab_size": target_vocab,
        **two,
        "n_layer": c["encoder_layers"],
        "n_dec_layer": None if c["decoder_layers"] == c["encoder_layers"] else c["decoder_layers"],
        "n_head": c["encoder_attention_heads"],
        "d_model": d_model,
        "d_ff": None if ffn == 4 * d_model else ffn,
        "max_len": c.get("max_position_embeddings", 1024),
        "norm": "layernorm",
        "norm_position": layout.norm_position,
        "norm_eps": _LN_EPS,
        "activation": _ACT_IN[act],
        "bias": True,
        "scale_embeddings": bool(c.get("scale_embedding", False)),
        "emb_norm": None if layout.emb_norm == post else layout.emb_norm,
        "dropout": float(c.get("dropout", 0.1) or 0.0),
        "init_std": c.get("init_std", 0.02),
    }


def _with_prefix(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors under the names of the ...ForConditionalGeneration class (a bare base
    model's keys lack the `model.` prefix)."""
    if any(k.startswith("model.") for k in hf):
        return hf
    return {k if k.startswith(("lm_head.", "final_logits_bias")) else f"model.{k}": v for k, v in hf.items()}


def from_hf(
    hf: dict[str, torch.Tensor], fields: dict[str, Any], layout: Layout, c: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """Checkpoint tensors -> (our tensors, the ModelConfig fields they decide, tensors left unused).

    Embeddings follow transformers' ties: a matrix the checkpoint lacks is the shared one (the
    output projection too, with `tie_word_embeddings`); which of ours are one matrix is then read
    off their values. A KeyError names a tensor the checkpoint lacks.
    """
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return hf[name]

    def get(name: str) -> torch.Tensor | None:
        return take(name) if name in hf else None

    cfg = ModelConfig(**fields)
    d, n_pos = cfg.d_model, cfg.max_len
    sd = {ours: take(name) for ours, name in _names(cfg, layout)}
    for ours, parts in _stacked(cfg):
        sd[ours] = torch.cat([take(p) for p in parts])

    shared, enc, dec = (
        get(f"model.{n}.weight") for n in ("shared", "encoder.embed_tokens", "decoder.embed_tokens")
    )
    head = get("lm_head.weight")
    fallback = next((t for t in (shared, dec, enc) if t is not None), None)
    if fallback is None:
        raise KeyError("model.shared.weight")
    enc = enc if enc is not None else fallback
    dec = dec if dec is not None else fallback
    if head is None:
        if not c.get("tie_word_embeddings", True):
            raise KeyError("lm_head.weight")
        shares = c.get("share_encoder_decoder_embeddings", True)
        head = dec if layout.model_type == "marian" and not shares else fallback  # the class's tie
    share, tie = enc.shape == dec.shape and torch.equal(enc, dec), torch.equal(head, dec)
    sd["encoder.tok_emb.weight"] = enc
    if not share:
        sd["decoder.tok_emb.weight"] = dec
    if not tie:
        sd["lm_head.weight"] = head

    tables = {}
    for side in ("encoder", "decoder"):
        table = get(f"model.{side}.embed_positions.weight")
        if table is None:
            if not layout.fixed_positions:
                raise KeyError(f"model.{side}.embed_positions.weight")
            table = fixed_table(n_pos, d)  # what the class computes for a checkpoint without one
        tables[side] = table[layout.offset :]
    position = "learned"
    for kind, table in (
        ("sinusoidal", sinusoidal_table(n_pos, d)),
        ("sinusoidal_halves", fixed_table(n_pos, d)),
    ):
        if all(t.shape == table.shape and torch.equal(t.float(), table) for t in tables.values()):
            position = kind
    if position == "learned":
        sd.update({f"{side}.pos_emb.weight": t for side, t in tables.items()})

    bias = get("final_logits_bias")
    head_bias = bias is not None and bool(bias.any())
    if head_bias:
        assert bias is not None
        sd["lm_head.bias"] = bias.reshape(-1)
    decided = {
        "share_embeddings": share,
        "tie_embeddings": tie,
        "position": position,
        "head_bias": head_bias,
    }
    ignorable = (".version", "._float_tensor")  # bookkeeping entries of fairseq conversions
    unused = sorted(k for k in hf if k not in used and not k.endswith(ignorable))
    return sd, decided, unused


def import_seq2seq(d: Path, c: dict[str, Any]) -> tuple[EncoderDecoder, Any]:
    """(our EncoderDecoder, our tokenizer) of a BART, Marian, Pegasus or mBART checkpoint directory
    whose config.json is `c`; in float32 and eval mode, as `from_pretrained` returns it."""
    where = d / "config.json"
    model_type = c.get("model_type")
    if model_type in T5_TYPES:
        from lmforge.interop.hf_t5 import import_t5

        return import_t5(d, c)
    layout = LAYOUTS[str(model_type)]
    try:
        fields = _config_fields(c, where, layout)
        ModelConfig(**fields)  # sizes checked before the weights are read
    except KeyError as e:
        raise LmforgeError(
            f"{where}: no {e.args[0]!r} entry, which a {model_type} config needs; the file is incomplete"
        ) from None
    except ValueError as e:
        raise LmforgeError(f"{where}: {e}") from None
    return build_imported(d, str(model_type), fields, lambda hf: from_hf(_with_prefix(hf), fields, layout, c))


def build_imported(
    d: Path, model_type: str, fields: dict[str, Any], convert: Any
) -> tuple[EncoderDecoder, Any]:
    """The checkpoint in `d` as our EncoderDecoder (float32, eval mode) and tokenizer: `convert`
    maps its tensors to (our tensors, the config fields they decide, tensors left unused); a
    missing or an unused tensor, or a tokenizer larger than the vocabulary, is refused."""
    try:
        sd, decided, unused = convert(_read_weights(d))
    except KeyError as e:
        raise LmforgeError(
            f"{d}: the weights lack tensor {e.args[0]!r} that config.json implies; the checkpoint is "
            "incomplete or its config does not match it"
        ) from None
    if unused:
        raise LmforgeError(
            f"{d}: the weights hold {len(unused)} tensor(s) a {model_type} model does not use, such as "
            f"{unused[0]!r}; the checkpoint was trained with another layout than its config says"
        )
    cfg = ModelConfig(**{**fields, **decided})
    model = EncoderDecoder(cfg)
    load_tensors(model, {k: v.float() for k, v in sd.items()}, str(d))
    tokenizer, source = read_tokenizers(d, model_type)
    if cfg.source_vocab != cfg.vocab_size and source is None:
        raise LmforgeError(
            f"{d}: the model has two vocabularies (vocab_size {cfg.source_vocab}, decoder_vocab_size "
            f"{cfg.vocab_size}) but the folder one tokenizer; put the target side's in {TARGET_TOKENIZER_DIR}/ "
            "(tokenizer.json there), the source side's staying in the folder"
        )
    for tok, rows, side in ((tokenizer, cfg.vocab_size, "target"), (source, cfg.source_vocab, "source")):
        if tok is not None and tok.vocab_size > rows:
            raise LmforgeError(
                f"{d}: the {side} tokenizer has {tok.vocab_size} tokens but config.json's {side} vocabulary "
                f"{rows}; the tokenizer does not belong to this model"
            )
    return model.eval(), tokenizer


def read_tokenizers(d: Path, model_type: str) -> tuple[Any, Any]:
    """(target tokenizer, source tokenizer or None) of an encoder-decoder checkpoint directory.

    One tokenizer.json serves both sides, unless the folder holds two: our two-vocabulary export
    (tokenizer.json the source's, target_tokenizer/ the target's), or a Marian checkpoint's
    SentencePiece files (source.spm, target.spm and vocab.json, read by `marian_spm`), whose two
    segmenters share one vocabulary in most checkpoints."""
    if (d / TARGET_TOKENIZER_DIR / "tokenizer.json").is_file():
        return _read_tokenizer(d / TARGET_TOKENIZER_DIR, model_type), _read_tokenizer(d, model_type)
    if model_type == "marian" and not (d / "tokenizer.json").is_file() and (d / "source.spm").is_file():
        from lmforge.interop.marian_spm import marian_tokenizers

        source, target = marian_tokenizers(d)
        return target, (None if source.sha256 == target.sha256 else source)
    return _read_tokenizer(d, model_type), None


def source_tokenizer_of(hf_dir: str | Path) -> Any:
    """The separate source tokenizer of an encoder-decoder checkpoint directory (see
    `read_tokenizers`), or None where one tokenizer serves both sides."""
    from lmforge.utils.io import read_json

    d = Path(hf_dir)
    model_type = str(read_json(d / "config.json").get("model_type"))
    if model_type not in LAYOUTS:
        return None
    return read_tokenizers(d, model_type)[1]


def run_config(d: Path, c: dict[str, Any]) -> dict[str, Any]:
    """What an imported run records beside the model: the objective its head was trained for
    (teacher-forced seq2seq), the decoder's start token, and the checkpoint's beam settings
    (generation_config.json over config.json)."""
    from lmforge.utils.io import read_json

    gen = dict(c)
    if (d / "generation_config.json").is_file():
        gen.update(read_json(d / "generation_config.json"))
    out: dict[str, Any] = {
        "objective": "seq2seq",
        "decoder_start_token_id": gen.get("decoder_start_token_id"),
    }
    keys = ("num_beams", "length_penalty", "early_stopping", "no_repeat_ngram_size", "max_length",
            "min_length", "max_new_tokens")  # fmt: skip
    generation = {k: gen[k] for k in keys if gen.get(k) is not None}
    if generation:
        out["generation"] = generation
    return out


__all__ = [
    "LAYOUTS",
    "Layout",
    "build_imported",
    "export_seq2seq",
    "fixed_table",
    "from_hf",
    "generation_config",
    "hf_config",
    "import_seq2seq",
    "layout_of",
    "read_tokenizers",
    "run_config",
    "seq2seq_parts",
    "source_tokenizer_of",
    "to_hf",
]
