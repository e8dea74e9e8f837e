"""`lmforge ngram train|eval`: count and smooth an n-gram model into an ARPA file, and score one."""

from __future__ import annotations

import argparse
import time
import warnings

import lmforge
from lmforge.cli.flags import NewCommand, add_json_flag
from lmforge.cli.output import emit, format_fields


def cmd_ngram_train(ns: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    with warnings.catch_warnings(
        record=True
    ) as caught:  # shown in the report, after the numbers they qualify
        warnings.simplefilter("always")
        lm = lmforge.train_ngram(
            ns.data, order=ns.order, smoothing=ns.smoothing, k=ns.k, min_count=ns.min_count,
            max_vocab=ns.max_vocab, lowercase=ns.lowercase, out=ns.out,
        )  # fmt: skip
    result = {
        "out": ns.out,
        "order": lm.order,
        "smoothing": lm.smoothing,
        "vocab_size": len(lm.vocab),
        "ngrams": lm.ngram_counts(),
        "training_sentences": lm.meta["training_sentences"],
        "training_tokens": lm.meta["training_tokens"],
        "build_seconds": lm.meta["build_seconds"],
        "total_seconds": round(time.perf_counter() - t0, 3),
        "discounts": lm.meta["discounts"],
        "discount_fallback_orders": lm.meta["discount_fallback_orders"],
    }
    shown = {k: v for k, v in result.items() if k not in ("out", "discounts", "ngrams")}
    shown["ngrams"] = " ".join(f"{n}:{c:,}" for n, c in enumerate(lm.ngram_counts(), 1))
    human = f"saved {lm.order}-gram {lm.smoothing} model to {ns.out}\n" + format_fields(shown)
    for w in caught:
        human += f"\nwarning: {w.message}"
    emit(result, ns.json, human)


def cmd_ngram_eval(ns: argparse.Namespace) -> None:
    res = lmforge.evaluate_ngram(ns.model, ns.data).to_dict()
    emit(
        {"model": ns.model, "data": ns.data, **res},
        ns.json,
        f"{ns.model} on {ns.data}\n" + format_fields(res),
    )


def add_ngram(new: NewCommand) -> None:
    from lmforge.ngram.smoothing import SMOOTHING_METHODS

    ng = new("ngram", "n-gram language models: train (ARPA out) and evaluate perplexity")
    sub = ng.add_subparsers(dest="ngram_command", metavar="<action>", required=True)

    what = "count and smooth an n-gram model, write it as an ARPA file"
    p = sub.add_parser("train", help=what, description=what, allow_abbrev=False)
    p.add_argument("--data", required=True, help="a text file, directory or glob; one sentence per line")
    p.add_argument("--order", type=int, default=3, help="n of the n-grams (default: 3)")
    p.add_argument(
        "--smoothing", default="modified-kneser-ney", choices=SMOOTHING_METHODS,
        help="default: modified-kneser-ney",
    )  # fmt: skip
    p.add_argument("--k", type=float, default=1.0, help="pseudo-count of add-k (default: 1, Laplace)")
    p.add_argument(
        "--min_count", type=int, default=1, help="words seen fewer times become <unk> (default: 1, keep all)"
    )
    p.add_argument("--max_vocab", type=int, default=None, help="keep only the N most frequent words")
    p.add_argument("--lowercase", action="store_true", help="lowercase text (remembered by the model)")
    p.add_argument("--out", required=True, help="ARPA file to write (.gz to compress)")
    add_json_flag(p)
    p.set_defaults(func=cmd_ngram_train)

    what = "perplexity of an ARPA model on text (KenLM's convention: </s> counted, <s> not, OOVs included)"
    p = sub.add_parser("eval", help=what, description=what, allow_abbrev=False)
    p.add_argument("model", help="ARPA file (plain or .gz)")
    p.add_argument("--data", required=True, help="a text file, directory or glob; one sentence per line")
    add_json_flag(p)
    p.set_defaults(func=cmd_ngram_eval)
