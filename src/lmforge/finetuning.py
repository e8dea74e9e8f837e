"""`lmforge finetune classify|ner|qa`: a pretrained run (or HF directory) + a labelled task -> a task run.

The steps are the library's pieces in order: read the task files (lmforge.tasks.readers), build
the label map from the training file, tokenise (lmforge.tasks.features / qa), put a head on the
backbone (lmforge.tasks.heads), and train with the same Trainer as pretraining, evaluating on the
dev file with the task's own metric and keeping the best checkpoint by it.

A task run directory:

    config.yaml        task: the fine-tuning config; model: the backbone architecture; train: ...
    tokenizer.json  labels.json  model.safetensors (best dev metric)  train_state/  metrics.jsonl
    dev_report.json  dev_report.txt     the dev metrics of the kept weights (per label / entity type)
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lmforge.config import (
    config_source,
    deep_merge,
    from_dict,
    load_yaml,
    nest_overrides,
    saved_run_config,
    to_dict,
)
from lmforge.errors import LmforgeError
from lmforge.train.config import TrainConfig

Task = Literal["classify", "ner", "qa"]
DEFAULT_METRIC = {"classify": "accuracy", "ner": "f1", "qa": "f1"}
TEXT_NAMES = ("sentence", "text", "text_a", "sentence1", "question1", "premise", "review", "content")
PAIR_NAMES = ("sentence2", "text_b", "question2", "hypothesis")
LABEL_NAMES = ("label", "labels", "class", "category", "sentiment")


@dataclass
class FinetuneConfig:
    task: Task = "classify"
    model: str = ""  # the pretrained run directory (encoder or decoder) or a Hugging Face model directory
    train_file: str = ""  # labelled training data (TSV/CSV/JSONL, CoNLL, SQuAD JSON); --train on the CLI
    dev_file: str | None = None  # labelled dev data: the metric that picks the best checkpoint; --dev
    out: str = "runs/task"  # the task run directory to create (or resume)
    from_scratch: bool = False  # same architecture and tokenizer, fresh weights: the no-pretraining baseline
    # classification columns: header names or 0-based indices; auto = well-known header names
    # (sentence/text/text_a..., label...) or, without a header, text in column 0 and label in column 1
    text_column: str = "auto"
    text_pair_column: str | None = None  # second text of sentence-pair tasks (auto-found by name too)
    label_column: str = "auto"
    # NER: which CoNLL columns hold the word and the tag (-1 = last), and the file's tag scheme
    token_column: int = 0
    tag_column: int = -1
    scheme: Literal["auto", "iob1", "iob2", "bio", "bioes", "iobes"] = "auto"
    crf: bool = False  # NER: a CRF layer (Viterbi decoding, valid IOB2 transitions only)
    label_all_pieces: bool = False  # NER: train on every word piece, not just the first of each word
    # heads and inputs
    max_len: int = 0  # tokens per input (0 = the backbone's max_len)
    pooling: Literal["auto", "cls", "first", "last", "mean"] = "auto"  # auto: cls (encoder), last (decoder)
    head_dropout: float = 0.1
    doc_stride: int = 128  # QA: tokens between the starts of consecutive context windows
    max_query_len: int = 64  # QA: question tokens kept
    max_answer_len: int = 30  # QA: longest answer span, in tokens
    n_best: int = 20  # QA: span candidates per window
    # recipe
    epochs: float = 3.0  # passes over the training data (train.max_steps, when given, wins)
    warmup_ratio: float = 0.06  # share of steps warming up (train.warmup_steps, when given, wins)
    layer_decay: float = 1.0  # layer-wise LR decay: layer l of L gets lr * layer_decay^(L + 1 - l); 1 = off
    freeze: str = "none"  # none | embeddings | bottom:N (embeddings + N lowest blocks) | backbone (head only)
    class_weights: str = (
        "none"  # none | balanced (inverse frequency) | comma-separated weights in label order
    )
    eval_batch_size: int = 64
    # batch examples of similar length together (shuffled batches of sorted windows): less padding
    group_by_length: bool = False
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            lr=5e-5,
            weight_decay=0.01,
            beta2=0.999,
            schedule="linear",
            min_lr_ratio=0.0,
            early_stopping_patience=0,
            keep_last=1,
            log_every=20,
        )
    )


def build_config(
    config: str | Path | dict[str, Any] | FinetuneConfig | None,
    overrides: dict[str, Any],
    *,
    resume_from: Path | None,
) -> tuple[FinetuneConfig, set[str]]:
    """defaults < saved task config (resume) < YAML/dict < overrides; also the train.* keys set explicitly."""
    data: dict[str, Any] = {}
    if resume_from is not None:
        saved = saved_run_config(resume_from)
        data = {**saved["task"], "train": saved.get("train", {})}
    data = deep_merge(deep_merge(data, config_source(config)), overrides)
    explicit = set((data.get("train") or {}).keys())  # the rest follow from epochs / the dev file
    return from_dict(FinetuneConfig, data), explicit


# ------------------------------------------------------------------------------------------- data


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


@dataclass
class TaskData:
    """Examples and features of one file."""

    path: Path
    examples: list[Any]
    features: list[dict[str, np.ndarray]]
    qa: Any = None  # QAFeatures (QA only)
    notes: list[str] = field(default_factory=list)


def read_examples(cfg: FinetuneConfig, path: str | Path) -> list[Any]:
    from lmforge.tasks import readers

    path = Path(path)
    if cfg.task == "classify":
        return readers.read_classification(path, **resolve_columns(cfg, path))
    if cfg.task == "ner":
        return readers.read_conll(
            path, token_column=cfg.token_column, tag_column=cfg.tag_column, scheme=cfg.scheme
        )
    return readers.read_squad(path)


def featurize(
    cfg: FinetuneConfig, path: str | Path, examples: list[Any], tokenizer: Any, specials: Any, labels: Any,
    max_len: int, *, with_labels: bool = True,
) -> TaskData:  # fmt: skip
    from lmforge.tasks import features as F

    path = Path(path)
    if cfg.task == "classify":
        enc = F.encode_classification(examples, tokenizer, specials, labels if with_labels else None, max_len,
                                      source=str(path))  # fmt: skip
        notes = (
            [f"{path}: {enc.truncated} of {len(examples)} examples cut to {max_len} tokens"]
            if enc.truncated
            else []
        )
        return TaskData(path, examples, enc.features, notes=notes)
    if cfg.task == "ner":
        enc = F.encode_tokens(examples, tokenizer, specials, labels if with_labels else None, max_len,
                              label_all_pieces=cfg.label_all_pieces, source=str(path))  # fmt: skip
        notes = (
            [f"{path}: {enc.split} sentences longer than {max_len} tokens split into windows"]
            if enc.split
            else []
        )
        return TaskData(path, examples, enc.features, notes=notes)
    from lmforge.tasks.qa import build_qa_features

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
    return TaskData(path, examples, feats, qa=qa, notes=notes)


# ------------------------------------------------------------------------------------------- model


def build_task_model(
    cfg: FinetuneConfig, backbone: Any, labels: Any, class_weights: torch.Tensor | None
) -> nn.Module:
    from lmforge.tasks.heads import SequenceClassifier, SpanExtractor, TokenClassifier

    if cfg.task == "classify":
        pooling = cfg.pooling if cfg.pooling != "auto" else ("cls" if backbone.arch == "encoder" else "last")
        return SequenceClassifier(backbone, len(labels), pooling=pooling, head_dropout=cfg.head_dropout,
                                  class_weights=class_weights)  # fmt: skip
    if cfg.task == "ner":
        return TokenClassifier(backbone, labels.names, crf=cfg.crf, head_dropout=cfg.head_dropout,
                               class_weights=class_weights)  # fmt: skip
    return SpanExtractor(backbone, head_dropout=cfg.head_dropout)


def apply_freezing(model: nn.Module, spec: str) -> int:
    """Freeze part of the backbone (`none`, `embeddings`, `bottom:N`, `backbone`); returns tensors frozen."""
    backbone = model.backbone
    spec = spec.strip().lower()
    if spec in ("none", ""):
        return 0
    if spec == "embeddings":
        limit = 0
    elif spec.startswith("bottom:") and spec[7:].isdigit():
        limit = int(spec[7:])
    elif spec in ("backbone", "all-but-head", "all_but_head"):
        limit = backbone.n_layer + 1
    else:
        raise LmforgeError(f"freeze={spec!r}: use none, embeddings, bottom:N or backbone")
    n = 0
    for name, p in backbone.model.named_parameters():
        if p.requires_grad and backbone.layer_of(name) <= limit:
            p.requires_grad_(False)
            n += 1
    return n


def layer_lr_scale(model: nn.Module, decay: float) -> Callable[[str], float] | None:
    """Layer-wise LR decay (ELECTRA, BEiT): the head gets the full rate, each layer below a factor less."""
    if decay == 1.0:
        return None
    if not 0 < decay <= 1:
        raise LmforgeError(f"layer_decay={decay}: use a value in (0, 1]; 1 switches it off")
    top = model.backbone.n_layer + 1

    def scale(name: str) -> float:
        if not name.startswith("backbone.model."):
            return 1.0
        return decay ** (top - model.backbone.layer_of(name[len("backbone.model.") :]))

    return scale


def compute_class_weights(
    spec: str, train_features: list[dict], n_labels: int, key: str
) -> torch.Tensor | None:
    spec = spec.strip().lower()
    if spec in ("none", ""):
        return None
    if spec == "balanced":  # n / (K * count), as scikit-learn's compute_class_weight
        ys = np.concatenate([np.atleast_1d(f[key]) for f in train_features])
        ys = ys[ys >= 0]
        counts = np.bincount(ys, minlength=n_labels).astype(np.float64)
        w = len(ys) / (n_labels * np.maximum(counts, 1))
        return torch.tensor(w, dtype=torch.float32)
    try:
        w = [float(x) for x in spec.split(",")]
    except ValueError:
        raise LmforgeError(f"class_weights={spec!r}: use none, balanced or comma-separated numbers") from None
    if len(w) != n_labels:
        raise LmforgeError(f"class_weights has {len(w)} values for {n_labels} labels (in labels.json order)")
    return torch.tensor(w, dtype=torch.float32)


# ------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def run_predictions(
    model: nn.Module, data: TaskData, batch_size: int, pad_id: int, device: torch.device
) -> dict:
    """Raw outputs over a file's features in order: class ids and probabilities, word tags, or span logits."""
    from lmforge.tasks.batches import eval_batches
    from lmforge.train.trainer import to_device

    was_training = model.training
    model.eval()
    out: dict[str, list] = {}
    loss_sum, loss_n = 0.0, 0
    for batch in eval_batches(data.features, batch_size, pad_id):
        batch = to_device(batch, device)
        pred = model.predict(batch)
        loss = pred.pop("loss", None)  # present when the batch has labels
        if loss is not None:
            n = batch["input_ids"].size(0)
            loss_sum, loss_n = loss_sum + float(loss) * n, loss_n + n
        for k, v in pred.items():
            out.setdefault(k, []).append(
                v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
            )
    model.train(was_training)
    result: dict[str, Any] = {}
    for k, parts in out.items():
        width = max(p.shape[1] for p in parts) if parts[0].ndim > 1 else 0
        if parts[0].ndim > 1 and any(p.shape[1] != width for p in parts):
            fill = -1 if parts[0].dtype.kind in "iu" else -1e4
            parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=fill) for p in parts]
        result[k] = np.concatenate(parts)
    result["loss"] = loss_sum / loss_n if loss_n else None
    return result


