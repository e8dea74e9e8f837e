"""Continuous batching: concurrent requests share every decode step of one model.

A server does not know its batch in advance: requests arrive while others are halfway through
their replies. `Engine` keeps the model's KV cache as slots (`lmforge.infer.decoding.SlotSession`)
and runs one loop on a thread of its own:

    admit waiting sequences into free slots (their prompts prefilled together, left-padded)
    sample the next token of every live sequence at once, each with its own settings
    hand each sequence's new text to its consumer; retire those that finished
    one decode step for all live sequences together

so a request joins at the next step and leaves at the step it ends, and the model reads its
weights once per step for all of them. Sampling is vectorised over the rows (per-row temperature,
top-k, top-p, presence and frequency penalties; the uniforms of seeded rows come from
`row_uniforms`, so a seed gives the same reply whatever else is in the batch, up to float
rounding). Text is detokenised per sequence as `generate_text` does it (UTF-8 safe, stop strings
held back), which is the only per-row work on the host.

Limits: `max_batch` live sequences, `max_queue` waiting ones (`submit` refuses more with
`QueueFull`), and the slots' `max_len` positions per sequence. `cancel` (a client that went away)
retires a sequence at the next step; `close(drain=True)` refuses new work and lets the live and
waiting sequences finish.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.infer.decoding import SlotSession
from lmforge.infer.generate import (
    TextStream,
    descending,
    nucleus_threshold,
    row_uniforms,
    sample_categorical,
)


class QueueFull(LmforgeError):
    """The engine's waiting queue is full: try again later."""


class Closed(LmforgeError):
    """The engine is shutting down and takes no new work."""


