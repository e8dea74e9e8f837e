"""ModelConfig: one dataclass for every architecture lmforge builds.

GPT-2, Llama-style and BERT-style models are the same blocks switched by these fields: a new
variant of an architecture is a new config, not a new file. `arch` picks how the blocks are
wired: a causal decoder (`Transformer`) or a bidirectional encoder (`Encoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The classic baselines of lmforge.models.rnn, trained with their state carried across batches.
BASELINE_ARCHS = ("lstm", "gru", "nnlm")
Arch = Literal["decoder", "encoder", "encoder-decoder", "lstm", "gru", "nnlm"]


def _h(text: str):
    return field(default=None, metadata={"help": text})


@dataclass
class ModelConfig:
    # decoder = GPT (causal LM); encoder = BERT (bidirectional, for masked-LM objectives);
    # encoder-decoder = the original Transformer (translation, summarisation, T5/BART); the classic
    # baselines (lmforge.models.rnn): lstm / gru = recurrent LM (Zaremba et al.), nnlm = feed-forward LM
    # (Bengio et al.); for these d_model is the embedding size, n_layer the stacked LSTM/GRU layers.
    arch: Arch = "decoder"
    # Vocabulary size; 0 means "take it from the tokenizer" (padded up to a multiple of 64 for speed).
    vocab_size: int = 0
    # encoder-decoder with two vocabularies (a source and a target tokenizer): the encoder's token
    # embedding rows; 0 means vocab_size (one joint vocabulary). Needs share_embeddings=false.
    src_vocab_size: int = 0
    n_layer: int = 6  # Transformer blocks (the encoder's in an encoder-decoder; LSTM/GRU layers)
    # encoder-decoder: the decoder's blocks; None means n_layer (the paper's 6 + 6).
    n_dec_layer: int | None = None
    n_head: int = 6  # attention heads (d_model must divide evenly)
    # Key/value heads for grouped-query attention; None means n_head (plain multi-head attention).
    n_kv_head: int | None = None
    d_model: int = 384  # width of the residual stream
    # Hidden size of the MLP; None means 4*d_model (or ~8/3*d_model rounded to 64 for SwiGLU).
    d_ff: int | None = None
    # Longest sequence the model accepts (size of the learned position table / RoPE cache).
    max_len: int = 256
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # rmsnorm: Llama; cheaper, no mean subtraction
    # "pre": GPT-2/Llama (norm before each sublayer, final norm); "post": original Transformer/BERT.
    norm_position: Literal["pre", "post"] = "pre"
    norm_eps: float = 1e-5  # added to the variance inside the norm for numerical safety
    # rope: rotary (Llama), extends best; t5: a learned bias per head and bucket of query-key distance
    # added to the attention scores (Raffel et al. 2020), nothing added to the embeddings.
    # sinusoidal_halves: the same fixed table with the sines in the first half of the channels and
    # the cosines in the second (tensor2tensor, fairseq, Marian), the one a Marian export needs.
    position: Literal["learned", "sinusoidal", "sinusoidal_halves", "rope", "t5"] = "learned"
    # t5 positions: distance buckets (half exact, half logarithmic) and the distance the last
    # bucket begins at; a decoder's buckets all look back, an encoder's split both ways.
    relative_buckets: int = 32
    relative_max_distance: int = 128
    rope_theta: float = 10000.0  # RoPE base frequency
    # gelu: exact erf GELU; gelu_tanh: GPT-2's approximation; swiglu: gated by SiLU (Llama);
    # geglu: gated by the tanh GELU (T5 v1.1's "gated-gelu").
    activation: Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu"] = "gelu_tanh"
    # Attention scores are q.k times this; None means 1/sqrt(head_dim). T5 uses 1 (its
    # initialisation folds the scaling into the query weights).
    attn_scale: float | None = None
    # encoder-decoder: the decoder's final hidden states are multiplied by this before the output
    # layer (T5 with tied embeddings: d_model^-0.5).
    head_scale: float = 1.0
    # Biases in linear layers and norms (GPT-2: true; Llama: false).
    bias: bool = True
    # Share the input embedding with the output projection (saves vocab*d_model parameters).
    tie_embeddings: bool = True
    # encoder-decoder: one token embedding for source and target (a joint vocabulary); with
    # tie_embeddings too, the three matrices are one (Press & Wolf; the paper's base model).
    share_embeddings: bool = True
    # Multiply token embeddings by sqrt(d_model) before adding positions (Vaswani et al., Marian,
    # fairseq), which keeps them from being swamped by sinusoidal positions of amplitude 1.
    scale_embeddings: bool = False
    # encoder-decoder: a LayerNorm over each stack's embedding sum; None means what norm_position
    # implies (post-norm stacks have one, as BART; pre-norm stacks do not, as Pegasus). false with
    # post-norm is Marian's layout, true with pre-norm mBART's.
    emb_norm: bool | None = None
    # encoder-decoder: a bias on the output projection (`lm_head.bias`; the final_logits_bias of
    # BART and Marian checkpoints, which Marian's converted models fill).
    head_bias: bool = False
    dropout: float = 0.0  # 0 for pretraining on plenty of data; 0.1-0.2 on small corpora
    # Segment (token type) embeddings of encoders: 2 for BERT's sentence A/B; 0 = none.
    type_vocab_size: int = 2
    # One fused Linear `qkv` for the attention's queries, keys and values (the faster default); false
    # builds separate `q`, `k`, `v` Linears that name patterns (LoRA's) can target one by one.
    # Checkpoints load into either layout.
    fused_qkv: bool = True
    # Std of the normal init; residual projections are further scaled by 1/sqrt(2*n_layer) (GPT-2).
    init_std: float = 0.02
    # lstm/gru: state size of each layer; nnlm: width of the tanh hidden layer. None means d_model;
    # with tie_embeddings a different size gets a projection to d_model before the output layer.
    rnn_hidden: int | None = None
    # nnlm: tokens each prediction conditions on (n-1 of an n-gram model; Bengio et al. used 4-5).
    nnlm_context: int = 4
    # nnlm: direct connections from the concatenated embeddings to the output (Bengio et al.'s W).
    nnlm_direct: bool = False
    # lstm/gru/nnlm: dropout on the input embeddings; None means dropout (Zaremba et al. drop every
    # non-recurrent connection alike).
    emb_dropout: float | None = None

    def __post_init__(self) -> None:
        if self.arch not in BASELINE_ARCHS:  # attention shapes mean nothing to the baselines
            if self.d_model % self.n_head:
                raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
            kv = self.kv_heads
            if self.n_head % kv:
                raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={kv}")
            if self.position == "rope" and self.head_dim % 2:
                raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
            if self.position == "t5" and not 4 <= self.relative_buckets <= self.relative_max_distance:
                raise ValueError(
                    f"t5 positions need 4 <= relative_buckets <= relative_max_distance, got "
                    f"{self.relative_buckets} and {self.relative_max_distance} (T5: 32 and 128)"
                )
        if self.rnn_hidden is not None and self.rnn_hidden <= 0:
            raise ValueError(f"rnn_hidden must be positive (or null for d_model), got {self.rnn_hidden}")
        if self.nnlm_context <= 0:
            raise ValueError(f"nnlm_context must be positive, got {self.nnlm_context}")
        if self.emb_dropout is not None and not 0.0 <= self.emb_dropout < 1.0:
            raise ValueError(f"emb_dropout must be in [0, 1), got {self.emb_dropout}")
        if self.arch != "encoder-decoder":
            for name, unset in (("emb_norm", None), ("head_bias", False), ("head_scale", 1.0)):
                if getattr(self, name) != unset:
                    raise ValueError(
                        f"{name}={getattr(self, name)} applies to arch=encoder-decoder only, not {self.arch}"
                    )
        if self.src_vocab_size < 0:
            raise ValueError(f"src_vocab_size must be >= 0 (0 for vocab_size), got {self.src_vocab_size}")
        if self.src_vocab_size and self.arch != "encoder-decoder":
            raise ValueError(f"src_vocab_size applies to arch=encoder-decoder only, not {self.arch}")
        if self.src_vocab_size not in (0, self.vocab_size) and self.share_embeddings:
            raise ValueError(
                f"src_vocab_size={self.src_vocab_size} differs from vocab_size={self.vocab_size}, so the "
                "encoder and decoder cannot share one embedding; set share_embeddings=false"
            )
        if self.n_dec_layer is not None and self.n_dec_layer <= 0:
            raise ValueError(f"n_dec_layer must be positive (or null for n_layer), got {self.n_dec_layer}")
        for name in ("n_layer", "n_head", "d_model", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def source_vocab(self) -> int:
        """The encoder's embedding rows of an encoder-decoder (vocab_size with a joint vocabulary)."""
        return self.src_vocab_size or self.vocab_size

    @property
    def dec_layers(self) -> int:
        """The decoder's blocks of an encoder-decoder."""
        return self.n_dec_layer or self.n_layer

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.activation in ("swiglu", "geglu"):
            return 64 * ((int(8 * self.d_model / 3) + 63) // 64)
        return 4 * self.d_model
