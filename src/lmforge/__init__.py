"""lmforge: from raw text to a trained, evaluated and deployable language model.

The Python API mirrors the CLI one to one:

    lmforge.train_tokenizer(data, kind="bpe", vocab_size=8000, out="tok.json")   # lmforge tokenizer train
    lmforge.prepare(data, "tok.json", "shards/")                                 # lmforge prepare
    lmforge.pretrain("configs/gpt-tiny.yaml", data="shards/", out="runs/gpt")    # lmforge pretrain
    lm = lmforge.load("runs/gpt")                                                # lm.model, lm.tokenizer, lm.config
    lmforge.evaluate("runs/gpt", "held_out.txt")                                 # lmforge eval
    lmforge.generate("runs/gpt", "The meaning of", max_new_tokens=50)            # lmforge generate
    lmforge.fill_mask("runs/bert", "The capital of France is [MASK].")           # lmforge fill-mask
    lmforge.export_hf("runs/gpt", "out/hf_gpt"); lmforge.import_hf("hf_dir", "runs/imported")
    lmforge.compare(["lm5.arpa", "runs/gpt"], "test.txt", plot="cmp.png")          # lmforge compare
    lmforge.scaling("corpus/", "0.1M,0.3M,1M", "runs/scaling")                     # lmforge scaling
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "LmforgeError",
    "__version__",
    "compare",
    "evaluate",
    "export_hf",
    "fill_mask",
    "finetune",
    "generate",
    "import_hf",
    "load",
    "predict",
    "prepare",
    "pretrain",
    "scaling",
    "train_tokenizer",
]

from lmforge.errors import LmforgeError


def load(run_dir: str | Path, **kwargs: Any):
    """A trained run: `.model` (ids (B, T) -> logits (B, T, V)), `.tokenizer`, `.config`; for a
    fine-tuned task run, a `TaskRun` (`.model` with its head, `.tokenizer`, `.labels`, `.config`)."""
    from lmforge.finetuning import is_task_run, load_task
    from lmforge.run import load as _load

    if is_task_run(run_dir):
        return load_task(run_dir, **kwargs)
    return _load(run_dir, **kwargs)


def train_tokenizer(data: Any, **kwargs: Any):
    from lmforge.tokenizer import train_tokenizer as _train

    return _train(data, **kwargs)


def prepare(data: Any, tokenizer: Any, out: str | Path, **kwargs: Any) -> dict:
    from lmforge.data.shards import prepare as _prepare

    return _prepare(data, tokenizer, out, **kwargs)


def pretrain(config: Any = None, **kwargs: Any):
    from lmforge.pretraining import pretrain as _pretrain

    return _pretrain(config, **kwargs)


def finetune(config: Any = None, **kwargs: Any):
    """Fine-tune a pretrained run on a labelled task (task="classify" | "ner" | "qa")."""
    from lmforge.finetuning import finetune as _finetune

    return _finetune(config, **kwargs)


def predict(run: Any, input: str | Path, output: str | Path | None = None, **kwargs: Any) -> dict:
    """Predictions of a fine-tuned task run on a file, written as JSONL / CoNLL / SQuAD JSON."""
    from lmforge.finetuning import predict as _predict

    return _predict(run, input, output, **kwargs)


def evaluate(run: Any, data: Any, **kwargs: Any):
    """Scores of a run (path or loaded) on held-out data: loss, perplexity and bits per byte for a
    causal LM; masked-token loss/accuracy and NSP/SOP accuracy for a masked-LM encoder; the task's
    metrics (accuracy / macro-F1, entity P/R/F1, EM/F1) for a fine-tuned task run."""
    from lmforge.finetuning import TaskRun, evaluate_task, is_task_run

    if isinstance(run, TaskRun) or (isinstance(run, (str, Path)) and is_task_run(run)):
        return evaluate_task(run, data, **kwargs)
    lm = load(run) if isinstance(run, (str, Path)) else run
    if lm.model_config.arch == "encoder":
        from lmforge.eval.masked import evaluate_masked

        return evaluate_masked(lm, data, **kwargs)
    from lmforge.eval.perplexity import evaluate_lm

    return evaluate_lm(lm, data, **kwargs)


def fill_mask(run: Any, text: str, *, top_k: int = 5):
    """For each [MASK] in `text`, the top_k predictions (token, token_id, score, text) of a masked-LM run."""
    from lmforge.infer.fill_mask import fill_mask as _fill

    lm = load(run) if isinstance(run, (str, Path)) else run
    return _fill(lm.model, lm.tokenizer, text, top_k=top_k)


def generate(run: Any, prompt: str, **options: Any) -> str:
    """Completion of `prompt` by a run (path or loaded); options as GenerationConfig fields."""
    lm = load(run) if isinstance(run, (str, Path)) else run
    return lm.generate(prompt, **options)


def export_hf(run: Any, out: str | Path) -> Path:
    from lmforge.interop.hf import export_hf as _export

    lm = load(run) if isinstance(run, (str, Path)) else run
    return _export(
        lm.model, lm.tokenizer, out, pair_head=lm.config.get("objective") in ("mlm+nsp", "mlm+sop")
    )


def import_hf(hf_dir: str | Path, run_dir: str | Path) -> Path:
    """Import a Hugging Face GPT-2/Llama/Mistral/BERT directory as a run directory."""
    from lmforge.interop.hf import import_run

    return import_run(hf_dir, run_dir)[1]


def compare(models: Any, data: Any, **kwargs: Any):
    """Per-word perplexity and bits per byte of ARPA files and runs on one text (comparable across
    tokenizers); options as `lmforge.eval.compare.compare`."""
    from lmforge.eval.compare import compare as _compare

    return _compare(models, data, **kwargs)


def scaling(data: Any, sizes: Any, out: str | Path, **kwargs: Any):
    """Train a ladder of decoder sizes on `data` and fit L(N) = a * N^-alpha + c; see `lmforge.scaling`."""
    from lmforge.scaling import scaling as _scaling

    return _scaling(data, sizes, out, **kwargs)
