"""Beam search over the decoding protocol, batched on the device, with Hugging Face's rules.

    session = open_session(model, B, max_len)
    logits = session.prefill(ids, mask)              # (B, V)
    result = beam_search(session, logits, BeamConfig(num_beams=4), eos_id=eos, pad_id=pad)
    result.tokens[b, 0]                              # the best hypothesis of input b

It reproduces `transformers`' beam search (`GenerationMixin._beam_search`) token for token, so
that a checkpoint decodes the same here and there: the same candidate set (the best 2K
continuations of all K beams, of which an eos only finishes a hypothesis when it ranks among the
first K), the same length-penalised score, the same stopping tests, and the same float32
arithmetic, down to its -1e9 "impossible" offsets, so that filler hypotheses come out in the
same order too. (Candidates are picked among each beam's best tokens first, `top_per_row`, so
only the order of exactly equal log-probabilities could differ.)

Every step is a handful of tensor ops on all active inputs at once (topk, gather, cat): no Python
loop over inputs, beams or hypotheses. The finished hypotheses are tensors too, K per input with
their scores, merged with each step's new ones by one topk. An input that is done stops costing
compute: its K rows leave the session (`DecodeSession.reorder`), so later steps run on the rest.
Deciding that takes one read of a (B,) mask per step, the only host sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.infer.decoding import DecodeSession, open_session

# Hugging Face's "cannot be chosen" offset. A sum of log-probabilities is finite and far above it,
# so a candidate that gets it ranks below every real one, yet it still orders the fillers among
# themselves exactly as there (-inf would not).
_IMPOSSIBLE = -1.0e9


@dataclass
class BeamConfig:
    num_beams: int = 4
    max_new_tokens: int = 100  # generated tokens per hypothesis at most (eos included)
    min_new_tokens: int = 0  # eos is forbidden before this many tokens
    length_penalty: float = 1.0  # score = sum log p / (length ** length_penalty), as in HF
    # True: an input is done as soon as num_beams hypotheses finished. False: HF's heuristic, done
    # when the best running beam, scored at the current length, cannot beat the worst finished one.
    early_stopping: bool = True
    no_repeat_ngram_size: int = 0  # no n-gram of this size occurs twice in a hypothesis (0 = off)
    num_return: int = 1  # hypotheses returned per input, best first (<= num_beams)
    compile: bool = (
        False  # decode steps through torch.compile (the first steps pay tens of seconds of compiling)
    )

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens}"
            )
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if not isinstance(self.early_stopping, bool):
            raise ValueError(f"early_stopping must be True or False, got {self.early_stopping!r}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        if not 1 <= self.num_return <= self.num_beams:
            raise ValueError(f"num_return must be in [1, num_beams={self.num_beams}], got {self.num_return}")


@dataclass
class BeamResult:
    tokens: torch.Tensor  # (B, num_return, L) generated ids (eos included where reached), padded with pad_id
    lengths: torch.Tensor  # (B, num_return) generated lengths
    scores: torch.Tensor  # (B, num_return) length-penalised scores, best first


def ban_repeated_ngrams(logp: torch.Tensor, seqs: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid (-inf) every token that would complete an n-gram already in its row of `seqs` (R, L).

    logp (R, V). The last n-1 tokens are matched against every window of the row at once
    (`unfold`), and each matching window bans its own last token: O(L) work, no loop over rows.
    Negative ids (padding) never match a real prefix and ban nothing.
    """
    length = seqs.size(1)
    if n <= 0 or length < n:
        return logp
    prefix = seqs[:, length + 1 - n :]  # (R, n-1)
    windows = seqs.unfold(1, n, 1)  # (R, L-n+1, n)
    matches = (windows[..., :-1] == prefix[:, None]).all(-1)  # (R, L-n+1)
    V = logp.size(-1)
    last = windows[..., -1]
    # Non-matching windows (and ids outside the vocabulary) go to a spare column, which is dropped.
    column = torch.where(matches & (last >= 0), last.clamp(max=V), V)
    banned = torch.zeros(logp.size(0), V + 1, dtype=torch.bool, device=logp.device)
    banned.scatter_(1, column, True)
    return logp.masked_fill(banned[:, :V], float("-inf"))


