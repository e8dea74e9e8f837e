"""`lmforge tokenizer train` and `lmforge prepare`: a corpus in, a tokenizer or token shards out."""

from __future__ import annotations

import argparse
import sys

import lmforge
from lmforge.cli.flags import NewCommand, add_json_flag
from lmforge.cli.output import emit, format_fields
from lmforge.config import add_dataclass_flags, from_dict, namespace_overrides

DATA_HELP = "files, directories, globs of .txt/.jsonl/.parquet, or hf:NAME"


def cmd_tokenizer_train(ns: argparse.Namespace) -> None:
    from lmforge.data.prep import PrepConfig
    from lmforge.tokenizer import TokenizerConfig

    tok_cfg = from_dict(TokenizerConfig, namespace_overrides(ns, TokenizerConfig))
    prep = from_dict(PrepConfig, namespace_overrides(ns, PrepConfig))
    tok = lmforge.train_tokenizer(
        ns.data, kind=tok_cfg.kind, vocab_size=tok_cfg.vocab_size, out=ns.out, min_frequency=tok_cfg.min_frequency,
        lowercase=tok_cfg.lowercase, clean=prep.clean, txt_unit=prep.txt_unit, text_field=prep.text_field,
        encoding=prep.encoding, show_progress=sys.stderr.isatty(),
    )  # fmt: skip
    result = {
        "out": ns.out,
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.special_tokens,
    }
    emit(result, ns.json, f"saved {tok.kind} tokenizer with {tok.vocab_size} tokens to {ns.out}")


def add_tokenizer(new: NewCommand) -> None:
    """`tokenizer train`: the tokenizer's own settings, and the reading and cleaning of `prepare`,
    so a tokenizer learns from exactly the text the shards will hold."""
    from lmforge.data.prep import PrepConfig
    from lmforge.tokenizer import TokenizerConfig

    tok = new("tokenizer", "train tokenizers")
    sub = tok.add_subparsers(dest="tok_command", metavar="<action>", required=True)
    p = sub.add_parser("train", help="train a tokenizer on a corpus", allow_abbrev=False)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--out", required=True, help="where to write tokenizer.json")
    add_dataclass_flags(p, TokenizerConfig)
    add_dataclass_flags(p, PrepConfig, skip=("val_fraction",))
    add_json_flag(p)
    p.set_defaults(func=cmd_tokenizer_train)


def cmd_prepare(ns: argparse.Namespace) -> None:
    from lmforge.data.prep import PrepConfig
    from lmforge.text.clean import CleanSummary

    prep = from_dict(PrepConfig, namespace_overrides(ns, PrepConfig))
    manifest = lmforge.prepare(
        ns.data, ns.tokenizer, ns.out, clean=prep.clean, val_fraction=prep.val_fraction,
        text_field=prep.text_field, txt_unit=prep.txt_unit, encoding=prep.encoding, show_progress=True,
        val_data=ns.val_data,
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
    human = f"wrote shards to {ns.out}\n" + format_fields(
        {k: v for k, v in result.items() if k not in ("cleaning", "out")}
    )
    if result["cleaning"]:
        human += (
            "\ncleaning (documents kept and dropped, and why):\n"
            + CleanSummary(**result["cleaning"]).format()
        )
    emit(result, ns.json, human)


def add_prepare(new: NewCommand) -> None:
    from lmforge.data.prep import PrepConfig

    p = new("prepare", "clean, deduplicate, tokenize and pack a corpus into token shards")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument(
        "--val_data", default=None,
        help="a separate validation corpus (e.g. wiki.valid.txt), kept as written; default: --val_fraction of --data",
    )  # fmt: skip
    p.add_argument("--tokenizer", required=True, help="tokenizer.json to encode with")
    p.add_argument("--out", required=True, help="output shard directory")
    add_dataclass_flags(p, PrepConfig)
    add_json_flag(p)
    p.set_defaults(func=cmd_prepare)
