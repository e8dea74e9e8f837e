"""`lmforge info`, `average`, `export hf` / `export onnx` and `import hf`: a run directory described, averaged or converted."""

from __future__ import annotations

import argparse

import lmforge
from lmforge.cli.flags import NewCommand, add_json_flag, add_overwrite_flag
from lmforge.cli.output import emit, format_fields


def cmd_info(ns: argparse.Namespace) -> None:
    result = lmforge.info(ns.run)
    emit(result, ns.json, format_fields({k: v for k, v in result.items() if k not in ("model", "summary")}))


def add_info(new: NewCommand) -> None:
    p = new("info", "parameters, FLOPs and config of a run")
    p.add_argument("run", help="run directory")
    add_json_flag(p)
    p.set_defaults(func=cmd_info)


def cmd_average(ns: argparse.Namespace) -> None:
    res = lmforge.average(ns.run, ns.out, last=ns.last, overwrite=ns.overwrite)
    steps = ", ".join(str(s) for s in res["steps"])
    emit(res, ns.json, f"averaged the weights of steps {steps} of {ns.run} into {res['out']}")


def add_average(new: NewCommand) -> None:
    p = new("average", "average the weights of a run's last checkpoints into a new run (translation's trick)")
    p.add_argument("run", help="run directory whose train_state/ holds the checkpoints")
    p.add_argument("--last", type=int, default=5, help="newest checkpoints to average (default: 5)")
    p.add_argument("--out", required=True, help="the new run directory")
    add_overwrite_flag(p, "the average into a non-empty --out")
    add_json_flag(p)
    p.set_defaults(func=cmd_average)


def cmd_export_hf(ns: argparse.Namespace) -> None:
    pair_head = None if ns.pair_head is None else ns.pair_head == "true"
    res = lmforge.export_hf(ns.run, ns.out, pair_head=pair_head, overwrite=ns.overwrite)
    emit(res, ns.json, f"exported {ns.run} to {res['out']} (load it with transformers' {res['load_with']})")


def cmd_import_hf(ns: argparse.Namespace) -> None:
    res = lmforge.import_hf(ns.hf_dir, ns.run, overwrite=ns.overwrite)
    emit(res, ns.json, f"imported {ns.hf_dir} ({res['parameters'] / 1e6:.2f}M parameters) into {res['run']}")


def add_export(new: NewCommand) -> None:
    exp = new("export", "export a run to another framework")
    exp_sub = exp.add_subparsers(dest="fmt", metavar="<format>", required=True)
    p = exp_sub.add_parser(
        "hf",
        help="Hugging Face transformers checkpoint (GPT-2/Llama causal LM, BERT for encoders, BART/Pegasus/mBART/Marian for encoder-decoders and seq2seq runs)",
        allow_abbrev=False,
    )
    p.add_argument("run", help="run directory")
    p.add_argument("out", help="output directory")
    p.add_argument(
        "--pair_head", choices=("true", "false"), default=None,
        help="keep an encoder's NSP/SOP head, as BertForPreTraining (default: when the run was trained with one)",
    )  # fmt: skip
    add_overwrite_flag(p, "into the output folder")
    add_json_flag(p)
    p.set_defaults(func=cmd_export_hf)
    p = exp_sub.add_parser(
        "onnx",
        help="ONNX for onnxruntime: a decoder with past keys/values, an encoder, a classification/NER/QA run",
        allow_abbrev=False,
    )
    p.add_argument("run", help="run directory")
    p.add_argument("out", help="output directory (model.onnx, onnx_config.json)")
    p.add_argument(
        "--mlm_head", choices=("true", "false"), default="false",
        help="an encoder's graph also outputs the masked-LM logits of every position (default: false)",
    )  # fmt: skip
    add_overwrite_flag(p, "into the output folder")
    add_json_flag(p)
    p.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(ns: argparse.Namespace) -> None:
    res = lmforge.export_onnx(ns.run, ns.out, mlm_head=ns.mlm_head == "true", overwrite=ns.overwrite)
    emit(res, ns.json, f"exported {ns.run} ({res['kind']}) to {res['out']}/model.onnx; onnxruntime's outputs "
                       f"differ from the run's by at most {res['max_abs_diff']:.2e}")  # fmt: skip


def add_import(new: NewCommand) -> None:
    imp = new("import", "import a checkpoint from another framework as a run directory")
    imp_sub = imp.add_subparsers(dest="fmt", metavar="<format>", required=True)
    p = imp_sub.add_parser(
        "hf",
        help="Hugging Face transformers directory (GPT-2, Llama, Mistral, BERT, BART, Marian, Pegasus, mBART)",
        allow_abbrev=False,
    )
    p.add_argument("hf_dir", help="directory with config.json, *.safetensors and tokenizer files")
    p.add_argument("run", help="run directory to create")
    add_overwrite_flag(p, "into the run directory (its old checkpoints are dropped)")
    add_json_flag(p)
    p.set_defaults(func=cmd_import_hf)
