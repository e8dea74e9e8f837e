"""Text generation: batched cached decoding, sampling filters, and UTF-8-safe streaming of text.

`Generation` (and `generate_ids`, its iterator) is the engine: token ids in, one token per row
per step out, rows finishing on their own at eos. It drives the prefill/step protocol of
`lmforge.infer.decoding`, which runs the prompts through the model once and then feeds one token
per step, reusing the keys and values (or the state) of all earlier positions. `generate_text`
turns the ids of one prompt into printable pieces as they arrive; `generate` returns the whole
completion, `generate_batch` the completions of several prompts decoded together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.infer.decoding import DecodeSession, Source, left_pad, open_session

# Tokens of the prompt decoded together with the new ones, so that tokenizers whose decoding of a
# token depends on its left neighbour (e.g. sentencepiece's leading-space marker) print correctly.
_CONTEXT_TOKENS = 5


@dataclass
class GenerationConfig:
    max_new_tokens: int = 100  # tokens to generate at most
    temperature: float = 1.0  # divides the logits; <1 sharpens, >1 flattens; 0 = greedy (argmax)
    top_k: int = 0  # sample only among the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens holding this probability (1.0 = off)
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the text (CTRL); 1.0 = off
    stop: list[str] = field(default_factory=list)  # stop strings; the output is cut before the first one
    seed: int | None = None  # same seed -> same text (on the same device); None = different every time
    compile: bool = (
        False  # decode steps through torch.compile (the first steps pay tens of seconds of compiling)
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


# ----------------------------------------------------------------------------------------------
# Logit processors: each maps logits (B, V) to logits (B, V); removed tokens get -inf.


def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: for tokens already in `history` (B, T), divide positive logits by `penalty`
    and multiply negative ones, so both move towards "less likely"."""
    scores = logits.gather(1, history)  # (B, T)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(1, history, scores)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept too)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most-likely tokens whose probability adds up to at least p.

    A token is dropped when the tokens ranked above it already hold p; the top token always stays,
    and so does every token tied with the least likely one kept (as `top_k_filter` keeps ties).
    """
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < nucleus_threshold(probs, p), float("-inf"))


def nucleus_threshold(probs: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """(B, 1): the probability of the least likely token of each row's top-p nucleus (`p` one
    value, or one per row (B, 1)). Only the sorted probabilities are needed, not the order: the
    nucleus is every token at least as likely as its last member, a threshold compared in
    vocabulary order (no scatter back)."""
    if not isinstance(p, torch.Tensor) and not p > 0.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    ranked = descending(probs)  # (B, V)
    mass_before = torch.cumsum(ranked, dim=-1) - ranked  # probability of all higher-ranked tokens
    # >= 1: nothing ranks above the top token (unless p is below float32's smallest number)
    size = (mass_before < p).sum(dim=-1, keepdim=True).clamp_(min=1)
    return ranked.gather(1, size - 1)


def descending(values: torch.Tensor) -> torch.Tensor:
    """Each row's values sorted largest first (values only). On the CPU through NumPy's vectorised
    sort, which takes 0.3 ms for (8, 8192) float32 rows where torch.sort takes 4.6 ms (one thread):
    at that size the sort, not the model, was most of a nucleus-sampling step."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        ranked = np.sort(values.detach().numpy(), axis=-1)[..., ::-1]
        return torch.from_numpy(np.ascontiguousarray(ranked))
    return torch.sort(values, dim=-1, descending=True).values


def sample_categorical(
    probs: torch.Tensor, rng: torch.Generator | None, u: torch.Tensor | None = None
) -> torch.Tensor:
    """One draw per row of (B, V) probabilities (unnormalised is fine): the first token whose
    running total reaches u times the row's total, u uniform in (0, 1], so a token of zero mass is
    never chosen (its total equals its left neighbour's, which is reached first). The inverse CDF by
    `searchsorted` costs one cumsum, a seventh of torch.multinomial here. `u` (B, 1) gives the
    uniforms instead of `rng` (each row its own stream: `row_uniforms`)."""
    cdf = torch.cumsum(probs.float(), dim=-1)  # (B, V); half precision would saturate early
    if cdf.device.type != "cpu":  # a parallel scan may dip by an ulp where a token has no mass
        cdf = torch.cummax(cdf, dim=-1).values
    if u is None:
        u = 1.0 - torch.rand(probs.size(0), 1, generator=rng, device=probs.device, dtype=cdf.dtype)
    else:
        u = u.to(device=cdf.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=probs.size(-1) - 1).squeeze(-1)


