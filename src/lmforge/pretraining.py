"""`lmforge pretrain`: raw text (or prepared shards) in, a trained run directory out.

The stages are the library's own pieces called in order: read + clean + tokenizer training +
sharding (only when `data` is raw text), model construction, the Trainer, and a final report.
With no data at all, the built-in corpus (docstrings of Python's standard library) is used, so
a first run needs no download.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lmforge.config import coerce, config_source, deep_merge, from_dict, load_yaml, to_dict
from lmforge.data.masking import MaskingConfig
from lmforge.data.prep import PrepConfig
from lmforge.errors import LmforgeError
from lmforge.models.config import BASELINE_ARCHS, Arch, ModelConfig
from lmforge.objectives.denoise import DenoiseConfig
from lmforge.objectives.electra import ElectraConfig
from lmforge.objectives.plm import PLMConfig
from lmforge.objectives.span import SpanConfig
from lmforge.tokenizer import TokenizerConfig
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import TrainResult


@dataclass
class PretrainConfig:
    # shards from `lmforge prepare`, or raw text (file/dir/glob/hf:NAME); none = built-in corpus
    data: str | None = None
    out: str = "runs/gpt"  # the run directory to create (or resume)
    # raw validation text (e.g. wiki.valid.txt), used as written; none = prep.val_fraction of data
    val_data: str | None = None
    # an existing tokenizer.json for raw data; none = train one (tokenizer.*)
    tokenizer_file: str | None = None
    # clm: causal LM (GPT); mlm: masked LM on full sentences (RoBERTa); mlm+nsp: masked LM and
    # next-sentence prediction (BERT); mlm+sop: masked LM and sentence-order prediction (ALBERT);
    # plm: permutation LM (XLNet); electra: replaced token detection (ELECTRA); span: span
    # corruption (T5) and denoise: text infilling + sentence permutation (BART), both of an
    # encoder-decoder.
    objective: Literal["clm", "mlm", "mlm+nsp", "mlm+sop", "plm", "electra", "span", "denoise"] = "clm"
    arch: Arch | None = None  # shortcut for model.arch (e.g. --arch lstm); none = model.arch decides
    model: ModelConfig = field(default_factory=ModelConfig)
    mlm: MaskingConfig = field(default_factory=MaskingConfig)
    plm: PLMConfig = field(default_factory=PLMConfig)
    electra: ElectraConfig = field(default_factory=ElectraConfig)
    span: SpanConfig = field(default_factory=SpanConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(kind="auto"))
    prep: PrepConfig = field(default_factory=PrepConfig)


def build_config(
    config: str | Path | dict[str, Any] | PretrainConfig | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume_from: Path | None = None,
) -> PretrainConfig:
    """defaults < saved run config (on resume) < YAML/dict `config` < `overrides`."""
    from lmforge.run import saved_config

    data = saved_config(resume_from) if resume_from is not None else {}
    data = deep_merge(deep_merge(data, config_source(config)), overrides or {})
    if data.get("arch") is not None:  # the `arch` shortcut: moved into model.arch before it is validated
        coerce(data["arch"], Arch, "arch")
        model = data.get("model") or {}
        if isinstance(model, dict) and model.get("arch") not in (None, data["arch"]):
            raise LmforgeError(
                f"arch={data['arch']} but model.arch={model['arch']}; give only one of --arch and --model.arch"
            )
        if isinstance(model, dict):  # anything else is reported by from_dict below
            data = {**data, "arch": None, "model": {**model, "arch": data["arch"]}}
    return from_dict(PretrainConfig, data)


ENCODER_OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop", "plm", "electra")
SEQ2SEQ_OBJECTIVES = ("span", "denoise")  # they train an encoder-decoder


def resolve_arch(cfg: PretrainConfig) -> None:
    """The objective decides the architecture: masked-LM objectives train a bidirectional encoder,
    span corruption and denoising an encoder-decoder.

    `model.arch` may be left at its default (decoder) for them and is switched here; asking for
    another architecture than the objective trains is an error. The classic baselines (lstm, gru,
    nnlm) are causal LMs: clm trains them, with their state carried across batches
    (lmforge.objectives.rnn).
    """
    arch, objective = cfg.model.arch, cfg.objective
    wanted = "encoder-decoder" if objective in SEQ2SEQ_OBJECTIVES else "encoder"
    if arch in BASELINE_ARCHS and objective != "clm":
        raise LmforgeError(
            f"model.arch={arch} is a causal language model; train it with --objective clm "
            f"(the default), or use --model.arch {wanted} for --objective {objective}"
        )
    if objective in (*ENCODER_OBJECTIVES, *SEQ2SEQ_OBJECTIVES) and arch == "decoder":
        cfg.model = from_dict(ModelConfig, {**to_dict(cfg.model), "arch": wanted})
    elif objective in SEQ2SEQ_OBJECTIVES and arch != "encoder-decoder":
        raise LmforgeError(
            f"--objective {objective} trains an encoder-decoder, but model.arch={arch}; use "
            f"--model.arch encoder-decoder (or leave it out), or a masked-LM objective ({', '.join(ENCODER_OBJECTIVES)})"
        )
    elif objective in ENCODER_OBJECTIVES and arch == "encoder-decoder":
        raise LmforgeError(
            f"--objective {objective} trains an encoder, not an encoder-decoder; pretrain an encoder-decoder "
            f"with --objective {' or '.join(SEQ2SEQ_OBJECTIVES)}, or use --model.arch encoder"
        )
    elif objective == "clm" and arch not in ("decoder", *BASELINE_ARCHS):
        others = SEQ2SEQ_OBJECTIVES if arch == "encoder-decoder" else ENCODER_OBJECTIVES
        raise LmforgeError(
            f"--objective clm trains a decoder, but model.arch={arch}; use an {arch} objective "
            f"({', '.join(others)}) or --model.arch decoder (or {', '.join(BASELINE_ARCHS)})"
        )


def _round_up(n: int, multiple: int = 64) -> int:
    return multiple * math.ceil(n / multiple)


def _prepare_data(cfg: PretrainConfig, run_dir: Path, is_main: bool, barrier) -> Path:
    """Shard directory for the run: given, reused from an earlier start, or built now."""
    from lmforge.data.shards import is_shard_dir, prepare
    from lmforge.tokenizer import Tokenizer, train_tokenizer

    if cfg.data and is_shard_dir(cfg.data):
        if cfg.val_data:
            raise LmforgeError(
                f"--val_data goes with raw --data; {cfg.data} already holds shards (their val split is used): "
                "give the raw text, or prepare the shards with `lmforge prepare --val_data`"
            )
        return Path(cfg.data)
    shards = run_dir / "data"
    if is_shard_dir(shards):
        return shards
    if cfg.data:
        source: Any = cfg.data
    else:
        from lmforge.data.builtin import builtin_corpus_path

        source = str(builtin_corpus_path()) if is_main else None
    if is_main:
        prep = cfg.prep
        common = {"text_field": prep.text_field, "txt_unit": prep.txt_unit}
        if cfg.tokenizer_file:
            tok = Tokenizer.load(cfg.tokenizer_file)
        else:
            t = cfg.tokenizer
            if t.kind == "auto":  # WordPiece keeps words and CJK characters whole, which masking relies on
                t.kind = "wordpiece" if cfg.objective in ENCODER_OBJECTIVES else "bpe"
            print(f"training a {t.kind} tokenizer (vocab {t.vocab_size}) on {source}", flush=True)
            tok = train_tokenizer(
                source, kind=t.kind, vocab_size=t.vocab_size, min_frequency=t.min_frequency,
                lowercase=t.lowercase, clean=prep.clean, encoding=prep.encoding, show_progress=sys.stderr.isatty(),
                **common,
            )  # fmt: skip
        prepare(
            source,
            tok,
            shards,
            clean=prep.clean,
            val_fraction=prep.val_fraction,
            encoding=prep.encoding,
            val_data=cfg.val_data,
            **common,
        )
    barrier()
    return shards


def pretrain(
    config: str | Path | dict[str, Any] | PretrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    sample_prompt: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a language model; the Python twin of `lmforge pretrain`.

    `config` is a YAML path, a dict or a PretrainConfig; keyword overrides may be nested dicts
    (`train={"max_steps": 100}`) or dotted keys (`**{"train.max_steps": 100}`). `overwrite` lets a
    new run write into a folder that holds other files (or start an existing run over).
    """
    from lmforge.config import nest_overrides

    nested = nest_overrides(overrides)
    out = Path(nested.get("out") or (config.out if isinstance(config, PretrainConfig) else "") or "")
    if resume and not str(out):
        data = load_yaml(config) if isinstance(config, (str, Path)) else (config or {})
        out = Path(data.get("out", "runs/gpt")) if isinstance(data, dict) else Path("runs/gpt")
    cfg = build_config(config, nested, resume_from=out if resume else None)
    return run_pretraining(cfg, resume=resume, overwrite=overwrite, sample_prompt=sample_prompt)


