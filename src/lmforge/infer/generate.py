"""Text generation: KV-cached decoding, sampling filters, and UTF-8-safe streaming of text.

`generate_ids` is the engine (token ids in, one token per step out); `generate_text` turns its
ids into printable pieces as they arrive; `generate` returns the whole completion. Decoding runs
the prompt through the model once (prefill) and then feeds one token per step, reusing the keys
and values of all earlier positions from the cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from lmforge.errors import LmforgeError

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

    A token is dropped when the tokens ranked above it already hold p; the top token always stays.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of all higher-ranked tokens
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor, history: torch.Tensor, gen: GenerationConfig, rng: torch.Generator | None
) -> torch.Tensor:
    """Choose the next token of each row from last-position logits (B, V); returns (B,)."""
    logits = logits.float()
    if gen.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, history, gen.repetition_penalty)
    if gen.temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_k_filter(logits / gen.temperature, gen.top_k)
    logits = top_p_filter(logits, gen.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


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


@torch.inference_mode()
def generate_ids(
    model: Any, prompt_ids: torch.Tensor, gen: GenerationConfig, *, eos_id: int | None = None
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) of each prompt row in `prompt_ids` (B, T), one step at a time.

    Stops after `gen.max_new_tokens`, or (for a single prompt) right after yielding `eos_id`.
    When the text outgrows model.max_len, the oldest tokens slide out of the window: the cache is
    rebuilt from the last max_len-1 tokens, which leaves room for the next one.
    """
    if prompt_ids.dim() != 2 or prompt_ids.size(1) == 0:
        raise LmforgeError(
            f"prompt ids must be a non-empty (batch, length) tensor, got shape {tuple(prompt_ids.shape)}; "
            "start from at least one token (e.g. the end-of-text token)"
        )
    if gen.max_new_tokens == 0:
        return
    # Decode with the eager module: a torch.compile'd one would recompile for every cache length.
    model = getattr(model, "_orig_mod", model)
    max_len = model.config.max_len
    device = next(model.parameters()).device
    ids = prompt_ids.to(device=device, dtype=torch.long)  # (B, T): everything so far
    B, T = ids.shape
    rng = _new_generator(device, gen.seed) if gen.temperature > 0 else None

    was_training = model.training
    model.eval()
    try:
        # Only as much cache as this call can use: the whole model.max_len may be huge.
        cache = model.new_cache(B, max_len=min(max_len, T + gen.max_new_tokens))

        def prefill(context: torch.Tensor) -> torch.Tensor:
            cache.reset()
            return model(context, cache=cache)[:, -1]  # (B, V)

        logits = prefill(ids[:, -min(T, cache.max_len) :])
        for step in range(gen.max_new_tokens):
            next_ids = sample_next(logits, ids, gen, rng)  # (B,)
            yield next_ids
            if step == gen.max_new_tokens - 1 or (
                B == 1 and eos_id is not None and next_ids.item() == eos_id
            ):
                return
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            if cache.length < cache.max_len:
                logits = model(next_ids[:, None], cache=cache)[:, -1]
            else:
                logits = prefill(ids[:, -max(cache.max_len - 1, 1) :])
    finally:
        model.train(was_training)


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


def generate_text(model: Any, tokenizer: Any, prompt: str, gen: GenerationConfig) -> Iterator[str]:
    """Stream the completion of `prompt` as text pieces, as soon as they are printable.

    With byte-level BPE one character can span several tokens, so a token may end in the middle
    of a UTF-8 sequence; such a tail decodes to U+FFFD and is held back until the character is
    complete. Text that might be the start of a stop string is held back too, and generation ends
    before the first stop string (which is not emitted).
    """
    eos_id = getattr(tokenizer, "eos_id", None)
    prompt_ids = list(tokenizer.encode(prompt))
    if not prompt_ids:
        if eos_id is None:
            raise LmforgeError(
                "the prompt encodes to no tokens and the tokenizer has no eos token; give a prompt"
            )
        prompt_ids = [eos_id]  # GPT-2 convention: end-of-text also marks the start of a document
    ids = list(prompt_ids)
    # Decode a few prompt tokens along with the new ones and print only the difference
    # (incremental detokenisation as in vLLM): [prefix, read) was printed, [read, end) is new.
    prefix, read = max(len(ids) - _CONTEXT_TOKENS, 0), len(ids)
    pending = ""  # decoded text not yet emitted (it may be the start of a stop string)

    def decode(span: list[int]) -> str:
        return tokenizer.decode(span, skip_special_tokens=True)

    prompt_tensor = torch.tensor([prompt_ids], dtype=torch.long)
    for next_ids in generate_ids(model, prompt_tensor, gen, eos_id=eos_id):
        token = int(next_ids[0])
        if token == eos_id:
            break
        ids.append(token)
        before, after = decode(ids[prefix:read]), decode(ids[prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            continue  # nothing printable yet (a partial character, or a special token)
        pending += after[len(before) :]
        prefix, read = read, len(ids)
        cut = min((i for i in (pending.find(s) for s in gen.stop) if i >= 0), default=-1)
        if cut >= 0:
            if cut:
                yield pending[:cut]
            return
        keep = _held_back(pending, gen.stop)
        if len(pending) > keep:
            yield pending[: len(pending) - keep]
            pending = pending[len(pending) - keep :]
    # Generation ended: flush what is left (an unfinished character stays U+FFFD for good).
    before, after = decode(ids[prefix:read]), decode(ids[prefix:])
    pending += after[len(before) :]
    cut = min((i for i in (pending.find(s) for s in gen.stop) if i >= 0), default=-1)
    if cut >= 0:
        pending = pending[:cut]
    if pending:
        yield pending


def generate(
    model: Any, tokenizer: Any, prompt: str, gen: GenerationConfig | None = None, **overrides: Any
) -> str:
    """The whole completion of `prompt` (without the prompt). Keyword arguments override fields of
    `gen`, e.g. `generate(model, tok, "Once", temperature=0, max_new_tokens=20)`."""
    gen = gen or GenerationConfig()
    if overrides:
        names = {f.name for f in dataclasses.fields(GenerationConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise LmforgeError(
                f"unknown generation option '{unknown[0]}'; valid options: {', '.join(sorted(names))}"
            )
        try:
            gen = dataclasses.replace(gen, **overrides)
        except ValueError as e:
            raise LmforgeError(f"invalid generation option: {e}") from None
    return "".join(generate_text(model, tokenizer, prompt, gen))


__all__ = [
    "GenerationConfig",
    "apply_repetition_penalty",
    "generate",
    "generate_ids",
    "generate_text",
    "sample_next",
    "top_k_filter",
    "top_p_filter",
]
