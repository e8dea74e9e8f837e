"""The classic neural language models, as baselines trained by the same trainer as the Transformers.

- `NNLM`: the feed-forward model of Bengio et al. (2003), "A Neural Probabilistic Language Model".
  The embeddings of the last n-1 tokens are concatenated, go through one tanh layer and a softmax
  over the vocabulary; optionally also straight from the embeddings to the output (the paper's
  "direct connections"). It is an n-gram model whose table is replaced by a smooth function.
- `RecurrentLM`: an LSTM (or GRU) language model in the style of Zaremba et al. (2014), "Recurrent
  Neural Network Regularization": embedding -> stacked LSTM layers -> output layer, with dropout on
  every non-recurrent connection (embeddings, between layers, outputs), never on the recurrent one.

Both read (B, T) token ids and a carried `state` and return `RNNOutput(output, state)`: the logits
(B, T, vocab), or with `features=True` the inputs of `output_layer()` (which the objectives fuse
with the loss, as for `Transformer`), and the state to hand to the next window of the same streams. For the LSTM the
state is (h, c), for the GRU (h,), each (n_layer, B, hidden); for the NNLM it is (B, n-2) token ids,
the context the next window's first positions need. Carrying it makes consecutive windows of a
stream one long sequence (truncated backpropagation through time, see lmforge.objectives.rnn);
`state=None` starts from zeros (LSTM/GRU) or a learned "before the text" vector (NNLM).

Tied weights (Press & Wolf, 2017, "Using the Output Embedding to Improve Language Models"): the
output layer reuses the input embedding matrix (vocab, d_model), so it must read d_model-sized
vectors. When the hidden size differs, a bias-free linear projection hidden -> d_model is put in
front of the output layer (as in Inan et al./Melis et al.), which keeps the saving (vocab * d_model
parameters) at the cost of hidden * d_model.

Parameter names (the safetensors keys): `tok_emb.weight`, `rnn.weight_ih_l0`, ... (nn.LSTM's own),
`proj.weight`, `lm_head.weight` (not stored when tied), `lm_head.bias`; NNLM: `tok_emb.weight`,
`pad_emb`, `hidden.*`, `direct.weight`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.models.layers import OutputLayer

State = tuple[torch.Tensor, ...]

# Logits the fused output layer + loss may compute at once. `linear_cross_entropy`'s default chunk
# (16 MB of logits) suits Transformer batches of thousands of rows; a TBPTT batch is small (20 x 35
# = 700 rows) and its vocabulary often large (word level: 33k), and there every extra chunk costs
# more than it saves, because each one re-reads and re-writes the whole (vocab, d) weight gradient
# (measured on CPU at 700 x 32.5k: 3 chunks 9% slower than the unfused head, 1 chunk 9% faster).
# Up to this size the batch is one chunk; that is never more than the logits an unfused head holds.
HEAD_CHUNK_BYTES = 256 << 20


class RNNOutput(NamedTuple):
    """What the baselines return: unpack as `out, state = model(idx, state)`."""

    output: torch.Tensor  # logits (B, T, vocab), or with `features` the output layer's inputs (B, T, k)
    state: State  # to pass to the next window of the same streams

    @property
    def logits(self) -> torch.Tensor:
        """The output, under the name code written for `transformers` models reads
        (`getattr(out, "logits", out)`, as `lmforge.eval.perplexity` does)."""
        return self.output


class StateCache:
    """The decoding memory of a baseline, in the shape of `KVCache` that `lmforge.infer.generate`
    drives (`new_cache`, `reset`, `length`, `max_len`): it holds the carried state, so each new
    token costs one step instead of re-reading the text. Like a Transformer's cache it is rebuilt
    from the last tokens when `length` reaches `max_len` (model.max_len at most)."""

    def __init__(self, batch_size: int, max_len: int) -> None:
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0
        self.state: State | None = None

    def reset(self) -> None:
        self.length, self.state = 0, None


def _check_vocab(cfg: ModelConfig) -> None:
    if cfg.vocab_size <= 0:
        raise LmforgeError(
            f"model.vocab_size={cfg.vocab_size}; set it to the tokenizer's vocabulary size "
            "(or build the model through the trainer, which fills it in)"
        )


class _Baseline(nn.Module):
    """What both baselines share: the output layer (features for the objectives' fused loss), and
    parameter and FLOP counts in the Transformer's conventions."""

    config: ModelConfig
    tok_emb: nn.Embedding

    def _make_head(self, cfg: ModelConfig, hidden: int) -> None:
        """`proj` (hidden -> d_model, only to tie a different-sized hidden layer) and `lm_head`."""
        width = hidden
        self.proj: nn.Linear | None = None
        if cfg.tie_embeddings and hidden != cfg.d_model:
            self.proj = nn.Linear(hidden, cfg.d_model, bias=False)
            width = cfg.d_model
        self.lm_head = nn.Linear(width, cfg.vocab_size, bias=cfg.bias)
        nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)
        if self.lm_head.bias is not None:
            nn.init.zeros_(self.lm_head.bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def _output(self, h: torch.Tensor, features: bool, x: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, T, hidden) -> logits (B, T, vocab), or with `features` the inputs of `output_layer()`.

        The NNLM's direct connections add `x (B, T, k) @ direct.T` to the logits. As features that
        is one product of [h, x] with [lm_head, direct] (see `output_layer`), so the fused loss
        never holds the (B, T, vocab) logits either way.
        """
        if self.proj is not None:
            h = self.proj(h)  # (B, T, d_model)
        direct = getattr(self, "direct", None)
        if features:
            return torch.cat([h, x], dim=-1) if direct is not None and x is not None else h
        logits = self.lm_head(h)  # (B, T, vocab)
        if direct is not None and x is not None:
            logits = logits + nn.functional.linear(x, direct.weight)
        return logits

    def output_layer(self) -> OutputLayer:
        """The output layer over the features `forward(..., features=True)` returns, with a chunk
        size that keeps a whole TBPTT batch in one chunk (see HEAD_CHUNK_BYTES)."""
        weight = self.lm_head.weight
        direct = getattr(self, "direct", None)
        if direct is not None:
            weight = torch.cat([weight, direct.weight], dim=1)  # (vocab, d_model + c*d)
        return OutputLayer(weight, self.lm_head.bias, max(1, HEAD_CHUNK_BYTES // (4 * weight.size(0))))

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied embedding counted once).

        non_embedding=True leaves out the lookup table (and the NNLM's padding vector) unless it is
        tied to the output layer: what remains are the weights that do multiply-adds for every
        token, the N of `flops_per_token` (as `Transformer.num_params`).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if not self.config.tie_embeddings:
                n -= self.tok_emb.weight.numel()
            pad = getattr(self, "pad_emb", None)
            if pad is not None:
                n -= pad.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6*N, N = num_params(non_embedding=True).

        Every weight does one multiply-add per token in the forward pass and two in the backward;
        unlike attention nothing grows with the window, so `seq_len` (kept for the common
        interface) does not enter. Gate nonlinearities and elementwise products are left out.
        """
        return 6.0 * self.num_params(non_embedding=True)

    def new_cache(self, batch_size: int, max_len: int | None = None, **_: object) -> StateCache:
        """An empty `StateCache` for decoding (device and dtype follow the state itself)."""
        return StateCache(batch_size, max_len or self.config.max_len)

    def _step_cache(self, out: RNNOutput, cache: StateCache | None, length: int) -> RNNOutput | torch.Tensor:
        """With a cache, keep the new state in it and return the logits alone (as `Transformer`)."""
        if cache is None:
            return out
        cache.state, cache.length = out.state, cache.length + length
        return out.output


class RecurrentLM(_Baseline):
    """An LSTM or GRU language model (Zaremba et al., 2014): ids (B, T) + state -> logits + state.

    One `nn.LSTM`/`nn.GRU` call runs all layers over the whole window (cuDNN on GPUs, oneDNN/ATen
    kernels on CPUs); no Python loop over time steps or layers.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check_vocab(cfg)
        if cfg.arch not in ("lstm", "gru"):
            raise LmforgeError(f"RecurrentLM built from model.arch={cfg.arch!r}; use model.arch=lstm or gru")
        self.config = cfg
        self.hidden_size = cfg.rnn_hidden or cfg.d_model
        emb_p = cfg.dropout if cfg.emb_dropout is None else cfg.emb_dropout
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.uniform_(self.tok_emb.weight, -0.1, 0.1)  # as PyTorch's word_language_model
        self.emb_drop = nn.Dropout(emb_p) if emb_p > 0 else nn.Identity()
        rnn_cls = nn.LSTM if cfg.arch == "lstm" else nn.GRU
        # Recurrent weights keep PyTorch's U(-1/sqrt(hidden), 1/sqrt(hidden)): 0.04-0.06 for
        # 256-650 units, the range Zaremba et al. used (0.05 medium, 0.04 large).
        self.rnn = rnn_cls(
            cfg.d_model, self.hidden_size, num_layers=cfg.n_layer, batch_first=True,
            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0, bias=cfg.bias,
        )  # fmt: skip
        self.out_drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self._make_head(cfg, self.hidden_size)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros: the state at the start of a text (what `state=None` means)."""
        ref = self.tok_emb.weight
        z = torch.zeros(
            self.config.n_layer, batch_size, self.hidden_size, device=device or ref.device, dtype=ref.dtype
        )
        return (z, z.clone()) if self.config.arch == "lstm" else (z,)

    def forward(
        self,
        idx: torch.Tensor,
        state: State | None = None,
        *,
        features: bool = False,
        cache: StateCache | None = None,
    ) -> RNNOutput | torch.Tensor:
        """idx (B, T) ids, state from the previous window (None: start of text) -> RNNOutput.

        The output is the logits (B, T, vocab), or with `features` the inputs of `output_layer()`,
        which the objectives fuse with the loss (no (B, T, vocab) logits held). With a `cache`
        (decoding), the state is read from and kept in it, and the logits returned.
        """
        if cache is not None:
            state = cache.state
        x = self.emb_drop(self.tok_emb(idx))  # (B, T, d_model)
        hx = None
        if state is not None:
            hx = (state[0], state[1]) if self.config.arch == "lstm" else state[0]
        h, new = self.rnn(x, hx)  # h (B, T, hidden); new: (h_n, c_n) or h_n, each (n_layer, B, hidden)
        new_state = tuple(new) if isinstance(new, tuple) else (new,)
        out = RNNOutput(self._output(self.out_drop(h), features), new_state)
        return self._step_cache(out, cache, idx.size(1))


class NNLM(_Baseline):
    """Bengio et al.'s (2003) feed-forward LM: y = b + W x + U tanh(d + H x), x = the concatenated
    embeddings of the last `nnlm_context` tokens (W, the direct connections, only with nnlm_direct).

    All positions of a (B, T) batch at once: the embeddings of the window (after the carried
    context) are unfolded into (B, T, context, d_model) views and flattened, so no Python loop
    over positions. Position t sees tokens t-context+1 .. t and nothing else.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check_vocab(cfg)
        if cfg.arch != "nnlm":
            raise LmforgeError(f"NNLM built from model.arch={cfg.arch!r}; use model.arch=nnlm")
        self.config = cfg
        self.context = cfg.nnlm_context
        self.hidden_size = cfg.rnn_hidden or cfg.d_model
        d_in = self.context * cfg.d_model
        emb_p = cfg.dropout if cfg.emb_dropout is None else cfg.emb_dropout
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.uniform_(self.tok_emb.weight, -0.1, 0.1)
        # Stands in for the tokens before the start of a text (a learned vector, zero at first).
        self.pad_emb = nn.Parameter(torch.zeros(cfg.d_model))
        self.emb_drop = nn.Dropout(emb_p) if emb_p > 0 else nn.Identity()
        self.hidden = nn.Linear(d_in, self.hidden_size, bias=cfg.bias)  # H and d
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.direct = nn.Linear(d_in, cfg.vocab_size, bias=False) if cfg.nnlm_direct else None  # W
        if self.direct is not None:
            nn.init.zeros_(self.direct.weight)  # start as the plain tanh model; W is learned from there
        self._make_head(cfg, self.hidden_size)  # U and b

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The context before a text: context-1 positions of "no token" (-1)."""
        dev = device or self.tok_emb.weight.device
        return (torch.full((batch_size, self.context - 1), -1, dtype=torch.long, device=dev),)

    def forward(
        self,
        idx: torch.Tensor,
        state: State | None = None,
        *,
        features: bool = False,
        cache: StateCache | None = None,
    ) -> RNNOutput | torch.Tensor:
        """idx (B, T) ids, state = the previous window's last context-1 ids (None: start of text).

        Outputs as `RecurrentLM.forward` (logits, or with `features` the output layer's inputs; with
        a `cache` the logits alone).
        """
        if cache is not None:
            state = cache.state
        B, c = idx.size(0), self.context
        prev = self.init_state(B, idx.device)[0] if state is None else state[0]  # (B, c-1), -1 = none
        ids = torch.cat([prev.to(idx.dtype), idx], dim=1)  # (B, c-1+T)
        e = self.tok_emb(ids.clamp(min=0))  # (B, c-1+T, d)
        e = torch.where((ids < 0).unsqueeze(-1), self.pad_emb.to(e.dtype), e)
        # Window ending at position t: e[t : t+c]. unfold -> (B, T, d, c); oldest token first.
        x = e.unfold(1, c, 1).transpose(2, 3).flatten(2)  # (B, T, c*d)
        x = self.emb_drop(x)
        h = self.drop(torch.tanh(self.hidden(x)))  # (B, T, hidden)
        new_state = (ids[:, ids.size(1) - (c - 1) :],)  # (B, c-1)
        out = RNNOutput(self._output(h, features, x), new_state)
        return self._step_cache(out, cache, idx.size(1))


def build_baseline(cfg: ModelConfig) -> nn.Module:
    """The baseline `cfg.arch` names (randomly initialised, on the CPU, in float32)."""
    return NNLM(cfg) if cfg.arch == "nnlm" else RecurrentLM(cfg)


__all__ = ["NNLM", "RNNOutput", "RecurrentLM", "State", "StateCache", "build_baseline"]
