"""Token classification (NER): a tag per word, from CoNLL column files; predictions as CoNLL again.

Words are scored at their first word piece (or every piece with label_all_pieces), optionally
through a CRF; predictions are written as `word gold predicted` lines, which `conlleval` scores.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.backbone import Backbone
from lmforge.models.heads import TokenClassifier
from lmforge.tasks import metrics
from lmforge.tasks.features import encode_tokens
from lmforge.tasks.framing import Specials
from lmforge.tasks.losses import token_classification_loss
from lmforge.tasks.readers import LabelMap, TokenExample, read_conll
from lmforge.tasks.spec import TaskData
from lmforge.utils.io import atomic_write_text

if TYPE_CHECKING:
    from lmforge.finetuning import FinetuneConfig

_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")


def word_tags(data: TaskData, pred: np.ndarray, labels: LabelMap) -> list[list[str]]:
    """Per-sentence predicted tags, windows of split sentences joined back in order."""
    tags: list[list[str]] = [[] for _ in data.examples]
    for f, row in zip(data.features, pred):
        n = len(f["word_pos"])
        tags[int(f["sentence"])].extend(labels.name(int(t)) if t >= 0 else "O" for t in row[:n])
    return tags


def conll_text(examples: list[Any], tags: list[list[str]], gold: bool) -> str:
    """`word gold predicted` lines (conlleval's input), a blank line after each sentence."""
    lines = []
    for ex, pred in zip(examples, tags):
        for j, (word, p) in enumerate(zip(ex.tokens, pred)):
            lines.append(f"{word} {ex.tags[j]} {p}" if gold else f"{word} {p}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _words_per_line(lines: list[str]) -> list[TokenExample]:
    """Words-only CoNLL: one word per line, a blank line (or -DOCSTART-) between sentences."""
    sents, cur, start = [], [], 0
    for i, ln in enumerate(lines, 1):
        w = ln.strip()
        if w and not w.startswith("-DOCSTART-"):
            start = start or i
            cur.append(w)
        elif cur:
            sents.append(TokenExample(tokens=cur, tags=[], line=start))
            cur, start = [], 0
    if cur:
        sents.append(TokenExample(tokens=cur, tags=[], line=start))
    return sents


class NerTask:
    """Emissions per word piece under a softmax or a CRF; entity-level precision, recall and F1."""

    summary = "named-entity recognition / tagging (CoNLL column files)"
    default_metric = "f1"
    metrics = ("precision", "recall", "f1")
    options = ("token_column", "tag_column", "scheme", "crf", "label_all_pieces", "class_weights")
    label_key = "word_labels"
    length_sorted = False

    def read(self, cfg: FinetuneConfig, path: Path) -> list[Any]:
        return read_conll(path, token_column=cfg.token_column, tag_column=cfg.tag_column, scheme=cfg.scheme)

    def chance(self, data: TaskData, labels: LabelMap) -> dict[str, tuple[float, str]]:
        how = "tagging every word O (no entity found)"
        return {"f1": (0.0, how), "precision": (0.0, how), "recall": (0.0, how)}

    def read_for_prediction(self, cfg: FinetuneConfig, path: Path) -> tuple[list[Any], bool]:
        """CoNLL with tags (gold), CoNLL with words only, or plain text with one sentence per line.

        Told apart by the first lines: one token per line is words-only CoNLL; a last column that is
        always a tag (O, B-X, I-X, ...) is tagged CoNLL; anything else is running text.
        """
        lines = path.read_text("utf-8").splitlines()
        sample = [ln.split() for ln in lines if ln.strip() and not ln.startswith("-DOCSTART-")][:200]
        if not sample:
            raise LmforgeError(f"{path}: no text to predict on")

        def tag_of(cols: list[str]) -> str:
            return cols[cfg.tag_column] if -len(cols) <= cfg.tag_column < len(cols) else ""

        if all(len(cols) >= 2 and _TAG.match(tag_of(cols)) for cols in sample):
            return self.read(cfg, path), True
        if all(len(cols) == 1 for cols in sample):
            return _words_per_line(lines), False
        return [
            TokenExample(tokens=ln.split(), tags=[], line=i) for i, ln in enumerate(lines, 1) if ln.strip()
        ], False

    def build_labels(self, examples: list[Any]) -> LabelMap:
        return LabelMap.from_labels({t for e in examples for t in e.tags} | {"O"})

    def featurize(
        self, cfg: FinetuneConfig, path: Path, examples: list[Any], tokenizer: Any, specials: Specials,
        labels: LabelMap, max_len: int, *, with_labels: bool = True,
    ) -> TaskData:  # fmt: skip
        enc = encode_tokens(examples, tokenizer, specials, labels if with_labels else None, max_len,
                            label_all_pieces=cfg.label_all_pieces, source=str(path))  # fmt: skip
        notes = (
            [f"{path}: {enc.split} sentences longer than {max_len} tokens split into windows"]
            if enc.split
            else []
        )
        return TaskData(path, examples, enc.features, notes=notes)

    def build_head(
        self, cfg: FinetuneConfig, backbone: Backbone, labels: LabelMap, class_weights: torch.Tensor | None,
        tokenizer: Any,
    ) -> nn.Module:  # fmt: skip
        if class_weights is not None and cfg.crf:
            raise LmforgeError("class_weights applies to the softmax head; drop it with --crf true")
        return TokenClassifier(backbone, labels.names, crf=cfg.crf, head_dropout=cfg.head_dropout,
                               class_weights=class_weights)  # fmt: skip

    def loss(self, model: nn.Module, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> Any:
        return token_classification_loss(model, outputs, batch)

    def class_weight_key(self, cfg: FinetuneConfig) -> str | None:
        return "word_labels" if cfg.crf else "piece_labels"

    def score(self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap) -> dict[str, Any]:
        pred_tags = word_tags(data, outputs["pred"], labels)
        m = metrics.ner_metrics([e.tags for e in data.examples], pred_tags)
        return {"metrics": {"precision": m["precision"], "recall": m["recall"], "f1": m["f1"]},
                "per_type": m["per_type"], "report_text": m["report_text"], "predictions": pred_tags}  # fmt: skip

    def write_predictions(
        self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap, out: Path | None,
        gold: bool,
    ) -> list[list[str]]:  # fmt: skip
        """CoNLL `word gold predicted` (or `word predicted` without gold); returns the tags per sentence."""
        tags = word_tags(data, outputs["pred"], labels)
        if out:
            atomic_write_text(out, conll_text(data.examples, tags, gold))
        return tags

    def describe_labels(self, labels: LabelMap) -> str:
        return f"{len(labels)} labels"


SPEC = NerTask()
