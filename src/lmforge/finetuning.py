"""`lmforge finetune <task>`: a pretrained run (or HF directory) + a labelled task -> a task run.

The workflow is the same for every task: read the task files, build the label map from the
training file, turn the examples into features, put the task's head on the backbone, and train
with the same Trainer as pretraining, evaluating on the dev file with the task's own metric and
keeping the best checkpoint by it. What differs between tasks (formats, features, head, metrics,
prediction files) is the task's `TaskSpec`, looked up by name in `lmforge.tasks.registry.TASKS`.

A task run directory:

    run.json           kind "task" (see lmforge.run)
    config.yaml        task: the fine-tuning config; model: the backbone architecture; train: ...
    tokenizer.json  labels.json  model.safetensors (best dev metric)  train_state/  metrics.jsonl
    dev_report.json  dev_report.txt     the dev metrics of the kept weights (per label / entity type)
"""

from __future__ import annotations

import math
import sys
import warnings
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
    to_dict,
)
from lmforge.errors import LmforgeError
from lmforge.models.backbone import Backbone
from lmforge.models.config import ModelConfig
from lmforge.models.weights import unwrap
from lmforge.objectives.base import Objective
from lmforge.tasks.framing import Specials, specials_of
from lmforge.tasks.readers import LabelMap
from lmforge.tasks.registry import task_spec
from lmforge.tasks.spec import TaskData, TaskSpec
from lmforge.train.config import TrainConfig


@dataclass
class FinetuneConfig:
    task: str = "classify"  # a key of lmforge.tasks.registry.TASKS: classify | ner | qa | seq2seq | chat
    # the pretrained run directory (encoder, decoder or encoder-decoder) or a Hugging Face model
    # directory; none with --from_scratch true: a new `architecture` over --tokenizer
    model: str = ""
    train_file: str = ""  # labelled training data (TSV/CSV/JSONL, CoNLL, SQuAD JSON); --train on the CLI
    dev_file: str | None = None  # labelled dev data: the metric that picks the best checkpoint; --dev
    out: str = "runs/task"  # the task run directory to create (or resume)
    from_scratch: bool = False  # same architecture and tokenizer, fresh weights: the no-pretraining baseline
    # classification columns: header names or 0-based indices; auto = well-known header names
    # (sentence/text/text_a..., label...) or, without a header, text in column 0 and label in column 1
    text_column: str = "auto"
    text_pair_column: str | None = None  # second text of sentence-pair tasks (auto-found by name too)
    label_column: str = "auto"
    token_column: int = 0  # NER: the CoNLL column holding the word (0 = first)
    tag_column: int = -1  # NER: the CoNLL column holding the tag (-1 = last)
    # NER: the training file's tag scheme, converted to IOB2; auto = detected from the tags
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
    # batch by a token budget: as many examples of similar length as fit in this many padded
    # tokens (translation's batching, fairseq's --max-tokens); 0 = train.batch_size examples
    max_tokens: int = 0
    # seq2seq: the JSONL (or TSV header) fields of the source and the target
    src_field: str = "src"
    tgt_field: str = "tgt"
    # seq2seq: the JSONL field of the references scored against, when not the target's (DialogSum
    # test: summaries); a record without it is scored against its target
    ref_field: str | None = None
    label_smoothing: float = 0.1  # seq2seq: share of the target's probability spread over the vocabulary
    beam: int = 5  # seq2seq: beam size of dev scoring and predictions (1 = greedy)
    length_penalty: float = 1.0  # seq2seq: beam scores are log p / length^this (>1 favours longer output)
    max_new_tokens: int = 0  # seq2seq: longest output; 0 = 2 x the source + 10 (within max_len)
    no_repeat_ngram: int = 0  # seq2seq: no n-gram of this size twice in an output (0 = off)
    bleu_tokenize: str = "auto"  # seq2seq: sacreBLEU tokenizer; auto = zh for Chinese targets, else 13a
    # seq2seq: the decoder's first input id; -1 = the one the model was trained with (an imported
    # checkpoint's decoder_start_token_id), else the tokenizer's padding token (else end-of-text)
    decoder_start: int = -1
    # chat: the template conversations are rendered with; auto = the model's own (an imported or
    # chat run's), else plain; plain | chatml (adds <|im_start|>, <|im_end|>) | a .jinja file
    chat_template: str = "auto"
    pack: bool = False  # chat: short conversations share training rows (each attends only to itself)
    tokenizer: str = ""  # --from_scratch without --model: the tokenizer.json of the new model
    # seq2seq --from_scratch without --model: a separate tokenizer.json for the sources (two
    # vocabularies; --tokenizer then encodes and decodes the targets); none = --tokenizer for both
    src_tokenizer: str = ""
    # --from_scratch without --model: the model to build (its vocab_size 0 = the tokenizer's)
    architecture: ModelConfig = field(
        default_factory=lambda: ModelConfig(
            arch="encoder-decoder",
            n_layer=3,
            n_head=4,
            d_model=256,
            d_ff=1024,
            max_len=256,
            position="sinusoidal",
            scale_embeddings=True,
            init_std=256**-0.5,
            activation="relu",
            dropout=0.1,
        )
    )
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
        from lmforge.run import saved_config

        saved = saved_config(resume_from)
        data = {**saved["task"], "train": saved.get("train", {})}
    data = deep_merge(deep_merge(data, config_source(config)), overrides)
    explicit = set((data.get("train") or {}).keys())  # the rest follow from epochs / the dev file
    cfg = from_dict(FinetuneConfig, data)
    task_spec(cfg.task)  # an unknown task is a config error, as a bad value of any other key
    return cfg, explicit


