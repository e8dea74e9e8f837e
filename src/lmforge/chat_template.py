"""Chat templates: conversations rendered to text, and the mask of the tokens the assistant wrote.

A chat template is a Jinja template over `messages` (a list of {"role", "content"}), stored with
the tokenizer the way Hugging Face stores it (`chat_template.jinja` in a run or model folder, or
the `chat_template` entry of tokenizer_config.json), so that an exported run's
`tokenizer.apply_chat_template` renders byte for byte what `render` renders here. The template
runs in the same sandbox with the same settings as transformers' (trim_blocks, lstrip_blocks,
loop controls, `raise_exception`, a `tojson` that keeps non-ASCII text, `strftime_now`), and marks
what the assistant says with `{% generation %} ... {% endgeneration %}`: `encode_chat` turns those
character spans into a per-token mask exactly as transformers' `return_assistant_tokens_mask`
does (a token is the assistant's when it overlaps a span), which is what chat fine-tuning trains on.

Two templates come built in (`TEMPLATES`): `plain`, role names as text and the end-of-text token
after each assistant turn (any tokenizer with an end-of-text token can use it, nothing is added
to the vocabulary), and `chatml`, the <|im_start|> / <|im_end|> layout many chat models use (its
two tokens are added to the tokenizer when it lacks them).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

TEMPLATE_FILE = "chat_template.jinja"
ROLES = ("system", "user", "assistant")

# Role names as text; the assistant's words (from the space after "Assistant:") and the end-of-text
# token that closes them are its generation block, so a prompt ends in "Assistant:" and the model
# writes " reply<eos>". The space belongs to the reply because byte-level BPE glues it to the word.
_PLAIN = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- 'Assistant:' }}{% generation %}{{- ' ' + message['content'] + eos_token }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- elif message['role'] in ['system', 'user'] %}"
    "{{- message['role'] | capitalize }}{{- ': ' + message['content'] + '\\n' }}"
    "{%- else %}{{- raise_exception('unknown role ' + message['role']) }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}"
)

_CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TEMPLATES = {"plain": _PLAIN, "chatml": _CHATML}
# Tokens a built-in template needs in the vocabulary (added as special tokens when missing).
TEMPLATE_TOKENS = {"plain": (), "chatml": ("<|im_start|>", "<|im_end|>")}
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def resolve_template(spec: str) -> tuple[str, tuple[str, ...]]:
    """(template text, tokens it needs added) for `--chat_template`: a built-in name, a .jinja
    file, or the template text itself (anything with a Jinja tag in it)."""
    if spec in TEMPLATES:
        return TEMPLATES[spec], TEMPLATE_TOKENS[spec]
    if "{%" in spec or "{{" in spec:
        return spec, ()
    path = Path(spec)
    if not path.is_file():
        raise LmforgeError(
            f"--chat_template {spec!r}: not a built-in template ({', '.join(TEMPLATES)}) nor a file; "
            "give one of those names or the path of a .jinja file"
        )
    try:
        return path.read_text(encoding="utf-8"), ()
    except UnicodeDecodeError:
        raise LmforgeError(f"{path}: not UTF-8 text; save the chat template as UTF-8") from None


# ----------------------------------------------------------------------------------------------
# The sandbox (transformers' settings, so that both render the same bytes)


@functools.cache
def _environment() -> Any:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: records where each block's text lands in the
        rendered string, while a tracker is active (rendering otherwise leaves it as it is)."""

        tags = {"generation"}  # noqa: RUF012 - jinja's own class attribute

        def __init__(self, environment: Any) -> None:
            super().__init__(environment)
            self.tracking: ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = ContextVar(
                "lmforge_generation_spans", default=None
            )
            environment.extend(generation_blocks=self)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_block"), [], [], body).set_lineno(lineno)

        def _block(self, caller: Any) -> str:
            text = caller()
            tracking = self.tracking.get()
            if tracking is not None:
                rendered, spans = tracking
                start = sum(len(part) for part in rendered)
                spans.append((start, start + len(text)))
            return text

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    class Namespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, jinja2.ext.loopcontrols]
    )

    class Dict:
        """`dict(...)` and `dict.fromkeys(...)` without the type itself (no attribute tricks)."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    env.filters["tojson"] = tojson
    env.globals.update(
        raise_exception=raise_exception,
        strftime_now=lambda fmt: datetime.now().strftime(fmt),
        dict=Dict(),
        namespace=Namespace,
    )
    return env


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise LmforgeError(
            f"the chat template does not parse (line {e.lineno}: {e.message}); fix its Jinja"
        ) from None


# ----------------------------------------------------------------------------------------------
# Rendering and encoding


def check_messages(messages: Sequence[Any], where: str = "the conversation") -> list[dict[str, str]]:
    """Messages as plain {"role", "content"} dicts: a known role and string content each, or an
    error naming `where` and the message."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise LmforgeError(f"{where}: no messages; give a list of {{'role': ..., 'content': ...}}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise LmforgeError(f"{where}: message {i} is not a {{'role': ..., 'content': ...}} object")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise LmforgeError(f"{where}: message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise LmforgeError(
                f"{where}: message {i} ({role}) has content of type {type(content).__name__}, not text"
            )
        out.append({"role": role, "content": content})
    return out


