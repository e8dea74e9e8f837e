"""The training loop: one explicit loop for every objective, readable top to bottom.

    for each step:  set LR -> micro-batches (forward, backward; grads summed) -> clip -> step
                    -> every log_every: one host sync, a metrics row, progress
                    -> every eval_every: validation, best weights, early stopping
                    -> every save_every: a checkpoint that resumes bit for bit

No callbacks. Non-finite steps are detected on the device and skipped inside the fused optimizer
(no per-step host sync); the count is checked at log time and the run stops after
`max_nan_steps` consecutive bad steps, with the last good weights intact.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.errors import LmforgeError, TrainingStopped
from lmforge.models.weights import save_weights
from lmforge.objectives.base import Loss, Objective
from lmforge.train import checkpoint as ckpt
from lmforge.train.config import TrainConfig
from lmforge.train.flops import cpu_has_native_bf16, peak_flops
from lmforge.train.logger import MetricsLogger
from lmforge.train.optim import lr_at, make_optimizer
from lmforge.train.parallel import DistInfo, all_reduce_max, all_reduce_sum, parallelize
from lmforge.utils.device import resolve_device
from lmforge.utils.io import atomic_write_json


@dataclass
class TrainResult:
    run_dir: str
    steps: int
    tokens: int
    train_loss: float | None
    val_loss: float | None  # of the weights in <run>/model.safetensors
    best_step: int | None
    stopped_early: bool
    elapsed_s: float
    # The objective's validation metrics at the last evaluation and the figures it derives from the
    # loss (a causal LM's `ppl`: of val_loss, i.e. of the kept weights).
    val_metrics: dict[str, float] | None = None
    select_metric: str = "loss"  # what chose the best weights (train.select_metric)
    best_score: float | None = None  # its value at best_step

    @property
    def val_ppl(self) -> float | None:
        """Validation perplexity, for the objectives that define one (causal LM)."""
        return (self.val_metrics or {}).get("ppl")

    def to_dict(self) -> dict[str, Any]:
        """The fields, and `val_ppl` where the objective defines one (summary.json, `--json`)."""
        return {**asdict(self), "val_ppl": self.val_ppl}


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type not in ("cuda", "cpu"):
        raise LmforgeError(f"train.precision fp16 is not supported on {device.type}; use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "train.precision bf16 on a CPU without native bf16 (AVX512_BF16/AMX/Arm BF16): autocast "
            "emulates it, up to ~20x slower than fp32; use --train.precision fp32 on this CPU",
            stacklevel=2,
        )
    return precision


def _higher_is_better(metric: str) -> bool:
    """Losses and perplexities fall as a model improves; accuracies, F1 and EM rise."""
    return not (metric == "loss" or metric.endswith(("loss", "ppl", "perplexity")))


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensor, or tuple / list / dict of them) on `device`; tensors already there are not
    copied, so sources that build batches on the device cost nothing here."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        moved = [to_device(t, device) for t in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()


class Trainer:
    """Trains `model` on `train_batches`; everything it needs to resume lives in <run>/train_state.

    `train_batches` is any resumable batch source: `next_batch()`, `state_dict()`,
    `load_state_dict()`, `batch_size` and `seq_len` (CausalLMBatches, MaskedLMBatches, ...), and
    `objective` (an `lmforge.objectives.Objective`, or a bare loss function, taken as one that
    weights batches by their rows) turns a batch into a loss. Validation batches come from
    `val_batches()`, a fresh iterable of the same fixed batches each time.
    """

    def __init__(
        self,
        model: nn.Module,
        train_batches: Any,
        cfg: TrainConfig,
        run_dir: str | Path,
        *,
        objective: Objective | Loss,
        val_batches: Callable[[], Iterable[Any]] | None = None,
        device: torch.device | None = None,
        dist: DistInfo | None = None,
        flops_per_token: float | None = None,
        evaluator: Callable[[nn.Module], dict[str, float]] | None = None,
        lr_scale: Callable[[str], float] | None = None,
        run_record: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        # The run directory's identity ({"kind", "config"}), carried by every checkpoint so that a
        # run whose config.yaml was lost can still be resumed (lmforge.run.read_run rebuilds it).
        self.run_record = run_record
        self.dist = dist or DistInfo()
        # An explicit device wins (torchrun passes the local rank's); otherwise train.device decides.
        self.device = device or resolve_device(cfg.device, self.dist.local_rank)
        self.model = model.to(self.device)  # the plain module: what we save and evaluate
        self.train_batches = train_batches
        self.objective = objective if isinstance(objective, Objective) else Objective("loss", objective)
        self.val_batches = val_batches
        # A task's own evaluation (dev-set predictions and metrics, "loss" among them) replaces the
        # objective's validation loss when given; train.select_metric names the figure to keep.
        self.evaluator = evaluator
        self.select_metric = (
            self.objective.select_metric if cfg.select_metric == "auto" else cfg.select_metric
        )
        self.select_max = _higher_is_better(self.select_metric)
        self._check_select_metric()
        self.last_val_metrics: dict[str, float] = {}
        self.step_metrics: dict[str, torch.Tensor] = {}
        self.precision = resolve_precision(cfg.precision, self.device)
        self.step_model = parallelize(self.model, self.dist, self.device, compile=cfg.compile)
        self.optimizer = make_optimizer(self.model, cfg, self.device, lr_scale=lr_scale)
        self.fused = bool(self.optimizer.defaults.get("fused"))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.tokens_per_step = (
            train_batches.batch_size * train_batches.seq_len * cfg.grad_accum * self.dist.world_size
        )
        self.flops_per_token = flops_per_token
        self.state_root = self.run_dir / "train_state"
        # Progress counters (all restored on resume).
        self.step = 0
        self.best_val = -math.inf if self.select_max else math.inf  # best value of select_metric
        self.best_step: int | None = None
        self.evals_without_improvement = 0
        self.last_val: float | None = None

    # ------------------------------------------------------------ resume

    def resume(self) -> int:
        """Restore model, optimizer, RNG, sampler and counters from the newest intact checkpoint."""
        path, meta = ckpt.find_resumable(self.state_root)
        saved_metric = meta.get("select_metric")  # absent in checkpoints of older versions
        if saved_metric is not None and saved_metric != self.select_metric:
            raise LmforgeError(
                f"{path}: the run kept its best weights by {saved_metric!r}, this resume would select by "
                f"{self.select_metric!r} (a changed --train.select_metric or dev file); give "
                f"--train.select_metric {saved_metric} to continue it, or start a new --out"
            )
        if meta.get("world_size", 1) != self.dist.world_size:
            warnings.warn(
                f"resuming a run saved with {meta.get('world_size')} processes on {self.dist.world_size}: "
                "training continues but is not bit-identical to an uninterrupted run",
                stacklevel=2,
            )
        ckpt.load_checkpoint(path, meta, self.model, self.optimizer, device=self.device, rank=self.dist.rank)
        if hasattr(self.objective.loss, "load_state_tensors"):  # e.g. an LSTM state carried across batches
            self.objective.loss.load_state_tensors(
                ckpt.load_objective_state(path, device=self.device, rank=self.dist.rank)
            )
        self.train_batches.load_state_dict(meta["sampler"])
        self.step = int(meta["step"])
        best = meta.get("best_val")  # null until the first evaluation
        self.best_val = (-math.inf if self.select_max else math.inf) if best is None else float(best)
        self.best_step = meta.get("best_step")
        self.evals_without_improvement = int(meta.get("evals_without_improvement", 0))
        self.last_val = meta.get("last_val")
        return self.step

    def _weight_norm(self) -> float:
        """The global L2 norm of the trained weights (one host sync)."""
        return float(
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in self.params])
            )
        )

    def _healthy(self) -> bool:
        """Whether the weights may be saved: finite, and not grown more than EXPLODED times past
        the last weights that were saved (or loaded). A diverging run must not replace, nor prune,
        the checkpoints it could be resumed from."""
        norm = self._weight_norm()
        ok = math.isfinite(norm) and norm <= EXPLODED * self.healthy_norm
        if ok:
            self.healthy_norm = norm
        elif self.dist.is_main:
            warnings.warn(
                f"step {self.step}: the weights have diverged (norm {norm:.3g}, against {self.healthy_norm:.3g} "
                "when last saved); not saving them: the last checkpoint in train_state/ is the one to resume "
                f"from, with a lower --train.lr (now {self.cfg.lr})",
                stacklevel=3,
            )
        return ok

    def _save(self) -> None:
        if not self._healthy():
            return
        state = {
            "sampler": self.train_batches.state_dict(),
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "select_metric": self.select_metric,  # what best_val is a value of
            "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement,
            "last_val": self.last_val,
            "tokens_seen": self.step * self.tokens_per_step,
            **({"run": self.run_record} if self.run_record is not None else {}),
        }
        ckpt.write_checkpoint(
            self.state_root, self.step, self.model, self.optimizer, state,
            device=self.device, rank=self.dist.rank, world_size=self.dist.world_size,
            keep_last=self.cfg.keep_last, barrier=self.dist.barrier,
            objective_state=self.objective.loss.state_tensors() if hasattr(self.objective.loss, "state_tensors") else None,
        )  # fmt: skip
        if self.dist.is_main and self.best_step is None:
            # No evaluation yet: the run's weights are the latest ones.
            save_weights(self.model, self.run_dir / "model.safetensors")

    # ------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss over the fixed validation batches (all ranks take part).

        The objective's metrics are averaged the same way and kept in `last_val_metrics`.
        """
        if self.evaluator is not None:
            self.model.eval()
            with autocast(self.device, self.precision):
                scores = dict(self.evaluator(self.model))
            self.model.train()
            loss = scores.pop("loss", None)
            self.last_val_metrics = scores
            return float(loss) if loss is not None else math.nan
        if self.val_batches is None:
            return None
        self.model.eval()
        names: list[str] | None = None
        total: torch.Tensor | None = None  # (weight, loss * weight, metric * weight...)
        for batch in self.val_batches():
            batch = to_device(batch, self.device)
            w = self.objective.batch_weight(batch)
            with autocast(self.device, self.precision):
                loss, metrics = self.objective.loss(self.model, batch)
            if names is None:
                names = sorted(metrics)
                total = torch.zeros(2 + len(names), device=self.device, dtype=torch.float64)
            assert total is not None
            total += (
                torch.stack(
                    [torch.ones((), device=self.device), loss.detach(), *(metrics[k] for k in names)]
                ).double()
                * w
            )
        total = self._agree_on_width(total)
        all_reduce_sum(total, self.dist)
        self.model.train()
        if float(total[0]) <= 0:
            return None
        means = (total[1:] / total[0]).tolist()
        self.last_val_metrics = {**dict(zip(names or [], means[1:])), **self.objective.derived(means[0])}
        return means[0]

    def _agree_on_width(self, total: torch.Tensor | None) -> torch.Tensor:
        """Every rank's (weight, loss, metrics...) sums, of one width for the reduction.

        A rank that drew no validation batch adds zeros; it can only do so when the objective has
        no metrics (their names come from the batches), so with metrics all ranks stop together
        with the fix rather than one of them leaving the reduction.
        """
        width = 0 if total is None else total.numel()
        if not self.dist.enabled:
            return total if total is not None else torch.zeros(2, device=self.device, dtype=torch.float64)
        spread = all_reduce_max(
            torch.tensor([width, -width], device=self.device, dtype=torch.float64), self.dist
        )
        widest, narrowest = int(spread[0]), -int(spread[1])
        if widest != narrowest and not (narrowest == 0 and widest == 2):
            raise LmforgeError(
                f"a process drew no validation batch ({self.dist.world_size} processes share too few validation "
                "examples); lower --train.batch_size, raise --prep.val_fraction, or train with fewer processes"
            )
        return (
            total if total is not None else torch.zeros(widest or 2, device=self.device, dtype=torch.float64)
        )

    def _check_select_metric(self) -> None:
        """Refuse a train.select_metric the validation never reports now, not at the first evaluation."""
        figures = self.objective.figures
        evaluates = self.val_batches is not None or self.evaluator is not None
        if evaluates and figures is not None and self.select_metric not in figures:
            raise LmforgeError(
                f"train.select_metric={self.select_metric!r} is not a figure the {self.objective.name} "
                f"validation reports ({', '.join(figures)}); choose one of them, or auto"
            )

    def _after_eval(self, val: float, logger: MetricsLogger | None) -> bool:
        """Record a validation loss; keep the best weights; return True when patience has run out."""
        self.last_val = val
        if logger:
            extra = {f"val_{k}": v for k, v in self.last_val_metrics.items()}
            logger.log({"step": self.step, "val_loss": val, **extra})
        metric = self.select_metric
        if metric == "loss":
            score = val
        elif metric in self.last_val_metrics:
            score = self.last_val_metrics[metric]
        else:
            raise LmforgeError(
                f"train.select_metric={metric!r} is not among the validation figures "
                f"({', '.join(['loss', *self.last_val_metrics])}); choose one of them"
            )
        better = score > self.best_val if self.select_max else score < self.best_val
        if better:
            self.best_val, self.best_step, self.evals_without_improvement = score, self.step, 0
            if self.dist.is_main:
                save_weights(self.model, self.run_dir / "model.safetensors")
        else:
            self.evals_without_improvement += 1
        patience = self.cfg.early_stopping_patience
        return patience > 0 and self.evals_without_improvement >= patience

    # ------------------------------------------------------------ one optimizer step

    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Micro-batches, clip, optimizer step; returns (loss, grad norm, finite) as device tensors.

        The objective's metrics of the step (averaged over micro-batches) are left in `step_metrics`.
        """
        cfg, device = self.cfg, self.device
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        # Micro-batches: gradients accumulate; DDP syncs only on the last one.
        step_loss = torch.zeros((), device=device)
        step_metrics: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            batch = to_device(self.train_batches.next_batch(), device)
            sync_ctx = (
                self.step_model.no_sync()
                if self.dist.enabled and micro < cfg.grad_accum - 1 and hasattr(self.step_model, "no_sync")
                else contextlib.nullcontext()
            )
            with sync_ctx:
                with autocast(device, self.precision):
                    loss, metrics = self.objective.loss(self.step_model, batch)
                    loss = loss / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            step_loss += loss.detach()
            for k, v in metrics.items():
                step_metrics[k] = step_metrics.get(k, 0) + v.detach().float() / cfg.grad_accum
        self.step_metrics = step_metrics

        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        finite = torch.isfinite(grad_norm) & torch.isfinite(step_loss)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skips inf/NaN steps itself
            self.scaler.update()
        elif self.fused:
            self.optimizer.found_inf = (~finite).float()  # fused AdamW skips the update when set
            self.optimizer.step()
        elif bool(finite):  # unfused optimizers need the (synchronising) check on the host
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, grad_norm, finite

    # ------------------------------------------------------------ the loop

    def fit(self, *, resume: bool = False) -> TrainResult:
        cfg, dist = self.cfg, self.dist
        start_step = self.resume() if resume else 0
        self.healthy_norm = self._weight_norm()  # what the weights may grow from before a save is refused
        main = dist.is_main
        logger = (
            MetricsLogger(
                self.run_dir, tensorboard=cfg.tensorboard, resume_step=start_step if resume else None
            )
            if main
            else None
        )
        peak = peak_flops(self.device, self.precision) if (main and self.flops_per_token) else None
        progress = _Progress(cfg.max_steps, start_step, enabled=main and cfg.progress)
        self.model.train()
        window = _Window(self.device)
        t0, stopped_early, last_loss = time.perf_counter(), False, None
        if start_step >= cfg.max_steps and main:
            print(
                f"run already at step {start_step} >= train.max_steps={cfg.max_steps}; nothing to do",
                file=sys.stderr,
            )
        stop = _StopSignals()
        try:
            while self.step < cfg.max_steps:
                lr = lr_at(self.step, cfg)
                step_loss, grad_norm, finite = self.train_step(lr)
                window.add(step_loss, finite, self.step_metrics)
                self.step += 1
                last_step = self.step >= cfg.max_steps
                if self.step % cfg.log_every == 0 or last_step:
                    row = self._log_row(window, lr, grad_norm, peak)
                    last_loss = row["loss"]
                    if logger:
                        logger.log(row)
                    progress.update(self.step, row)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last_step:
                    stopped_early = self._evaluate_and_select(logger, progress)
                saved = (cfg.save_every and self.step % cfg.save_every == 0) or last_step or stopped_early
                if saved:
                    self._save()
                if stopped_early:
                    break
                if stop.agreed(self.dist, self.device, at_log=self.step % cfg.log_every == 0):
                    if not saved:
                        self._save()
                    raise TrainingStopped(stop.signum, self.step, self.run_dir)
        except RuntimeError as e:
            if _is_oom(e):
                raise LmforgeError(
                    f"out of memory at train.batch_size={cfg.batch_size}, seq_len={self.train_batches.seq_len} on "
                    f"{self.device}; lower --train.batch_size and raise --train.grad_accum to keep the same effective batch"
                ) from None
            raise
        finally:
            stop.restore()
            progress.close()
            if logger:
                logger.close()
        if main and cfg.plot and logger:
            logger.plot()
        return self._result(last_loss, stopped_early, time.perf_counter() - t0)

    def _log_row(
        self, window: _Window, lr: float, grad_norm: torch.Tensor, peak: float | None
    ) -> dict[str, Any]:
        """The metrics row of a log interval: the interval's one host sync, and the NaN checks."""
        cfg = self.cfg
        streak, total_bad = int(window.nan_streak), int(window.nan_total)
        good = max(1, window.steps - min(total_bad, window.steps))
        if total_bad and self.dist.is_main:
            warnings.warn(
                f"step {self.step}: skipped {total_bad} step(s) with non-finite loss or gradients",
                stacklevel=3,
            )
        if streak >= cfg.max_nan_steps:
            raise LmforgeError(
                f"loss was NaN/inf for {streak} consecutive steps up to step {self.step}; weights from the "
                f"last checkpoint are intact. Lower --train.lr (now {cfg.lr}), keep --train.grad_clip on, "
                "or use --train.precision fp32/bf16 instead of fp16"
            )
        tok_s = window.steps * self.tokens_per_step / max(time.perf_counter() - window.start, 1e-9)
        row = {"step": self.step, "loss": float(window.loss_sum) / good, "lr": lr, "grad_norm": float(grad_norm),
               "tokens_per_s": tok_s, "tokens": self.step * self.tokens_per_step}  # fmt: skip
        row.update({k: float(v) / good for k, v in window.metric_sums.items()})
        if peak:
            row["mfu"] = self.flops_per_token * tok_s / peak / self.dist.world_size
        window.reset()
        return row

    def _evaluate_and_select(self, logger: MetricsLogger | None, progress: _Progress) -> bool:
        """Validate, keep the best weights, plot; True when early stopping ends the run."""
        stop = False
        val = self.evaluate()
        if val is not None:
            extra = "".join(f"  val_{k} {v:.4f}" for k, v in self.last_val_metrics.items())
            progress.note(f"step {self.step}: val_loss {val:.4f}{extra}")
            stop = self._after_eval(val, logger)
            if stop:
                progress.note(
                    f"early stopping at step {self.step}: no improvement in {self.cfg.early_stopping_patience} "
                    f"evaluations (best {self.best_val:.4f} at step {self.best_step})"
                )
        if logger and self.cfg.plot:
            logger.plot()
        return stop

    def _result(self, last_loss: float | None, stopped_early: bool, elapsed: float) -> TrainResult:
        best = self.best_val if self.best_step is not None else None
        val = best if self.select_metric == "loss" else self.last_val
        val = val if val is not None and math.isfinite(val) else None
        # The figures derived from the loss describe the reported val_loss (the kept weights').
        metrics = {**self.last_val_metrics, **(self.objective.derived(val) if val is not None else {})}
        result = TrainResult(
            run_dir=str(self.run_dir), steps=self.step, tokens=self.step * self.tokens_per_step,
            train_loss=last_loss, val_loss=val, best_step=self.best_step, stopped_early=stopped_early,
            elapsed_s=elapsed, val_metrics=metrics or None, select_metric=self.select_metric, best_score=best,
        )  # fmt: skip
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "summary.json", result.to_dict())
        return result