def row_uniforms(seeds: Sequence[int], steps: Sequence[int]) -> torch.Tensor:
    """(B, 1) uniforms in (0, 1], one per row, a function of that row's (seed, step) only: a
    sequence sampled with a seed draws the same numbers whatever else shares its batch (the
    server's continuous batching). SplitMix64 (Steele et al. 2014) of seed and step, on the host
    in wrapping uint64 arithmetic."""
    with np.errstate(over="ignore"):
        mask = (1 << 64) - 1  # any Python int seed (negative, huge) as its 64 low bits
        z = np.asarray([s & mask for s in seeds], np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = z + np.asarray([s & mask for s in steps], np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = ((z >> np.uint64(11)).astype(np.float64) + 1.0) / float(1 << 53)  # 53 random bits, (0, 1]
    return torch.from_numpy(u)[:, None]


def sample_next(
    logits: torch.Tensor, history: torch.Tensor, gen: GenerationConfig, rng: torch.Generator | None
) -> torch.Tensor:
    """Choose the next token of each row from last-position logits (B, V); returns (B,)."""
    logits = logits.float()
    if gen.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, history, gen.repetition_penalty)
    if gen.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(top_k_filter(logits / gen.temperature, gen.top_k), dim=-1)
    if gen.top_p < 1.0:  # the nucleus, as top_p_filter keeps it, without a second softmax
        probs = probs.masked_fill(probs < nucleus_threshold(probs, gen.top_p), 0.0)
    return sample_categorical(probs, rng)


# ----------------------------------------------------------------------------------------------
# Token ids


def _new_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A private RNG, so sampling neither reads nor advances the global one."""
    rng = torch.Generator(device=device)
    if seed is None:
        rng.seed()  # fresh entropy from the OS
    else:
        rng.manual_seed(seed)
    return rng


class Generation:
    """One batched generation run: iterate it for the next token ids (B,) of every row, one step at a time.

    A row is finished once it has produced `eos_id` (which is yielded; several ids may end a row,
    e.g. a chat's end-of-turn token and end-of-text, the first of them padding) or its caller `finish`es it
    (a stop string, seen in the text); a finished row keeps producing `pad_id` (default: eos_id,
    else 0), and `done` (B,) says which rows are. The run ends after `gen.max_new_tokens` steps or
    when every row is done. Rows can only finish early when there is an eos_id or `finish` was
    called; then each step reads `done.all()` once on the host (the one sync per step; everything
    else stays on the device, with no loop over rows).

    Prompts of different lengths come left-padded with an `attention_mask` (`left_pad`). When the
    text outgrows the cache (model.max_len at most), the oldest tokens slide out of the window: the
    session is prefilled again with the last max_len-1 columns, which leaves room for the next one.

    An encoder-decoder generates from a `source` (ids (B, S) and their padding mask); its prompt
    ids are the decoder's start tokens (B, 1).
    """

    def __init__(
        self,
        model: Any,
        prompt_ids: torch.Tensor,
        gen: GenerationConfig,
        *,
        eos_id: int | Sequence[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        pad_id: int | None = None,
        source: Source | None = None,
    ):
        if prompt_ids.dim() != 2 or prompt_ids.size(1) == 0:
            raise LmforgeError(
                f"prompt ids must be a non-empty (batch, length) tensor, got shape {tuple(prompt_ids.shape)}; "
                "start from at least one token (e.g. the end-of-text token)"
            )
        if attention_mask is not None and attention_mask.shape != prompt_ids.shape:
            raise LmforgeError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the prompt ids {tuple(prompt_ids.shape)}"
            )
        # Decode with the eager module: a torch.compile'd one would recompile for every cache length.
        self.model = getattr(model, "_orig_mod", model)
        ends = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else [int(e) for e in eos_id]
        self.gen, self.eos_id = gen, (ends[0] if ends else None)
        self.pad_id = pad_id if pad_id is not None else (ends[0] if ends else 0)
        self.device = next(self.model.parameters()).device
        self._ends = torch.tensor(ends, dtype=torch.long, device=self.device) if ends else None
        self.ids = prompt_ids.to(device=self.device, dtype=torch.long)  # (B, T): everything so far
        self.mask = (
            None if attention_mask is None else attention_mask.to(device=self.device, dtype=torch.bool)
        )
        self.done = torch.zeros(self.ids.size(0), dtype=torch.bool, device=self.device)
        self._may_end = self._ends is not None
        self.source = (
            None
            if source is None
            else (source[0].to(self.device), None if source[1] is None else source[1].to(self.device))
        )

    def finish(self, rows: torch.Tensor) -> None:
        """Mark rows (a (B,) bool mask or row indices) as finished from the next step on."""
        rows = rows.to(self.device)
        self.done |= (
            rows if rows.dtype == torch.bool else torch.zeros_like(self.done).index_fill(0, rows, True)
        )
        self._may_end = True

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self._run()

    @torch.inference_mode()
    def _run(self) -> Iterator[torch.Tensor]:
        gen, model = self.gen, self.model
        if gen.max_new_tokens == 0:
            return
        B, T = self.ids.shape
        rng = _new_generator(self.device, gen.seed) if gen.temperature > 0 else None
        was_training = model.training
        model.eval()
        try:
            # Only as much cache as this call can use: the whole model.max_len may be huge.
            max_len = min(model.config.max_len, T + gen.max_new_tokens)
            session = open_session(model, B, max_len, source=self.source, compiled=gen.compile)
            logits = self._prefill(session, min(T, session.max_len))
            for step in range(gen.max_new_tokens):
                next_ids = sample_next(logits, self._history(), gen, rng)  # (B,)
                next_ids = next_ids.masked_fill(self.done, self.pad_id)
                if self._ends is not None:
                    self.done |= torch.isin(next_ids, self._ends)
                yield next_ids
                if step == gen.max_new_tokens - 1 or (self._may_end and bool(self.done.all())):
                    return
                self.ids = torch.cat([self.ids, next_ids[:, None]], dim=1)
                if self.mask is not None:
                    self.mask = torch.cat([self.mask, self.mask.new_ones(B, 1)], dim=1)
                if session.length < session.max_len:
                    logits = session.step(next_ids)
                else:
                    logits = self._prefill(session, max(session.max_len - 1, 1))
        finally:
            model.train(was_training)

    def _prefill(self, session: DecodeSession, window: int) -> torch.Tensor:
        """Prefill `session` with the last `window` columns of the text so far: logits (B, V)."""
        mask = None if self.mask is None else self.mask[:, -window:]
        return session.prefill(self.ids[:, -window:], mask)

    def _history(self) -> torch.Tensor:
        """The tokens the repetition penalty looks at, (B, T): padding replaced by the row's last
        token (which is real), so that the padding id is not penalised."""
        if self.mask is None or self.gen.repetition_penalty == 1.0:
            return self.ids
        return torch.where(self.mask, self.ids, self.ids[:, -1:])


def generate_ids(
    model: Any,
    prompt_ids: torch.Tensor,
    gen: GenerationConfig,
    *,
    eos_id: int | Sequence[int] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) of each prompt row in `prompt_ids` (B, T), one step at a time.

    Stops after `gen.max_new_tokens`, or once every row has yielded `eos_id` (or one of several
    ids; finished rows yield the first meanwhile). Left-padded prompts of different lengths pass their `attention_mask`
    (B, T), True for real tokens (see `lmforge.infer.decoding.left_pad`). See `Generation`.
    """
    return iter(Generation(model, prompt_ids, gen, eos_id=eos_id, attention_mask=attention_mask))


# ----------------------------------------------------------------------------------------------
# Text


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids; an empty prompt starts from the eos token (GPT-2's convention:
    end-of-text also marks the start of a document)."""
    ids = list(tokenizer.encode(prompt))
    if ids:
        return ids
    eos_id = getattr(tokenizer, "eos_id", None)
    if eos_id is None:
        raise LmforgeError(
            "the prompt encodes to no tokens and the tokenizer has no eos token; give a prompt"
        )
    return [eos_id]


class TextStream:
    """Incremental detokenisation of one sequence, with its stop strings (as in vLLM).

    A few prompt tokens are decoded along with the new ones and only the difference is printed:
    [prefix, read) was printed, [read, end) is new. With byte-level BPE one character can span
    several tokens, so a token may end in the middle of a UTF-8 sequence; such a tail decodes to
    U+FFFD and is held back until the character is complete. Text that might be the start of a
    stop string is held back too, and the text ends before the first stop string (not emitted).
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids = list(prompt_ids)
        self.prefix, self.read = max(len(self.ids) - _CONTEXT_TOKENS, 0), len(self.ids)
        self.pending = ""  # decoded text not yet emitted (it may be the start of a stop string)
        self.stopped = False

    def _decode(self, span: list[int]) -> str:
        return self.tokenizer.decode(span, skip_special_tokens=True)

    def _stop_at(self) -> int:
        """Where the first stop string starts in the pending text, or -1."""
        return min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)

    def push(self, token: int) -> str:
        """Add one token; returns the text it made printable ("" if none). Sets `stopped` at a stop string."""
        self.ids.append(token)
        before, after = self._decode(self.ids[self.prefix : self.read]), self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing printable yet (a partial character, or a special token)
        self.pending += after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        cut = self._stop_at()
        if cut >= 0:
            self.stopped = True
            return self.pending[:cut]
        keep = _held_back(self.pending, self.stops)
        out, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        return out

    def flush(self) -> str:
        """The text left when generation ends (an unfinished character stays U+FFFD for good)."""
        if self.stopped:
            return ""
        before, after = self._decode(self.ids[self.prefix : self.read]), self._decode(self.ids[self.prefix :])
        self.pending += after[len(before) :]
        cut = self._stop_at()
        return self.pending[:cut] if cut >= 0 else self.pending


def generate_text(
    model: Any, tokenizer: Any, prompt: str | list[int], gen: GenerationConfig, *,
    end_ids: Sequence[int] | None = None,
) -> Iterator[str]:  # fmt: skip
    """Stream the completion of `prompt` (text, or its token ids) as text pieces, as soon as they
    are printable.

    Pieces are UTF-8 safe and never show a stop string or the start of one (see `TextStream`);
    generation ends at eos (or any of `end_ids`, a chat's end-of-turn tokens) or before the first
    stop string.
    """
    eos_id = getattr(tokenizer, "eos_id", None)
    ends = list(end_ids) if end_ids else ([] if eos_id is None else [eos_id])
    prompt_ids = _prompt_ids(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    stream = TextStream(tokenizer, prompt_ids, gen.stop)
    for next_ids in generate_ids(
        model, torch.tensor([prompt_ids], dtype=torch.long), gen, eos_id=ends or None
    ):
        token = int(next_ids[0])
        if token in ends:
            break
        piece = stream.push(token)
        if piece:
            yield piece
        if stream.stopped:
            return
    tail = stream.flush()
    if tail:
        yield tail


def generate_batch(
    model: Any, tokenizer: Any, prompts: list[str] | list[list[int]], gen: GenerationConfig, *,
    end_ids: Sequence[int] | None = None,
) -> list[str]:  # fmt: skip
    """The completions of several prompts (texts, or their token ids), decoded together as one
    left-padded batch.

    Each row ends on its own at eos (or any of `end_ids`: a chat's end-of-turn tokens) or its
    first stop string; per row the text is what `generate` gives for that prompt alone (greedy
    decoding; sampling draws from one RNG for the batch). Without stop strings the tokens stay on
    the device until the end; with them, each step's tokens are read once to find the stop
    strings, and the rows that reached one are finished.
    """
    if not prompts:
        return []
    eos = getattr(tokenizer, "eos_id", None)
    ends = list(end_ids) if end_ids else ([] if eos is None else [eos])
    rows = [_prompt_ids(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    ids, mask = left_pad(rows, ends[0] if ends else 0)
    run = Generation(model, ids, gen, eos_id=ends or None, attention_mask=mask)
    streams = [TextStream(tokenizer, r, gen.stop) for r in rows]
    texts: list[list[str]] = [[] for _ in rows]
    ended = [False] * len(rows)  # eos or a stop string: no more tokens for this row

    def feed(tokens: list[int]) -> list[int]:
        """One step's tokens (one per row) into the streams; returns the rows that just stopped."""
        stopped = []
        for i, (token, stream) in enumerate(zip(tokens, streams)):
            if ended[i]:
                continue
            if token in ends:
                ended[i] = True
                continue
            texts[i].append(stream.push(token))
            if stream.stopped:
                ended[i] = True
                stopped.append(i)
        return stopped

    steps = []
    for next_ids in run:
        if gen.stop:
            stopped = feed(next_ids.tolist())
            if stopped:
                run.finish(torch.tensor(stopped))
        else:
            steps.append(next_ids)
    if steps:
        for tokens in torch.stack(steps, dim=1).T.tolist():  # (steps, B) rows of one step each
            feed(tokens)
    return ["".join(t) + s.flush() for t, s in zip(texts, streams)]


def generate(
    model: Any, tokenizer: Any, prompt: str, gen: GenerationConfig | None = None, **overrides: Any
) -> str:
    """The whole completion of `prompt` (without the prompt). Keyword arguments override fields of
    `gen`, e.g. `generate(model, tok, "Once", temperature=0, max_new_tokens=20)`."""
    gen = with_options(gen, overrides) if overrides else gen or GenerationConfig()
    return "".join(generate_text(model, tokenizer, prompt, gen))


def with_options(gen: GenerationConfig | None, options: dict[str, Any]) -> GenerationConfig:
    """`gen` (default: GenerationConfig()) with `options` replacing its fields; strings (a CLI's
    values) are converted; an unknown or invalid option is a one-line error naming it."""
    from lmforge.config import from_dict

    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise LmforgeError(
            f"unknown generation option '{unknown[0]}'; valid options: {', '.join(sorted(names))}"
        )
    try:
        return from_dict(GenerationConfig, {**dataclasses.asdict(gen or GenerationConfig()), **options})
    except ValueError as e:
        raise LmforgeError(f"invalid generation option: {e}") from None


__all__ = [
    "Generation",
    "GenerationConfig",
    "TextStream",
    "apply_repetition_penalty",
    "descending",
    "generate",
    "generate_batch",
    "generate_ids",
    "generate_text",
    "nucleus_threshold",
    "row_uniforms",
    "sample_categorical",
    "sample_next",
    "top_k_filter",
    "top_p_filter",
    "with_options",
]
