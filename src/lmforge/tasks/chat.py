"""Chat: supervised fine-tuning of a decoder on conversations, the loss on the assistant's turns only.

Conversations are JSONL, one per line: `{"messages": [{"role": "system" | "user" | "assistant",
"content": ...}, ...]}`, or DailyDialog's `{"turns": [...]}`, whose turns alternate between the
user (the first) and the assistant. Each is rendered with the run's chat template
(`lmforge.chat_template`: the tokenizer's own, or `--chat_template plain | chatml | FILE`) and
tokenized; the targets are the tokens inside the template's generation blocks, the mask
transformers' `return_assistant_tokens_mask` gives, so a conversation costs the loss of what the
assistant says (and of the token that ends its turn) and nothing of what it is told. A
conversation longer than `max_len` loses its oldest turns first (the system message stays), and
with `--pack true` short conversations share a row, each attending only to itself with its own
positions, so little of a batch is padding.

The dev figure is the perplexity of the assistant's tokens (exp of their mean cross-entropy);
`lmforge.infer.chat` talks to the trained run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lmforge import chat_template as templates
from lmforge.errors import LmforgeError
from lmforge.models.backbone import Backbone
from lmforge.models.heads import IGNORE, TaskModel
from lmforge.objectives.losses import linear_cross_entropy
from lmforge.tasks.framing import Specials
from lmforge.tasks.readers import LabelMap, iter_jsonl
from lmforge.tasks.spec import TaskData

if TYPE_CHECKING:
    from lmforge.finetuning import FinetuneConfig


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    line: int  # 1-based line of the file it came from


def read_conversations(path: str | Path) -> list[Conversation]:
    """The conversations of a JSONL file (messages or DailyDialog turns); a record that is not
    JSON, has an unknown role or no assistant turn is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: no such file; give a JSONL file of conversations")
    out = []
    for n, record in iter_jsonl(path):
        where = f"{path}:{n}"
        if isinstance(record, dict) and isinstance(record.get("turns"), list):
            turns = record["turns"]
            if not all(isinstance(t, str) for t in turns):
                raise LmforgeError(f"{where}: every entry of 'turns' must be text")
            record = {"messages": [{"role": ("user", "assistant")[i % 2], "content": t.strip()}
                                   for i, t in enumerate(turns)]}  # fmt: skip
        if not isinstance(record, dict) or "messages" not in record:
            raise LmforgeError(f"{where}: no 'messages' list (or DailyDialog 'turns'); see docs/chat.md")
        messages = templates.check_messages(record["messages"], where)
        if not any(m["role"] == "assistant" for m in messages):
            raise LmforgeError(f"{where}: no assistant turn, so nothing to learn; drop the line or add one")
        out.append(Conversation(messages, n))
    if not out:
        raise LmforgeError(f"{path}: no conversations in the file")
    return out


