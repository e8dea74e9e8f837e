"""`lmforge pretrain`, `lmforge finetune <task>` and `lmforge scaling`: the commands that train.

Their flags are the fields of the workflow's config dataclass, so a flag, a YAML key and an API
keyword are one name with one check.
"""

from __future__ import annotations

import argparse

import lmforge
from lmforge.cli.flags import NewCommand, add_json_flag, add_overwrite_flag
from lmforge.cli.output import emit, format_fields
from lmforge.config import add_dataclass_flags, namespace_overrides


def cmd_pretrain(ns: argparse.Namespace) -> None:
    from lmforge.pretraining import PretrainConfig

    overrides = namespace_overrides(ns, PretrainConfig)
    result = lmforge.pretrain(
        ns.config,
        resume=ns.resume,
        overwrite=ns.overwrite,
        sample_prompt=None if ns.json else ns.sample,
        **overrides,
    )
    d = result.to_dict()
    hidden = ("select_metric", "best_score", "val_metrics", "val_ppl")
    human = "training finished\n" + format_fields(
        {k: v for k, v in d.items() if v is not None and k not in hidden}
    )
    # The objective's own validation metrics (masked-LM accuracy, ...); a perplexity gets its own line.
    metrics = {k: v for k, v in (result.val_metrics or {}).items() if k != "ppl"}
    if metrics:
        human += "\nvalidation: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    if result.val_ppl is not None:
        human += f"\nvalidation perplexity: {result.val_ppl:.2f}"
    emit(d, ns.json, human)


def add_pretrain(new: NewCommand) -> None:
    from lmforge.pretraining import PretrainConfig

    p = new("pretrain", "pretrain a language model (no --data: the built-in corpus)")
    p.add_argument("--config", help="YAML file with model/train/tokenizer/prep sections; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add_overwrite_flag(p, "the run into --out (or start the run there over)")
    p.add_argument(
        "--sample", default="The", help="prompt for the sample printed at the end (default: 'The')"
    )
    add_dataclass_flags(p, PretrainConfig)
    add_json_flag(p)
    p.set_defaults(func=cmd_pretrain)


# What fine-tuning works out from --epochs, --warmup_ratio, the data and the task unless given.
FINETUNE_SCHEDULE = {
    "train.max_steps": "epochs x optimizer steps per epoch",
    "train.warmup_steps": "warmup_ratio x max_steps",
    "train.eval_every": "once per epoch",
    "train.save_every": "at each evaluation",
    "train.select_metric": "the task's dev metric (auto), the loss without --dev",
}


def cmd_finetune(ns: argparse.Namespace) -> None:
    from lmforge.finetuning import FinetuneConfig

    overrides = namespace_overrides(ns, FinetuneConfig)
    overrides["task"] = ns.task
    result = lmforge.finetune(ns.config, resume=ns.resume, overwrite=ns.overwrite, **overrides)
    d = {k: v for k, v in result.to_dict().items() if k != "val_ppl"}  # a task has no perplexity
    metrics = d.pop("val_metrics", None) or {}
    human = "fine-tuning finished\n" + format_fields({k: v for k, v in d.items() if v is not None})
    if metrics:
        human += "\ndev (last evaluation): " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    d["val_metrics"] = metrics or None
    emit(d, ns.json, human)


def add_finetune(new: NewCommand) -> None:
    """One subcommand per registered task, offering only the FinetuneConfig fields that task reads."""
    from lmforge.finetuning import FinetuneConfig
    from lmforge.tasks.registry import TASKS, options_of_other_tasks

    ft = new(
        "finetune",
        "fine-tune a pretrained run on a labelled task (classification, NER, extractive QA, seq2seq)",
    )
    ft_sub = ft.add_subparsers(dest="task", metavar="<task>", required=True)
    for task, spec in TASKS.items():
        p = ft_sub.add_parser(task, help=spec.summary, description=spec.summary, allow_abbrev=False)
        p.add_argument("--config", help="YAML file with fine-tuning and train sections; flags override it")
        p.add_argument(
            "--resume", action="store_true", help="continue the run in --out exactly where it stopped"
        )
        add_overwrite_flag(p, "the run into --out (or start the run there over)")
        p.add_argument("--model", dest="model", default=argparse.SUPPRESS,
                       help="pretrained run directory (encoder or decoder) or Hugging Face model directory")  # fmt: skip
        p.add_argument("--train", dest="train_file", default=argparse.SUPPRESS, help="labelled training file")
        p.add_argument("--dev", dest="dev_file", default=argparse.SUPPRESS,
                       help="labelled dev file: picks the best checkpoint by the task metric")  # fmt: skip
        skip = ("task", "model", "train_file", "dev_file", *options_of_other_tasks(task))
        add_dataclass_flags(p, FinetuneConfig, skip=skip, shown_defaults=FINETUNE_SCHEDULE)
        add_json_flag(p)
        p.set_defaults(func=cmd_finetune)


def cmd_scaling(ns: argparse.Namespace) -> None:
    from lmforge.scaling import ScalingOverrides, format_result

    res = lmforge.scaling_ladder(
        ns.data, ns.sizes, ns.out, tokens_per_param=ns.tokens_per_param, max_steps=ns.max_steps,
        overrides=namespace_overrides(ns, ScalingOverrides),
    )  # fmt: skip
    emit(res.to_dict(), ns.json, format_result(res))


def add_scaling(new: NewCommand) -> None:
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
    add_json_flag(p)
    p.set_defaults(func=cmd_scaling)