@dataclass
class SamplingParams:
    """How one sequence is continued (the OpenAI request fields, checked by the server)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    presence_penalty: float = 0.0  # subtracted once from the logit of every token already generated
    frequency_penalty: float = 0.0  # subtracted per earlier occurrence of the token
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # None: a random one
    logprobs: int | None = None  # None: none; k: the chosen token's log-probability and the k most likely


@dataclass
class Event:
    """What a sequence produced since the last event: printable text, its token ids, per-token
    log-probabilities when asked for, and why it ended (`stop`, `length`) once it has."""

    index: int  # which of the request's n sequences
    text: str
    token_ids: list[int]
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


@dataclass
class _Sequence:
    request: Ticket
    index: int
    prompt: list[int]
    params: SamplingParams
    seed: int
    stream: TextStream
    generated: int = 0
    pending: list[int] = field(default_factory=list)  # ids whose text is still held back
    ended: bool = False


class Ticket:
    """A submitted request: its sequences' events go to `on_event` (called on the engine's
    thread); `cancel()` stops them; `usage` counts prompt and generated tokens."""

    def __init__(self, on_event: Callable[[Event], None], n: int, prompt_tokens: int):
        self.on_event, self.n = on_event, n
        self.cancelled = False
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.submitted = time.monotonic()
        self.first_token: float | None = None
        self.finished = 0

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    """Continuous batching over one decoder (see the module docstring)."""

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch: int = 16, max_queue: int = 64, max_len: int | None = None,
        end_ids: list[int] | None = None, metrics: Any = None,
    ) -> None:  # fmt: skip
        self.model = getattr(model, "_orig_mod", model).eval()
        self.tokenizer = tokenizer
        self.max_len = min(max_len or self.model.config.max_len, self.model.config.max_len)
        self.slots = SlotSession(self.model, max_batch, self.max_len)
        self.max_queue = max_queue
        eos = tokenizer.eos_id
        self.end_ids = sorted(set(end_ids or []) | ({eos} if eos is not None else set()))
        self.metrics = metrics
        vocab = self.model.config.vocab_size
        device = self.slots.device
        self._counts = torch.zeros(max_batch, vocab, device=device)  # generated tokens per row, for penalties
        self._ends = torch.tensor(self.end_ids or [-1], device=device)
        self._rows: list[_Sequence] = []
        self._logits: torch.Tensor | None = None  # (live, V) next-token logits of the live rows
        self._waiting: deque[_Sequence] = deque()
        self._lock = threading.Condition()
        self._closing = False
        self._stopped = False
        self._seeds = itertools.count(int(time.time_ns()) & 0xFFFFFFFF)
        self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------- the public side
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(
        self, prompt: list[int], params: SamplingParams, on_event: Callable[[Event], None], *, n: int = 1
    ) -> Ticket:
        """Queue `n` sequences continuing `prompt`; events go to `on_event` from the engine's thread."""
        if not prompt:
            raise LmforgeError("the prompt has no tokens")
        if len(prompt) >= self.max_len:
            raise LmforgeError(
                f"this model's context is {self.max_len} tokens, but the prompt alone has {len(prompt)}; "
                "shorten the prompt"
            )
        if len(prompt) + params.max_tokens > self.max_len:
            raise LmforgeError(
                f"this model's context is {self.max_len} tokens, but the prompt has {len(prompt)} and "
                f"max_tokens asks for {params.max_tokens}; lower max_tokens or shorten the prompt"
            )
        ticket = Ticket(on_event, n, len(prompt))
        with self._lock:
            if self._closing:
                raise Closed("the server is shutting down and takes no new requests")
            if n > self.max_queue:
                raise LmforgeError(
                    f"n={n} sequences is more than this server ever queues ({self.max_queue}); lower n"
                )
            if len(self._waiting) + n > self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} waiting sequences); try again shortly")
            for i in range(n):
                seed = params.seed + i if params.seed is not None else next(self._seeds)
                stream = TextStream(self.tokenizer, prompt, params.stop)
                self._waiting.append(_Sequence(ticket, i, list(prompt), params, seed, stream))
            self._lock.notify()
        return ticket

    def stop_accepting(self) -> None:
        """Refuse new work from now on (`submit` raises `Closed`); what was submitted goes on."""
        with self._lock:
            self._closing = True

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new work; with `drain`, finish what is live and waiting first, else drop it."""
        with self._lock:
            self._closing = True
            if not drain:
                for seq in [*self._waiting, *self._rows]:
                    seq.request.cancel()
            self._lock.notify()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._waiting or self._rows:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.01)
        with self._lock:
            self._stopped = True
            self._lock.notify()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and not self._waiting and not self._rows:
                    self._lock.wait()
                if self._stopped:
                    return
            try:
                self._admit()
                if self._rows:
                    self._iteration()
            except Exception as e:  # a failure fails the sequences in it, never the server
                for seq in [*self._rows]:
                    self._fail(seq, e)
                while self._rows:
                    self.slots.retire(len(self._rows) - 1)
                    self._rows.pop()
                self._logits = None

    # Padded prompt tokens prefilled together at most: bounds the memory of admitting many at once.
    PREFILL_TOKENS = 8192

    def _admit(self) -> None:
        """Move waiting sequences into free slots, their prompts prefilled as left-padded batches
        (of at most PREFILL_TOKENS padded tokens)."""
        arrivals: list[_Sequence] = []
        with self._lock:
            while self._waiting and self.slots.live + len(arrivals) < self.slots.slots:
                seq = self._waiting.popleft()
                if not seq.request.cancelled:
                    arrivals.append(seq)
        while arrivals:
            take, longest = 0, 0
            while take < len(arrivals):
                longest = max(longest, len(arrivals[take].prompt))
                if take and (take + 1) * longest > self.PREFILL_TOKENS:
                    break
                take += 1
            group, arrivals = arrivals[:take], arrivals[take:]
            try:
                logits = self.slots.admit([s.prompt for s in group])
            except Exception as e:  # this prefill's sequences fail; the live ones go on
                for seq in group:
                    self._fail(seq, e)
                continue
            for seq in group:
                self._counts[len(self._rows)].zero_()
                self._rows.append(seq)
            self._logits = logits if self._logits is None else torch.cat([self._logits, logits])

    def _fail(self, seq: _Sequence, error: Exception) -> None:
        """End `seq` with an error event, unless it has already ended."""
        if not seq.ended:
            self._emit(seq, Event(seq.index, "", [], None, f"error: {type(error).__name__}: {error}"))

    def _iteration(self) -> None:
        """Sample every live row, deliver, retire the finished, then step the rest."""
        assert self._logits is not None
        rows = self._rows
        tokens, info = self._sample(self._logits)
        token_list = tokens.tolist()  # the step's one wait for the device
        finished = []
        for r, (seq, token) in enumerate(zip(rows, token_list)):
            if seq.request.cancelled:
                finished.append(r)
                continue
            self._counts[r, token] += 1
            reason, text, ids = self._advance(seq, token)
            logprobs = (
                None if info is None or seq.params.logprobs is None else [self._logprob_entry(info, r, token)]
            )
            seq.pending += ids
            if text or reason or logprobs:
                self._emit(seq, Event(seq.index, text, seq.pending, logprobs, reason))
                seq.pending = []
            if reason:
                finished.append(r)
        for r in sorted(finished, reverse=True):
            moved = self.slots.retire(r)
            if moved is not None:
                rows[r] = rows[moved]
                token_list[r] = token_list[moved]
                self._counts[r] = self._counts[moved]
            rows.pop()
            token_list.pop()
        if self.metrics is not None:
            self.metrics.step(len(token_list) + len(finished), self.queue_depth, len(rows))
        if not rows:
            self._logits = None
            return
        self._logits = self.slots.step(torch.tensor(token_list, device=self.slots.device))

    def _advance(self, seq: _Sequence, token: int) -> tuple[str | None, str, list[int]]:
        """(finish reason or None, new text, new ids) of one sampled token of `seq`."""
        seq.generated += 1
        seq.request.completion_tokens += 1
        if token in self.end_ids:
            return "stop", seq.stream.flush(), [token]
        text = seq.stream.push(token)
        if seq.stream.stopped:
            return "stop", text, [token]
        full = len(seq.prompt) + seq.generated >= self.max_len
        if seq.generated >= seq.params.max_tokens or full:
            return "length", text + seq.stream.flush(), [token]
        return None, text, [token]

    def _emit(self, seq: _Sequence, event: Event) -> None:
        ticket = seq.request
        if ticket.first_token is None and (event.token_ids or event.finish_reason):
            ticket.first_token = time.monotonic()
            if self.metrics is not None:
                self.metrics.first_token(ticket.first_token - ticket.submitted)
        if event.finish_reason:
            ticket.finished += 1
            seq.ended = True
        try:
            ticket.on_event(event)
        except Exception:  # a consumer that went away must not stop the others
            ticket.cancel()

    # ------------------------------------------------------------------------- sampling
    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """The next token of every live row (live,), with each row's own settings, and the
        log-probabilities the rows that asked for them need."""
        rows = self._rows
        A = len(rows)
        params = [s.params for s in rows]
        raw = logits.float()
        info = None
        if any(p.logprobs is not None for p in params):
            logp = torch.log_softmax(raw, dim=-1)
            k = max(p.logprobs or 0 for p in params)
            top = torch.topk(logp, max(k, 1), dim=-1)
            info = {"logp": logp, "top_values": top.values, "top_ids": top.indices}
        x = raw
        device = x.device
        presence = torch.tensor([p.presence_penalty for p in params], device=device)[:, None]
        frequency = torch.tensor([p.frequency_penalty for p in params], device=device)[:, None]
        if any(p.presence_penalty or p.frequency_penalty for p in params):  # decided on the host: no sync
            counts = self._counts[:A]
            x = x - presence * (counts > 0) - frequency * counts
        temps = torch.tensor([p.temperature for p in params], device=device)
        greedy = x.argmax(dim=-1)
        if all(p.temperature == 0 for p in params):
            return greedy, info
        x = x / temps.clamp_min(1e-6)[:, None]
        ks = [p.top_k if 0 < p.top_k < x.size(-1) else 0 for p in params]
        if any(ks):
            kth = descending(x).gather(1, torch.tensor([max(k, 1) - 1 for k in ks], device=device)[:, None])
            kth = torch.where(
                torch.tensor(ks, device=device)[:, None] > 0, kth, torch.full_like(kth, float("-inf"))
            )
            x = x.masked_fill(x < kth, float("-inf"))
        probs = torch.softmax(x, dim=-1)
        top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
        if any(p.top_p < 1 for p in params):
            threshold = torch.where(top_p < 1, nucleus_threshold(probs, top_p), torch.zeros_like(top_p))
            probs = probs.masked_fill(probs < threshold, 0.0)
        u = row_uniforms([s.seed for s in rows], [s.generated for s in rows])
        sampled = sample_categorical(probs, None, u)
        return torch.where(temps == 0, greedy, sampled), info

    def _logprob_entry(self, info: dict[str, torch.Tensor], row: int, token: int) -> dict[str, Any]:
        """The chosen token's log-probability and the k most likely alternatives (OpenAI's shape)."""
        k = self._rows[row].params.logprobs or 0
        decode = self.tokenizer.decode
        entry: dict[str, Any] = {
            "token_id": token,
            "token": decode([token], skip_special_tokens=False),
            "logprob": float(info["logp"][row, token]),
        }
        ids, values = info["top_ids"][row, :k].tolist(), info["top_values"][row, :k].tolist()
        entry["top_logprobs"] = [
            {"token_id": i, "token": decode([i], skip_special_tokens=False), "logprob": v}
            for i, v in zip(ids, values)
        ]
        return entry