def run_pretraining(
    cfg: PretrainConfig, *, resume: bool = False, overwrite: bool = False, sample_prompt: str | None = None
) -> TrainResult:
    """The pretraining workflow on a built config: data, model, objective, Trainer, report."""
    from lmforge.data.shards import Shards
    from lmforge.objectives import setup_objective
    from lmforge.run import (
        check_run_tokenizer,
        finish_training_run,
        model_kind,
        start_training_run,
        write_run_config,
    )
    from lmforge.train.parallel import setup_distributed, teardown_distributed
    from lmforge.train.trainer import Trainer

    tcfg = cfg.train
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    info, device = setup_distributed(tcfg.device)
    run_dir = Path(cfg.out)
    finished = False  # whether the ranks leave the process group together
    try:
        start_training_run(
            run_dir, resume=resume, overwrite=overwrite, is_main=info.is_main, barrier=info.barrier
        )
        shards = Shards.open(_prepare_data(cfg, run_dir, info.is_main, info.barrier))
        tokenizer = shards.tokenizer()
        if resume:
            check_run_tokenizer(run_dir, tokenizer, str(shards.path))
        seq_len = _settle_model(cfg, tokenizer, run_dir, resume)
        if info.is_main:
            # The saved config is itself a valid --config (raw data is found again as <out>/data).
            write_run_config(run_dir, model_kind(cfg.model), to_dict(cfg), tokenizer=tokenizer)
        torch.manual_seed(tcfg.seed)  # identical initial weights on every rank and every run
        setup = setup_objective(cfg, shards, seq_len, info, device)
        torch.manual_seed(tcfg.seed + info.rank)  # dropout differs across ranks
        trainer = Trainer(
            setup.model, setup.batches, tcfg, run_dir, val_batches=setup.val_batches, objective=setup.objective,
            device=device, dist=info, flops_per_token=setup.flops_per_token,
            run_record={"kind": model_kind(cfg.model), "config": to_dict(cfg), "tokenizer_sha256": tokenizer.sha256},
        )  # fmt: skip
        if info.is_main:
            _print_plan(cfg, setup, shards, device, trainer.precision)
        result = trainer.fit(resume=resume)
        finished = True
        if info.is_main and sample_prompt is not None and cfg.model.arch == "decoder":
            _print_sample(setup.model, tokenizer, run_dir, sample_prompt, tcfg.seed)
        return result
    finally:
        finish_training_run(run_dir, is_main=info.is_main)
        teardown_distributed(finished=finished)


