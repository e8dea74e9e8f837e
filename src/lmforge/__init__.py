"""lmforge: from raw text to a trained, evaluated and deployable language model.

The Python API mirrors the CLI one to one: each `lmforge <command>` parses its flags, calls the
function named beside it here and prints what it returns, so both take the same options and give
the same numbers.

    lmforge.train_tokenizer(data, kind="bpe", vocab_size=8000, out="tok.json")   # lmforge tokenizer train
    lmforge.prepare(data, "tok.json", "shards/")                                 # lmforge prepare
    lmforge.pretrain("configs/gpt-tiny.yaml", data="shards/", out="runs/gpt")    # lmforge pretrain
    lmforge.split("qa", "dev-v1.1.json", "squad/", dev_fraction=0.1)             # lmforge split qa
    lmforge.finetune(task="ner", model="runs/bert", train_file="train.txt")     # lmforge finetune ner
    lm = lmforge.load("runs/gpt")                                                # lm.model, lm.tokenizer, lm.config
    lmforge.info("runs/gpt")                                                     # lmforge info
    lmforge.evaluate("runs/gpt", "held_out.txt")                                 # lmforge eval, lmforge evaluate
    lmforge.predict("runs/ner", "test.txt", "test.pred.conll")                   # lmforge predict
    lmforge.translate("runs/mt", ["A dog runs."], beam=5)                        # lmforge translate
    lmforge.average("runs/mt", "runs/mt-avg", last=5)                            # lmforge average
    lmforge.generate("runs/gpt", "The meaning of", max_new_tokens=50)            # lmforge generate
    lmforge.generate_stream("runs/gpt", "The meaning of")                        # ... piece by piece
    lmforge.generate_batch("runs/gpt", ["Once", "The meaning of"])               # lmforge generate --prompt A --prompt B
    lmforge.fill_mask("runs/bert", "The capital of France is [MASK].")           # lmforge fill-mask
    lmforge.export_hf("runs/gpt", "out/hf_gpt")                                  # lmforge export hf
    lmforge.import_hf("hf_dir", "runs/imported")                                 # lmforge import hf
    lmforge.compare(["lm5.arpa", "runs/gpt"], "test.txt", plot="cmp.png")        # lmforge compare
    lmforge.scaling_ladder("corpus/", "0.1M,0.3M,1M", "runs/scaling")            # lmforge scaling
    lmforge.train_ngram("train.txt", order=5, out="lm5.arpa")                    # lmforge ngram train
    lmforge.evaluate_ngram("lm5.arpa", "test.txt")                               # lmforge ngram eval

A function that reads a run takes its directory or the loaded run, and loads a directory on
`device` (auto, cpu, cuda, cuda:N or mps; default cpu).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.version import __version__

__all__ = [
    "Chat",
    "LmforgeError",
    "__version__",
    "average",
    "compare",
    "evaluate",
    "evaluate_ngram",
    "export_hf",
    "export_onnx",
    "fill_mask",
    "finetune",
    "generate",
    "generate_batch",
    "generate_stream",
    "import_hf",
    "info",
    "load",
    "predict",
    "prepare",
    "pretrain",
    "scaling_ladder",
    "serve",
    "split",
    "train_ngram",
    "train_tokenizer",
    "translate",
]


def load(run_dir: str | Path, *, device: Any = "cpu", **kwargs: Any):
    """A trained run: `.model` (ids (B, T) -> logits (B, T, V)), `.tokenizer`, `.config`; for a
    fine-tuned task run, a `TaskRun` (`.model` with its head, `.tokenizer`, `.labels`, `.config`).

    The one place that picks a loader by the run's kind (`lmforge.run.read_run`): every function
    below that accepts a run directory and works on every kind gets the right object from here.
    """
    from lmforge.run import read_run

    if read_run(run_dir).kind == "task":
        from lmforge.finetuning import load_task
        from lmforge.utils.device import resolve_device

        return load_task(run_dir, device=resolve_device(device), **kwargs)
    return _language_model(run_dir, device, **kwargs)


def _language_model(run: Any, device: Any, **kwargs: Any):
    """`run` loaded as a language model (a task run's directory is refused, naming what to use)."""
    from lmforge.run import load as load_run
    from lmforge.utils.device import resolve_device

    return load_run(run, device=resolve_device(device), **kwargs) if isinstance(run, (str, Path)) else run


def _seq2seq_run(run: Any, device: Any):
    """`run` loaded, when it is a seq2seq task run (whose generation is translation); else None."""
    return _task_run_of(run, device, "seq2seq")


def _task_run_of(run: Any, device: Any, task: str):
    """`run` loaded, when it is a task run of `task`; else None."""
    from lmforge.finetuning import TaskRun

    if isinstance(run, (str, Path)):
        from lmforge.run import read_run

        info = read_run(run)
        if info.kind != "task" or info.config.get("task", {}).get("task") != task:
            return None
        run = load(run, device=device)
    return run if isinstance(run, TaskRun) and run.config.task == task else None


def _continues_text(lm: Any):
    """`lm`, refused when it is an encoder-decoder (which writes from a source, not after a prompt)."""
    if getattr(getattr(lm, "model_config", None), "arch", None) == "encoder-decoder":
        raise LmforgeError(
            f"{lm.run_dir} is an encoder-decoder, which continues no prompt: fine-tune it with "
            f"lmforge finetune seq2seq --model {lm.run_dir}, then use lmforge translate / evaluate"
        )
    return lm


def _opened(run: Any, device: Any):
    return load(run, device=device) if isinstance(run, (str, Path)) else run


def train_tokenizer(data: Any, **kwargs: Any):
    """Train a tokenizer on a corpus; options as `lmforge.tokenizer.train_tokenizer`."""
    from lmforge.tokenizer import train_tokenizer as train

    return train(data, **kwargs)


def prepare(data: Any, tokenizer: Any, out: str | Path, **kwargs: Any) -> dict:
    """Clean, tokenize and pack a corpus into shards; returns their manifest."""
    from lmforge.data.shards import prepare as write_shards

    return write_shards(data, tokenizer, out, **kwargs)


def pretrain(config: Any = None, **kwargs: Any):
    from lmforge.pretraining import pretrain as run_pretraining

    return run_pretraining(config, **kwargs)


def split(
    task: str,
    data: str | Path,
    out: str | Path,
    dev_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
    *,
    has_header: bool | None = None,
) -> dict[str, Any]:
    """Hold out part of a labelled file as a dev set: `out/train.<ext>` and `out/dev.<ext>`.

    By article for qa (SQuAD JSON, so no context is in both), by row for classify (a TSV/CSV header
    goes to both; `has_header` None detects it), by document or else sentence for ner (CoNLL).
    Returns the two paths and what each holds; see `lmforge.tasks.split`.
    """
    from lmforge.tasks.split import split_task_file

    return split_task_file(
        task, data, out, dev_fraction=dev_fraction, seed=seed, overwrite=overwrite, has_header=has_header
    )


def finetune(config: Any = None, **kwargs: Any):
    """Fine-tune a pretrained run on a labelled task (task="classify" | "ner" | "qa")."""
    from lmforge.finetuning import finetune as run_finetuning

    return run_finetuning(config, **kwargs)


def info(run: Any) -> dict[str, Any]:
    """Size and shape of a run (path or loaded): parameters, FLOPs per token, tokenizer vocabulary,
    model config, the task and labels of a task run, and the run's summary.json when it has one."""
    from lmforge.config import to_dict
    from lmforge.finetuning import TaskRun

    loaded = _opened(run, "cpu")
    model = loaded.model
    if isinstance(loaded, TaskRun):
        model_config = model.config
        kind = {"task": loaded.config.task, "labels": len(loaded.labels), "backbone": loaded.config.model}
    else:
        model_config, kind = loaded.model_config, {}
    result = {
        "run": str(loaded.run_dir),
        **kind,
        "parameters": model.num_params(),
        "non_embedding_parameters": model.num_params(non_embedding=True),
        "flops_per_token": model.flops_per_token(model_config.max_len),
        "tokenizer_vocab": loaded.tokenizer.vocab_size,
        "model": to_dict(model_config),
    }
    source_tokenizer = getattr(loaded, "source_tokenizer", None)
    if source_tokenizer is not None:  # a seq2seq run with two vocabularies
        result["source_tokenizer_vocab"] = source_tokenizer.vocab_size
    summary = Path(loaded.run_dir) / "summary.json"
    if summary.is_file():
        from lmforge.utils.io import read_json

        result["summary"] = read_json(summary)
    return result


def predict(
    run: Any,
    input: str | Path,
    output: str | Path | None = None,
    *,
    batch_size: int = 64,
    device: Any = "cpu",
    overwrite: bool = False,
    fields: dict[str, str] | None = None,
) -> dict:
    """Predictions of a fine-tuned task run on a file, written as JSONL / CoNLL / SQuAD JSON
    (an existing `output` is replaced only with `overwrite`); `fields` names a seq2seq JSONL
    file's src_field / tgt_field / ref_field where they differ from the training file's."""
    from lmforge.finetuning import predict as predict_task
    from lmforge.utils.device import resolve_device

    return predict_task(
        run, input, output, batch_size=batch_size, device=resolve_device(device), overwrite=overwrite,
        fields=fields,
    )  # fmt: skip


def average(run: str | Path, out: str | Path, *, last: int = 5, overwrite: bool = False) -> dict[str, Any]:
    """A new run whose weights are the mean of `run`'s `last` newest checkpoints (the source run is
    only read); every command takes it like any run."""
    from lmforge.train.average import average_checkpoints

    return average_checkpoints(run, out, last=last, overwrite=overwrite)


def translate(
    run: Any, input: str | Path | list[str], output: str | Path | None = None, *, device: Any = "cpu",
    **options: Any,
) -> list[str]:  # fmt: skip
    """Outputs of a seq2seq run (translation, summarisation) for texts or a file of one source per
    line, written one per line to `output` when given. Options: beam, length_penalty,
    max_new_tokens, no_repeat_ngram (None: the run's own settings), batch_size, overwrite (replace
    an existing `output`), compile (decoder steps through torch.compile)."""
    from lmforge.finetuning import translate as translate_texts
    from lmforge.utils.device import resolve_device

    _check_options(translate_texts, {k: v for k, v in options.items() if k != "device"}, "a seq2seq run")
    return translate_texts(
        run, input, output, device=resolve_device(device), **_typed(translate_texts, options)
    )


def _typed(fn: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """`options` converted to the types `fn` declares: `lmforge generate` passes its flags as
    strings, and a seq2seq run sends them on to `translate` ('false' is not False)."""
    import typing

    from lmforge.config import coerce

    hints = typing.get_type_hints(fn)
    return {k: coerce(v, hints[k], k) if k in hints else v for k, v in options.items()}


def evaluate(run: Any, data: Any, *, device: Any = "cpu", **options: Any):
    """Scores of a run (path or loaded) on held-out data: loss, perplexity and bits per byte for a
    causal LM; masked-token loss/accuracy and NSP/SOP accuracy for a masked-LM encoder; the task's
    metrics (accuracy / macro-F1, entity P/R/F1, EM/F1) for a fine-tuned task run.

    `options` go to that evaluation: batch_size, txt_unit (default file: a held-out .txt file is
    scored whole, so its perplexity stays comparable), text_field and encoding for a language model
    (stride for a causal one, seed for a masked one); batch_size and report for a task run, and
    fields (src_field / tgt_field / ref_field of a seq2seq JSONL file) for a seq2seq run.
    """
    from lmforge.eval.masked import evaluate_masked
    from lmforge.eval.perplexity import evaluate_lm
    from lmforge.finetuning import TaskRun, evaluate_task

    loaded = _opened(run, device)
    if options.get("fields") and not isinstance(loaded, TaskRun):
        raise LmforgeError(
            f"--src_field/--tgt_field/--ref_field apply to seq2seq task runs; {loaded.run_dir} is a "
            f"{loaded.model_config.arch} language model"
        )
    if isinstance(loaded, TaskRun):
        scorer, what = evaluate_task, "a fine-tuned task run"
    elif loaded.model_config.arch == "encoder":
        scorer, what = evaluate_masked, "a masked-LM run"
    else:
        scorer, what = evaluate_lm, "a causal LM run"
    _check_options(scorer, options, what)
    return scorer(loaded, data, **options)


def _check_options(fn: Callable[..., Any], options: dict[str, Any], what: str) -> None:
    """An option `fn` does not take is the caller's mistake: name it, rather than fail inside `fn`."""
    import inspect

    params = inspect.signature(fn).parameters
    taken = sorted(name for name, p in params.items() if p.kind is p.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise LmforgeError(f"option '{unknown[0]}' does not apply to {what}; it takes {', '.join(taken)}")


def fill_mask(run: Any, text: str, *, top_k: int = 5, device: Any = "cpu"):
    """For each [MASK] in `text`, the top_k predictions (token, token_id, score, text) of a masked-LM run."""
    from lmforge.infer.fill_mask import fill_mask as predict_masks

    lm = _language_model(run, device)
    return predict_masks(lm.model, lm.tokenizer, text, top_k=top_k)


def generate_stream(run: Any, prompt: str, *, device: Any = "cpu", **options: Any) -> Iterator[str]:
    """The completion of `prompt` by a run (path or loaded), piece by piece as soon as each is
    printable; options as GenerationConfig fields (strings are converted, as from the CLI). A
    seq2seq run translates `prompt` instead (beam search, whole: options as `translate`'s)."""
    from lmforge.config import from_dict
    from lmforge.infer.generate import GenerationConfig, generate_text

    seq2seq = _seq2seq_run(run, device)
    if seq2seq is not None:
        return iter(translate(seq2seq, [prompt], **options))
    lm = _continues_text(_language_model(run, device))
    return generate_text(lm.model, lm.tokenizer, prompt, from_dict(GenerationConfig, options))


def Chat(
    run: Any, *, device: Any = "cpu", system: str | None = None, chat_template: str | None = None,
    **options: Any,
):  # fmt: skip
    """A conversation with a chat run (or any decoder run or Hugging Face model folder, given a
    template): `.send(text)` returns the reply, `.stream(text)` yields it piece by piece,
    `.reset()`, `.system`, `.save(path)`. `chat_template` (plain, chatml, a .jinja file) replaces
    the model's own; options are GenerationConfig fields (temperature, top_p, max_new_tokens, ...)."""
    from lmforge.infer.chat import ChatSession

    model, tokenizer = _chat_model(run, device)
    return ChatSession(
        model, tokenizer, template=_template(tokenizer, chat_template), system=system, **options
    )


def _template(tokenizer: Any, spec: str | None) -> str | None:
    """The chat template `--chat_template` names for a model, refused when it needs tokens the
    model's vocabulary lacks (chatml on a model never fine-tuned with it)."""
    from lmforge.chat_template import resolve_template

    if not spec:
        return None
    template, needed = resolve_template(spec)
    if any(tokenizer.token_to_id(t) is None for t in needed):
        raise LmforgeError(
            f"--chat_template {spec} needs tokens this model's vocabulary lacks; fine-tune it with "
            f"lmforge finetune chat --chat_template {spec}, or use --chat_template plain"
        )
    return template


def serve(
    run: Any, *, host: str = "127.0.0.1", port: int = 8000, device: Any = "cpu", name: str | None = None,
    chat_template: str | None = None, **options: Any,
) -> None:  # fmt: skip
    """Serve a run (a chat run, a decoder run or a Hugging Face model folder) over the OpenAI API
    until SIGINT/SIGTERM; the Python twin of `lmforge serve`. `name` is the model id clients ask
    for (default: the run folder's name); `options`: max_batch, max_queue, max_tokens,
    max_body_mb, drain_seconds (see `lmforge.infer.server.serve`)."""
    from lmforge.infer.server import serve as run_server

    model, tokenizer = _chat_model(run, device)
    template = _template(tokenizer, chat_template)
    run_server(
        model,
        tokenizer,
        name=name or Path(str(run)).name,
        host=host,
        port=port,
        chat_template=template,
        **options,
    )


def _chat_model(run: Any, device: Any) -> tuple[Any, Any]:
    """(decoder, tokenizer) of a chat task run, a language-model run or a Hugging Face folder."""
    from lmforge.finetuning import TaskRun
    from lmforge.utils.device import resolve_device

    if (
        isinstance(run, (str, Path))
        and not (Path(run) / "config.yaml").is_file()
        and (Path(run) / "config.json").is_file()
    ):
        from lmforge.interop.hf import import_hf

        model, tokenizer = import_hf(run)
        return model.to(resolve_device(device)).eval(), tokenizer
    loaded = _opened(run, device)
    if isinstance(loaded, TaskRun):
        if loaded.config.task != "chat":
            raise LmforgeError(
                f"{loaded.run_dir} is a {loaded.config.task} run; chat with a chat or language-model run"
            )
        return loaded.model.model, loaded.tokenizer
    if getattr(loaded.model.config, "arch", None) != "decoder":
        raise LmforgeError(f"{loaded.run_dir} is not a decoder; chat needs a GPT-like language model")
    return loaded.model, loaded.tokenizer


def generate(run: Any, prompt: str, *, device: Any = "cpu", **options: Any) -> str:
    """The whole completion of `prompt` (without the prompt); options as for `generate_stream`."""
    return "".join(generate_stream(run, prompt, device=device, **options))


def generate_batch(run: Any, prompts: list[str], *, device: Any = "cpu", **options: Any) -> list[str]:
    """The completions of several prompts, decoded together as one batch: each row ends on its own
    at the end-of-text token or its first stop string; options as for `generate_stream`. A
    seq2seq run translates the prompts instead (`translate`)."""
    from lmforge.config import from_dict
    from lmforge.infer.generate import GenerationConfig
    from lmforge.infer.generate import generate_batch as decode_batch

    seq2seq = _seq2seq_run(run, device)
    if seq2seq is not None:
        return translate(seq2seq, list(prompts), **options)
    lm = _continues_text(_language_model(run, device))
    return decode_batch(lm.model, lm.tokenizer, list(prompts), from_dict(GenerationConfig, options))


def export_hf(
    run: Any, out: str | Path, *, pair_head: bool | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Write a run (path or loaded) as a Hugging Face transformers checkpoint directory.

    `pair_head` keeps an encoder's NSP/SOP head (BertForPreTraining); by default, when the run was
    trained with one. `out` must be new or empty unless `overwrite`, and never the run itself.
    Returns the directory and the transformers class that loads it.
    """
    from lmforge.interop.hf import export_hf as write_hf
    from lmforge.run import claim_output_folder

    seq2seq = _seq2seq_run(run, "cpu")
    if seq2seq is not None:  # a fine-tuned seq2seq run exports whole, its beam settings included
        if Path(out).resolve() == Path(seq2seq.run_dir).resolve():
            raise LmforgeError(f"export hf {out}: that is the run being exported; give another output folder")
        claim_output_folder(out, overwrite=overwrite, what="export hf")
        path = write_hf(seq2seq.model, seq2seq.tokenizer, out, source_tokenizer=seq2seq.source_tokenizer)
        return {"out": str(path), "load_with": "AutoModelForSeq2SeqLM"}
    chat = _task_run_of(run, "cpu", "chat")
    if chat is not None:  # a chat run is its decoder, with the chat template beside the tokenizer
        if Path(out).resolve() == Path(chat.run_dir).resolve():
            raise LmforgeError(f"export hf {out}: that is the run being exported; give another output folder")
        claim_output_folder(out, overwrite=overwrite, what="export hf")
        path = write_hf(chat.model.model, chat.tokenizer, out)
        return {"out": str(path), "load_with": "AutoModelForCausalLM"}
    lm = _language_model(run, "cpu")
    if Path(out).resolve() == Path(lm.run_dir).resolve():
        raise LmforgeError(f"export hf {out}: that is the run being exported; give another output folder")
    claim_output_folder(out, overwrite=overwrite, what="export hf")
    if pair_head is None:
        pair_head = lm.config.get("objective") in ("mlm+nsp", "mlm+sop")
    path = write_hf(lm.model, lm.tokenizer, out, pair_head=pair_head, source_tokenizer=lm.source_tokenizer)
    if lm.model_config.arch == "encoder-decoder":
        load_with = "AutoModelForSeq2SeqLM"
    elif lm.model_config.arch != "encoder":
        load_with = "AutoModelForCausalLM"
    else:
        load_with = "BertForPreTraining" if pair_head else "AutoModelForMaskedLM"
    return {"out": str(path), "load_with": load_with}


def export_onnx(
    run: Any, out: str | Path, *, mlm_head: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Write a run (path or loaded) as an ONNX model that onnxruntime runs: a decoder with past
    keys/values, an encoder, or a classification / NER / QA run's head on its backbone (a chat
    run: its decoder). Checks onnxruntime's outputs against the model's on a padded batch and
    returns {"out", "kind", "max_abs_diff"}. `mlm_head`: an encoder's graph also gives the
    masked-LM logits of every position."""
    from lmforge.finetuning import TaskRun
    from lmforge.interop.onnx import check_onnx
    from lmforge.interop.onnx import export_onnx as write_onnx
    from lmforge.run import claim_output_folder

    loaded = _opened(run, "cpu")
    model = loaded.model
    if isinstance(loaded, TaskRun) and loaded.config.task == "chat":
        model = model.model  # a chat run is its decoder
    if Path(out).resolve() == Path(loaded.run_dir).resolve():
        raise LmforgeError(f"export onnx {out}: that is the run being exported; give another output folder")
    claim_output_folder(out, overwrite=overwrite, what="export onnx")
    path = write_onnx(model, out, mlm_head=mlm_head)
    import json as _json

    kind = _json.loads((path / "onnx_config.json").read_text(encoding="utf-8"))["kind"]
    return {"out": str(path), "kind": kind, "max_abs_diff": check_onnx(model, path)}


def import_hf(hf_dir: str | Path, run_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Import a Hugging Face GPT-2/Llama/Mistral/BERT directory as a run directory (new or empty,
    unless `overwrite`, which also drops the old run's checkpoints)."""
    from lmforge.interop.hf import import_run

    model, path = import_run(hf_dir, run_dir, overwrite=overwrite)
    return {"run": str(path), "parameters": model.num_params()}


def compare(models: Any, data: Any, **kwargs: Any):
    """Per-word perplexity and bits per byte of ARPA files and runs on one text (comparable across
    tokenizers); options as `lmforge.eval.compare.compare`."""
    from lmforge.eval.compare import compare as score_all

    return score_all(models, data, **kwargs)


def scaling_ladder(data: Any, sizes: Any, out: str | Path, **kwargs: Any):
    """Train a ladder of decoder sizes on `data` and fit L(N) = a * N^-alpha + c; see `lmforge.scaling`.

    Not called `scaling`: importing the module `lmforge.scaling` would replace a function of that name.
    """
    from lmforge.scaling import scaling

    return scaling(data, sizes, out, **kwargs)


def train_ngram(data: Any, **kwargs: Any):
    """Count and smooth an n-gram model on text files (one sentence per line), optionally writing ARPA."""
    from lmforge.ngram.train import train_ngram as count_and_smooth

    return count_and_smooth(data, **kwargs)


def evaluate_ngram(model: Any, data: Any):
    """Perplexity of an n-gram model (ARPA path or loaded) on text files, as KenLM counts it."""
    from lmforge.ngram.arpa import read_arpa

    lm = read_arpa(model) if isinstance(model, (str, Path)) else model
    return lm.perplexity_file(data)
