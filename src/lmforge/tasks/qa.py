"""Extractive question answering (SQuAD v1.1 JSON): an answer span cut from the context.

The windows and the span decoding live in `lmforge.tasks.spans`; predictions are written as the
`{question_id: answer}` JSON the SQuAD v1.1 evaluation script reads, with `<output>.nbest.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lmforge.models.backbone import Backbone
from lmforge.models.heads import SpanExtractor
from lmforge.tasks import metrics
from lmforge.tasks.framing import Specials
from lmforge.tasks.losses import span_loss
from lmforge.tasks.readers import LabelMap, read_squad
from lmforge.tasks.spans import QAPredictions, build_qa_features, decode_spans, write_predictions_json
from lmforge.tasks.spec import TaskData
from lmforge.utils.io import atomic_write_json

if TYPE_CHECKING:
    from lmforge.finetuning import FinetuneConfig


def decode(cfg: FinetuneConfig, data: TaskData, outputs: dict) -> QAPredictions:
    """The best answer (and the n-best list) of every question, over all of its windows."""
    return decode_spans(outputs["start_logits"], outputs["end_logits"], data.extra, data.examples,
                        n_best=cfg.n_best, max_answer_len=cfg.max_answer_len)  # fmt: skip


class QaTask:
    """A start and an end logit per token over question + context windows; SQuAD exact match and F1."""

    summary = "extractive question answering (SQuAD v1.1 JSON)"
    default_metric = "f1"
    metrics = ("exact_match", "f1")
    options = ("doc_stride", "max_query_len", "max_answer_len", "n_best")
    label_key = "start_positions"
    length_sorted = False

    def read(self, cfg: FinetuneConfig, path: Path) -> list[Any]:
        return read_squad(path)

    def chance(self, data: TaskData, labels: LabelMap) -> dict[str, tuple[float, str]]:
        how = "answering with no word of the context"
        return {"f1": (0.0, how), "exact_match": (0.0, how)}

    def read_for_prediction(self, cfg: FinetuneConfig, path: Path) -> tuple[list[Any], bool]:
        """SQuAD JSON, which always carries answers."""
        return self.read(cfg, path), True

    def build_labels(self, examples: list[Any]) -> LabelMap:
        return LabelMap(["span"])

    def featurize(
        self, cfg: FinetuneConfig, path: Path, examples: list[Any], tokenizer: Any, specials: Specials,
        labels: LabelMap, max_len: int, *, with_labels: bool = True,
    ) -> TaskData:  # fmt: skip
        """One feature per context window, the windows themselves kept for decoding."""
        qa = build_qa_features(
            examples, tokenizer, max_len=max_len, doc_stride=cfg.doc_stride, max_query_len=cfg.max_query_len,
            with_labels=with_labels,
        )  # fmt: skip
        feats = []
        lengths = qa.attention_mask.sum(1)
        for i in range(len(qa.input_ids)):
            n = int(lengths[i])
            f = {
                "input_ids": qa.input_ids[i, :n].astype(np.int64),
                "token_type_ids": qa.token_type_ids[i, :n].astype(np.int64),
            }
            if with_labels:
                f["start_positions"] = np.asarray(qa.start_positions[i], np.int64)
                f["end_positions"] = np.asarray(qa.end_positions[i], np.int64)
            feats.append(f)
        notes = []
        unmapped = qa.unmapped_answers
        if unmapped:
            notes.append(
                f"{path}: {unmapped} answers could not be mapped to tokens (trained as 'no answer here')"
            )
        return TaskData(path, examples, feats, extra=qa, notes=notes)

    def build_head(
        self, cfg: FinetuneConfig, backbone: Backbone, labels: LabelMap, class_weights: torch.Tensor | None,
        tokenizer: Any,
    ) -> nn.Module:  # fmt: skip
        return SpanExtractor(backbone, head_dropout=cfg.head_dropout)

    def loss(self, model: nn.Module, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> Any:
        return span_loss(model, outputs, batch)

    def class_weight_key(self, cfg: FinetuneConfig) -> str | None:
        return None  # start/end positions are not classes

    def score(self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap) -> dict[str, Any]:
        preds = decode(cfg, data, outputs)
        m = metrics.squad_metrics(preds.answers, data.examples)
        return {"metrics": {"exact_match": m["exact_match"], "f1": m["f1"]}, "count": m["count"], "missing": m["missing"],
                "predictions": preds.answers, "nbest": preds.nbest,
                "report_text": f"exact_match {m['exact_match']:.2f}  f1 {m['f1']:.2f}  ({m['count']} questions)\n"}  # fmt: skip

    def write_predictions(
        self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap, out: Path | None,
        gold: bool,
    ) -> dict[str, str]:  # fmt: skip
        """`{question_id: answer}` JSON and `<out>.nbest.json` beside it; returns the answers."""
        preds = decode(cfg, data, outputs)
        if out:
            write_predictions_json(preds.answers, out)
            atomic_write_json(out.with_suffix(".nbest.json"), preds.nbest)
        return preds.answers

    def describe_labels(self, labels: LabelMap) -> str:
        return "span labels"


SPEC = QaTask()
