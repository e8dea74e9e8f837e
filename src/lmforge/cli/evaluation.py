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
    add_read_flags,
    add_stride_flag,
    given,
    read_options,
)
from lmforge.cli.output import emit, format_fields
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
    emit_scores(ns, lmforge.evaluate(ns.run, ns.data, batch_size=ns.batch_size, device=ns.device))


def add_evaluate(new: NewCommand) -> None:
    p = new("evaluate", "score a fine-tuned task run on a labelled file with the task's metrics")
    p.add_argument("run", help="fine-tuned task run directory")
    p.add_argument("--data", required=True, help="labelled file in the task's format")
    add_batch_size_flag(p, 64, "inputs")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_predict(ns: argparse.Namespace) -> None:
    res = lmforge.predict(ns.run, ns.input, ns.output, batch_size=ns.batch_size, device=ns.device)
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
    add_batch_size_flag(p, 64, "inputs")
    add_device_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_predict)


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