def word_tags(cfg: FinetuneConfig, data: TaskData, pred: np.ndarray, labels: Any) -> list[list[str]]:
    """Per-sentence predicted tags, windows of split sentences joined back in order."""
    tags: list[list[str]] = [[] for _ in data.examples]
    for f, row in zip(data.features, pred):
        n = len(f["word_pos"])
        tags[int(f["sentence"])].extend(labels.name(int(t)) if t >= 0 else "O" for t in row[:n])
    return tags


def score(cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: Any) -> dict[str, Any]:
    """The task's metrics on a labelled file, plus what the prediction writers need."""
    from lmforge.tasks import metrics

    if cfg.task == "classify":
        pred = [labels.name(int(i)) for i in outputs["pred"]]
        m = metrics.classification_metrics([e.label for e in data.examples], pred, labels.names)
        result = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        details = {"report": m["report"], "report_text": m["report_text"], "predictions": pred}
    elif cfg.task == "ner":
        pred_tags = word_tags(cfg, data, outputs["pred"], labels)
        m = metrics.ner_metrics([e.tags for e in data.examples], pred_tags)
        result = {"precision": m["precision"], "recall": m["recall"], "f1": m["f1"]}
        details = {"per_type": m["per_type"], "report_text": m["report_text"], "predictions": pred_tags}
    else:
        preds = decode_qa(cfg, data, outputs)
        m = metrics.squad_metrics(preds.answers, data.examples)
        result = {"exact_match": m["exact_match"], "f1": m["f1"]}
        details = {"count": m["count"], "missing": m["missing"], "predictions": preds.answers, "nbest": preds.nbest,
                   "report_text": f"exact_match {m['exact_match']:.2f}  f1 {m['f1']:.2f}  ({m['count']} questions)\n"}  # fmt: skip
    if outputs.get("loss") is not None:
        result["loss"] = outputs["loss"]
    return {"metrics": result, **details}