def prepare_tokenizer(tokenizer: Any, spec: str) -> tuple[str, list[str]]:
    """Give `tokenizer` its chat template: `auto` keeps the one it has (an imported or chat run's),
    else `plain`; a named or file template replaces it. Returns (template, tokens it added)."""
    if spec == "auto":
        if tokenizer.chat_template:
            return tokenizer.chat_template, []
        spec = "plain"
    template, needed = templates.resolve_template(spec)
    if not templates.has_generation_blocks(template):
        raise LmforgeError(
            f"--chat_template {spec!r} marks no assistant text with {{% generation %}} ... {{% endgeneration %}}, "
            "so training would not know what to learn; wrap the assistant's content in such a block"
        )
    missing = [t for t in needed if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.backend.add_special_tokens(missing)
    if "eos_token" in template and tokenizer.eos_id is None:
        raise LmforgeError(
            f"--chat_template {spec!r} ends turns with the end-of-text token, which this tokenizer lacks; "
            "use --chat_template chatml"
        )
    tokenizer.chat_template = template
    return template, missing


def _fit(tokenizer: Any, messages: list[dict[str, str]], template: str, limit: int) -> tuple[Any, bool]:
    """The encoded conversation within `limit` tokens: the oldest turns after the system message
    go first (one exchange at a time, so the text still starts with a user turn), and if the last
    exchange alone is too long its tokens are cut from the left. Returns (encoded, shortened)."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system) :]
    while rest and rest[-1]["role"] != "assistant":  # turns after the last reply teach nothing
        rest = rest[:-1]
    enc = templates.encode_chat(tokenizer, system + rest, template)
    shortened = len(enc.ids) > limit
    while len(enc.ids) > limit and sum(m["role"] == "assistant" for m in rest) > 1:
        cut = next(i for i, m in enumerate(rest) if m["role"] == "assistant") + 1
        rest = rest[cut:]
        enc = templates.encode_chat(tokenizer, system + rest, template)
    if len(enc.ids) > limit:
        enc.ids, enc.assistant = enc.ids[-limit:], enc.assistant[-limit:]
    return enc, shortened


def prompt_within(tokenizer: Any, messages: list[dict[str, str]], template: str, limit: int) -> list[int]:
    """The ids of `messages` with the assistant's generation prompt, within `limit` tokens: the
    oldest exchanges after the system message go first, then tokens from the left."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system) :]
    while True:
        ids = templates.encode_chat(tokenizer, system + rest, template, add_generation_prompt=True).ids
        if len(ids) <= limit or len(rest) <= 1:
            return ids[-limit:]
        rest = rest[2:] if len(rest) > 2 else rest[1:]


@dataclass
class Reply:
    """One assistant turn to answer: where it is, the turns before it, and what was said."""

    line: int
    turn: int  # index of the assistant message in its conversation
    prompt: list[int]
    reference: str


def reply_prompts(
    tokenizer: Any, conversations: list[Conversation], template: str, limit: int
) -> list[Reply]:
    """A prompt per assistant turn of every conversation: the conversation before it."""
    out = []
    for conv in conversations:
        for k, m in enumerate(conv.messages):
            if m["role"] == "assistant":
                prompt = prompt_within(tokenizer, conv.messages[:k], template, limit)
                out.append(Reply(conv.line, k, prompt, m["content"]))
    return out


def dialogue_scores(replies: list[str], references: list[str]) -> dict[str, float]:
    """BLEU-1/2 (sacreBLEU corpus BLEU with n-grams up to 1 and 2, brevity penalty included) of
    the replies against the turns actually said, and distinct-1/2 of the replies (`metrics.distinct`)."""
    from lmforge.tasks import metrics

    return {
        "bleu1": metrics.bleu(replies, references, max_order=1)["bleu"],
        "bleu2": metrics.bleu(replies, references, max_order=2)["bleu"],
        "distinct1": metrics.distinct(replies, 1),
        "distinct2": metrics.distinct(replies, 2),
    }


def pack_features(features: list[dict[str, np.ndarray]], max_len: int) -> list[dict[str, np.ndarray]]:
    """Conversations first-fit into rows of at most max_len tokens, in file order; each keeps its
    own `segments` index and `positions` from 0, so attention stays inside it."""
    rows: list[list[dict[str, np.ndarray]]] = []
    room: list[int] = []
    for f in features:
        n = len(f["input_ids"])
        k = next((i for i, r in enumerate(room) if r >= n), len(rows))
        if k == len(rows):
            rows.append([])
            room.append(max_len)
        rows[k].append(f)
        room[k] -= n

    def cat(parts: list[dict[str, np.ndarray]], make: Any) -> np.ndarray:
        return np.concatenate([make(i, p) for i, p in enumerate(parts)])

    return [
        {
            "input_ids": cat(parts, lambda i, p: p["input_ids"]),
            "lm_labels": cat(parts, lambda i, p: p["lm_labels"]),
            "segments": cat(parts, lambda i, p: np.full(len(p["input_ids"]), i, np.int64)),
            "positions": cat(parts, lambda i, p: np.arange(len(p["input_ids"]), dtype=np.int64)),
        }
        for parts in rows
    ]


def row_nll(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Summed cross-entropy per row (B,) of the labelled positions of hidden states h (B, T, d)
    under the LM head `weight`, a chunk of positions at a time (never the whole (B, T, V) logits)."""
    flat, targets = h.flatten(0, 1), labels.flatten()
    nll = torch.zeros(targets.numel(), dtype=torch.float32, device=h.device)
    for start in range(0, targets.numel(), chunk):
        logits = (flat[start : start + chunk] @ weight.t()).float()
        nll[start : start + chunk] = torch.nn.functional.cross_entropy(
            logits, targets[start : start + chunk], ignore_index=IGNORE, reduction="none"
        )
    return nll.view(labels.shape).sum(1)


class ChatModel(TaskModel):
    """A decoder trained as a chat model: its own LM head, the loss on assistant tokens only."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__(backbone, 0.0)
        if backbone.arch != "decoder":
            raise LmforgeError(
                f"chat fine-tuning needs a decoder (GPT-like) model, not a {backbone.arch}; start from an "
                "lmforge pretrain run or an imported GPT-2 / Llama checkpoint"
            )
        backbone.model.lm_head.requires_grad_(True)  # the task's head is the language-model head

    @property
    def model(self) -> nn.Module:
        return self.backbone.model

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"features": the final hidden states (B, T, d)}; packed rows attend within each conversation."""
        h = self.model(
            batch["input_ids"],
            features=True,
            positions=batch.get("positions"),
            segments=batch.get("segments"),
        )
        return {"features": h}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over the assistant's tokens, fused with the LM head."""
        head = self.model.output_layer()
        h = outputs["features"]
        return linear_cross_entropy(
            h.flatten(0, 1), head.weight, batch["lm_labels"].flatten(), bias=head.bias
        ), {}

    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"nll": (B, 1) summed cross-entropy of each row's assistant tokens, "tokens": (B, 1)
        their count}: perplexity is exp(sum nll / sum tokens) over a file."""
        labels = batch["lm_labels"]
        nll = row_nll(outputs["features"], self.model.output_layer().weight, labels)
        return {"nll": nll[:, None], "tokens": (labels != IGNORE).sum(1, keepdim=True)}

    def flops_per_token(self, seq_len: int) -> float:
        return self.model.flops_per_token(seq_len)


class ChatTask:
    """Conversations -> a decoder that answers; the perplexity of its assistant tokens."""

    summary = "chat fine-tuning of a decoder (JSONL messages or DailyDialog turns; loss on assistant turns)"
    default_metric = "ppl"
    metrics = ("ppl",)  # during training; evaluate adds bleu1, bleu2, distinct1, distinct2 (`respond`)
    # architecture and tokenizer build a model --from_scratch; max_new_tokens bounds evaluation's replies
    options = ("chat_template", "pack", "architecture", "tokenizer", "max_new_tokens")
    label_key = "lm_labels"
    length_sorted = False

    def prepare(self, cfg: FinetuneConfig, tokenizer: Any) -> list[str]:
        """Set the run's chat template on `tokenizer` before anything is encoded; the tokens added."""
        return prepare_tokenizer(tokenizer, cfg.chat_template)[1]

    def read(self, cfg: FinetuneConfig, path: Path) -> list[Any]:
        return read_conversations(path)

    def read_for_prediction(self, cfg: FinetuneConfig, path: Path) -> tuple[list[Any], bool]:
        return read_conversations(path), True

    def build_labels(self, examples: list[Any]) -> LabelMap:
        return LabelMap([])  # the vocabulary is the tokenizer's

    def featurize(
        self, cfg: FinetuneConfig, path: Path, examples: list[Any], tokenizer: Any, specials: Specials,
        labels: LabelMap, max_len: int, *, with_labels: bool = True,
    ) -> TaskData:  # fmt: skip
        template = tokenizer.chat_template or templates.TEMPLATES["plain"]
        features, kept, shortened, empty = [], [], 0, 0
        for i, conv in enumerate(examples):
            enc, cut = _fit(tokenizer, conv.messages, template, max_len + 1)
            shortened += cut
            ids = np.asarray(enc.ids, np.int64)
            target = np.where(np.asarray(enc.assistant[1:], bool), ids[1:], IGNORE)
            if len(ids) < 2 or not (target != IGNORE).any():
                empty += 1
                continue
            features.append({"input_ids": ids[:-1], "lm_labels": target})
            kept.append(i)
        notes = []
        if shortened:
            notes.append(f"{path}: {shortened} of {len(examples)} conversations lost their oldest turns to fit "
                         f"{max_len} tokens (raise --max_len, up to the model's max_len)")  # fmt: skip
        if empty:
            notes.append(
                f"{path}: {empty} conversations left no assistant token to learn from and were skipped"
            )
        if not features:
            raise LmforgeError(f"{path}: no conversation has an assistant token within {max_len} tokens")
        return TaskData(path, examples, features, extra=kept, notes=notes)

    def pack_features(self, cfg: FinetuneConfig, data: TaskData, max_len: int) -> None:
        """With --pack true, the training conversations share rows (`pack_features`)."""
        if cfg.pack:
            n = len(data.features)
            data.features = pack_features(data.features, max_len)
            data.notes.append(
                f"{data.path}: {n} conversations packed into {len(data.features)} rows of <= {max_len} tokens"
            )

    def respond(
        self, cfg: FinetuneConfig, model: nn.Module, tokenizer: Any, examples: list[Conversation], *,
        batch_size: int,
    ) -> dict[str, Any]:  # fmt: skip
        """Greedy replies to every assistant turn of `examples` given the turns before it (at most
        `max_new_tokens`, 0 = 64), scored against what was said: {"metrics", "rows", "report_text"}."""
        from lmforge.infer.generate import GenerationConfig, generate_batch

        template = tokenizer.chat_template or templates.TEMPLATES["plain"]
        decoder = model.model
        new = cfg.max_new_tokens or 64
        limit = decoder.config.max_len - min(new, decoder.config.max_len // 2)
        asked = reply_prompts(tokenizer, examples, template, limit)
        gen = GenerationConfig(max_new_tokens=new, temperature=0)
        ends = templates.turn_end_ids(tokenizer, template)
        order = sorted(range(len(asked)), key=lambda i: -len(asked[i].prompt))  # a batch finishes together
        said = [""] * len(asked)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            texts = generate_batch(decoder, tokenizer, [asked[i].prompt for i in rows], gen, end_ids=ends)
            for i, text in zip(rows, texts):
                said[i] = text.strip()
        scores = dialogue_scores(said, [a.reference for a in asked])
        text = (f"replies to {len(asked):,} assistant turns (greedy, <= {new} tokens): BLEU-1 {scores['bleu1']:.2f}  "
                f"BLEU-2 {scores['bleu2']:.2f}  distinct-1 {scores['distinct1']:.2f}  distinct-2 {scores['distinct2']:.2f}\n")  # fmt: skip
        rows_out = [
            {"line": a.line, "turn": a.turn, "reference": a.reference, "reply": r}
            for a, r in zip(asked, said)
        ]
        return {"metrics": scores, "rows": rows_out, "report_text": text}

    def build_head(
        self, cfg: FinetuneConfig, backbone: Backbone, labels: LabelMap, class_weights: torch.Tensor | None,
        tokenizer: Any,
    ) -> nn.Module:  # fmt: skip
        return ChatModel(backbone)

    def loss(self, model: nn.Module, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> Any:
        return model.loss(outputs, batch)

    def class_weight_key(self, cfg: FinetuneConfig) -> str | None:
        return None

    def score(self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap) -> dict[str, Any]:
        nll, tokens = float(outputs["nll"].sum()), int(outputs["tokens"].sum())
        ppl = math.exp(min(nll / max(tokens, 1), 50.0))
        text = f"assistant-token perplexity {ppl:.3f} over {tokens:,} tokens of {len(data.extra):,} conversations\n"
        return {"metrics": {"ppl": ppl}, "report": {"assistant_tokens": tokens}, "report_text": text,
                "predictions": []}  # fmt: skip

    def write_predictions(
        self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap, out: Path | None,
        gold: bool,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The replies to every assistant turn when `respond` made them (JSONL: line, turn,
        reference, reply), else per conversation its line, assistant tokens and their perplexity."""
        if "replies" in outputs:
            rows = outputs["replies"]
            if out:
                from lmforge.utils.io import atomic_write_text

                atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            return rows
        rows = []
        for i, nll, n in zip(data.extra, outputs["nll"][:, 0], outputs["tokens"][:, 0]):
            rows.append({"line": data.examples[i].line, "assistant_tokens": int(n),
                         "ppl": math.exp(min(float(nll) / max(int(n), 1), 50.0))})  # fmt: skip
        if out:
            from lmforge.utils.io import atomic_write_text

            atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def describe_labels(self, labels: LabelMap) -> str:
        return "chat"

    def chance(self, data: TaskData, labels: LabelMap) -> dict[str, tuple[float, str]]:
        return {}


SPEC = ChatTask()
