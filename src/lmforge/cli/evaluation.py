"""`lmforge eval`, `evaluate`, `predict` and `compare`: scores and predictions of trained models.

`eval` (language models) and `evaluate` (task runs) both call `lmforge.evaluate`, which picks the
evaluation by the run's kind; they differ only in the flags they offer and their batch size.
"""

from __future__ import annotations

import argparse
from typing import Any

import lmforge
from lmforge.cli.flags import (
    NewCommand,
    add_batch_size_flag,
    add_device_flag,
    add_json_flag,
    add_overwrite_flag,
    add_read_flags,
    add_stride_flag,
    given,
    read_options,
)
from lmforge.cli.output import emit, format_fields
from lmforge.errors import LmforgeError
from lmforge.eval import TXT_UNIT


def emit_scores(ns: argparse.Namespace, scores: Any) -> None:
    """`lmforge.evaluate`'s scores: a language model's result, or a task run's dict with its report."""
    d = dict(scores) if isinstance(scores, dict) else scores.to_dict()
    report = d.pop("report_text", None) or f"{ns.run} on {ns.data}"
    scalars = {k: v for k, v in d.items() if isinstance(v, (int, float, str))}
    emit(d, ns.json, f"{report}\n" + format_fields(scalars))


def cmd_eval(ns: argparse.Namespace) -> None:
    scores = lmforge.evaluate(
        ns.run, ns.data, device=ns.device, batch_size=ns.batch_size, **given(ns, "stride"), **read_options(ns)
    )
    emit_scores(ns, scores)


def add_eval(new: NewCommand) -> None:
    p = new(
        "eval",
        "score a run on held-out text: loss, perplexity and bits per byte (causal LM), or masked-token "
        "loss/accuracy and NSP/SOP accuracy (masked LM)",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--data", required=True, help="held-out text: files, directories, globs, .jsonl")
    add_batch_size_flag(p, 8, "windows (causal LM) or examples (masked LM)")
    add_stride_flag(p)
    add_read_flags(p, shown_defaults={"txt_unit": TXT_UNIT})  # held-out files are scored whole
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_eval)


def cmd_evaluate(ns: argparse.Namespace) -> None:
    if (ns.src is None) != (ns.ref is None):
        raise LmforgeError("--src and --ref go together: the sources and their reference translations")
    if ns.src is not None:
        if ns.data is not None:
            raise LmforgeError("give --data or --src/--ref, not both")
        ns.data = f"{ns.src},{ns.ref}"
    if ns.data is None:
        raise LmforgeError("--data is required (or --src and --ref for a seq2seq run)")
    fields = _fields(ns)
    options = {"fields": fields} if fields else {}
    emit_scores(ns, lmforge.evaluate(ns.run, ns.data, batch_size=ns.batch_size, device=ns.device, **options))


def _add_field_flags(p: argparse.ArgumentParser) -> None:
    for name, what in (("src_field", "sources"), ("tgt_field", "targets"), ("ref_field", "references")):
        p.add_argument(
            f"--{name}", help=f"seq2seq JSONL: the field of the {what} (default: the training file's)"
        )


def _fields(ns: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(ns, k) for k in ("src_field", "tgt_field", "ref_field") if getattr(ns, k) is not None}


def add_evaluate(new: NewCommand) -> None:
    p = new("evaluate", "score a fine-tuned task run on a labelled file with the task's metrics")
    p.add_argument("run", help="fine-tuned task run directory")
    p.add_argument("--data", help="labelled file in the task's format")
    p.add_argument("--src", help="seq2seq: the source file, one text per line (with --ref)")
    p.add_argument("--ref", help="seq2seq: the reference file, line-aligned with --src")
    _add_field_flags(p)
    add_batch_size_flag(p, 64, "inputs")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_predict(ns: argparse.Namespace) -> None:
    res = lmforge.predict(
        ns.run, ns.input, ns.output, batch_size=ns.batch_size, device=ns.device, overwrite=ns.overwrite,
        fields=_fields(ns),
    )  # fmt: skip
    res.pop("predictions", None)
    human = f"wrote {res['output']} ({res['examples']:,} examples)"
    if "metrics" in res:
        human += "\n" + format_fields(res["metrics"])
    emit(res, ns.json, human)


def add_predict(new: NewCommand) -> None:
    p = new("predict", "predict with a fine-tuned task run (JSONL, CoNLL or SQuAD prediction JSON)")
    p.add_argument("run", help="fine-tuned task run directory")
    p.add_argument("--input", required=True, help="file to predict on (gold labels optional)")
    p.add_argument("--output", required=True, help="where to write the predictions")
    add_overwrite_flag(p, "--output", file=True)
    _add_field_flags(p)
    add_batch_size_flag(p, 64, "inputs")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_predict)


def cmd_translate(ns: argparse.Namespace) -> None:
    import sys

    options = {
        k: getattr(ns, k) for k in ("beam", "length_penalty", "max_new_tokens", "no_repeat_ngram", "compile")
    }
    source: str | list[str] = ns.input
    if ns.input == "-":
        source = sys.stdin.read().splitlines()
    hyps = lmforge.translate(
        ns.run,
        source,
        ns.output,
        batch_size=ns.batch_size,
        device=ns.device,
        overwrite=ns.overwrite,
        **options,
    )
    if ns.output is None:
        if ns.json:
            emit({"outputs": hyps}, True, "")
        else:
            sys.stdout.write("".join(h + "\n" for h in hyps))
        return
    emit({"output": ns.output, "examples": len(hyps)}, ns.json, f"wrote {ns.output} ({len(hyps):,} lines)")


def add_translate(new: NewCommand) -> None:
    p = new("translate", "translate or summarise with a seq2seq run: one output line per input line")
    p.add_argument("run", help="seq2seq run directory (lmforge finetune seq2seq)")
    p.add_argument("--input", default="-", help="one source text per line (default -: standard input)")
    p.add_argument("--output", help="where to write the outputs (default: standard output)")
    add_overwrite_flag(p, "--output", file=True)
    p.add_argument("--beam", type=int, help="beam size, 1 = greedy (default: the run's)")
    p.add_argument(
        "--length_penalty", type=float, help="beam scores are log p / length^this (default: the run's)"
    )
    p.add_argument(
        "--max_new_tokens", type=int, help="longest output; 0 = 2 x source + 10 (default: the run's)"
    )
    p.add_argument("--no_repeat_ngram", type=int, help="no n-gram of this size twice (default: the run's)")
    p.add_argument(
        "--compile", action="store_true",
        help="run the decoder's steps through torch.compile (the first batches pay tens of seconds of compiling)",
    )  # fmt: skip
    add_batch_size_flag(p, 64, "inputs")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_translate)


def cmd_compare(ns: argparse.Namespace) -> None:
    from lmforge.eval.compare import format_table

    res = lmforge.compare(
        ns.models, ns.data, batch_size=ns.batch_size, device=ns.device, plot=ns.plot,
        skip_empty=ns.skip_empty_lines, **given(ns, "stride"),
    )  # fmt: skip
    human = format_table(res) + (f"\nwrote {res.plot}" if res.plot else "")
    emit(res.to_dict(), ns.json, human)


def add_compare(new: NewCommand) -> None:
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
    add_batch_size_flag(p, 8, "windows")
    add_stride_flag(p)
    p.add_argument("--skip_empty_lines", action="store_true", help="leave out empty lines for every model")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_compare)