# ------------------------------------------------------------------------------------------- backbone


def load_backbone(
    source: str | Path, *, from_scratch: bool = False, architecture: ModelConfig | None = None,
    tokenizer: str | Path = "", source_tokenizer: Any = None,
) -> tuple[Backbone, Any, dict[str, Any], Any]:  # fmt: skip
    """(backbone, tokenizer, the source's config dict, the separate source tokenizer of an
    encoder-decoder or None) from a run directory or a Hugging Face directory.

    `from_scratch` keeps the architecture and tokenizer but not the weights: the baseline that
    shows what pretraining is worth. Without a source, `from_scratch` builds `architecture` over
    the `tokenizer` file (a translation model trained from nothing), with an encoder vocabulary of
    its own when a (loaded) `source_tokenizer` is given.
    """
    from lmforge.models import build_model

    if not str(source):
        return _new_backbone(architecture or ModelConfig(), tokenizer, source_tokenizer)
    if source_tokenizer is not None:
        raise LmforgeError(
            "--src_tokenizer builds a new model's source vocabulary, so it needs --from_scratch true without "
            "--model (a pretrained model keeps the vocabulary it was trained with)"
        )
    src = Path(source)
    if not src.is_dir():
        raise LmforgeError(
            f"{src}: no such directory; give a run directory (lmforge pretrain --out) or a HF model dir"
        )
    if (src / "config.yaml").is_file():
        from lmforge.run import load, read_run

        info = read_run(src)
        if info.kind == "task":
            raise LmforgeError(
                f"{src} is a fine-tuned task run; fine-tune from the pretrained run it started from "
                f"({info.config['task'].get('model')})"
            )
        lm = load(src)
        model, tokenizer, config, source_tokenizer = lm.model, lm.tokenizer, lm.config, lm.source_tokenizer
        if hasattr(model, "discriminator"):  # ELECTRA: the discriminator is the encoder to fine-tune
            model = model.discriminator
    elif (src / "config.json").is_file():
        from lmforge.interop.hf import import_hf

        model, tokenizer = import_hf(src)
        config = {"imported_from": str(src)}
        if model.config.arch == "encoder-decoder":
            from lmforge.interop.hf_seq2seq import run_config, source_tokenizer_of
            from lmforge.utils.io import read_json

            config.update(run_config(src, read_json(src / "config.json")))
            source_tokenizer = source_tokenizer_of(src)
    else:
        raise LmforgeError(
            f"{src}: neither a run directory (config.yaml) nor a Hugging Face model directory (config.json)"
        )
    if from_scratch:
        torch.manual_seed(0)
        model = build_model(model.config)
    return Backbone(model.train()), tokenizer, config, source_tokenizer


def _new_backbone(
    architecture: ModelConfig, tokenizer_file: str | Path, source_tokenizer: Any = None
) -> tuple[Backbone, Any, dict[str, Any], Any]:
    """A freshly initialised `architecture` (vocab_size 0: the tokenizer's, rounded up to 64; with
    a source tokenizer, src_vocab_size 0 likewise the source's)."""
    from lmforge.models import build_model
    from lmforge.run import check_vocab
    from lmforge.tokenizer import Tokenizer

    if not str(tokenizer_file):
        raise LmforgeError("--from_scratch without --model needs --tokenizer: the tokenizer.json to build on")
    tokenizer = Tokenizer.load(tokenizer_file)
    sizes = {"vocab_size": 64 * math.ceil(tokenizer.vocab_size / 64)} if architecture.vocab_size == 0 else {}
    if source_tokenizer is not None:
        if architecture.share_embeddings:
            raise LmforgeError(
                "--src_tokenizer gives the sources a vocabulary of their own, which one shared embedding "
                "cannot hold; add --architecture.share_embeddings false"
            )
        if architecture.src_vocab_size == 0:
            sizes["src_vocab_size"] = 64 * math.ceil(source_tokenizer.vocab_size / 64)
    if sizes:
        architecture = from_dict(ModelConfig, {**to_dict(architecture), **sizes}, prefix="architecture.")
    check_vocab(architecture, tokenizer, f"--architecture.vocab_size={architecture.vocab_size}")
    if source_tokenizer is not None:
        _check_source_vocab(architecture, source_tokenizer, tokenizer)
    torch.manual_seed(0)
    model = build_model(architecture).train()
    return Backbone(model), tokenizer, {"architecture": to_dict(architecture)}, source_tokenizer


