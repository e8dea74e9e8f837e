"""`lmforge split <task>`: hold out part of a task's labelled file as a dev set, so a corpus that
comes as one file (SQuAD's official dev set, a train-only classification set) gives the train and
dev files that `lmforge finetune` takes."""

from __future__ import annotations

import argparse
from typing import Any

import lmforge
from lmforge.cli.flags import NewCommand, add_json_flag, add_overwrite_flag
from lmforge.cli.output import emit

# What one task's --data is, the unit --dev_fraction counts and the files --out gets, for its --help.
_DATA_HELP = {
    "qa": ("SQuAD v1.1 JSON file", "articles", "train.json and dev.json"),
    "classify": ("TSV/CSV/JSONL file", "rows", "train and dev, with the input's extension"),
    "ner": (
        "CoNLL file",
        "documents (sentences in a file without -DOCSTART- documents)",
        "train and dev, with the input's extension (.txt if it is not a CoNLL one)",
    ),
}
_HEADER = {"auto": None, "true": True, "false": False}


def format_split(res: dict[str, Any]) -> str:
    """Where each part went and what it holds, one line per part."""
    lines = [
        f"split {res['data']} by {res['split_by']} (dev_fraction {res['dev_fraction']}, seed {res['seed']})"
    ]
    width = max(len(res["train"]), len(res["dev"]))
    for part in ("train", "dev"):
        counts = ", ".join(f"{n:,} {unit}" for unit, n in res[f"{part}_counts"].items())
        lines.append(f"  {part:<5}  {res[part]:<{width}}  {counts}")
    if res.get("header"):
        lines.append("  the header row is at the top of both files")
    return "\n".join(lines)


def cmd_split(ns: argparse.Namespace) -> None:
    res = lmforge.split(
        ns.task, ns.data, ns.out, dev_fraction=ns.dev_fraction, seed=ns.seed, overwrite=ns.overwrite,
        has_header=_HEADER[getattr(ns, "has_header", "auto")],
    )  # fmt: skip
    emit(res, ns.json, format_split(res))


def add_split(new: NewCommand) -> None:
    """One subcommand per task, as `finetune` has, so each --help names that task's file and unit."""
    from lmforge.tasks.split import SPLITS

    sp = new("split", "hold out part of a task's labelled file as a dev set: train and dev files in --out")
    sub = sp.add_subparsers(dest="task", metavar="<task>", required=True)
    for task, summary in SPLITS.items():
        what, unit, files = _DATA_HELP[task]
        p = sub.add_parser(task, help=summary, description=summary, allow_abbrev=False)
        p.add_argument("--data", required=True, help=f"the labelled {what} to split")
        p.add_argument("--out", required=True, help=f"folder for {files}")
        p.add_argument(
            "--dev_fraction", type=float, default=0.1,
            help=f"share of the {unit} held out for dev, between 0 and 1 (default: 0.1)",
        )  # fmt: skip
        p.add_argument(
            "--seed", type=int, default=0, help="random seed; the same seed, the same split (default: 0)"
        )
        if task == "classify":
            p.add_argument(
                "--has_header", choices=tuple(_HEADER), default="auto",
                help="TSV/CSV: whether the first row is a header, written to both files (default: auto)",
            )  # fmt: skip
        add_overwrite_flag(p, "train and dev into --out")
        add_json_flag(p)
        p.set_defaults(func=cmd_split)
