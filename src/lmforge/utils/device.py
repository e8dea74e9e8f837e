"""Device selection from a user's spec (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`).

Training, evaluation, inference and the CLI's `--device` all resolve the spec here, so `auto`
means the same everywhere and a spec that cannot work fails before any model is built.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError


def resolve_device(spec: str | torch.device, local_rank: int = 0) -> torch.device:
    """The torch device for `spec`; `auto` prefers CUDA, then MPS, then the CPU.

    A CUDA spec without an index takes `local_rank`, so each process launched by torchrun gets its own GPU.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise LmforgeError(f"device '{spec}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LmforgeError(f"device '{spec}' asked for CUDA but none is available; use cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev
