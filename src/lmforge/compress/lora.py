"""LoRA (Hu et al. 2021): a frozen Linear plus a trainable low-rank update, B A x * scaling.

`apply_lora(model, target, r=8, alpha=16)` replaces every `nn.Linear` whose module name matches the
`target` regular expression (searched, as peft's `target_modules` string is, against the full
name: `attn\\..*|mlp\\..*` picks every block's attention and MLP projections) by a `LoRALinear`,
freezes every other parameter, and returns the names it replaced. Ranks can differ per layer
(`ranks`: {pattern: r}, the first matching pattern wins, as peft's `rank_pattern`); `rslora`
scales by alpha / sqrt(r) instead of alpha / r (Kalajdzievski 2023), which keeps the update's size
steady as r grows.

A = Kaiming-uniform (a = sqrt 5, nn.Linear's and peft's default), B = 0, so the model is unchanged
until training moves B. `merge_lora` folds the update into the weights (W + B A * scaling) and
puts plain Linears back: the merged model is the same function, to fp32 rounding, with no extra
cost per token; `unmerge` takes a merged-in-place update out again. `lora_state_dict` is the
adapter alone (what an adapter file holds).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from lmforge.errors import LmforgeError


class LoRALinear(nn.Module):
    """`base(x) + lora_B(lora_A(dropout(x))) * scaling`, the base Linear frozen."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, *, dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        if r < 1:
            raise LmforgeError(f"LoRA rank r={r}: use a rank of at least 1")
        self.base = base
        base.requires_grad_(False)
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight, W + B A * scaling: code that slices a Linear's weight itself (a fused
        qkv's query rows in cross-attention) sees the update too."""
        return self.base.weight if self.merged else self.base.weight + self.delta()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta(self) -> torch.Tensor:
        """The update B A * scaling, (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to the base weight in place (forward then skips the low-rank path)."""
        if not self.merged:
            self.base.weight += self.delta().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take a merged update out of the base weight again."""
        if self.merged:
            self.base.weight -= self.delta().to(self.base.weight.dtype)
            self.merged = False


def _rank(name: str, r: int, ranks: dict[str, int] | None) -> int:
    for pattern, rank in (ranks or {}).items():
        if re.search(pattern, name):
            return rank
    return r


def apply_lora(
    model: nn.Module, target: str, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, rslora: bool = False,
    ranks: dict[str, int] | None = None,
) -> list[str]:  # fmt: skip
    """Put LoRA on every Linear of `model` whose name matches `target`; freeze the rest. Returns
    the names of the modules that got an adapter (see the module docstring)."""
    try:
        pattern = re.compile(target)
    except re.error as e:
        raise LmforgeError(f"--peft.target {target!r} is not a regular expression ({e})") from None
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    chosen = [(name, m) for name, m in linears if pattern.search(name)]
    if not chosen:
        shown = sorted({re.sub(r"\.\d+\.", ".N.", name) for name, _ in linears})
        raise LmforgeError(
            f"--peft.target {target!r} matches none of the model's Linear modules, which are: {', '.join(shown)} "
            "(N: any block number)"
        )
    model.requires_grad_(False)
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(
            parent, child, LoRALinear(linear, _rank(name, r, ranks), alpha, dropout=dropout, rslora=rslora)
        )
    return [name for name, _ in chosen]


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its weight and put the plain Linear back; returns how many."""
    found = lora_modules(model)
    for name, module in found:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.base)
    return len(found)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors alone: `<module>.lora_A.weight`, `<module>.lora_B.weight`."""
    return {k: v.detach() for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


__all__ = ["LoRALinear", "apply_lora", "lora_modules", "lora_state_dict", "merge_lora"]
