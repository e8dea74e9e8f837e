"""Checkpoint averaging: the mean of a run's last N saved weights, as a run of its own.

Averaging the weights of the last few checkpoints (Vaswani et al. averaged the last 5 or 20, and
fairseq's translation recipes the last 10) smooths the noise of the final steps of training and
usually gains translation quality at no training cost. The source run is only read: the average
goes to a new run directory holding the same run files (run.json, config.yaml, tokenizer.json,
labels.json, ...) and the averaged model.safetensors, so every command takes it like any run, and
`average.json` records which checkpoints went in, with their weights' digests.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.models.weights import read_safetensors, tensors_digest, write_safetensors
from lmforge.run import claim_output_folder, read_run
from lmforge.train.checkpoint import verify_checkpoint
from lmforge.utils.io import atomic_path, atomic_write_json

# Files of a run that describe its training, not its model: an average is not resumable.
_TRAINING_FILES = {"model.safetensors", "lock.json", "metrics.jsonl", "dev_report.json", "dev_report.txt"}


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("_", 1)[1])


def average_checkpoints(
    run_dir: str | Path, out: str | Path, *, last: int = 5, overwrite: bool = False
) -> dict[str, Any]:
    """Average the model weights of the `last` newest checkpoints of `run_dir` into run `out`.

    Each checkpoint is verified (its state and files' checksums) before it is read; the mean is
    taken in float64 and stored in each tensor's own dtype. Returns what `average.json` records.
    """
    info = read_run(run_dir)
    src = info.path
    if last < 1:
        raise LmforgeError(f"--last {last}: average at least 1 checkpoint")
    root = src / "train_state"
    ckpts = sorted((p for p in root.glob("step_*") if p.is_dir()), key=_step_of, reverse=True)
    if len(ckpts) < last:
        raise LmforgeError(
            f"{root}: {len(ckpts)} checkpoint(s) to average, --last {last} asked; lower --last, or train with "
            "a larger --train.keep_last (checkpoints kept) and --train.save_every cadence"
        )
    chosen = sorted(ckpts[:last], key=_step_of)
    out = claim_output_folder(out, overwrite=overwrite, what="--out")
    if out.resolve() == src.resolve():
        raise LmforgeError("--out is the run itself; write the average to a new folder")
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    digests: dict[str, str] = {}
    for ckpt in chosen:
        digests[ckpt.name] = verify_checkpoint(ckpt).get("sha256", {}).get("model.safetensors", "")
        tensors = read_safetensors(ckpt / "model.safetensors")
        if total and tensors.keys() != total.keys():
            raise LmforgeError(f"{ckpt}: its weights have other names than the first checkpoint's")
        for name, t in tensors.items():
            dtypes.setdefault(name, t.dtype)
            total[name] = total.get(name, 0) + t.double()
    mean = {name: (t / len(chosen)).to(dtypes[name]).contiguous() for name, t in total.items()}
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in _TRAINING_FILES:
            shutil.copyfile(f, out / f.name)
    with atomic_path(out / "model.safetensors") as tmp:
        write_safetensors(mean, tmp, metadata={"sha256": tensors_digest(mean)})
    record = {
        "source": str(src),
        "kind": info.kind,
        "steps": [_step_of(c) for c in chosen],
        "checkpoints_sha256": digests,
        "weights_sha256": tensors_digest(mean),
    }
    atomic_write_json(out / "average.json", record)
    return {"out": str(out), **record}


__all__ = ["average_checkpoints"]