def _settle_model(cfg: PretrainConfig, tokenizer: Any, run_dir: Path, resume: bool) -> int:
    """Fix the model config against the data (architecture, vocabulary); returns the training seq_len."""
    from lmforge.run import check_unchanged_model, check_vocab

    resolve_arch(cfg)
    # Span corruption's sentinels are ids of their own above the tokenizer's (see objectives.span).
    reserved = 0
    if cfg.objective == "span":
        cfg.span.validate()
        reserved = cfg.span.num_sentinels
    elif cfg.objective == "denoise":
        cfg.denoise.validate()
    if cfg.model.vocab_size == 0:
        cfg.model = from_dict(
            ModelConfig, {**to_dict(cfg.model), "vocab_size": _round_up(tokenizer.vocab_size + reserved)}
        )
    elif reserved and cfg.model.vocab_size < tokenizer.vocab_size + reserved:
        raise LmforgeError(
            f"--model.vocab_size={cfg.model.vocab_size} is too small for --objective span: the tokenizer's "
            f"{tokenizer.vocab_size} tokens and span.num_sentinels={reserved} sentinels need "
            f"{tokenizer.vocab_size + reserved}; raise it, or leave it 0 to size it so"
        )
    check_vocab(cfg.model, tokenizer, f"--model.vocab_size={cfg.model.vocab_size}")
    if resume:
        check_unchanged_model(run_dir, cfg.model)
    seq_len = cfg.train.seq_len or cfg.model.max_len
    if seq_len > cfg.model.max_len:
        raise LmforgeError(
            f"train.seq_len={seq_len} exceeds model.max_len={cfg.model.max_len}; lower one or raise the other"
        )
    return seq_len


def _print_plan(cfg: PretrainConfig, setup: Any, shards: Any, device: torch.device, precision: str) -> None:
    model, flops = setup.model, setup.flops_per_token
    print(
        f"model: {cfg.model.arch}, {describe_params(model)}, {flops / 1e6:.1f} MFLOPs/token; "
        f"objective {cfg.objective}; data: {len(shards.tokens('train')):,} train / "
        f"{len(shards.tokens('val')):,} val tokens; device {device}, precision {precision}",
        flush=True,
    )


def describe_params(model: Any) -> str:
    """ "4.24M parameters, 1.05M of them the token embedding (tied to the output layer)": what the
    words say. (`num_params(non_embedding=True)`, the N of scaling laws, keeps a tied embedding,
    because as the output layer it does work for every token; printed as "non-embedding" it misled.)"""
    n = model.num_params()
    emb = getattr(getattr(model, "tok_emb", None), "weight", None)
    if emb is None:
        return f"{n / 1e6:.2f}M parameters"
    tied = model.config.tie_embeddings
    return f"{n / 1e6:.2f}M parameters, {emb.numel() / 1e6:.2f}M of them the token embedding" + (
        " (tied to the output layer)" if tied else ""
    )


def _print_sample(model: Any, tokenizer: Any, run_dir: Path, prompt: str, seed: int) -> None:
    """A completion from the weights users get (the best validation loss), as the run's last line."""
    from lmforge.infer.generate import GenerationConfig, generate
    from lmforge.models.weights import load_weights

    load_weights(model, run_dir / "model.safetensors")
    model.eval()
    gen = GenerationConfig(max_new_tokens=60, temperature=0.8, top_p=0.95, seed=seed)
    print(f"\nsample> {prompt}{generate(model, tokenizer, prompt, gen)}\n", flush=True)
