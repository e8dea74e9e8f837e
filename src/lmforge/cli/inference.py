"""`lmforge generate` and `lmforge fill-mask`: a trained run's predictions for a text typed in."""

from __future__ import annotations

import argparse
import sys

import lmforge
from lmforge.cli.flags import NewCommand, add_device_flag, add_json_flag
from lmforge.cli.output import emit
from lmforge.config import add_dataclass_flags, namespace_overrides


def cmd_generate(ns: argparse.Namespace) -> None:
    from lmforge.infer.generate import GenerationConfig

    options = namespace_overrides(ns, GenerationConfig)
    if len(ns.prompt) > 1:  # several prompts: one batch, each completion printed after its prompt
        texts = lmforge.generate_batch(ns.run, ns.prompt, device=ns.device, **options)
        human = "\n".join(f"{p}{t}" for p, t in zip(ns.prompt, texts))
        emit({"prompts": ns.prompt, "completions": texts}, ns.json, None if ns.json else human)
        return
    ns.prompt = ns.prompt[0]
    pieces = lmforge.generate_stream(ns.run, ns.prompt, device=ns.device, **options)
    stream = (not ns.json and sys.stdout.isatty()) or ns.stream
    if not ns.json:
        print(ns.prompt, end="", flush=True)
    completion = []
    for piece in pieces:
        completion.append(piece)
        if stream:
            print(piece, end="", flush=True)
    text = "".join(completion)
    if not ns.json:
        print("" if stream else text, flush=True)
    emit({"prompt": ns.prompt, "completion": text}, ns.json)


def add_generate(new: NewCommand) -> None:
    from lmforge.infer.generate import GenerationConfig

    p = new(
        "generate", "continue a prompt with a trained run (streams to the terminal), or several as a batch"
    )
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--prompt", required=True, action="append",
        help="text to continue; give it several times to decode the prompts as one batch",
    )  # fmt: skip
    add_device_flag(p)
    p.add_argument("--stream", action="store_true", help="stream even when stdout is not a terminal")
    add_dataclass_flags(p, GenerationConfig)
    add_json_flag(p)
    p.set_defaults(func=cmd_generate)


def cmd_fill_mask(ns: argparse.Namespace) -> None:
    results = lmforge.fill_mask(ns.run, ns.text, top_k=ns.top_k, device=ns.device)
    lines = []
    for i, preds in enumerate(results):
        if len(results) > 1:
            lines.append(f"mask {i + 1}:")
        lines += [f"  {p.score:7.2%}  {p.token:<15}  {p.text}" for p in preds]
    payload = {"text": ns.text, "masks": [[p.to_dict() for p in preds] for preds in results]}
    emit(payload, ns.json, "\n".join(lines) if not ns.json else None)


def add_fill_mask(new: NewCommand) -> None:
    p = new("fill-mask", "the most likely tokens for each [MASK] in a text (masked-LM runs)")
    p.add_argument("run", help="run directory of a masked-LM run")
    p.add_argument("text", help='text with one or more [MASK], e.g. "The capital of France is [MASK]."')
    p.add_argument("--top_k", type=int, default=5, help="predictions per mask (default: 5)")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_fill_mask)


CHAT_HELP = """commands: /reset (forget the conversation), /system TEXT (set the system message; /system
alone clears it), /save FILE (append the conversation to a JSONL file chat fine-tuning reads),
/history, /quit (or Ctrl-D)"""