def decode_qa(cfg: FinetuneConfig, data: TaskData, outputs: dict) -> Any:
    from lmforge.tasks.qa import decode_spans

    return decode_spans(outputs["start_logits"], outputs["end_logits"], data.qa, data.examples,
                        n_best=cfg.n_best, max_answer_len=cfg.max_answer_len)  # fmt: skip


# ------------------------------------------------------------------------------------------- the run


def finetune(
    config: str | Path | dict[str, Any] | FinetuneConfig | None = None,
    *,
    resume: bool = False,
    **overrides: Any,
):
    """Fine-tune a pretrained run on a labelled task; the Python twin of `lmforge finetune TASK`.

    Keyword overrides may be dotted (`**{"train.max_steps": 100}`) or nested dicts. Returns the
    TrainResult, whose `val_metrics` are the dev metrics of the last evaluation and `best_score`
    the selected metric of the kept weights.
    """
    nested = nest_overrides(overrides)
    out = nested.get("out") or (config.out if isinstance(config, FinetuneConfig) else None)
    if out is None and isinstance(config, (str, Path)):
        out = load_yaml(config).get("out")
    cfg, explicit = build_config(config, nested, resume_from=Path(out) if resume and out else None)
    return run_finetuning(cfg, explicit_train=explicit, resume=resume)


