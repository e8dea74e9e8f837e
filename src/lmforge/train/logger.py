"""Where metrics go: metrics.jsonl (the record), TensorBoard events, and a loss-curve PNG.

metrics.jsonl holds one JSON object per logged step (`step`, `loss`, `lr`, `tokens_per_s`, ...)
and one per evaluation (`step`, `val_loss`, and the objective's `val_*` figures: `val_ppl` for
language modelling, `val_mlm_acc`, a task's `val_f1`, ...). On resume, rows past the checkpoint's
step are dropped first, so the file always describes the run that produced the weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lmforge.utils.io import atomic_path


class MetricsLogger:
    def __init__(self, run_dir: Path, *, tensorboard: bool = True, resume_step: int | None = None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self.plot_path = run_dir / "plots" / "loss.png"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh record
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the logger
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "events"), purge_step=resume_step)
            except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def log(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(("val/" if k.startswith("val_") else "train/") + k, v, step)

    def plot(self) -> Path | None:
        return plot_loss(read_metrics(self.path), self.plot_path)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
    return rows


def plot_loss(rows: list[dict[str, Any]], out: Path) -> Path | None:
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