# A save is refused when the weights' norm has grown past this factor since they were last saved:
# healthy training moves it by percents between checkpoints, a diverging one by orders of magnitude.
EXPLODED = 10.0


class _StopSignals:
    """SIGTERM and SIGINT while training: the first asks the loop to stop after the current step
    (saving a checkpoint); a second one stops at once, as Ctrl-C always did. Installed only in the
    main thread (where Python delivers signals); elsewhere training cannot be stopped this way."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # asked twice: do not wait for the step to end
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum

    def agreed(self, dist: DistInfo, device: torch.device, *, at_log: bool) -> bool:
        """Whether to stop now: at once alone; with several processes, at a log step and only all
        together (the signal reaches them at slightly different steps)."""
        if not dist.enabled:
            return bool(self.signum)
        if not at_log:
            return False
        flag = all_reduce_max(torch.tensor([float(self.signum)], device=device), dist)
        self.signum = int(flag.item())
        return bool(self.signum)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class _Window:
    """What a log interval sums on the device between two logs, so that steps need no host sync."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.nan_streak = torch.zeros((), device=device)  # consecutive non-finite steps (not reset per log)
        self.nan_total = torch.zeros((), device=device)
        self.metric_sums: dict[str, torch.Tensor] = {}
        self.steps, self.start = 0, time.perf_counter()

    def add(self, step_loss: torch.Tensor, finite: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
        """One step's loss and metrics; a non-finite step counts as bad and adds nothing."""
        self.nan_streak = (self.nan_streak + 1) * (~finite)
        self.nan_total += ~finite
        self.loss_sum += torch.where(finite, step_loss, torch.zeros_like(step_loss))
        for k, v in metrics.items():
            self.metric_sums[k] = self.metric_sums.get(k, 0) + torch.where(finite, v, torch.zeros_like(v))
        self.steps += 1

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.nan_total.zero_()
        self.metric_sums.clear()
        self.steps, self.start = 0, time.perf_counter()


class _Progress:
    """A tqdm bar on a terminal; plain log lines otherwise (CI logs, files)."""

    def __init__(self, total: int, initial: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
        self.last = initial

    def update(self, step: int, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        mfu = f"  mfu {row['mfu'] * 100:.1f}%" if "mfu" in row else ""
        text = f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s{mfu}"
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix_str(text, refresh=False)
        else:
            print(f"step {step:>6}  {text}", file=sys.stderr, flush=True)
        self.last = step

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