def run_finetuning(cfg: FinetuneConfig, *, explicit_train: set[str] = frozenset(), resume: bool = False):
    import yaml

    from lmforge.tasks.backbone import load_backbone, specials_of
    from lmforge.tasks.batches import TaskBatches
    from lmforge.tasks.heads import task_objective
    from lmforge.tasks.readers import LabelMap
    from lmforge.train.parallel import setup_distributed, teardown_distributed
    from lmforge.train.trainer import Trainer
    from lmforge.utils.io import atomic_write_text

    if not cfg.model:
        raise LmforgeError(
            "--model is required: the pretrained run directory (or HF model directory) to start from"
        )
    if not cfg.train_file:
        raise LmforgeError("--train is required: the labelled training file")
    run_dir = Path(cfg.out)
    if resume and not (run_dir / "train_state").is_dir():
        raise LmforgeError(f"{run_dir}: no train_state/ to resume from; drop --resume to start a new run")
    if not resume and (run_dir / "train_state").is_dir():
        raise LmforgeError(
            f"{run_dir} already holds a run; add --resume to continue it, or choose another --out"
        )
    tcfg = cfg.train
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    info, device = setup_distributed(tcfg.device)
    try:
        torch.manual_seed(tcfg.seed)
        backbone, tokenizer, _ = load_backbone(cfg.model, from_scratch=cfg.from_scratch)
        specials = specials_of(tokenizer, backbone.arch)
        max_len = cfg.max_len or backbone.config.max_len
        if max_len > backbone.config.max_len:
            raise LmforgeError(f"max_len={max_len} exceeds the backbone's max_len={backbone.config.max_len}")
        train_examples = read_examples(cfg, cfg.train_file)
        if not train_examples:
            raise LmforgeError(f"{cfg.train_file}: no training examples")
        if resume:
            labels = LabelMap.load(run_dir / "labels.json")
        elif cfg.task == "classify":
            labels = LabelMap.from_examples(train_examples)
        elif cfg.task == "ner":
            labels = LabelMap.from_labels({t for e in train_examples for t in e.tags} | {"O"})
        else:
            labels = LabelMap(["span"])
        train = featurize(cfg, cfg.train_file, train_examples, tokenizer, specials, labels, max_len)
        dev = None
        if cfg.dev_file:
            dev = featurize(
                cfg, cfg.dev_file, read_examples(cfg, cfg.dev_file), tokenizer, specials, labels, max_len
            )
        for note in train.notes + (dev.notes if dev else []):
            print(f"note: {note}", file=sys.stderr, flush=True)

        # Steps, warmup and evaluation cadence from epochs unless given.
        batches = TaskBatches(
            train.features, tcfg.batch_size, specials.pad, seed=tcfg.seed, group_by_length=cfg.group_by_length
        )
        per_epoch = math.ceil(batches.steps_per_epoch / tcfg.grad_accum)
        changes: dict[str, Any] = {}
        if "max_steps" not in explicit_train:
            changes["max_steps"] = max(1, math.ceil(cfg.epochs * per_epoch))
        steps = changes.get("max_steps", tcfg.max_steps)
        if "warmup_steps" not in explicit_train:
            changes["warmup_steps"] = int(cfg.warmup_ratio * steps)
        if "eval_every" not in explicit_train:
            changes["eval_every"] = min(per_epoch, steps)
        if "save_every" not in explicit_train:
            changes["save_every"] = changes.get("eval_every", tcfg.eval_every) or steps
        if "select_metric" not in explicit_train:
            changes["select_metric"] = DEFAULT_METRIC[cfg.task] if dev else "loss"
        if changes:
            tcfg = cfg.train = from_dict(TrainConfig, {**to_dict(tcfg), **changes})

        key = {"classify": "label", "ner": "word_labels" if cfg.crf else "piece_labels"}.get(cfg.task)
        weights = compute_class_weights(cfg.class_weights, train.features, len(labels), key) if key else None
        if weights is not None and cfg.crf:
            raise LmforgeError("class_weights applies to the softmax head; drop it with --crf true")
        model = build_task_model(cfg, backbone, labels, weights)
        frozen = apply_freezing(model, cfg.freeze)

        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            saved = {"task": {k: v for k, v in to_dict(cfg).items() if k != "train"},
                     "model": to_dict(backbone.config), "train": to_dict(tcfg)}  # fmt: skip
            atomic_write_text(
                run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False, allow_unicode=True)
            )
            tokenizer.save(run_dir / "tokenizer.json")
            labels.save(run_dir / "labels.json")
        info.barrier()

        evaluator = None
        if dev is not None:

            def evaluator(m: nn.Module) -> dict[str, float]:
                res = score(
                    cfg, dev, run_predictions(m, dev, cfg.eval_batch_size, specials.pad, device), labels
                )
                return res["metrics"]

        trainer = Trainer(
            model, batches, tcfg, run_dir, objective=task_objective, device=device, dist=info,
            flops_per_token=model.flops_per_token(batches.seq_len), evaluator=evaluator,
            lr_scale=layer_lr_scale(model, cfg.layer_decay),
        )  # fmt: skip
        if info.is_main:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(
                f"finetune {cfg.task}: {backbone.arch} backbone from {cfg.model}"
                f"{' (fresh weights)' if cfg.from_scratch else ''}, {len(labels) if cfg.task != 'qa' else 'span'} labels, "
                f"{len(train.features):,} training inputs, {tcfg.max_steps} steps ({per_epoch}/epoch); "
                f"{trainable / 1e6:.2f}M trainable parameters{f', {frozen} tensors frozen' if frozen else ''}; "
                f"device {device}",
                flush=True,
            )
        result = trainer.fit(resume=resume)
        if info.is_main and dev is not None:
            write_dev_report(run_dir, cfg, dev, labels, specials.pad, device)
        return result
    finally:
        teardown_distributed()


