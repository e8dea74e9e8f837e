"""What every command prints: a human report, then with `--json` one JSON object as the last line
of stdout, which scripts read without parsing the report."""

from __future__ import annotations

import json
import os
from typing import Any


def emit(result: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    """Print `human` (when given) and, with `--json`, `result` as one JSON line after it.

    Under torchrun every rank returns the same result; only rank 0 prints it, so that the output is
    one report (and `--json`'s last line one JSON object) rather than the ranks' writes interleaved."""
    if os.environ.get("RANK", "0") != "0":
        return
    if human:
        print(human, flush=True)
    if as_json:
        print(json.dumps(result, ensure_ascii=False, default=str), flush=True)


def format_fields(d: dict[str, Any]) -> str:
    """`key  value` lines, keys aligned; large floats in scientific notation, ints with separators."""

    def show(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3e}" if abs(v) >= 1e6 else f"{v:.4f}"
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    width = max(len(k) for k in d)
    return "\n".join(f"  {k:<{width}}  {show(v)}" for k, v in d.items())