def _check_source_vocab(architecture: ModelConfig, source_tokenizer: Any, tokenizer: Any) -> None:
    """The encoder's embedding must hold every source id, and the padding id batches are padded with."""
    rows = architecture.source_vocab
    if source_tokenizer.vocab_size > rows:
        raise LmforgeError(
            f"--src_tokenizer has {source_tokenizer.vocab_size} tokens but --architecture.src_vocab_size={rows}; "
            "raise it, or leave it 0 to size it so"
        )
    if source_tokenizer.eos_id is None:
        raise LmforgeError(
            "--src_tokenizer has no end-of-text token, which every source ends in; train it with lmforge "
            "tokenizer train --kind bpe, unigram, word or char (wordpiece has none)"
        )
    pad = specials_of(tokenizer, "encoder-decoder").pad
    if pad >= rows:
        raise LmforgeError(
            f"the target tokenizer's padding id {pad}, which pads the sources too, is outside the source "
            f"vocabulary ({rows} rows); raise --architecture.src_vocab_size above {pad}"
        )


def load_source_tokenizer(cfg: FinetuneConfig) -> Any:
    """The separate source tokenizer `--src_tokenizer` names (seq2seq only), or None."""
    if not cfg.src_tokenizer:
        return None
    if cfg.task != "seq2seq":
        raise LmforgeError(f"--src_tokenizer applies to finetune seq2seq only, not {cfg.task}")
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.load(cfg.src_tokenizer)


def featurize(
    spec: TaskSpec, cfg: FinetuneConfig, path: Path, examples: list[Any], tokenizer: Any, specials: Specials,
    labels: LabelMap, max_len: int, *, with_labels: bool = True, source_tokenizer: Any = None,
) -> TaskData:  # fmt: skip
    """The task's features of `examples`; a seq2seq run's sources through its own tokenizer if it has one."""
    extra = {"source_tokenizer": source_tokenizer} if source_tokenizer is not None else {}
    return spec.featurize(
        cfg, path, examples, tokenizer, specials, labels, max_len, with_labels=with_labels, **extra
    )


# ------------------------------------------------------------------------------------------- model


def build_task_model(
    cfg: FinetuneConfig, backbone: Backbone, labels: LabelMap, class_weights: torch.Tensor | None,
    tokenizer: Any,
) -> nn.Module:  # fmt: skip
    """The backbone under the head of `cfg.task`."""
    return task_spec(cfg.task).build_head(cfg, backbone, labels, class_weights, tokenizer)


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
    """Per-label loss weights from `class_weights` (none, balanced, or explicit in label order), the
    counts read from each training feature's `key` (the task's class_weight_key)."""
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