def write_dev_report(
    run_dir: Path, cfg: FinetuneConfig, dev: TaskData, labels: Any, pad: int, device: torch.device
) -> None:
    """Score the kept (best) weights on dev and write dev_report.json / .txt."""
    from lmforge.utils.io import atomic_write_json, atomic_write_text

    task = load_task(run_dir, device=device)
    res = score(cfg, dev, run_predictions(task.model, dev, cfg.eval_batch_size, pad, device), labels)
    report = {"file": str(dev.path), **res["metrics"]}
    for k in ("report", "per_type", "count", "missing"):
        if k in res:
            report[k] = res[k]
    atomic_write_json(run_dir / "dev_report.json", report)
    atomic_write_text(run_dir / "dev_report.txt", res["report_text"])


# ------------------------------------------------------------------------------------------- loading


@dataclass
class TaskRun:
    """A loaded task run: the model with its head, tokenizer, labels and config."""

    model: nn.Module
    tokenizer: Any
    labels: Any
    config: FinetuneConfig
    run_dir: Path
    device: torch.device

    @property
    def pad_id(self) -> int:
        from lmforge.tasks.backbone import specials_of

        return specials_of(self.tokenizer, self.model.backbone.arch).pad


def is_task_run(run_dir: str | Path) -> bool:
    path = Path(run_dir) / "config.yaml"
    return path.is_file() and "task" in load_yaml(path)


