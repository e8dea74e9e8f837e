"""`lmforge <command>`: each command is a thin call into the Python API.

Flags are generated from the config dataclasses (`--train.max_steps`, `--model.n_layer`, ...), so
the CLI, YAML files and the API share one set of names and one set of checks. Every command that
reports numbers takes `--json` and then prints them as one JSON object on the last line of stdout.
User errors print one line (`lmforge: error: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from lmforge.config import add_dataclass_flags, namespace_overrides, unknown_option_error
from lmforge.errors import LmforgeError

EPILOG = """examples:
  lmforge pretrain --out runs/demo --config configs/gpt-tiny.yaml     # built-in corpus, CPU, minutes
  lmforge tokenizer train --data corpus/ --kind bpe --vocab_size 8000 --out tok.json
  lmforge prepare --data corpus/ --tokenizer tok.json --out shards/
  lmforge pretrain --data shards/ --out runs/gpt --config configs/gpt-tiny.yaml --train.max_steps 2000
  lmforge pretrain --out runs/gpt --resume
  lmforge eval runs/gpt --data held_out.txt
  lmforge pretrain --objective mlm+nsp --data corpus/ --out runs/bert --config configs/bert-tiny.yaml
  lmforge fill-mask runs/bert "The capital of France is [MASK]."
  lmforge generate runs/gpt --prompt "The meaning of" --max_new_tokens 100 --temperature 0.8 --top_p 0.95
  lmforge export hf runs/gpt out/hf_gpt
  lmforge import hf some/hf_gpt2_dir runs/imported
  lmforge finetune classify --model runs/bert --train sst2/train.tsv --dev sst2/dev.tsv --out runs/sst2
  lmforge finetune ner --model runs/bert --train conll/train.txt --dev conll/valid.txt --crf true --out runs/ner
  lmforge predict runs/sst2 --input new.tsv --output predictions.jsonl
  lmforge evaluate runs/ner --data conll/test.txt
  lmforge ngram train --data train.txt --order 5 --smoothing modified-kneser-ney --out lm5.arpa
  lmforge ngram eval lm5.arpa --data test.txt
  lmforge compare --data test.txt lm5.arpa runs/lstm runs/gpt --plot compare.png   # per-word ppl, bits/byte
  lmforge scaling --data corpus/ --sizes 0.1M,0.3M,1M,3M --out runs/scaling       # fit L(N) = a*N^-alpha + c
