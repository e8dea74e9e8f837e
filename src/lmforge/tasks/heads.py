"""Task heads on a backbone: sequence classification, token classification (softmax or CRF), QA spans.

Each model takes a batch dict (see `lmforge.tasks.batches.collate`) and offers `loss(batch)` for
training and `predict(batch)` for evaluation, so the trainer and the evaluation loop never need to
know which task they run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.tasks.backbone import Backbone
from lmforge.tasks.crf import CRF
from lmforge.tasks.features import IGNORE


class TaskModel(nn.Module):
    """A backbone plus a head; subclasses define `head_logits`, `loss` and `predict`."""

    def __init__(self, backbone: Backbone, head_dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config  # the trainer and the FLOP count read model.config
        self.drop = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()

    def hidden(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.backbone(
            batch["input_ids"],
            batch.get("attention_mask"),
            batch.get("token_type_ids"),
            batch.get("token_index"),
        )

    def head_parameter(self, name: str) -> bool:
        return not name.startswith("backbone.")

    def num_params(self, non_embedding: bool = False) -> int:
        return self.backbone.model.num_params(non_embedding) + sum(
            p.numel() for n, p in self.named_parameters() if self.head_parameter(n)
        )

    def flops_per_token(self, seq_len: int) -> float:
        fn = getattr(self.backbone.model, "flops_per_token", None)
        if fn is None:
            return 0.0
        if self.backbone.arch == "encoder":  # no MLM head runs in fine-tuning
            return fn(seq_len, predicted_fraction=0.0)
        lm_head = self.config.d_model * self.config.vocab_size  # in the decoder's count, unused here
        return fn(seq_len) - 6.0 * lm_head

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, metrics) of a labelled batch: the call goes through forward so that DDP and
        torch.compile wrappers see it."""
        return self.loss(batch)

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class SequenceClassifier(TaskModel):
    """One label per text (or text pair) from a pooled vector: BERT's [CLS] pooler, the last token
    (a decoder's summary of the whole text), the first token or the mean of all tokens."""

    def __init__(
        self,
        backbone: Backbone,
        num_labels: int,
        *,
        pooling: str = "cls",
        head_dropout: float = 0.1,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__(backbone, head_dropout)
        self.pooling = pooling
        self.classifier = nn.Linear(backbone.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        self.register_buffer("class_weights", class_weights, persistent=False)

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        h = self.hidden(batch)
        pooled = self.backbone.pool(
            h, self.pooling, batch["lengths"].to(h.device), batch.get("attention_mask")
        )
        return self.classifier(self.drop(pooled)).float()

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(batch)
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        return self._loss(logits, batch), {"accuracy": acc.detach()}

    def _loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(logits, batch["label"], weight=self.class_weights)

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.logits(batch)
        probs = logits.softmax(-1)
        out = {"probs": probs, "pred": probs.argmax(-1)}
        if "label" in batch:  # the dev loss from the same forward pass
            out["loss"] = self._loss(logits, batch)
        return out


class TokenClassifier(TaskModel):
    """A label per word: emissions on word pieces, read at each word's first piece.

    Without a CRF the loss is the cross-entropy of the labelled pieces (the first piece of each
    word, or all of them with label_all_pieces). With a CRF the first-piece emissions of each
    sentence form a word sequence, scored by the CRF's log-likelihood and decoded by Viterbi.
    """

    def __init__(
        self,
        backbone: Backbone,
        labels: list[str],
        *,
        crf: bool = False,
        head_dropout: float = 0.1,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__(backbone, head_dropout)
        self.classifier = nn.Linear(backbone.hidden_size, len(labels))
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        self.crf = CRF.for_iob2(labels) if crf else None
        self.register_buffer("class_weights", class_weights, persistent=False)

    def emissions(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.classifier(self.drop(self.hidden(batch))).float()  # (B, T, K)

    def word_emissions(self, emissions: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        pos = batch["word_pos"].to(emissions.device)  # (B, W)
        return emissions.gather(1, pos.unsqueeze(-1).expand(-1, -1, emissions.size(-1)))  # (B, W, K)

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._loss(self.emissions(batch), batch), {}

    def _loss(self, em: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        if self.crf is not None:  # every window holds at least one word (encode_tokens)
            words = self.word_emissions(em, batch)
            mask = batch["word_mask"].to(em.device)
            tags = batch["word_labels"]
            loss = self.crf(words, tags, mask)
        else:
            labels = batch["piece_labels"]
            loss = F.cross_entropy(
                em.flatten(0, 1), labels.flatten(), weight=self.class_weights, ignore_index=IGNORE
            )
        return loss

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        em = self.emissions(batch)
        words = self.word_emissions(em, batch)
        mask = batch["word_mask"].to(em.device)
        if self.crf is not None:
            pred = self.crf.decode(words, mask)
        else:
            pred = words.argmax(-1).masked_fill(~mask, -1)
        out = {"pred": pred}
        if "word_labels" in batch:  # the dev loss from the same forward pass
            out["loss"] = self._loss(em, batch)
        return out


class SpanExtractor(TaskModel):
    """Extractive QA: a start and an end logit per token; spans are chosen by `qa.decode_spans`."""

    def __init__(self, backbone: Backbone, *, head_dropout: float = 0.1) -> None:
        super().__init__(backbone, head_dropout)
        self.qa = nn.Linear(backbone.hidden_size, 2)
        nn.init.normal_(self.qa.weight, std=0.02)
        nn.init.zeros_(self.qa.bias)

    def span_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.qa(self.drop(self.hidden(batch))).float()  # (B, T, 2)
        mask = batch.get("attention_mask")
        if mask is not None:  # padding can never be a span boundary
            logits = logits.masked_fill(~mask.to(logits.device).unsqueeze(-1), -1e4)
        return logits[..., 0], logits[..., 1]

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._loss(*self.span_logits(batch), batch), {}

    @staticmethod
    def _loss(start: torch.Tensor, end: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return (
            F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])
        ) / 2

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        start, end = self.span_logits(batch)
        out = {"start_logits": start, "end_logits": end}
        if "start_positions" in batch:  # the dev loss from the same forward pass
            out["loss"] = self._loss(start, end, batch)
        return out


def task_objective(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The trainer's objective for every task: the head's own loss."""
    return model(batch)