def load_task(run_dir: str | Path, *, device: str | torch.device = "cpu") -> TaskRun:
    """Load a fine-tuned task run (its head and labels included), ready for predict/evaluate."""
    from lmforge.models import build_model
    from lmforge.models.config import ModelConfig
    from lmforge.models.weights import load_weights
    from lmforge.tasks.backbone import Backbone
    from lmforge.tasks.readers import LabelMap
    from lmforge.tokenizer import Tokenizer

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise LmforgeError(f"{run_dir}: not a run directory (no config.yaml)")
    data = load_yaml(cfg_path)
    if "task" not in data:
        raise LmforgeError(
            f"{run_dir} is a pretrained model, not a fine-tuned task run; fine-tune it first (lmforge finetune ...)"
        )
    cfg = from_dict(FinetuneConfig, {**data["task"], "train": data.get("train", {})})
    labels = LabelMap.load(run_dir / "labels.json")
    backbone = Backbone(build_model(from_dict(ModelConfig, data["model"], prefix="model.")))
    model = build_task_model(cfg, backbone, labels, None)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise LmforgeError(f"{weights}: no weights yet; the run has not reached its first checkpoint")
    load_weights(model, weights)
    dev = torch.device(device)
    return TaskRun(
        model.to(dev).eval(), Tokenizer.load(run_dir / "tokenizer.json"), labels, cfg, run_dir, dev
    )


# ------------------------------------------------------------------------------------------- predict / evaluate


def _read_for_prediction(task: TaskRun, path: Path) -> tuple[list[Any], bool]:
    """Examples of an input file and whether it carries gold labels.

    Classification accepts the training formats with or without the label column, and plain .txt
    (one text per line); NER accepts CoNLL (gold tags optional: a single column is words only) or
    .txt with one whitespace-tokenised sentence per line; QA takes SQuAD JSON.
    """
    from lmforge.tasks.readers import ClassificationExample

    cfg = task.config
    if not path.is_file():
        raise LmforgeError(f"{path}: input file not found")
    if cfg.task == "qa":
        return read_examples(cfg, path), True
    if cfg.task == "ner":
        return _read_ner_input(cfg, path)
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
        return read_examples(cfg, path), True
    # No label column: read the text columns only, with an empty label.
    from lmforge.tasks.readers import read_classification

    text_col = cols["text_column"]
    examples = read_classification(path, text_column=text_col, label_column=text_col,
                                   text_pair_column=cols["text_pair_column"])  # fmt: skip
    for ex in examples:
        ex.label = ""
    return examples, False


_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")


def _read_ner_input(cfg: FinetuneConfig, path: Path) -> tuple[list[Any], bool]:
    """CoNLL with tags (gold), CoNLL with words only, or plain text with one sentence per line.

    Told apart by the first lines: one token per line is words-only CoNLL; a last column that is
    always a tag (O, B-X, I-X, ...) is tagged CoNLL; anything else is running text.
    """
    from lmforge.tasks.readers import TokenExample

    lines = path.read_text("utf-8").splitlines()
    sample = [ln.split() for ln in lines if ln.strip() and not ln.startswith("-DOCSTART-")][:200]
    if not sample:
        raise LmforgeError(f"{path}: no text to predict on")

    def tag_of(cols: list[str]) -> str:
        return cols[cfg.tag_column] if -len(cols) <= cfg.tag_column < len(cols) else ""

    if all(len(cols) >= 2 and _TAG.match(tag_of(cols)) for cols in sample):
        return read_examples(cfg, path), True
    if all(len(cols) == 1 for cols in sample):
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
        return sents, False
    return [
        TokenExample(tokens=ln.split(), tags=[], line=i) for i, ln in enumerate(lines, 1) if ln.strip()
    ], False