def cmd_chat(ns: argparse.Namespace) -> None:
    from lmforge.errors import LmforgeError
    from lmforge.infer.generate import GenerationConfig

    options = namespace_overrides(ns, GenerationConfig)
    chat = lmforge.Chat(ns.run, device=ns.device, system=ns.system, chat_template=ns.chat_template, **options)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {ns.run}; {CHAT_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if _chat_command(chat, text):
                break
            continue
        if interactive:
            print("assistant> ", end="", flush=True)
        try:
            for piece in chat.stream(text):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:  # stop this reply, keep the conversation
            print(" [interrupted]", end="")
        except LmforgeError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        print(flush=True)


def _chat_command(chat, text: str) -> bool:
    """Run a /command of the chat prompt; True to quit."""
    name, _, arg = text.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit"):
        return True
    if name == "/reset":
        chat.reset()
        print("(conversation cleared)", file=sys.stderr)
    elif name == "/system":
        chat.system = arg or None
        print(f"(system message {'set' if arg else 'cleared'})", file=sys.stderr)
    elif name == "/save":
        if not arg:
            print("usage: /save FILE.jsonl", file=sys.stderr)
        else:
            print(f"(saved to {chat.save(arg)})", file=sys.stderr)
    elif name == "/history":
        for m in chat.history():
            print(f"{m['role']}: {m['content']}", file=sys.stderr)
    else:
        print(f"unknown command {name}; {CHAT_HELP}", file=sys.stderr)
    return False


def add_chat(new: NewCommand) -> None:
    from lmforge.infer.chat import CHAT_DEFAULTS
    from lmforge.infer.generate import GenerationConfig

    p = new("chat", "talk to a chat run in the terminal: streamed replies, multi-turn history")
    p.add_argument(
        "run", help="a chat run (lmforge finetune chat), a decoder run or a Hugging Face model folder"
    )
    p.add_argument("--system", default=None, help="the system message the conversation starts with")
    p.add_argument(
        "--chat_template", default=None,
        help="plain | chatml | a .jinja file, instead of the model's own template (default: the model's)",
    )  # fmt: skip
    add_device_flag(p)
    add_dataclass_flags(p, GenerationConfig, shown_defaults={k: str(v) for k, v in CHAT_DEFAULTS.items()})
    p.epilog = CHAT_HELP
    p.set_defaults(func=cmd_chat)


def cmd_serve(ns: argparse.Namespace) -> None:
    def ready(port: int) -> None:
        print(f"serving {ns.name or ns.run} on http://{ns.host}:{port}/ (chat page), API at http://{ns.host}:{port}/v1",
              file=sys.stderr, flush=True)  # fmt: skip

    lmforge.serve(
        ns.run, host=ns.host, port=ns.port, device=ns.device, name=ns.name, chat_template=ns.chat_template,
        max_batch=ns.max_batch, max_queue=ns.max_queue, max_tokens=ns.max_tokens, max_body_mb=ns.max_body_mb,
        drain_seconds=ns.drain_seconds, ready=ready,
    )  # fmt: skip


def add_serve(new: NewCommand) -> None:
    p = new("serve", "serve a run over the OpenAI API (continuous batching), with a chat page at /")
    p.add_argument("run", help="a chat run, a decoder run or a Hugging Face model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 = any free one)")
    p.add_argument(
        "--name", default=None, help="the model id clients ask for (default: the run folder's name)"
    )
    p.add_argument(
        "--chat_template", default=None,
        help="plain | chatml | a .jinja file, for a model without one (default: the model's own)",
    )  # fmt: skip
    p.add_argument(
        "--max_batch", type=int, default=16, help="sequences decoded together at most (default: 16)"
    )
    p.add_argument(
        "--max_queue", type=int, default=64, help="sequences waiting at most; more get 429 (default: 64)"
    )
    p.add_argument(
        "--max_tokens", type=int, default=512, help="the most tokens a request may ask for (default: 512)"
    )
    p.add_argument(
        "--max_body_mb", type=float, default=8.0, help="largest request body; larger get 413 (default: 8)"
    )
    p.add_argument(
        "--drain_seconds", type=float, default=30.0,
        help="on SIGTERM, how long requests in flight may take to finish (default: 30)",
    )  # fmt: skip
    add_device_flag(p)
    p.set_defaults(func=cmd_serve)
