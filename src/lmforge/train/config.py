"""TrainConfig: every knob of the training loop, with the reason for its default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    max_steps: int = 2000  # optimizer steps (each = batch_size * grad_accum sequences per rank)
    batch_size: int = 16  # sequences per micro-batch per rank
    grad_accum: int = 1  # micro-batches summed before each optimizer step (raises the batch without memory)
    seq_len: int = 0  # tokens per training sequence; 0 = model.max_len
    lr: float = 6e-4  # peak learning rate reached after warmup
    min_lr_ratio: float = 0.1  # final LR as a fraction of lr (cosine/linear floor; Chinchilla uses 0.1)
    warmup_steps: int = 100  # linear warmup from 0: Adam's moment estimates are poor early on
    # wsd = warmup, stable, then decay; inverse_sqrt = lr * sqrt(warmup_steps / step) after warmup
    # (Vaswani et al.; fairseq's translation default), which needs no max_steps to be known
    schedule: Literal["cosine", "linear", "constant", "wsd", "inverse_sqrt"] = "cosine"
    decay_ratio: float = 0.2  # for wsd: the final fraction of steps that decays linearly to the floor
    weight_decay: float = 0.1  # applied to matrices only; biases, norms and embeddings are exempt
    beta1: float = 0.9
    beta2: float = 0.95  # 0.95 rather than 0.999: steadier for language models (GPT-3, Llama)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = (
        "auto"  # auto: bf16 on GPUs that support it, else fp32
    )
    compile: bool = False  # torch.compile the model (slow start, faster steps on long runs)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 1337  # seeds init, dropout and data order; the same seed reproduces a run bit for bit on CPU
    eval_every: int = 200  # steps between validation passes (0 = only at the end)
    eval_batches: int = 20  # validation micro-batches per evaluation
    save_every: int = 500  # steps between checkpoints (0 = only at the end)
    keep_last: int = 2  # checkpoints kept in train_state/ besides the best one
    early_stopping_patience: int = 0  # stop after this many evaluations without improvement (0 = off)
    # The validation figure that picks the best weights and drives early stopping: loss (lower is
    # better), or a metric the evaluation reports (accuracy, f1, exact_match...: higher is better);
    # auto = the objective's choice (the loss for pretraining, the task's metric for fine-tuning).
    select_metric: str = "auto"
    log_every: int = 10  # steps between metric rows (each log is one host sync)
    max_nan_steps: int = 5  # consecutive non-finite steps tolerated (each skipped) before stopping
    threads: int = 0  # CPU threads for PyTorch (0 = leave PyTorch's default)
    progress: bool = True  # show a progress bar
    tensorboard: bool = True  # write TensorBoard events to <run>/events
    plot: bool = True  # write <run>/plots/loss.png at each evaluation and at the end

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "max_nan_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_ratio <= 1:
            raise ValueError(f"train.decay_ratio must be in (0, 1], got {self.decay_ratio}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eps <= 0:
            raise ValueError(f"train.eps must be positive (AdamW divides by sqrt(v) + eps), got {self.eps}")
        for name in ("weight_decay", "warmup_steps", "grad_clip", "eval_every", "save_every",
                     "early_stopping_patience", "threads"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.seq_len < 0:
            raise ValueError(f"train.seq_len must be positive (or 0 for model.max_len), got {self.seq_len}")
        if self.eval_batches < 1:
            raise ValueError(f"train.eval_batches must be at least 1, got {self.eval_batches}")
