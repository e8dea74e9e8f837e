"""`lmforge <command>`: each command parses its flags, calls the Python API and prints the result.

Every command calls the `lmforge.<function>` (`lmforge/__init__.py`) that is its Python twin, so
the CLI and the API take the same options and give the same numbers; the modules here add only
argument parsing and printing, one module per group of commands. Flags are generated from the
config dataclasses (`--train.max_steps`, `--model.n_layer`, ...), so the CLI, YAML files and the
API share one set of names and one set of checks. Every command that reports numbers takes
`--json` and then prints them as one JSON object on the last line of stdout. User errors print
one line (`lmforge: error: ...`) and exit with status 2; a full disk or an unwritable folder
prints one line too and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from lmforge.cli.data import add_prepare, add_tokenizer
from lmforge.cli.evaluation import add_compare, add_eval, add_evaluate, add_predict, add_translate
from lmforge.cli.inference import add_chat, add_fill_mask, add_generate, add_serve
from lmforge.cli.ngram import add_ngram
from lmforge.cli.runs import add_average, add_export, add_import, add_info
from lmforge.cli.split import add_split
from lmforge.cli.training import add_finetune, add_pretrain, add_scaling
from lmforge.config import unknown_option_error
from lmforge.errors import LmforgeError, TrainingStopped, describe_os_error
from lmforge.version import __version__

__all__ = ["build_parser", "main"]

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
  lmforge split qa --data dev-v1.1.json --dev_fraction 0.1 --out squad/    # squad/train.json, squad/dev.json
  lmforge finetune classify --model runs/bert --train sst2/train.tsv --dev sst2/dev.tsv --out runs/sst2
  lmforge finetune ner --model runs/bert --train conll/train.txt --dev conll/valid.txt --crf true --out runs/ner
  lmforge predict runs/sst2 --input new.tsv --output predictions.jsonl
  lmforge evaluate runs/ner --data conll/test.txt
  lmforge finetune seq2seq --config configs/mt-tiny.yaml --tokenizer tok.json --train train.en,train.de \
        --dev val.en,val.de --out runs/mt
  lmforge translate runs/mt --input test.en --output hyp.de --beam 5
  lmforge evaluate runs/mt --src test.en --ref test.de                          # sacreBLEU BLEU, chrF, ROUGE
  lmforge average runs/mt --last 5 --out runs/mt-avg                            # checkpoint averaging
  lmforge finetune chat --model runs/gpt --train dialogs.jsonl --dev dev.jsonl --out runs/chat
  lmforge chat runs/chat --system "Be brief."                                    # streamed replies
  lmforge serve runs/chat --port 8000              # OpenAI API at /v1, a chat page at /
  lmforge ngram train --data train.txt --order 5 --smoothing modified-kneser-ney --out lm5.arpa
  lmforge ngram eval lm5.arpa --data test.txt
  lmforge compare --data test.txt lm5.arpa runs/lstm runs/gpt --plot compare.png   # per-word ppl, bits/byte
  lmforge scaling --data corpus/ --sizes 0.1M,0.3M,1M,3M --out runs/scaling       # fit L(N) = a*N^-alpha + c
"""


# The order of `lmforge --help`: the pipeline from text to a trained model, then what uses one.
COMMANDS = (
    add_tokenizer, add_prepare, add_pretrain, add_eval, add_compare, add_scaling, add_generate, add_fill_mask,
    add_info, add_average, add_export, add_import, add_split, add_finetune, add_predict, add_translate,
    add_evaluate, add_chat, add_serve, add_ngram,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="From raw text to a trained, evaluated and deployable language model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    def new(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, allow_abbrev=False)

    for add in COMMANDS:
        add(new)
    return parser


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
        ns.func(ns)
        return 0
    except TrainingStopped as e:
        print(f"lmforge: {e}", file=sys.stderr)
        return e.exit_code
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        message = describe_os_error(e)
        if message is None:
            raise
        print(f"lmforge: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lmforge: interrupted; the last checkpoint is intact (resume with --resume)", file=sys.stderr)
        return 130
