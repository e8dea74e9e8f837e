"""Run directories: the artifact every command after training reads.

    runs/gpt/
      config.yaml         the full config that made the run (model, train, tokenizer, data)
      tokenizer.json      the tokenizer (Hugging Face `tokenizers` format)
      model.safetensors   the weights to use: best validation loss, else the latest
      train_state/        checkpoints for exact resume (see lmforge.train.checkpoint)
      metrics.jsonl  events/  plots/loss.png  summary.json

`lmforge.load(run_dir)` gives back model, tokenizer and config, ready to evaluate or generate.
Everything is JSON/YAML/safetensors: loading a run never executes code from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lmforge.config import from_dict, load_yaml
from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.utils.io import atomic_write_text


@dataclass
class LM:
    """A loaded run: `lm.model(ids)` -> logits (B, T, vocab); `lm.tokenizer.encode/decode`."""

    model: nn.Module
    tokenizer: Any  # lmforge.tokenizer.Tokenizer
    config: dict[str, Any]
    model_config: ModelConfig
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def generate(self, prompt: str, **options: Any) -> str:
        """Completion of `prompt` (see lmforge.infer.generate.GenerationConfig for options)."""
        from lmforge.infer.generate import GenerationConfig, generate

        return generate(self.model, self.tokenizer, prompt, from_dict(GenerationConfig, options))


def model_config_of(run_dir: Path) -> tuple[ModelConfig, dict[str, Any]]:
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise LmforgeError(
            f"{run_dir}: not a run directory (no config.yaml); give the --out folder of a training run"
        )
    data = load_yaml(cfg_path)
    if "model" not in data:
        raise LmforgeError(f"{cfg_path}: no 'model' section; the file is damaged or not from lmforge")
    return from_dict(ModelConfig, data["model"], prefix="model."), data


def check_vocab(model_cfg: ModelConfig, tokenizer: Any, where: str) -> None:
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise LmforgeError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model only {model_cfg.vocab_size}; "
            "use the tokenizer the model was trained with (or retrain with --model.vocab_size 0)"
        )


def load(run_dir: str | Path, *, device: str | torch.device = "cpu", weights: str | None = None) -> LM:
    """Load a run directory (or any folder with config.yaml + tokenizer.json + model.safetensors)."""
    from lmforge.models import build_model
    from lmforge.models.weights import load_weights
    from lmforge.tokenizer import Tokenizer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LmforgeError(f"{run_dir}: no such run directory")
    model_cfg, data = model_config_of(run_dir)
    if "task" in data:  # a fine-tuned task run: a task head, not a language model
        task = data["task"].get("task", "task")
        raise LmforgeError(
            f"{run_dir} is a fine-tuned {task} run, not a language model; use lmforge predict / "
            "lmforge evaluate with it (in Python: lmforge.load gives its TaskRun)"
        )
    tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
    check_vocab(model_cfg, tokenizer, str(run_dir / "tokenizer.json"))
    if data.get("objective") == "electra":  # generator + discriminator; `.discriminator` is the encoder
        from lmforge.models.electra import ElectraModel

        model = ElectraModel.from_run_config(model_cfg, data.get("electra"))
    else:
        model = build_model(model_cfg)
    weights_path = Path(weights) if weights else run_dir / "model.safetensors"
    if not weights_path.is_file():
        raise LmforgeError(
            f"{weights_path}: no weights yet; train the run first (lmforge pretrain --out {run_dir})"
        )
    load_weights(model, weights_path)
    dev = torch.device(device)
    model.to(dev).eval()
    return LM(model, tokenizer, data, model_cfg, run_dir, dev)


def write_run(
    run_dir: str | Path,
    *,
    model: nn.Module,
    model_config: ModelConfig,
    tokenizer: Any,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write a self-contained run directory (used by import and by training)."""
    from lmforge.config import to_dict
    from lmforge.models.weights import save_weights

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = dict(config or {})
    data["model"] = to_dict(model_config)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    tokenizer.save(run_dir / "tokenizer.json")
    save_weights(model, run_dir / "model.safetensors")
    return run_dir