def task_objective(name: str, spec: TaskSpec, select_metric: str, *, scored: bool = True) -> Objective:
    """The trainer's objective of a task: the head's outputs through the task's loss, and the dev
    figure that keeps the best checkpoint (unless train.select_metric names another). Its dev
    figures are the task's metrics when a dev file is `scored`, else the loss alone."""

    def loss(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return spec.loss(unwrap(model), model(batch), batch)  # through forward: DDP and compile see it

    figures = ("loss", *spec.metrics) if scored else ("loss",)
    return Objective(name, loss, select_metric=select_metric, figures=figures)


@torch.no_grad()
def run_predictions(
    model: nn.Module, data: TaskData, batch_size: int, pad_id: int, device: torch.device, spec: TaskSpec
) -> dict:
    """Decoded outputs over a file's features in order (class ids and probabilities, word tags,
    span logits, generated ids), and the mean loss where the features carry labels (from the same
    forward pass). A spec that generates (`length_sorted`) runs its inputs in order of length,
    which pads less and lets a batch's inputs finish together, and gets its outputs back in
    file order."""
    from lmforge.tasks.batches import eval_batches
    from lmforge.train.trainer import to_device

    was_training = model.training
    model.eval()
    features, order = data.features, None
    if getattr(spec, "length_sorted", False):
        order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
        features = [features[i] for i in order]
    out: dict[str, list] = {}
    loss_sum, loss_n = 0.0, 0
    for batch in eval_batches(features, batch_size, pad_id):
        batch = to_device(batch, device)
        outputs = model(batch)
        if spec.label_key in batch:
            n = batch["input_ids"].size(0)
            loss_sum, loss_n = loss_sum + float(spec.loss(model, outputs, batch)[0]) * n, loss_n + n
        pred = model.decode(outputs, batch)
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
        if order is not None:
            result[k] = result[k][np.argsort(order)]
    result["loss"] = loss_sum / loss_n if loss_n else None
    return result


def score(cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap) -> dict[str, Any]:
    """The task's metrics on a labelled file (with the dev loss), plus what the reports keep."""
    result = task_spec(cfg.task).score(cfg, data, outputs, labels)
    if outputs.get("loss") is not None:
        result["metrics"]["loss"] = outputs["loss"]
    return result


# ------------------------------------------------------------------------------------------- the run


def finetune(
    config: str | Path | dict[str, Any] | FinetuneConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **overrides: Any,
):
    """Fine-tune a pretrained run on a labelled task; the Python twin of `lmforge finetune TASK`.
    `overwrite` lets the run write into a folder that holds other files (or start it over).

    Keyword overrides may be dotted (`**{"train.max_steps": 100}`) or nested dicts. Returns the
    TrainResult, whose `val_metrics` are the dev metrics of the last evaluation and `best_score`
    the selected metric of the kept weights.
    """
    nested = nest_overrides(overrides)
    out = nested.get("out") or (config.out if isinstance(config, FinetuneConfig) else None)
    if out is None and isinstance(config, (str, Path)):
        out = load_yaml(config).get("out")
    cfg, explicit = build_config(config, nested, resume_from=Path(out) if resume and out else None)
    return run_finetuning(cfg, explicit_train=explicit, resume=resume, overwrite=overwrite)


def run_finetuning(
    cfg: FinetuneConfig,
    *,
    explicit_train: set[str] = frozenset(),
    resume: bool = False,
    overwrite: bool = False,
):
    """Train `cfg`'s task run: data, schedule, model, run directory, then the Trainer."""
    from lmforge.run import check_run_tokenizer, finish_training_run, start_training_run
    from lmforge.tasks.batches import TaskBatches
    from lmforge.train.parallel import setup_distributed, teardown_distributed
    from lmforge.train.trainer import Trainer

    spec = task_spec(cfg.task)
    _check_request(cfg)
    run_dir = Path(cfg.out)
    tcfg = cfg.train
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    info, device = setup_distributed(tcfg.device)
    finished = False  # whether the ranks leave the process group together
    try:
        start_training_run(
            run_dir, resume=resume, overwrite=overwrite, is_main=info.is_main, barrier=info.barrier
        )
        torch.manual_seed(tcfg.seed)
        backbone, tokenizer, source_config, source_tokenizer = load_backbone(
            cfg.model, from_scratch=cfg.from_scratch, architecture=cfg.architecture, tokenizer=cfg.tokenizer,
            source_tokenizer=load_source_tokenizer(cfg),
        )  # fmt: skip
        _prepare_tokenizer(spec, cfg, backbone, tokenizer)
        start = source_config.get("decoder_start_token_id")
        if cfg.task == "seq2seq" and cfg.decoder_start < 0 and start is not None:
            cfg.decoder_start = int(start)  # saved with the task config, so predictions start alike
        if resume:
            check_run_tokenizer(
                run_dir, tokenizer, str(cfg.src_tokenizer or cfg.model or cfg.tokenizer),
                source_tokenizer=source_tokenizer,
            )  # fmt: skip
        specials = specials_of(tokenizer, backbone.arch)
        max_len = cfg.max_len or backbone.config.max_len
        if max_len > backbone.config.max_len:
            raise LmforgeError(f"max_len={max_len} exceeds the backbone's max_len={backbone.config.max_len}")
        train, dev, labels = _training_data(
            spec, cfg, run_dir, tokenizer, specials, max_len, resume=resume, source_tokenizer=source_tokenizer
        )
        batches = TaskBatches(
            train.features, tcfg.batch_size, specials.pad, seed=tcfg.seed, group_by_length=cfg.group_by_length,
            max_tokens=cfg.max_tokens,
        )  # fmt: skip
        per_epoch = math.ceil(batches.steps_per_epoch / tcfg.grad_accum)
        tcfg = cfg.train = _schedule(tcfg, cfg, per_epoch, explicit_train)
        objective = task_objective(cfg.task, spec, spec.default_metric if dev else "loss", scored=bool(dev))
        key = spec.class_weight_key(cfg)
        weights = compute_class_weights(cfg.class_weights, train.features, len(labels), key) if key else None
        model = build_task_model(cfg, backbone, labels, weights, tokenizer)
        frozen = apply_freezing(model, cfg.freeze)
        if info.is_main:
            write_task_run(run_dir, cfg, backbone.config, tokenizer, labels, source_tokenizer)
        info.barrier()
        trainer = Trainer(
            model, batches, tcfg, run_dir, objective=objective, device=device, dist=info,
            flops_per_token=model.flops_per_token(batches.seq_len),
            evaluator=_dev_evaluator(cfg, dev, labels, specials.pad, device),
            lr_scale=layer_lr_scale(model, cfg.layer_decay),
            run_record={"kind": "task", "config": task_run_config(cfg, backbone.config),
                        "tokenizer_sha256": tokenizer.sha256,
                        "source_tokenizer_sha256": getattr(source_tokenizer, "sha256", None)},
        )  # fmt: skip
        if info.is_main and dev is not None and tcfg.eval_every == 0:
            print(
                "note: --train.eval_every 0: the dev set is scored only when training ends", file=sys.stderr
            )
        if info.is_main:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(
                f"finetune {cfg.task}: {backbone.arch} backbone from {cfg.model or cfg.tokenizer}"
                f"{' (fresh weights)' if cfg.from_scratch else ''}, {spec.describe_labels(labels)}, "
                f"{len(train.features):,} training inputs, {tcfg.max_steps} steps ({per_epoch}/epoch); "
                f"{trainable / 1e6:.2f}M trainable parameters{f', {frozen} tensors frozen' if frozen else ''}; "
                f"device {device}",
                flush=True,
            )
        result = trainer.fit(resume=resume)
        finished = True
        if info.is_main and dev is not None:
            write_dev_report(run_dir, cfg, dev, labels, specials.pad, device)
            _warn_if_at_chance(spec.chance(dev, labels), result)
        return result
    finally:
        finish_training_run(run_dir, is_main=info.is_main)
        teardown_distributed(finished=finished)


def _prepare_tokenizer(spec: TaskSpec, cfg: FinetuneConfig, backbone: Backbone, tokenizer: Any) -> None:
    """A task that sets up the tokenizer first (chat: its template, and the tokens the template
    needs) does it here; the embedding grows to hold added tokens (in steps of 64 rows)."""
    prepare = getattr(spec, "prepare", None)
    if prepare is None:
        return
    added = prepare(cfg, tokenizer)
    model = backbone.model
    if added and tokenizer.vocab_size > model.config.vocab_size:
        model.resize_vocab(64 * math.ceil(tokenizer.vocab_size / 64))
        backbone.config = model.config
        print(f"note: added {', '.join(added)} to the vocabulary; the embedding now has "
              f"{model.config.vocab_size} rows", file=sys.stderr, flush=True)  # fmt: skip


def _warn_if_at_chance(chance: dict[str, tuple[float, str]], result: Any) -> None:
    """A run whose kept dev score is no better than a model that learned nothing gets a hint."""
    metric, score = result.select_metric, result.best_score
    if metric not in chance or score is None:
        return
    level, how = chance[metric]
    if score <= level + 1e-9:
        warnings.warn(
            f"the dev {metric} {score:.4f} is no better than chance ({level:.4f}, {how}): the run "
            "learned nothing usable; train longer (--epochs), raise --train.lr, or start from a "
            "larger pretrained --model",
            stacklevel=2,
        )


def _check_request(cfg: FinetuneConfig) -> None:
    """A fine-tuning run needs a model to start from and a training file."""
    if not cfg.model and not cfg.from_scratch:
        raise LmforgeError(
            "--model is required: the pretrained run directory (or HF model directory) to start from "
            "(or --from_scratch true with --tokenizer, for a new model)"
        )
    if not cfg.train_file:
        raise LmforgeError("--train is required: the labelled training file")


def _training_data(
    spec: TaskSpec, cfg: FinetuneConfig, run_dir: Path, tokenizer: Any, specials: Specials, max_len: int,
    *, resume: bool, source_tokenizer: Any = None,
) -> tuple[TaskData, TaskData | None, LabelMap]:  # fmt: skip
    """The training and dev features and the label map (a resumed run keeps its saved one)."""
    train_path = Path(cfg.train_file)
    train_examples = spec.read(cfg, train_path)
    if not train_examples:
        raise LmforgeError(f"{cfg.train_file}: no training examples")
    labels = LabelMap.load(run_dir / "labels.json") if resume else spec.build_labels(train_examples)
    st = source_tokenizer
    train = featurize(
        spec, cfg, train_path, train_examples, tokenizer, specials, labels, max_len, source_tokenizer=st
    )
    pack = getattr(spec, "pack_features", None)
    if pack is not None:
        pack(cfg, train, max_len)
    dev = None
    if cfg.dev_file:
        dev_path = Path(cfg.dev_file)
        dev_examples = spec.read(cfg, dev_path)
        dev = featurize(
            spec, cfg, dev_path, dev_examples, tokenizer, specials, labels, max_len, source_tokenizer=st
        )
    for note in train.notes + (dev.notes if dev else []):
        print(f"note: {note}", file=sys.stderr, flush=True)
    return train, dev, labels


def _schedule(
    tcfg: TrainConfig, cfg: FinetuneConfig, per_epoch: int, explicit_train: set[str]
) -> TrainConfig:
    """Steps, warmup, evaluation and checkpoint cadence from epochs unless set explicitly."""
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
    return from_dict(TrainConfig, {**to_dict(tcfg), **changes}) if changes else tcfg


def _dev_evaluator(
    cfg: FinetuneConfig, dev: TaskData | None, labels: LabelMap, pad: int, device: torch.device
) -> Callable[[nn.Module], dict[str, float]] | None:
    """The trainer's evaluation: the task's metrics on the dev file (none without one)."""
    if dev is None:
        return None

    def evaluator(m: nn.Module) -> dict[str, float]:
        return score(
            cfg, dev, run_predictions(m, dev, cfg.eval_batch_size, pad, device, task_spec(cfg.task)), labels
        )["metrics"]

    return evaluator


def write_dev_report(
    run_dir: Path, cfg: FinetuneConfig, dev: TaskData, labels: LabelMap, pad: int, device: torch.device
) -> None:
    """Score the kept (best) weights on dev and write dev_report.json / .txt."""
    from lmforge.utils.io import atomic_write_json, atomic_write_text

    task = load_task(run_dir, device=device)
    res = score(
        cfg,
        dev,
        run_predictions(task.model, dev, cfg.eval_batch_size, pad, device, task_spec(cfg.task)),
        labels,
    )
    report = {"file": str(dev.path), **res["metrics"]}
    for k in ("report", "per_type", "count", "missing"):
        if k in res:
            report[k] = res[k]
    atomic_write_json(run_dir / "dev_report.json", report)
    atomic_write_text(run_dir / "dev_report.txt", res["report_text"])


# ------------------------------------------------------------------------------------------- the run directory


@dataclass
class TaskRun:
    """A loaded task run: the model with its head, tokenizer, labels and config (and a seq2seq
    run's separate source tokenizer, None with one joint vocabulary)."""

    model: nn.Module
    tokenizer: Any
    labels: Any
    config: FinetuneConfig
    run_dir: Path
    device: torch.device
    source_tokenizer: Any = None

    @property
    def pad_id(self) -> int:
        return specials_of(self.tokenizer, self.model.backbone.arch).pad

    def generate(self, text: str | list[str], **options: Any) -> str | list[str]:
        """A seq2seq run's output for a text (or a list of them, decoded together); options as
        `translate`'s (beam, length_penalty, max_new_tokens, no_repeat_ngram, batch_size)."""
        out = translate(self, [text] if isinstance(text, str) else list(text), **options)
        return out[0] if isinstance(text, str) else out


def task_run_config(cfg: FinetuneConfig, model_config: ModelConfig) -> dict[str, Any]:
    """A task run's config.yaml: the task, model (the backbone's architecture) and train sections."""
    return {"task": {k: v for k, v in to_dict(cfg).items() if k != "train"},
            "model": to_dict(model_config), "train": to_dict(cfg.train)}  # fmt: skip


def write_task_run(
    run_dir: Path, cfg: FinetuneConfig, model_config: ModelConfig, tokenizer: Any, labels: LabelMap,
    source_tokenizer: Any = None,
) -> None:  # fmt: skip
    """What `load_task` reads back: the run's config (kind "task"), tokenizer.json (and a seq2seq
    run's source_tokenizer.json) and labels.json; the weights come from the trainer's checkpoints."""
    from lmforge.run import write_run_config

    config = task_run_config(cfg, model_config)
    write_run_config(run_dir, "task", config, tokenizer=tokenizer, source_tokenizer=source_tokenizer)
    labels.save(run_dir / "labels.json")


def load_task(
    run_dir: str | Path, *, device: str | torch.device = "cpu", weights: str | Path | None = None
) -> TaskRun:
    """Load a fine-tuned task run (its head and labels included), ready for predict/evaluate."""
    from lmforge.models import build_model
    from lmforge.models.weights import load_weights
    from lmforge.run import load_run_source_tokenizer, load_run_tokenizer, read_run

    info = read_run(run_dir)
    run_dir, data = info.path, info.config
    if info.kind != "task":
        raise LmforgeError(
            f"{run_dir} is a pretrained model, not a fine-tuned task run; fine-tune it first (lmforge finetune ...)"
        )
    cfg = from_dict(FinetuneConfig, {**data["task"], "train": data.get("train", {})})
    labels = LabelMap.load(run_dir / "labels.json")
    backbone = Backbone(build_model(from_dict(ModelConfig, data["model"], prefix="model.")))
    tokenizer = load_run_tokenizer(run_dir)
    source_tokenizer = load_run_source_tokenizer(run_dir, backbone.config)
    model = build_task_model(cfg, backbone, labels, None, tokenizer)
    weights = Path(weights) if weights else run_dir / "model.safetensors"
    if not weights.is_file():
        raise LmforgeError(f"{weights}: no weights yet; the run has not reached its first checkpoint")
    load_weights(model, weights)
    dev = torch.device(device)
    return TaskRun(model.to(dev).eval(), tokenizer, labels, cfg, run_dir, dev, source_tokenizer)


# ------------------------------------------------------------------------------------------- predict / evaluate

FIELD_OPTIONS = ("src_field", "tgt_field", "ref_field")  # a seq2seq file's JSONL fields


def with_fields(task: TaskRun, fields: dict[str, str] | None) -> TaskRun:
    """`task` reading JSONL fields other than its training file's (a test set with a list of
    references, say); the run itself is unchanged."""
    import dataclasses

    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    if not fields:
        return task
    unknown = sorted(set(fields) - set(FIELD_OPTIONS))
    if unknown:
        raise LmforgeError(f"unknown field option {unknown[0]!r}; the options are {', '.join(FIELD_OPTIONS)}")
    if task.config.task != "seq2seq":
        name = next(iter(fields))
        raise LmforgeError(f"--{name} applies to seq2seq runs; {task.run_dir} is a {task.config.task} run")
    return dataclasses.replace(task, config=dataclasses.replace(task.config, **fields))


def _check_input(path: Path) -> None:
    """A file to read must exist; parallel text may be two files, `SRC,TGT`."""
    from lmforge.tasks.parallel import parallel_files

    for f in parallel_files(path) if not path.is_file() else [path]:
        if not f.is_file():
            raise LmforgeError(f"{f}: input file not found")


def _input_data(task: TaskRun, path: Path, *, need_gold: bool = False) -> tuple[TaskData, bool]:
    """The features of a file to predict on or to evaluate, and whether it carries gold labels.

    Each task reads what its spec's `read_for_prediction` accepts: the training format with or
    without the labels, and plain text where the task has a natural one-input-per-line form.
    """
    _check_input(path)
    cfg = task.config
    spec = task_spec(cfg.task)
    examples, gold = spec.read_for_prediction(cfg, path)
    if need_gold and not gold:
        raise LmforgeError(
            f"{path}: no gold labels to evaluate against; use lmforge predict for unlabelled input"
        )
    specials = specials_of(task.tokenizer, task.model.backbone.arch)
    max_len = cfg.max_len or task.model.config.max_len
    data = featurize(
        spec, cfg, path, examples, task.tokenizer, specials, task.labels, max_len, with_labels=gold,
        source_tokenizer=task.source_tokenizer,
    )  # fmt: skip
    return data, gold


def predict(run: str | Path | TaskRun, input: str | Path, output: str | Path | None = None, *,
            batch_size: int = 64, device: str = "cpu", overwrite: bool = False,
            fields: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Predict on a file and write the predictions; the Python twin of `lmforge predict`.

    Output formats are the ones the official scorers read: JSONL (one object per input: text,
    label, probabilities) for classification; CoNLL `word gold predicted` (or `word predicted`
    without gold) for NER, which `conlleval` scores; `{question_id: answer}` JSON for QA, which the
    SQuAD v1.1 evaluation script scores (with `<output>.nbest.json` beside it). When the input has
    gold labels, the metrics are returned as well. An existing `output` is replaced only with
    `overwrite`. `fields` ({"src_field": ..., "tgt_field": ..., "ref_field": ...}) reads a seq2seq
    JSONL file whose fields are named otherwise than the training file's.
    """
    from lmforge.run import claim_output_file

    if output is not None:
        claim_output_file(output, overwrite=overwrite, what="--output")
    task = with_fields(run if isinstance(run, TaskRun) else load_task(run, device=device), fields)
    cfg, path = task.config, Path(input)
    data, gold = _input_data(task, path)
    spec = task_spec(cfg.task)
    outputs = run_predictions(task.model, data, batch_size, task.pad_id, task.device, spec)
    result: dict[str, Any] = {"input": str(path), "examples": len(data.examples)}
    replies = _responses(task, data, batch_size)
    if replies is not None:
        outputs["replies"] = replies["rows"]
    if gold:
        result["metrics"] = score(cfg, data, outputs, task.labels)["metrics"]
        result["metrics"].update(replies["metrics"] if replies else {})
    out = Path(output) if output else None
    result["predictions"] = spec.write_predictions(cfg, data, outputs, task.labels, out, gold)
    if out:
        result["output"] = str(out)
    return result


def evaluate_task(run: str | Path | TaskRun, data: str | Path, *, batch_size: int = 64, device: str = "cpu",
                  report: str | Path | None = None, fields: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The task's metrics on a labelled file (accuracy / macro-F1, entity P/R/F1 per type, EM/F1);
    the Python twin of `lmforge evaluate`. Writes `<run>/eval_<file stem>.json` and `.txt` (or `report`)."""
    from lmforge.utils.io import atomic_write_json, atomic_write_text

    task = with_fields(run if isinstance(run, TaskRun) else load_task(run, device=device), fields)
    cfg, path = task.config, Path(data)
    feats, _ = _input_data(task, path, need_gold=True)
    scored = score(
        cfg,
        feats,
        run_predictions(task.model, feats, batch_size, task.pad_id, task.device, task_spec(cfg.task)),
        task.labels,
    )
    replies = _responses(task, feats, batch_size)
    if replies is not None:
        scored["metrics"].update(replies["metrics"])
        scored["report_text"] += replies["report_text"]
    out = {
        "run": str(task.run_dir),
        "data": str(path),
        "task": cfg.task,
        "examples": len(feats.examples),
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


def _responses(task: TaskRun, data: TaskData, batch_size: int) -> dict[str, Any] | None:
    """A task that generates free text besides scoring it (chat: a reply to every assistant turn,
    BLEU-1/2 and distinct-1/2) does it here; None for the others."""
    respond = getattr(task_spec(task.config.task), "respond", None)
    if respond is None:
        return None
    return respond(task.config, task.model, task.tokenizer, data.examples, batch_size=batch_size)


# ------------------------------------------------------------------------------------------- translate


def translate(
    run: str | Path | TaskRun, input: str | Path | list[str], output: str | Path | None = None, *,
    beam: int | None = None, length_penalty: float | None = None, max_new_tokens: int | None = None,
    no_repeat_ngram: int | None = None, batch_size: int = 64, device: str = "cpu", overwrite: bool = False,
    compile: bool = False,
) -> list[str]:  # fmt: skip
    """Translate (or summarise) with a seq2seq run: texts, or a file of one source per line (or a
    parallel file, whose targets are ignored), into one output per input; the Python twin of
    `lmforge translate`. Options left as None keep the run's decoding settings; `output` gets
    one line per input (blank for a blank input line), replacing an existing file only with
    `overwrite`. `compile` runs the decoder's steps through torch.compile (the first batches pay
    the compiling; it pays on large inputs)."""
    import dataclasses

    from lmforge.run import claim_output_file
    from lmforge.tasks.parallel import Pair

    if output is not None:
        claim_output_file(output, overwrite=overwrite, what="--output")
    from lmforge.utils.io import atomic_write_text

    task = run if isinstance(run, TaskRun) else load_task(run, device=device)
    cfg = task.config
    if cfg.task != "seq2seq":
        raise LmforgeError(
            f"{task.run_dir} is a {cfg.task} run, which does not generate text; use lmforge predict for it "
            "(lmforge generate continues a language model's text)"
        )
    changes = {"beam": beam, "length_penalty": length_penalty, "max_new_tokens": max_new_tokens,
               "no_repeat_ngram": no_repeat_ngram}  # fmt: skip
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    spec = task_spec("seq2seq")
    head = task.model
    original = (head.beam, head.max_new_tokens)
    probe = spec.build_head(cfg, head.backbone, task.labels, None, task.tokenizer)
    head.beam, head.max_new_tokens = dataclasses.replace(probe.beam, compile=compile), probe.max_new_tokens
    try:
        if isinstance(input, list):
            examples: list[Any] = [Pair(str(t).strip(), "", i) for i, t in enumerate(input, 1)]
            path = Path("<texts>")
        else:
            path = Path(input)
            _check_input(path)
            examples, _ = spec.read_for_prediction(cfg, path)
        max_len = cfg.max_len or task.model.config.max_len
        specials = specials_of(task.tokenizer, "encoder-decoder")
        data = featurize(
            spec, cfg, path, examples, task.tokenizer, specials, task.labels, max_len, with_labels=False,
            source_tokenizer=task.source_tokenizer,
        )  # fmt: skip
        outputs = run_predictions(head, data, batch_size, task.pad_id, task.device, spec)
    finally:
        head.beam, head.max_new_tokens = original
    hyps = spec.write_predictions(cfg, data, outputs, task.labels, None, False)
    if output is not None:
        atomic_write_text(output, "".join(h.replace("\n", " ") + "\n" for h in hyps))
    return hyps
