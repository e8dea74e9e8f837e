"""Sequence classification: one label per text or text pair (TSV/CSV/JSONL, or .txt to predict on).

Columns are found by their usual header names unless given; predictions are JSONL, one object per
input with the label, every label's probability and the gold label when the input has one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.backbone import Backbone
from lmforge.models.heads import SequenceClassifier
from lmforge.tasks import metrics
from lmforge.tasks.features import encode_classification
from lmforge.tasks.framing import Specials
from lmforge.tasks.losses import classification_loss
from lmforge.tasks.readers import ClassificationExample, LabelMap, read_classification
from lmforge.tasks.spec import TaskData
from lmforge.utils.io import atomic_write_text

if TYPE_CHECKING:
    from lmforge.finetuning import FinetuneConfig

TEXT_NAMES = ("sentence", "text", "text_a", "sentence1", "question1", "premise", "review", "content")
PAIR_NAMES = ("sentence2", "text_b", "question2", "hypothesis")
LABEL_NAMES = ("label", "labels", "class", "category", "sentiment")


def _header(path: Path) -> list[str]:
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            return []
        return list(row) if isinstance(row, dict) else []
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    return first.split("\t" if path.suffix.lower() != ".csv" else ",")


def resolve_columns(cfg: FinetuneConfig, path: Path) -> dict[str, Any]:
    """Column choices for a classification file: explicit ones, or found by their usual names."""
    header = [h.strip() for h in _header(path)]
    found = lambda names: next((h for h in header if h.lower() in names), None)  # noqa: E731
    text = cfg.text_column
    label = cfg.label_column
    pair = cfg.text_pair_column
    if text == "auto":
        text = found(TEXT_NAMES) or "0"
    if label == "auto":
        label = found(LABEL_NAMES) or "1"
    if pair is None and cfg.text_column == "auto":
        pair = found(PAIR_NAMES)
    cols = {"text_column": text, "label_column": label, "text_pair_column": pair}
    return {k: (int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v) for k, v in cols.items()}


class ClassifyTask:
    """A pooled vector of the text (or pair) under a linear layer; accuracy and macro-F1."""

    summary = "sequence classification of texts or text pairs (TSV/CSV/JSONL)"
    default_metric = "accuracy"
    metrics = ("accuracy", "macro_f1")
    options = ("text_column", "text_pair_column", "label_column", "pooling", "class_weights")
    label_key = "label"
    length_sorted = False

    def read(self, cfg: FinetuneConfig, path: Path) -> list[Any]:
        return read_classification(path, **resolve_columns(cfg, path))

    def chance(self, data: TaskData, labels: LabelMap) -> dict[str, tuple[float, str]]:
        """Always predicting the most frequent dev label: accuracy is its share p, and macro-F1 is
        that class's F1, 2p / (1 + p), averaged with zeros over the other labels."""
        from collections import Counter

        gold = [e.label for e in data.examples]
        if not gold:
            return {}
        label, count = Counter(gold).most_common(1)[0]
        p, how = count / len(gold), f"always predicting {label!r}"
        return {"accuracy": (p, how), "macro_f1": (2 * p / (1 + p) / max(1, len(labels.names)), how)}

    def read_for_prediction(self, cfg: FinetuneConfig, path: Path) -> tuple[list[Any], bool]:
        """The training formats with or without the label column, or .txt with one text per line."""
        if path.suffix.lower() == ".txt":
            lines = [
                (i, ln.strip()) for i, ln in enumerate(path.read_text("utf-8").splitlines(), 1) if ln.strip()
            ]
            if not lines:
                raise LmforgeError(f"{path}: no text to predict on")
            return [ClassificationExample(text=t, label="", line=i) for i, t in lines], False
        cols = resolve_columns(cfg, path)
        header = _header(path)
        label = cols["label_column"]
        has_label = (isinstance(label, int) and label < len(header)) or label in header
        if has_label:  # the first row has the label column: a labelled file (errors name file:line)
            return self.read(cfg, path), True
        # No label column: read the text columns only, with an empty label.
        text_col = cols["text_column"]
        examples = read_classification(path, text_column=text_col, label_column=text_col,
                                       text_pair_column=cols["text_pair_column"])  # fmt: skip
        return [dataclasses.replace(ex, label="") for ex in examples], False

    def build_labels(self, examples: list[Any]) -> LabelMap:
        return LabelMap.from_examples(examples)

    def featurize(
        self, cfg: FinetuneConfig, path: Path, examples: list[Any], tokenizer: Any, specials: Specials,
        labels: LabelMap, max_len: int, *, with_labels: bool = True,
    ) -> TaskData:  # fmt: skip
        enc = encode_classification(examples, tokenizer, specials, labels if with_labels else None, max_len,
                                    source=str(path))  # fmt: skip
        notes = (
            [f"{path}: {enc.truncated} of {len(examples)} examples cut to {max_len} tokens"]
            if enc.truncated
            else []
        )
        return TaskData(path, examples, enc.features, notes=notes)

    def build_head(
        self, cfg: FinetuneConfig, backbone: Backbone, labels: LabelMap, class_weights: torch.Tensor | None,
        tokenizer: Any,
    ) -> nn.Module:  # fmt: skip
        pooling = cfg.pooling if cfg.pooling != "auto" else ("cls" if backbone.arch == "encoder" else "last")
        return SequenceClassifier(backbone, len(labels), pooling=pooling, head_dropout=cfg.head_dropout,
                                  class_weights=class_weights)  # fmt: skip

    def loss(self, model: nn.Module, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> Any:
        return classification_loss(model, outputs, batch)

    def class_weight_key(self, cfg: FinetuneConfig) -> str | None:
        return "label"

    def score(self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap) -> dict[str, Any]:
        pred = [labels.name(int(i)) for i in outputs["pred"]]
        m = metrics.classification_metrics([e.label for e in data.examples], pred, labels.names)
        return {"metrics": {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}, "report": m["report"],
                "report_text": m["report_text"], "predictions": pred}  # fmt: skip

    def write_predictions(
        self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap, out: Path | None,
        gold: bool,
    ) -> list[str]:  # fmt: skip
        """JSONL: `{"text", "text_pair"?, "label", "probs", "gold"?}` per input; returns the labels."""
        rows, predicted = [], []
        for ex, pid, probs in zip(data.examples, outputs["pred"], outputs["probs"]):
            row = {"text": ex.text, **({"text_pair": ex.text_pair} if ex.text_pair is not None else {}),
                   "label": labels.name(int(pid)),
                   "probs": {n: round(float(p), 6) for n, p in zip(labels.names, probs)}}  # fmt: skip
            if gold:
                row["gold"] = ex.label
            rows.append(json.dumps(row, ensure_ascii=False))
            predicted.append(row["label"])
        if out:
            atomic_write_text(out, "\n".join(rows) + "\n")
        return predicted

    def describe_labels(self, labels: LabelMap) -> str:
        return f"{len(labels)} labels"


SPEC = ClassifyTask()
