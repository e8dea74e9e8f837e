"""What the fine-tuning workflow needs to know about one task: the `TaskSpec` protocol.

`lmforge.finetuning` trains, evaluates and predicts the same way for every task: read a file,
turn its examples into features, put a head on the backbone, run the model, score and write what
it predicted. Only the steps named here differ between tasks, so each task module (`classify`,
`ner`, `qa`) implements them once and `lmforge.tasks.registry.TASKS` lists the modules' specs;
the workflow never asks which task it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from lmforge.finetuning import FinetuneConfig
    from lmforge.models.backbone import Backbone
    from lmforge.tasks.framing import Specials
    from lmforge.tasks.readers import LabelMap


@dataclass
class TaskData:
    """Examples and features of one file."""

    path: Path
    examples: list[Any]
    features: list[dict[str, np.ndarray]]  # one dict of arrays per model input (see tasks.batches)
    extra: Any = None  # what decoding needs besides the features (QA: the QAFeatures windows)
    notes: list[str] = field(default_factory=list)  # what featurising had to change, told to the user


class TaskSpec(Protocol):
    """One fine-tuning task: its files, its features, its head, its metrics and its output format.

    The methods take the run's `FinetuneConfig` and read the options they own from it; `options`
    names those, so that the CLI offers each task only the flags it reads.

    Optional members, looked up by the workflow where a task has them (chat does):
    `prepare(cfg, tokenizer) -> added tokens` (set the tokenizer up before anything is encoded),
    `pack_features(cfg, train_data, max_len)` (rearrange the training features), and
    `respond(cfg, model, tokenizer, examples, batch_size=) -> {"metrics", "rows", "report_text"}`
    (free text that evaluate and predict score and write).
    """

    summary: str  # one line for `lmforge finetune --help`
    default_metric: str  # the dev metric that keeps the best checkpoint unless train.select_metric says
    metrics: tuple[str, ...]  # every dev metric `score` reports (train.select_metric must be one, or loss)
    options: tuple[str, ...]  # FinetuneConfig fields this task reads and some other task ignores
    label_key: str  # the batch field that is present exactly when a batch carries gold labels
    # whether predictions generate (seq2seq): inputs then run in order of length (see run_predictions)
    length_sorted: bool

    def read(self, cfg: FinetuneConfig, path: Path) -> list[Any]:
        """The examples of a labelled file; a bad record is an error naming the file and line."""
        ...

    def read_for_prediction(self, cfg: FinetuneConfig, path: Path) -> tuple[list[Any], bool]:
        """The examples of a file to predict on, and whether it carries gold labels to score."""
        ...

    def build_labels(self, examples: list[Any]) -> LabelMap:
        """The label map of a new run, from its training examples (saved as labels.json)."""
        ...

    def featurize(
        self, cfg: FinetuneConfig, path: Path, examples: list[Any], tokenizer: Any, specials: Specials,
        labels: LabelMap, max_len: int, *, with_labels: bool = True,
    ) -> TaskData:  # fmt: skip
        """Model inputs of a file's examples, with the training targets when `with_labels`."""
        ...

    def build_head(
        self, cfg: FinetuneConfig, backbone: Backbone, labels: LabelMap, class_weights: torch.Tensor | None,
        tokenizer: Any,
    ) -> nn.Module:  # fmt: skip
        """The task model: `backbone` under this task's head (see lmforge.models.heads); `tokenizer`
        gives the special ids a head frames its outputs with."""
        ...

    def loss(self, model: nn.Module, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> Any:
        """(mean loss, metrics) of the head's `outputs` on a labelled batch (see lmforge.tasks.losses)."""
        ...

    def class_weight_key(self, cfg: FinetuneConfig) -> str | None:
        """The feature that holds the label ids `class_weights=balanced` counts; None: no class weights."""
        ...

    def score(self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap) -> dict[str, Any]:
        """The metrics of the model's `outputs` (see finetuning.run_predictions) on a labelled file.

        Returns `metrics` (the figures the dev evaluation logs and selects by), `report_text` (the
        human-readable report) and `predictions`, plus any of `report`, `per_type`, `count`,
        `missing` that the reports keep.
        """
        ...

    def write_predictions(
        self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap, out: Path | None,
        gold: bool,
    ) -> Any:  # fmt: skip
        """Write the predictions to `out` (when given) in the format the task's official scorer reads,
        with the gold labels beside them when the input has some; returns the predictions."""
        ...

    def describe_labels(self, labels: LabelMap) -> str:
        """What the head predicts, for the line a run starts with ("2 labels")."""
        ...

    def chance(self, data: TaskData, labels: LabelMap) -> dict[str, tuple[float, str]]:
        """Each metric's value for a model that learned nothing, and what that model does: a run
        that ends there is told so (it is usually too small or too short to learn)."""
        ...