def top_per_row(x: torch.Tensor, k: int, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.topk(x, k)` of rows x (R, V) (k above V gives all V), for a vocabulary-sized V.

    The k best values of a row lie in the k blocks of `block` columns with the highest maxima
    (each of those blocks holds a value at least as high as its maximum's rank), so one fast max
    per block, a topk over the R x V/block maxima and one over the k * block values of the chosen
    blocks replace a topk over all V, which is several times slower on CPU. Values and indices
    equal topk's, but for the order among exactly equal values.
    """
    R, V = x.shape
    if k >= V:
        return torch.topk(x, V)
    blocks = V // block
    if blocks < 4 * k:  # too few blocks to gain anything
        return torch.topk(x, k)
    whole = blocks * block
    grid = x[:, :whole].view(R, blocks, block)
    best = grid.amax(-1).topk(k).indices  # (R, k) the blocks holding the k best values
    ids = (best[:, :, None] * block + torch.arange(block, device=x.device)).reshape(R, k * block)
    values = grid.gather(1, best[:, :, None].expand(R, k, block)).reshape(R, k * block)
    if whole < V:  # the last, partial block is always a candidate
        values = torch.cat([values, x[:, whole:]], 1)
        ids = torch.cat([ids, torch.arange(whole, V, device=x.device).expand(R, V - whole)], 1)
    top, where = values.topk(k)
    return top, ids.gather(1, where)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (A, N, ...) -> (A, M, ...): entries index (A, M) along dim 1 (HF's `_gather_beams`)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


@torch.no_grad()
def beam_search(
    session: DecodeSession,
    first_logits: torch.Tensor,
    cfg: BeamConfig,
    *,
    eos_id: int | None,
    pad_id: int,
    history: torch.Tensor | None = None,
    length_offset: int = 0,
) -> BeamResult:
    """Beam search from a session prefilled with B rows (one per input), whose next-token logits
    are `first_logits` (B, V). The session ends up holding the rows of the inputs still running
    at the end (none, unless max_new_tokens was reached): reuse it only after a new prefill.

    `history` (B, P) is what each row already holds (the prompt, or an encoder-decoder's decoder
    prefix), which `no_repeat_ngram_size` counts as part of every hypothesis, as HF does; mark its
    padding with negative ids. `length_offset` is added to the generated length wherever the
    length penalty divides by a length: current transformers divide by the generated length only
    (0, decoder-only and encoder-decoder alike); releases that counted the whole sequence of a
    decoder-only model are reproduced with the prompt length P.

    As in HF, the K beams of an input start as one: beam 0 scores 0 and the copies -1e9, so step 0
    picks its candidates from beam 0 alone (while it has enough of them), and only then is each
    input's row expanded to its K beams (`session.reorder`).
    """
    if first_logits.dim() != 2:
        raise ValueError(f"first_logits must be (batch, vocab), got shape {tuple(first_logits.shape)}")
    B, V = first_logits.shape
    K, M, lp = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    device = first_logits.device
    C = min(2 * K, K * V)  # candidates per input: enough that K survive even if K end at eos
    is_top_k = torch.arange(C, device=device) < K  # (C,) only these ranks may finish a hypothesis

    # Active inputs (A of them; B at first). rows: each one's original input.
    rows = torch.arange(B, device=device)
    hist = None if history is None else history.to(device=device, dtype=torch.long)  # (A, P)
    run_tok = torch.full((B, K, M), pad_id, dtype=torch.long, device=device)  # (A, K, M) running beams
    run_score = torch.zeros(B, K, device=device, dtype=torch.float32)  # (A, K) sums of log-probabilities
    run_score[:, 1:] = _IMPOSSIBLE
    run_src = torch.zeros(B, K, dtype=torch.long, device=device)  # (A, K) beam each one extends
    fin_tok = run_tok.clone()  # (A, K, M) the K best finished hypotheses, best first
    fin_score = torch.full((B, K), _IMPOSSIBLE, device=device, dtype=torch.float32)  # (A, K) penalised
    fin_len = torch.zeros(B, K, dtype=torch.long, device=device)
    fin_real = torch.zeros(B, K, dtype=torch.bool, device=device)  # (A, K) a hypothesis, not a filler
    open_ = torch.ones(B, 1, dtype=torch.bool, device=device)  # (A, 1) HF: early stop not yet justified
    # Results by original input, written when an input is done.
    out_tok, out_score, out_len = fin_tok.clone(), fin_score.clone(), fin_len.clone()

    logits, per_input = first_logits, 1  # session rows per active input: 1 until the first expansion
    for t in range(M):  # t tokens generated so far
        A = rows.numel()
        logp = torch.log_softmax(logits.float(), dim=-1)  # (A * per_input, V)
        if cfg.no_repeat_ngram_size > 0:
            prefix = hist.repeat_interleave(per_input, 0) if hist is not None else None
            generated = run_tok[:, :per_input, :t].reshape(A * per_input, t)
            seqs = generated if prefix is None else torch.cat([prefix, generated], 1)
            logp = ban_repeated_ngrams(logp, seqs, cfg.no_repeat_ngram_size)
        if eos_id is not None and t < cfg.min_new_tokens:
            logp[:, eos_id] = float("-inf")
        # The C best continuations of all beams of each input are among each beam's C best tokens:
        # choose those per row first, so that only (A, K * C) sums are formed and ranked, not K * V.
        row_lp, row_id = top_per_row(logp, C)  # (A * per_input, C') with C' = min(C, V)
        width = row_lp.size(1)
        row_lp = row_lp.view(A, per_input, width).expand(A, K, width)  # step 0: K copies of one beam
        row_id = row_id.view(A, per_input, width).expand(A, K, width).reshape(A, K * width)
        total = (row_lp + run_score[:, :, None]).reshape(A, K * width)
        cand_score, cand_index = torch.topk(total, C)  # (A, C)
        cand_src, cand_id = cand_index // width, row_id.gather(1, cand_index)
        cand_tok = _take(run_tok, cand_src)  # (A, C, M)
        cand_tok[:, :, t] = cand_id
        ends = (
            cand_id == eos_id if eos_id is not None else torch.zeros_like(cand_id, dtype=torch.bool)
        )  # (A, C)
        if t == M - 1:  # the length limit ends every candidate
            ends = torch.ones_like(ends)

        # The K best candidates that did not end keep running.
        running = cand_score + ends.float() * _IMPOSSIBLE
        keep = torch.topk(running, K).indices  # (A, K)
        run_tok, run_score, run_src = _take(cand_tok, keep), _take(running, keep), _take(cand_src, keep)

        # Candidates that ended among the first K ranks join the finished ones, unless the input
        # is already done (full with early_stopping, or no improvement possible); keep the best K.
        new_score = cand_score / ((t + 1 + length_offset) ** lp)
        full = fin_real.all(-1, keepdim=True) & cfg.early_stopping
        new_score = new_score + full.float() * _IMPOSSIBLE
        new_score = new_score + (~open_).float() * _IMPOSSIBLE
        new_score = new_score + (~(ends & is_top_k)).float() * _IMPOSSIBLE
        merged = torch.cat([fin_score, new_score], 1)  # (A, K + C)
        best = torch.topk(merged, K).indices  # (A, K), best first
        fin_score = _take(merged, best)
        fin_tok = _take(torch.cat([fin_tok, cand_tok], 1), best)
        fin_len = _take(torch.cat([fin_len, torch.full_like(cand_id, t + 1)], 1), best)
        fin_real = _take(torch.cat([fin_real, ends & is_top_k], 1), best)

        # HF's heuristic: can the best running beam, at the current length, still beat the worst
        # finished hypothesis? (A filler counts as beatable.)
        best_running = run_score[:, :1] / ((t + 1 + length_offset) ** lp)  # (A, 1)
        worst = torch.where(fin_real, fin_score.min(1, keepdim=True).values, _IMPOSSIBLE)  # (A, K)
        open_ = open_ & (best_running > worst).any(-1, keepdim=True)

        if t == M - 1:
            break
        # Without an eos no input can finish early (short of pathological -1e9 scores, which HF
        # would also freeze, as the offsets above do here): skip the host sync.
        if eos_id is None:
            done_host = None
        else:
            done = ~open_[:, 0] | (fin_real.all(-1) & cfg.early_stopping)  # (A,)
            done_host = done.cpu()  # the one host sync of the step
        if done_host is not None and bool(done_host.any()):
            gone = done_host.nonzero().squeeze(1).to(device)
            out_tok.index_copy_(0, rows[gone], fin_tok[gone])
            out_score.index_copy_(0, rows[gone], fin_score[gone])
            out_len.index_copy_(0, rows[gone], fin_len[gone])
            if bool(done_host.all()):
                rows = rows[:0]
                break
            stay = (~done_host).nonzero().squeeze(1).to(device)
            rows, run_tok, run_score, run_src, open_ = (
                x.index_select(0, stay) for x in (rows, run_tok, run_score, run_src, open_)
            )
            fin_tok, fin_score, fin_len, fin_real = (
                x.index_select(0, stay) for x in (fin_tok, fin_score, fin_len, fin_real)
            )
            if hist is not None:
                hist = hist.index_select(0, stay)
        else:
            stay = torch.arange(rows.numel(), device=device)
        # Session rows of the surviving beams: the rows they extend, of the inputs that stay.
        src = run_src if per_input == K else torch.zeros_like(run_src)
        session.reorder((stay[:, None] * per_input + src).reshape(-1), stay)
        per_input = K
        logits = session.step(run_tok[:, :, t].reshape(-1))  # (A' * K, V)

    if rows.numel():
        out_tok.index_copy_(0, rows, fin_tok)
        out_score.index_copy_(0, rows, fin_score)
        out_len.index_copy_(0, rows, fin_len)
    R = cfg.num_return
    lengths = out_len[:, :R]
    width = int(lengths.max())
    return BeamResult(tokens=out_tok[:, :R, :width], lengths=lengths, scores=out_score[:, :R])


def beam_generate(
    model: Any,
    prompt_ids: torch.Tensor,
    cfg: BeamConfig,
    *,
    eos_id: int | None,
    pad_id: int,
    attention_mask: torch.Tensor | None = None,
) -> BeamResult:
    """Beam search continuations of the prompts `prompt_ids` (B, T) of a decoder-only model (or a
    baseline), left-padded with their `attention_mask` (B, T) where their lengths differ
    (`lmforge.infer.decoding.left_pad`).

    The session holds the whole text (no sliding window: a beam's score is over all of it), so the
    prompt plus max_new_tokens must fit in model.config.max_len. The length penalty divides by the
    generated length, as current transformers do for decoder-only models.
    """
    if prompt_ids.dim() != 2 or prompt_ids.size(1) == 0:
        raise LmforgeError(
            f"prompt ids must be a non-empty (batch, length) tensor, got shape {tuple(prompt_ids.shape)}"
        )
    if attention_mask is not None and attention_mask.shape != prompt_ids.shape:
        raise LmforgeError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the prompt ids {tuple(prompt_ids.shape)}"
        )
    model = getattr(model, "_orig_mod", model)  # eager: a compiled module recompiles per cache length
    B, T = prompt_ids.shape
    if T + cfg.max_new_tokens > model.config.max_len:
        raise LmforgeError(
            f"a prompt of {T} tokens plus max_new_tokens={cfg.max_new_tokens} exceeds the model's "
            f"max_len={model.config.max_len}; beam search does not slide a window, so shorten one of them"
        )
    device = next(model.parameters()).device
    ids = prompt_ids.to(device=device, dtype=torch.long)
    mask = None if attention_mask is None else attention_mask.to(device=device, dtype=torch.bool)
    history = ids if mask is None else ids.masked_fill(~mask, -1)  # padding takes part in no n-gram
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            session = open_session(model, B, T + cfg.max_new_tokens, compiled=cfg.compile)
            logits = session.prefill(ids, mask)
            return beam_search(session, logits, cfg, eos_id=eos_id, pad_id=pad_id, history=history)
    finally:
        model.train(was_training)


__all__ = ["BeamConfig", "BeamResult", "ban_repeated_ngrams", "beam_generate", "beam_search", "top_per_row"]