def template_variables(tokenizer: Any) -> dict[str, str]:
    """What transformers passes a template besides the messages: the special tokens by name
    (`eos_token`, `bos_token`, ...), as its tokenizer's special_tokens_map holds them."""
    return {f"{role}_token": token for role, token in (tokenizer.special_tokens or {}).items()}


def render(
    template: str, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False,
    variables: dict[str, Any] | None = None,
) -> tuple[str, list[tuple[int, int]]]:  # fmt: skip
    """The rendered text and the (start, end) character spans of its generation blocks."""
    import jinja2

    compiled = _compile(template)
    ext = compiled.environment.generation_blocks
    rendered: list[str] = []
    spans: list[tuple[int, int]] = []
    token = ext.tracking.set((rendered, spans))
    try:
        # transformers always passes tools and documents (None when there are none); templates test them.
        context = {"tools": None, "documents": None, **(variables or {})}
        for part in compiled.generate(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **context
        ):
            rendered.append(part)
    except jinja2.TemplateError as e:
        raise LmforgeError(f"the chat template failed on this conversation: {e}") from None
    finally:
        ext.tracking.reset(token)
    return "".join(rendered), spans


@dataclass
class EncodedChat:
    ids: list[int]
    assistant: list[bool]  # per token: part of a generation block (what chat fine-tuning learns)
    text: str


def encode_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], template: str, *, add_generation_prompt: bool = False
) -> EncodedChat:
    """Render and tokenize a conversation (no special tokens added beyond the template's), with
    the assistant mask: a token is the assistant's when its characters overlap a generation span."""
    text, spans = render(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        variables=template_variables(tokenizer),
    )
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    return EncodedChat(enc.ids, overlap_mask(enc.offsets, spans), text)


def overlap_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token (start, end) offsets: whether it overlaps one of the sorted character `spans`."""
    mask, k = [False] * len(offsets), 0
    for i, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        mask[i] = end > spans[k][0]
    return mask


def has_generation_blocks(template: str) -> bool:
    return bool(_GENERATION_TAG.search(template))


def turn_end_ids(tokenizer: Any, template: str) -> list[int]:
    """The token ids that end an assistant turn under `template`: the special tokens it renders
    right after the assistant's words (<|im_end|>, the end-of-text token), found by rendering a
    probe; generation stops at any of them (and at end-of-text)."""
    probe = "lmforge probe reply"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
    text, _ = render(template, messages, variables=template_variables(tokenizer))
    ends = set() if tokenizer.eos_id is None else {tokenizer.eos_id}
    at = text.rfind(probe)
    if at >= 0:
        enc = tokenizer.backend.encode(text[at + len(probe) :], add_special_tokens=False)
        specials = set(tokenizer.backend.get_added_tokens_decoder())
        for token in enc.ids:
            if token not in specials:
                break
            ends.add(token)
    return sorted(ends)
