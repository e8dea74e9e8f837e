"""Locate the public datasets that live beside the project (never inside it).

Search order: $LMFORGE_SHARED_DATA, then a `shared/data` folder in the current directory or any
parent of it or of this package. Tests use `shared_data_path()` and skip when it returns None.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_root() -> Path | None:
    env = os.environ.get("LMFORGE_SHARED_DATA")
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for d in [start, *start.parents]:
            cand = d / "shared" / "data"
            if cand.is_dir():
                return cand
    return None


def shared_data_path(*parts: str) -> Path | None:
    """Path to a file/folder under shared/data, or None when absent."""
    root = shared_data_root()
    if root is None:
        return None
    p = root.joinpath(*parts)
    return p if p.exists() else None
