"""A conversation with a chat model: history, its chat template, streamed replies.

`ChatSession` keeps the messages so far (an optional system message first), renders them with
the model's chat template and a generation prompt, and decodes the reply with the toolkit's one
generation loop (`lmforge.infer.generate`), stopping at the template's end-of-turn tokens. When
the history no longer fits the model's context with room for the reply, the oldest exchanges
are left out of the prompt (they stay in `messages`; the system message always goes in).
`lmforge.Chat(run)` opens one on a run; `lmforge chat` is its terminal front end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge import chat_template as templates
from lmforge.errors import LmforgeError
from lmforge.infer.generate import GenerationConfig, generate_text, with_options

# What a chat reply gets unless told otherwise: a sampled answer of a sentence or a few.
CHAT_DEFAULTS = {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.9}


class ChatSession:
    """A multi-turn conversation with `model` (a decoder) through `tokenizer` and its chat template."""

    def __init__(
        self, model: Any, tokenizer: Any, *, template: str | None = None, system: str | None = None,
        **options: Any,
    ) -> None:  # fmt: skip
        template = template or tokenizer.chat_template
        if not template:
            raise LmforgeError(
                "this model has no chat template; fine-tune it with lmforge finetune chat, or give one with "
                "--chat_template plain | chatml | FILE.jinja"
            )
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.gen = with_options(None, {**CHAT_DEFAULTS, **options})
        self.end_ids = templates.turn_end_ids(tokenizer, template)
        self.system = system
        self.messages: list[dict[str, str]] = []

    # ------------------------------------------------------------------------- the conversation
    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = []

    def history(self) -> list[dict[str, str]]:
        """The messages a template renders: the system message (if any), then the turns."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def prompt_ids(self, gen: GenerationConfig | None = None) -> list[int]:
        """The rendered history plus the assistant's generation prompt, as token ids, within the
        model's context less the reply's room (max_new_tokens, at most half the context): the
        oldest exchanges go first."""
        context = self.model.config.max_len
        limit = context - min((gen or self.gen).max_new_tokens, context // 2)
        system = self.history()[: 1 if self.system else 0]
        turns = list(self.messages)
        while True:
            ids = templates.encode_chat(
                self.tokenizer, system + turns, self.template, add_generation_prompt=True
            ).ids
            if len(ids) <= limit or len(turns) <= 1:
                break
            turns = turns[2:] if len(turns) > 2 else turns[1:]  # an exchange: the user's turn and its reply
        if len(ids) > limit:
            raise LmforgeError(
                f"the message is {len(ids)} tokens with the template, more than the {limit} the model's "
                f"{context} positions leave for a prompt; send a shorter one or lower max_new_tokens"
            )
        return ids

    def stream(self, text: str, **options: Any) -> Iterator[str]:
        """Send the user's `text` and yield the reply piece by piece; the whole reply joins the
        history once it is done (a reply interrupted early is kept as far as it got)."""
        if not isinstance(text, str) or not text.strip():
            raise LmforgeError("say something: the message is empty")
        gen = with_options(self.gen, options) if options else self.gen
        self.messages.append({"role": "user", "content": text})
        try:
            ids = self.prompt_ids(gen)
        except LmforgeError:
            self.messages.pop()
            raise
        pieces: list[str] = []
        try:
            for piece in generate_text(self.model, self.tokenizer, ids, gen, end_ids=self.end_ids):
                if not pieces:  # the space a template puts before the reply is not the reply's
                    piece = piece.lstrip()
                    if not piece:
                        continue
                pieces.append(piece)
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": "".join(pieces).strip()})

    def send(self, text: str, **options: Any) -> str:
        """Send the user's `text`; the assistant's whole reply (also added to the history)."""
        for _ in self.stream(text, **options):
            pass
        return self.messages[-1]["content"]

    # ------------------------------------------------------------------------- saving
    def save(self, path: str | Path) -> Path:
        """Write the conversation as one JSONL record ({"messages": [...]}), the layout chat
        fine-tuning reads, appended to `path`."""
        path = Path(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"messages": self.history()}, ensure_ascii=False) + "\n")
        return path
