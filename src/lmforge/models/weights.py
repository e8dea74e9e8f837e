"""Model weights in safetensors: the one way every part of lmforge saves and loads them.

Works for any nn.Module (the Transformer, and the baselines and heads to come):
- tensors that share storage (tied embeddings) are stored once, under their first name; loading
  fills the other names from the model's own ties, so no alias table is needed in the file;
- torch.compile and DDP wrappers are looked through, so keys never carry `_orig_mod.`/`module.`;
- the attention's projections load into either layout: a fused `qkv` (or cross-attention `kv`)
  is split into `q`, `k`, `v` for a model built with `fused_qkv=false`, and stacked back for a
  fused one, so a checkpoint does not depend on that switch;
- loading is strict and explains itself: the first missing, unexpected or mis-shaped key is named
  with both shapes, because a mismatch means the file belongs to another model config.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.utils.io import atomic_path


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def weights_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each shared storage kept once (safetensors refuses aliases)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for name, t in unwrap(model).state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = t.detach()
    return tensors


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order): what a weights
    file records of itself, so that one flipped bit is caught when the file is read."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """`safetensors.torch.save_file`, whose I/O failures (a full disk, a read-only folder) come
    back as the OSError they are, naming the file, rather than as a serialisation error."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from None


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the model's weights atomically (temp file + rename), with their digest in the header.

    The digest is the header's only metadata: safetensors writes metadata keys in no fixed order,
    and one key keeps the file's bytes the same for the same weights (resume tests compare them).
    """
    tensors = {k: v.cpu().contiguous() for k, v in weights_for_save(model).items()}
    with atomic_path(path) as tmp:
        write_safetensors(tensors, tmp, metadata={"sha256": tensors_digest(tensors)})


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing or damaged file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: file not found")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            expected = (f.metadata() or {}).get("sha256")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LmforgeError(
            f"{path}: corrupt or truncated safetensors file ({str(e).splitlines()[0]}); "
            "restore it from a backup or resume from an earlier checkpoint in train_state/"
        ) from None
    if expected is not None and tensors_digest(tensors) != expected:  # files of other tools have none
        raise LmforgeError(
            f"{path}: the weights do not match the checksum the file was written with (the file is "
            "damaged); restore it from a backup, or copy a checkpoint's train_state/step_*/model.safetensors"
        )
    return tensors


# Fused projections and the separate Linears whose rows they stack, in this order.
_FUSED = {"qkv": ("q", "k", "v"), "kv": ("k", "v")}


def fused_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """`weights_for_save(model)` in the fused layout whatever `fused_qkv` built: each self-attention's
    q, k, v stacked into `qkv`, each cross-attention's k, v into `kv` (what the exporters read)."""
    from lmforge.models.layers import Attention

    out = weights_for_save(model)
    for name, module in unwrap(model).named_modules():
        if not isinstance(module, Attention) or module.fused:
            continue
        fused, parts = ("kv", _FUSED["kv"]) if module.cross else ("qkv", _FUSED["qkv"])
        for suffix in ("weight", "bias"):
            names = [f"{name}.{p}.{suffix}" for p in parts]
            if all(n in out for n in names):
                out[f"{name}.{fused}.{suffix}"] = torch.cat([out.pop(n) for n in names])
    return out


def _split_name(name: str) -> tuple[str, str, str]:
    """ "blocks.0.attn.qkv.weight" -> ("blocks.0.attn", "qkv", "weight")."""
    parts = name.rsplit(".", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else ("", "", name)


def _match_layout(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`tensors` with each attention's projections in the layout (fused or not) of `expected`."""
    out = dict(tensors)
    for name in expected:
        if name in out:
            continue
        prefix, part, suffix = _split_name(name)
        if part in _FUSED:  # the model is fused, the file is not: stack
            names = [f"{prefix}.{p}.{suffix}" for p in _FUSED[part]]
            if all(n in out for n in names):
                out[name] = torch.cat([out.pop(n) for n in names])
            continue
        for fused, parts in _FUSED.items():  # the file is fused, the model is not: split
            source = f"{prefix}.{fused}.{suffix}"
            names = [f"{prefix}.{p}.{suffix}" for p in parts]
            if part in parts and source in out and all(n in expected for n in names):
                rows = [expected[n].size(0) for n in names]
                out.update(zip(names, out.pop(source).split(rows)))
                break
    return out


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load `tensors` (as `weights_for_save` makes them) into `model`, strictly."""
    model = unwrap(model)
    expected = weights_for_save(model)
    tensors = _match_layout(tensors, expected)
    for key, want in expected.items():
        if key not in tensors:
            raise LmforgeError(
                f"{where}: missing weight '{key}' {tuple(want.shape)}; "
                "this checkpoint was made with a different model config"
            )
        if tuple(tensors[key].shape) != tuple(want.shape):
            raise LmforgeError(
                f"{where}: weight '{key}' has shape {tuple(tensors[key].shape)} but the model expects "
                f"{tuple(want.shape)}; this checkpoint was made with a different model config"
            )
    # A tied name stored separately (say, an untied checkpoint's lm_head) would be dropped
    # silently by the tie, so any name `weights_for_save` does not store is an error.
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise LmforgeError(
            f"{where}: unexpected weight '{extra[0]}'; this checkpoint was made with a different model config"
        )
    # Every stored tensor is checked; the tied names not stored are filled through their ties.
    model.load_state_dict(tensors, strict=False)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a safetensors file written by `save_weights` into `model`, strictly."""
    load_tensors(model, read_safetensors(path), str(path))