def predict(run: str | Path | TaskRun, input: str | Path, output: str | Path | None = None, *,
            batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Predict on a file and write the predictions; the Python twin of `lmforge predict`.

    Output formats are the ones the official scorers read: JSONL (one object per input: text,
    label, probabilities) for classification; CoNLL `word gold predicted` (or `word predicted`
    without gold) for NER, which `conlleval` scores; `{question_id: answer}` JSON for QA, which the
    SQuAD v1.1 evaluation script scores (with `<output>.nbest.json` beside it). When the input has
    gold labels, the metrics are returned as well.
    """
    from lmforge.tasks.backbone import specials_of
    from lmforge.utils.io import atomic_write_json, atomic_write_text

    task = run if isinstance(run, TaskRun) else load_task(run, device=device)
    cfg, path = task.config, Path(input)
    examples, gold = _read_for_prediction(task, path)
    specials = specials_of(task.tokenizer, task.model.backbone.arch)
    max_len = cfg.max_len or task.model.config.max_len
    data = featurize(cfg, path, examples, task.tokenizer, specials, task.labels, max_len, with_labels=gold)
    outputs = run_predictions(task.model, data, batch_size, specials.pad, task.device)
    result: dict[str, Any] = {"input": str(path), "examples": len(examples)}
    if gold:
        scored = score(cfg, data, outputs, task.labels)
        result["metrics"] = scored["metrics"]
    out = Path(output) if output else None
    if cfg.task == "classify":
        lines = []
        for ex, pid, probs in zip(examples, outputs["pred"], outputs["probs"]):
            row = {"text": ex.text, **({"text_pair": ex.text_pair} if ex.text_pair is not None else {}),
                   "label": task.labels.name(int(pid)),
                   "probs": {n: round(float(p), 6) for n, p in zip(task.labels.names, probs)}}  # fmt: skip
            if gold:
                row["gold"] = ex.label
            lines.append(json.dumps(row, ensure_ascii=False))
        if out:
            atomic_write_text(out, "\n".join(lines) + "\n")
        result["predictions"] = [json.loads(x)["label"] for x in lines]
    elif cfg.task == "ner":
        tags = word_tags(cfg, data, outputs["pred"], task.labels)
        if out:
            atomic_write_text(out, conll_text(examples, tags, gold))
        result["predictions"] = tags
    else:
        preds = decode_qa(cfg, data, outputs)
        if out:
            from lmforge.tasks.qa import write_predictions_json

            write_predictions_json(preds.answers, out)
            atomic_write_json(out.with_suffix(".nbest.json"), preds.nbest)
        result["predictions"] = preds.answers
    if out:
        result["output"] = str(out)
    return result


def conll_text(examples: list[Any], tags: list[list[str]], gold: bool) -> str:
    """`word gold predicted` lines (conlleval's input), a blank line after each sentence."""
    lines = []
    for ex, pred in zip(examples, tags):
        for j, (word, p) in enumerate(zip(ex.tokens, pred)):
            lines.append(f"{word} {ex.tags[j]} {p}" if gold else f"{word} {p}")
        lines.append("")
    return "\n".join(lines) + "\n"


def evaluate_task(run: str | Path | TaskRun, data: str | Path, *, batch_size: int = 64, device: str = "cpu",
                  report: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """The task's metrics on a labelled file (accuracy / macro-F1, entity P/R/F1 per type, EM/F1);
    the Python twin of `lmforge evaluate`. Writes `<run>/eval_<file stem>.json` and `.txt` (or `report`)."""
    from lmforge.tasks.backbone import specials_of
    from lmforge.utils.io import atomic_write_json, atomic_write_text

    task = run if isinstance(run, TaskRun) else load_task(run, device=device)
    cfg, path = task.config, Path(data)
    examples, gold = _read_for_prediction(task, path)
    if not gold:
        raise LmforgeError(
            f"{path}: no gold labels to evaluate against; use lmforge predict for unlabelled input"
        )
    specials = specials_of(task.tokenizer, task.model.backbone.arch)
    max_len = cfg.max_len or task.model.config.max_len
    feats = featurize(cfg, path, examples, task.tokenizer, specials, task.labels, max_len)
    scored = score(
        cfg, feats, run_predictions(task.model, feats, batch_size, specials.pad, task.device), task.labels
    )
    out = {
        "run": str(task.run_dir),
        "data": str(path),
        "task": cfg.task,
        "examples": len(examples),
        **scored["metrics"],
    }
    for k in ("per_type", "report"):
        if k in scored:
            out[k] = scored[k]
    base = Path(report) if report else task.run_dir / f"eval_{path.stem}.json"
    atomic_write_json(base.with_suffix(".json"), out)
    atomic_write_text(base.with_suffix(".txt"), scored["report_text"])
    out["report_text"] = scored["report_text"]
    return out
