"""Checkpoints: safetensors + JSON, written atomically, verified on load.

Layout of a run directory's `train_state/`:

    train_state/
      latest.json                 {"step": N, "dir": "step_00000N"}; replaced atomically last
      step_00000N/
        model.safetensors         fp32 weights (tied duplicates stored once)
        optimizer.safetensors     every optimizer state tensor, keyed "state.<param>.<name>"
        rng.rank<R>.safetensors   each rank's torch (and CUDA) RNG state
        state.json                step, sampler position, best val loss, optimizer hyper-parameters,
                                  sha256 of each file above

A step directory is built under a temporary name and renamed into place, so a run killed while
saving leaves the previous checkpoint untouched; nothing is ever unpickled.
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.utils.io import atomic_path, atomic_write_json, read_json

ALIASES_KEY = "lmforge.aliases"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- model weights


def weights_for_save(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with each shared tensor stored once, plus {alias: stored_name} for the rest.

    safetensors refuses tensors that share memory (tied embeddings do), so the duplicate is
    dropped and recorded as an alias that `load_weights` fills back in.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().contiguous()
    return tensors, aliases


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    tensors, aliases = weights_for_save(model)
    meta = {"format": "pt", ALIASES_KEY: json.dumps(aliases), **(metadata or {})}
    with atomic_path(path) as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a missing or damaged file is a one-line error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LmforgeError(
            f"{path}: corrupt or truncated safetensors file ({str(e).splitlines()[0]}); "
            "restore it from a backup or resume from an earlier checkpoint in train_state/"
        ) from None


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights strictly; any key or shape disagreement names the key and both shapes."""
    tensors, meta = read_safetensors(path)
    aliases = json.loads(meta.get(ALIASES_KEY, "{}"))
    for alias, target in aliases.items():
        if target in tensors:
            tensors[alias] = tensors[target]
    load_state_checked(model, tensors, str(path))


def load_state_checked(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    for k, v in expected.items():
        if k not in tensors:
            raise LmforgeError(
                f"{where}: missing weight '{k}' {tuple(v.shape)}; this checkpoint was made with a different model config"
            )
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise LmforgeError(
                f"{where}: weight '{k}' has shape {tuple(tensors[k].shape)} but the model expects {tuple(v.shape)}; "
                "this checkpoint was made with a different model config (check config.yaml's model section)"
            )
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise LmforgeError(
            f"{where}: unexpected weight '{extra[0]}'; this checkpoint was made with a different model config"
        )
    model.load_state_dict(tensors, strict=True)


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
) -> Path:
    """Write train_state/step_N atomically; all ranks call it (each saves its own RNG)."""
    final = state_root / step_dir_name(step)
    tmp = state_root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if barrier:
        barrier()
    save_file(rng_for_save(device), str(tmp / f"rng.rank{rank}.safetensors"))
    if barrier:
        barrier()
    if rank == 0:
        tensors, aliases = weights_for_save(model)
        save_file(
            {k: v.cpu() for k, v in tensors.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases)},
        )
        opt_tensors, groups = optimizer_for_save(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        files = sorted(p.name for p in tmp.glob("*.safetensors"))
        meta = {
            **state,
            "step": step,
            "world_size": world_size,
            "optimizer_param_groups": groups,
            "sha256": {name: sha256_file(tmp / name) for name in files},
        }
        (tmp / "state.json").write_text(json.dumps(meta, indent=2))
        for p in tmp.iterdir():  # flush file contents before the rename makes them visible
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_json(state_root / "latest.json", {"step": step, "dir": final.name})
        prune_checkpoints(state_root, keep_last)
    if barrier:
        barrier()
    return final


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
    """Read state.json and check every file's sha256; raise LmforgeError naming the bad file."""
    meta = read_json(ckpt / "state.json")
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
    opt_tensors, _ = read_safetensors(ckpt / "optimizer.safetensors")
    optimizer_from_saved(optimizer, opt_tensors, meta["optimizer_param_groups"])
    rng_file = ckpt / f"rng.rank{rank}.safetensors"
    if rng_file.is_file():
        restore_rng(read_safetensors(rng_file)[0], device)
