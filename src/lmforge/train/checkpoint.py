"""Checkpoints: safetensors + JSON, written atomically, verified on load.

Layout of a run directory's `train_state/`:

    train_state/
      latest.json                 {"step": N, "dir": "step_00000N"}; replaced atomically last
      step_00000N/
        model.safetensors         fp32 weights (lmforge.models.weights: tied duplicates stored once)
        optimizer.safetensors     every optimizer state tensor, keyed "state.<param>.<name>"
        rng.rank<R>.safetensors   each rank's torch (and CUDA) RNG state
        objective.rank<R>.safetensors  each rank's objective state, if it has one (e.g. an LSTM's
                                  hidden state carried across batches, lmforge.objectives.rnn)
        state.json                step, sampler position, best val loss, optimizer hyper-parameters,
                                  sha256 of each file above, and `state_sha256` of its own other fields

A step directory is built under a temporary name and renamed into place, so a run killed while
saving leaves the previous checkpoint untouched (a failed write, a full disk say, removes the
temporary directory it made); nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.weights import load_weights, read_safetensors, weights_for_save, write_safetensors
from lmforge.utils.io import atomic_write_json, read_json, sha256_file

# ---------------------------------------------------------------- optimizer


def optimizer_for_save(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {
        f"state.{pid}.{name}": value.detach().cpu().contiguous()
        for pid, st in sd["state"].items()
        for name, value in st.items()
        if isinstance(value, torch.Tensor)
    }
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def optimizer_from_saved(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    fixed = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    try:
        opt.load_state_dict({"state": state, "param_groups": fixed})
    except (ValueError, KeyError, RuntimeError) as e:
        raise LmforgeError(
            f"optimizer state does not fit this model ({e}); the checkpoint was made with a different config"
        ) from None


# ---------------------------------------------------------------- RNG


def rng_for_save(device: torch.device) -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["torch_cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)


# ---------------------------------------------------------------- step directories


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def write_checkpoint(
    state_root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    keep_last: int = 2,
    barrier=None,
    objective_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write train_state/step_N atomically; all ranks call it (each saves its own RNG and
    `objective_state`, the tensors the loss carries from step to step, if any)."""
    final = state_root / step_dir_name(step)
    tmp = state_root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if barrier:
        barrier()
    try:
        _write_rank_files(tmp, device, rank, objective_state)
        if barrier:
            barrier()
        if rank == 0:
            _write_main_files(tmp, step, model, optimizer, state, world_size)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write_json(state_root / "latest.json", {"step": step, "dir": final.name})
            prune_checkpoints(state_root, keep_last)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not also keep the half-written copy
        raise
    if barrier:
        barrier()
    return final


def _write_rank_files(
    tmp: Path, device: torch.device, rank: int, objective_state: dict[str, torch.Tensor] | None
) -> None:
    write_safetensors(rng_for_save(device), tmp / f"rng.rank{rank}.safetensors")
    if objective_state:
        tensors = {k: v.detach().cpu().contiguous() for k, v in objective_state.items()}
        write_safetensors(tensors, tmp / f"objective.rank{rank}.safetensors")


def _write_main_files(
    tmp: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    world_size: int,
) -> None:
    write_safetensors(
        {k: v.cpu().contiguous() for k, v in weights_for_save(model).items()},
        tmp / "model.safetensors",
        metadata={"format": "pt"},
    )
    opt_tensors, groups = optimizer_for_save(optimizer)
    write_safetensors(opt_tensors, tmp / "optimizer.safetensors")
    files = sorted(p.name for p in tmp.glob("*.safetensors"))
    meta = {
        **state,
        "step": step,
        "world_size": world_size,
        "optimizer_param_groups": groups,
        "sha256": {name: sha256_file(tmp / name) for name in files},
    }
    meta["state_sha256"] = state_digest(meta)
    (tmp / "state.json").write_text(json.dumps(meta, indent=2))
    for p in tmp.iterdir():  # flush file contents before the rename makes them visible
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def state_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of state.json's fields but its own (canonical JSON): one flipped digit of the step
    or of the sampler position would otherwise resume silently at the wrong place."""
    fields = {k: v for k, v in meta.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def prune_checkpoints(state_root: Path, keep_last: int) -> None:
    dirs = sorted(p for p in state_root.glob("step_*") if p.is_dir())
    for old in dirs[: max(0, len(dirs) - max(1, keep_last))]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(state_root: Path) -> list[Path]:
    """Step directories, newest first (the one named by latest.json leads)."""
    dirs = sorted((p for p in state_root.glob("step_*") if p.is_dir()), reverse=True)
    latest = state_root / "latest.json"
    if latest.is_file():
        try:
            name = json.loads(latest.read_text())["dir"]
            dirs.sort(key=lambda p: p.name != name)
        except (json.JSONDecodeError, KeyError):
            pass
    return dirs


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Read state.json and check its own digest and every file's sha256; raise LmforgeError naming
    the bad file. (Checkpoints written before state.json carried a digest are checked by file only.)"""
    meta = read_json(ckpt / "state.json")
    if not isinstance(meta, dict):
        raise LmforgeError(
            f"{ckpt / 'state.json'}: not a checkpoint state; resume from an earlier checkpoint"
        )
    if "state_sha256" in meta and meta["state_sha256"] != state_digest(meta):
        raise LmforgeError(
            f"{ckpt / 'state.json'}: does not match its checksum (edited or damaged); "
            "resume from an earlier checkpoint"
        )
    for name, digest in meta.get("sha256", {}).items():
        f = ckpt / name
        if not f.is_file():
            raise LmforgeError(f"{f}: missing checkpoint file; resume from an earlier checkpoint")
        if sha256_file(f) != digest:
            raise LmforgeError(
                f"{f}: checksum mismatch (corrupted or truncated); resume from an earlier checkpoint"
            )
    return meta


def find_resumable(state_root: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that verifies; damaged newer ones are reported and skipped, not deleted."""
    candidates = list_checkpoints(state_root)
    if not candidates:
        raise LmforgeError(
            f"{state_root}: no checkpoint to resume from; start the run without --resume first"
        )
    errors = []
    for ckpt in candidates:
        try:
            return ckpt, verify_checkpoint(ckpt)
        except LmforgeError as e:
            errors.append(str(e))
            warnings.warn(f"skipping damaged checkpoint: {e}", stacklevel=2)
    raise LmforgeError(f"no intact checkpoint in {state_root}: {errors[0]}")


def load_checkpoint(
    ckpt: Path,
    meta: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    rank: int = 0,
) -> None:
    load_weights(model, ckpt / "model.safetensors")
    opt_tensors = read_safetensors(ckpt / "optimizer.safetensors")
    optimizer_from_saved(optimizer, opt_tensors, meta["optimizer_param_groups"])
    rng_file = ckpt / f"rng.rank{rank}.safetensors"
    if rng_file.is_file():
        restore_rng(read_safetensors(rng_file), device)


def load_objective_state(ckpt: Path, *, device: torch.device, rank: int = 0) -> dict[str, torch.Tensor]:
    """This rank's objective state saved by `write_checkpoint` ({} when the checkpoint has none)."""
    f = ckpt / f"objective.rank{rank}.safetensors"
    if not f.is_file():
        return {}
    return {k: v.to(device) for k, v in read_safetensors(f).items()}