"""


def _emit(result: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    if human:
        print(human, flush=True)
    if as_json:
        print(json.dumps(result, ensure_ascii=False, default=str), flush=True)


def _fmt(d: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3e}" if abs(v) >= 1e6 else f"{v:.4f}"
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    width = max(len(k) for k in d)
    return "\n".join(f"  {k:<{width}}  {show(v)}" for k, v in d.items())


# ---------------------------------------------------------------- commands


def cmd_tokenizer_train(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer(
        ns.data, kind=ns.kind, vocab_size=ns.vocab_size, out=ns.out, min_frequency=ns.min_frequency,
        lowercase=ns.lowercase, txt_unit=ns.txt_unit, text_field=ns.text_field, show_progress=sys.stderr.isatty(),
    )  # fmt: skip
    result = {
        "out": ns.out,
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.special_tokens,
    }
    _emit(result, ns.json, f"saved {tok.kind} tokenizer with {tok.vocab_size} tokens to {ns.out}")


def cmd_prepare(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.config import from_dict
    from lmforge.data.clean import CleanSummary
    from lmforge.data.shards import prepare
    from lmforge.pretraining import PrepConfig

    prep = from_dict(PrepConfig, namespace_overrides(ns, PrepConfig))
    manifest = prepare(
        ns.data, ns.tokenizer, ns.out, clean=prep.clean, val_fraction=prep.val_fraction,
        text_field=prep.text_field, txt_unit=prep.txt_unit, encoding=prep.encoding, show_progress=True,
    )  # fmt: skip
    splits = manifest["splits"]
    result = {
        "out": ns.out,
        "train_tokens": splits["train"]["tokens"],
        "val_tokens": splits["val"]["tokens"],
        "train_documents": splits["train"]["documents"],
        "val_documents": splits["val"]["documents"],
        "split_by": manifest["split_by"],
        "cleaning": manifest.get("cleaning", {}),
    }
    human = f"wrote shards to {ns.out}\n" + _fmt(
        {k: v for k, v in result.items() if k not in ("cleaning", "out")}
    )
    if result["cleaning"]:
        human += (
            "\ncleaning (documents kept and dropped, and why):\n"
            + CleanSummary(**result["cleaning"]).format()
        )
    _emit(result, ns.json, human)


def cmd_pretrain(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.pretraining import PretrainConfig, pretrain

    overrides = namespace_overrides(ns, PretrainConfig)
    result = pretrain(ns.config, resume=ns.resume, sample_prompt=None if ns.json else ns.sample, **overrides)
    d = result.to_dict()
    metrics = dict(d.pop("val_metrics", None) or {})
    ppl = metrics.pop("ppl", None)  # a causal LM's perplexity, derived from its loss
    shown = {k: v for k, v in d.items() if v is not None and k not in ("select_metric", "best_score")}
    human = "training finished\n" + _fmt(shown)
    if metrics:  # the objective's own validation metrics (masked-LM accuracy, pair accuracy, ...)
        human += "\nvalidation: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    if ppl is not None:
        human += f"\nvalidation perplexity: {ppl:.2f}"
    d["val_ppl"] = ppl
    d["val_metrics"] = metrics or None
    _emit(d, ns.json, human)


def cmd_finetune(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.finetuning import FinetuneConfig, finetune

    overrides = namespace_overrides(ns, FinetuneConfig)
    overrides["task"] = ns.task
    result = finetune(ns.config, resume=ns.resume, **overrides)
    d = result.to_dict()
    metrics = d.pop("val_metrics", None) or {}
    for k in ("val_ppl",):
        d.pop(k, None)
    human = "fine-tuning finished\n" + _fmt({k: v for k, v in d.items() if v is not None})
    if metrics:
        human += "\ndev (last evaluation): " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    d["val_metrics"] = metrics or None
    _emit(d, ns.json, human)


def cmd_predict(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.finetuning import predict
    from lmforge.train.parallel import resolve_device

    res = predict(ns.run, ns.input, ns.output, batch_size=ns.batch_size, device=resolve_device(ns.device))
    res.pop("predictions", None)
    human = f"wrote {res['output']} ({res['examples']:,} examples)"
    if "metrics" in res:
        human += "\n" + _fmt(res["metrics"])
    _emit(res, ns.json, human)


def cmd_evaluate(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.finetuning import evaluate_task
    from lmforge.train.parallel import resolve_device

    res = evaluate_task(ns.run, ns.data, batch_size=ns.batch_size, device=resolve_device(ns.device))
    text = res.pop("report_text")
    scalars = {k: v for k, v in res.items() if isinstance(v, (int, float, str))}
    _emit(res, ns.json, f"{text}\n" + _fmt(scalars))


def cmd_eval(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.eval.perplexity import evaluate_lm
    from lmforge.run import load
    from lmforge.train.parallel import resolve_device

    lm = load(ns.run, device=resolve_device(ns.device))
    common = {"batch_size": ns.batch_size, "txt_unit": ns.txt_unit, "text_field": ns.text_field}
    if lm.model_config.arch == "encoder":
        from lmforge.eval.masked import evaluate_masked

        res = evaluate_masked(lm, ns.data, **common)
    else:
        res = evaluate_lm(lm, ns.data, stride=ns.stride, **common)
    d = res.to_dict()
    _emit(d, ns.json, f"{ns.run} on {ns.data}\n" + _fmt({k: v for k, v in d.items() if v is not None}))


def cmd_compare(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.eval.compare import compare, format_table

    res = compare(
        ns.models, ns.data, batch_size=ns.batch_size, stride=ns.stride, device=ns.device, plot=ns.plot,
        skip_empty=ns.skip_empty_lines,
    )  # fmt: skip
    human = format_table(res) + (f"\nwrote {res.plot}" if res.plot else "")
    _emit(res.to_dict(), ns.json, human)


def cmd_scaling(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.scaling import ScalingOverrides, format_result, scaling

    res = scaling(
        ns.data, ns.sizes, ns.out, tokens_per_param=ns.tokens_per_param, max_steps=ns.max_steps,
        overrides=namespace_overrides(ns, ScalingOverrides),
    )  # fmt: skip
    _emit(res.to_dict(), ns.json, format_result(res))


def cmd_generate(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.config import from_dict
    from lmforge.infer.generate import GenerationConfig, generate_text
    from lmforge.run import load
    from lmforge.train.parallel import resolve_device

    gen = from_dict(GenerationConfig, namespace_overrides(ns, GenerationConfig))
    lm = load(ns.run, device=resolve_device(ns.device))
    stream = (not ns.json and sys.stdout.isatty()) or ns.stream
    pieces = []
    if not ns.json:
        print(ns.prompt, end="", flush=True)
    for piece in generate_text(lm.model, lm.tokenizer, ns.prompt, gen):
        pieces.append(piece)
        if stream:
            print(piece, end="", flush=True)
    text = "".join(pieces)
    if not ns.json:
        print("" if stream else text, flush=True)
    _emit({"prompt": ns.prompt, "completion": text}, ns.json)


def cmd_fill_mask(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.infer.fill_mask import fill_mask
    from lmforge.run import load
    from lmforge.train.parallel import resolve_device

    lm = load(ns.run, device=resolve_device(ns.device))
    results = fill_mask(lm.model, lm.tokenizer, ns.text, top_k=ns.top_k)
    lines = []
    for i, preds in enumerate(results):
        if len(results) > 1:
            lines.append(f"mask {i + 1}:")
        lines += [f"  {p.score:7.2%}  {p.token:<15}  {p.text}" for p in preds]
    payload = {"text": ns.text, "masks": [[p.to_dict() for p in preds] for preds in results]}
    _emit(payload, ns.json, "\n".join(lines) if not ns.json else None)


def cmd_export_hf(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.interop.hf import export_hf
    from lmforge.run import load

    lm = load(ns.run)
    pair_head = lm.config.get("objective") in ("mlm+nsp", "mlm+sop")
    out = export_hf(lm.model, lm.tokenizer, ns.out, pair_head=pair_head)
    if lm.model_config.arch == "encoder":
        auto = "BertForPreTraining" if pair_head else "AutoModelForMaskedLM"
    else:
        auto = "AutoModelForCausalLM"
    _emit({"out": str(out)}, ns.json, f"exported {ns.run} to {out} (load it with transformers' {auto})")


def cmd_import_hf(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.interop.hf import import_run

    model, _ = import_run(ns.hf_dir, ns.run)
    n = model.num_params()
    _emit(
        {"run": ns.run, "parameters": n},
        ns.json,
        f"imported {ns.hf_dir} ({n / 1e6:.2f}M parameters) into {ns.run}",
    )


def cmd_info(ns: argparse.Namespace, rest: list[str]) -> None:
    from lmforge.config import to_dict
    from lmforge.finetuning import is_task_run, load_task
    from lmforge.run import load

    if is_task_run(ns.run):
        task = load_task(ns.run)
        m, model_config = task.model, task.model.config
        extra = {"task": task.config.task, "labels": len(task.labels), "backbone": task.config.model}
    else:
        lm = load(ns.run)
        m, model_config, extra = lm.model, lm.model_config, {}
    result = {
        "run": ns.run,
        **extra,
        "parameters": m.num_params(),
        "non_embedding_parameters": m.num_params(non_embedding=True),
        "flops_per_token": m.flops_per_token(model_config.max_len),
        "tokenizer_vocab": (task.tokenizer if extra else lm.tokenizer).vocab_size,
        "model": to_dict(model_config),
    }
    summary = Path(ns.run) / "summary.json"
    if summary.is_file():
        result["summary"] = json.loads(summary.read_text())
    human = _fmt({k: v for k, v in result.items() if k not in ("model", "summary")})
    _emit(result, ns.json, human)


# ---------------------------------------------------------------- parser


def _device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print the results as one JSON object on the last line"
    )


def build_parser() -> argparse.ArgumentParser:
    from lmforge.infer.generate import GenerationConfig
    from lmforge.pretraining import PrepConfig, PretrainConfig

    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="From raw text to a trained, evaluated and deployable language model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"lmforge {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    def new(name: str, help: str, sub=sub) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, allow_abbrev=False)

    tok = new("tokenizer", "train tokenizers")
    tok_sub = tok.add_subparsers(dest="tok_command", metavar="<action>", required=True)
    p = tok_sub.add_parser("train", help="train a tokenizer on a corpus", allow_abbrev=False)
    p.add_argument(
        "--data", required=True, help="files, directories, globs of .txt/.jsonl/.parquet, or hf:NAME"
    )
    p.add_argument(
        "--kind",
        default="bpe",
        choices=["bpe", "wordpiece", "unigram", "char", "word"],
        help="tokenizer model (default: bpe)",
    )
    p.add_argument(
        "--vocab_size", type=int, default=8000, help="vocabulary size incl. special tokens (default: 8000)"
    )
    p.add_argument(
        "--min_frequency", type=int, default=2, help="ignore merges/pieces seen fewer times (default: 2)"
    )
    p.add_argument("--lowercase", action="store_true", help="lowercase text before tokenizing")
    p.add_argument(
        "--txt_unit",
        default="file",
        choices=["file", "paragraph", "line"],
        help="document unit of .txt files",
    )
    p.add_argument("--text_field", default="text", help="text field of .jsonl/.parquet (default: text)")
    p.add_argument("--out", required=True, help="where to write tokenizer.json")
    _json_flag(p)
    p.set_defaults(func=cmd_tokenizer_train)

    p = new("prepare", "clean, deduplicate, tokenize and pack a corpus into token shards")
    p.add_argument(
        "--data", required=True, help="files, directories, globs of .txt/.jsonl/.parquet, or hf:NAME"
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer.json to encode with")
    p.add_argument("--out", required=True, help="output shard directory")
    add_dataclass_flags(p, PrepConfig)
    _json_flag(p)
    p.set_defaults(func=cmd_prepare)

    p = new("pretrain", "pretrain a language model (no --data: the built-in corpus)")
    p.add_argument("--config", help="YAML file with model/train/tokenizer/prep sections; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument(
        "--sample", default="The", help="prompt for the sample printed at the end (default: 'The')"
    )
    add_dataclass_flags(p, PretrainConfig)
    _json_flag(p)
    p.set_defaults(func=cmd_pretrain)

    p = new(
        "eval",
        "score a run on held-out text: loss, perplexity and bits per byte (causal LM), or masked-token "
        "loss/accuracy and NSP/SOP accuracy (masked LM)",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--data", required=True, help="held-out text: files, directories, globs, .jsonl")
    p.add_argument("--batch_size", type=int, default=8, help="windows/examples per forward pass (default: 8)")
    p.add_argument(
        "--stride", type=int, default=None, help="sliding-window stride (default: the model's context)"
    )
    p.add_argument(
        "--txt_unit",
        default="file",
        choices=["file", "paragraph", "line"],
        help="document unit of .txt files",
    )
    p.add_argument("--text_field", default="text", help="text field of .jsonl/.parquet")
    _device_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_eval)

    p = new(
        "compare",
        "score n-gram models (ARPA) and runs on one text: per-word perplexity and bits per byte, which "
        "compare across tokenizers",
    )
    p.add_argument("models", nargs="+", help="ARPA files (.arpa, .arpa.gz) and/or run directories")
    p.add_argument(
        "--data", required=True, help="held-out text, one sentence per line (file, directory, glob)"
    )
    p.add_argument("--plot", default=None, help="write a bar chart PNG of both measures here")
    p.add_argument("--batch_size", type=int, default=8, help="windows per forward pass (default: 8)")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: the context)")
    p.add_argument("--skip_empty_lines", action="store_true", help="leave out empty lines for every model")
    _device_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_compare)

    from lmforge.scaling import ScalingOverrides

    p = new(
        "scaling",
        "train a ladder of decoder sizes on one corpus and fit L(N) = a * N^-alpha + c (scaling.json, plots/)",
    )
    p.add_argument(
        "--data", required=True, help="raw text (files, directory, glob, hf:NAME) or a shard directory"
    )
    p.add_argument("--sizes", required=True, help="non-embedding parameter counts, e.g. 0.1M,0.3M,1M,3M")
    p.add_argument("--out", required=True, help="ladder directory: <out>/data, <out>/<size>/, scaling.json")
    p.add_argument(
        "--tokens_per_param", type=float, default=20.0,
        help="training tokens per parameter N (default: 20, Chinchilla-optimal)",
    )  # fmt: skip
    p.add_argument("--max_steps", type=int, default=2000, help="cap on each size's steps (default: 2000)")
    add_dataclass_flags(p, ScalingOverrides)  # the keys the ladder sets are refused with a reason
    _json_flag(p)
    p.set_defaults(func=cmd_scaling)

    p = new("generate", "continue a prompt with a trained run (streams to the terminal)")
    p.add_argument("run", help="run directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    _device_flag(p)
    p.add_argument("--stream", action="store_true", help="stream even when stdout is not a terminal")
    add_dataclass_flags(p, GenerationConfig)
    _json_flag(p)
    p.set_defaults(func=cmd_generate)

    p = new("fill-mask", "the most likely tokens for each [MASK] in a text (masked-LM runs)")
    p.add_argument("run", help="run directory of a masked-LM run")
    p.add_argument("text", help='text with one or more [MASK], e.g. "The capital of France is [MASK]."')
    p.add_argument("--top_k", type=int, default=5, help="predictions per mask (default: 5)")
    _device_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_fill_mask)

    p = new("info", "parameters, FLOPs and config of a run")
    p.add_argument("run", help="run directory")
    _json_flag(p)
    p.set_defaults(func=cmd_info)

    exp = new("export", "export a run to another framework")
    exp_sub = exp.add_subparsers(dest="fmt", metavar="<format>", required=True)
    p = exp_sub.add_parser(
        "hf",
        help="Hugging Face transformers checkpoint (GPT-2/Llama causal LM, or BERT for encoders)",
        allow_abbrev=False,
    )
    p.add_argument("run", help="run directory")
    p.add_argument("out", help="output directory")
    _json_flag(p)
    p.set_defaults(func=cmd_export_hf)

    imp = new("import", "import a checkpoint from another framework as a run directory")
    imp_sub = imp.add_subparsers(dest="fmt", metavar="<format>", required=True)
    p = imp_sub.add_parser(
        "hf", help="Hugging Face transformers directory (GPT-2, Llama, Mistral, BERT)", allow_abbrev=False
    )
    p.add_argument("hf_dir", help="directory with config.json, *.safetensors and tokenizer files")
    p.add_argument("run", help="run directory to create")
    _json_flag(p)
    p.set_defaults(func=cmd_import_hf)

    ft = new("finetune", "fine-tune a pretrained run on a labelled task (classification, NER, extractive QA)")
    ft_sub = ft.add_subparsers(dest="task", metavar="<task>", required=True)
    from lmforge.finetuning import FinetuneConfig

    task_help = {
        "classify": "sequence classification of texts or text pairs (TSV/CSV/JSONL)",
        "ner": "named-entity recognition / tagging (CoNLL column files)",
        "qa": "extractive question answering (SQuAD v1.1 JSON)",
    }
    qa_only = ("doc_stride", "max_query_len", "max_answer_len", "n_best")
    ner_only = ("token_column", "tag_column", "scheme", "crf", "label_all_pieces")
    classify_only = ("text_column", "text_pair_column", "label_column", "pooling")
    task_skip = {
        "classify": (*qa_only, *ner_only),
        "ner": (*qa_only, *classify_only),
        "qa": (*ner_only, *classify_only, "class_weights"),
    }
    for task, help_text in task_help.items():
        p = ft_sub.add_parser(task, help=help_text, description=help_text, allow_abbrev=False)
        p.add_argument("--config", help="YAML file with fine-tuning and train sections; flags override it")
        p.add_argument(
            "--resume", action="store_true", help="continue the run in --out exactly where it stopped"
        )
        p.add_argument("--model", dest="model", default=argparse.SUPPRESS,
                       help="pretrained run directory (encoder or decoder) or Hugging Face model directory")  # fmt: skip
        p.add_argument("--train", dest="train_file", default=argparse.SUPPRESS, help="labelled training file")
        p.add_argument("--dev", dest="dev_file", default=argparse.SUPPRESS,
                       help="labelled dev file: picks the best checkpoint by the task metric")  # fmt: skip
        add_dataclass_flags(
            p, FinetuneConfig, skip=("task", "model", "train_file", "dev_file", *task_skip[task])
        )
        _json_flag(p)
        p.set_defaults(func=cmd_finetune)

    p = new("predict", "predict with a fine-tuned task run (JSONL, CoNLL or SQuAD prediction JSON)")
    p.add_argument("run", help="fine-tuned task run directory")
    p.add_argument("--input", required=True, help="file to predict on (gold labels optional)")
    p.add_argument("--output", required=True, help="where to write the predictions")
    p.add_argument("--batch_size", type=int, default=64, help="inputs per forward pass (default: 64)")
    _device_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_predict)

    p = new("evaluate", "score a fine-tuned task run on a labelled file with the task's metrics")
    p.add_argument("run", help="fine-tuned task run directory")
    p.add_argument("--data", required=True, help="labelled file in the task's format")
    p.add_argument("--batch_size", type=int, default=64, help="inputs per forward pass (default: 64)")
    _device_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_evaluate)

    from lmforge.ngram.cli import add_ngram_commands

    add_ngram_commands(new)
    return parser


def _version() -> str:
    from lmforge import __version__

    return __version__


def _leaf_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that will receive the options, for did-you-mean suggestions."""
    node = parser
    for arg in argv:
        subs = [a for a in node._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or arg.startswith("-"):
            break
        if arg in subs[0].choices:
            node = subs[0].choices[arg]
    return node


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Warnings as the CLI's other messages: `lmforge: warning: ...`, without a source excerpt."""
    return f"lmforge: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    try:
        ns, rest = parser.parse_known_args(argv)
        if rest:
            raise unknown_option_error(_leaf_parser(parser, argv), rest)
        ns.func(ns, rest)
        return 0
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted; the last checkpoint is intact (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
