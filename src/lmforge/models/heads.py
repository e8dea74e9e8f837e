"""Task heads on a backbone: sequence classification, token classification (softmax or CRF), QA spans.

Each model takes a batch dict of padded tensors (`input_ids`, `attention_mask`, `token_type_ids`,
`lengths` and the task's label fields, as `lmforge.tasks.batches.collate` builds it). Like every
model here it returns its outputs and computes no loss: `forward(batch)` gives the head's logits
as a dict (what the task's loss in `lmforge.tasks.losses` reads, so that training goes through
`forward` where DDP and torch.compile see it), and `decode(outputs, batch)` turns them into
predictions; `predict(batch)` is both at once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmforge.models.backbone import Backbone
from lmforge.models.crf import CRF

IGNORE = -100  # label of positions that carry no loss (padding, special tokens, non-first pieces)


class TaskModel(nn.Module):
    """A backbone plus a head; subclasses define `forward` (the head's outputs) and `decode`."""

    def __init__(self, backbone: Backbone, head_dropout: float, *, uses_pooler: bool = False) -> None:
        super().__init__()
        if not uses_pooler:
            backbone.freeze_pooler()
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

    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Predictions from the outputs of `forward`; the heads whose logits are their prediction
        (QA's start/end logits, decoded into spans later) return them as they are."""
        return outputs

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.decode(self(batch), batch)


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
        super().__init__(backbone, head_dropout, uses_pooler=pooling == "cls")
        self.pooling = pooling
        self.classifier = nn.Linear(backbone.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        self.register_buffer("class_weights", class_weights, persistent=False)

    export_outputs = ("logits",)  # what an ONNX export of the head returns (lmforge.interop.onnx)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"logits": (B, num_labels) float32}."""
        return self.head_outputs(self.hidden(batch), batch)

    def head_outputs(self, h: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The head on the backbone's hidden states h (B, T, d)."""
        pooled = self.backbone.pool(
            h, self.pooling, batch["lengths"].to(h.device), batch.get("attention_mask")
        )
        return {"logits": self.classifier(self.drop(pooled)).float()}

    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        probs = outputs["logits"].softmax(-1)
        return {"probs": probs, "pred": probs.argmax(-1)}


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

    export_outputs = ("emissions",)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"emissions": (B, T, K) float32}: a score per word piece and label."""
        return self.head_outputs(self.hidden(batch), batch)

    def head_outputs(self, h: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"emissions": self.classifier(self.drop(h)).float()}

    def word_emissions(self, emissions: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        pos = batch["word_pos"].to(emissions.device)  # (B, W)
        return emissions.gather(1, pos.unsqueeze(-1).expand(-1, -1, emissions.size(-1)))  # (B, W, K)

    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"pred": (B, W) label ids per word, -1 past the sentence}: Viterbi with a CRF, else argmax."""
        words = self.word_emissions(outputs["emissions"], batch)
        mask = batch["word_mask"].to(words.device)
        if self.crf is not None:
            return {"pred": self.crf.decode(words, mask)}
        return {"pred": words.argmax(-1).masked_fill(~mask, -1)}


class SpanExtractor(TaskModel):
    """Extractive QA: a start and an end logit per token; spans are chosen by `qa.decode_spans`."""

    def __init__(self, backbone: Backbone, *, head_dropout: float = 0.1) -> None:
        super().__init__(backbone, head_dropout)
        self.qa = nn.Linear(backbone.hidden_size, 2)
        nn.init.normal_(self.qa.weight, std=0.02)
        nn.init.zeros_(self.qa.bias)

    export_outputs = ("start_logits", "end_logits")

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"start_logits", "end_logits"}: (B, T) float32 each, padding never a span boundary."""
        return self.head_outputs(self.hidden(batch), batch)

    def head_outputs(self, h: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.qa(self.drop(h)).float()  # (B, T, 2)
        mask = batch.get("attention_mask")
        if mask is not None:
            logits = logits.masked_fill(~mask.to(logits.device).unsqueeze(-1), -1e4)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
