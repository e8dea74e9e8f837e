"""Flags that several commands take, each declared once, so its name, default and help are the same
in every command that has it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lmforge.config import add_dataclass_flags, flat_fields, from_dict, namespace_overrides

# `new(name, help)` adds a command to the main parser and returns its parser.
NewCommand = Callable[[str, str], argparse.ArgumentParser]


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print the results as one JSON object on the last line"
    )


def add_overwrite_flag(p: argparse.ArgumentParser, what: str, *, file: bool = False) -> None:
    held = "exists" if file else "holds files"
    p.add_argument("--overwrite", action="store_true", help=f"write {what} even when it already {held}")


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")


def add_batch_size_flag(p: argparse.ArgumentParser, default: int, what: str) -> None:
    p.add_argument(
        "--batch_size", type=int, default=default, help=f"{what} per forward pass (default: {default})"
    )


def add_stride_flag(p: argparse.ArgumentParser) -> None:
    """`--stride`, passed on only when given: only causal LMs are scored in windows."""
    p.add_argument(
        "--stride", type=int, default=argparse.SUPPRESS,
        help="sliding-window stride of a causal LM (default: the model's context)",
    )  # fmt: skip


def add_read_flags(p: argparse.ArgumentParser, shown_defaults: dict[str, str] | None = None) -> None:
    """`--txt_unit`, `--text_field`, `--encoding`, as PrepConfig declares them for `prepare`;
    `shown_defaults` names the defaults of a command whose function reads differently by default."""
    from lmforge.data.prep import READ_FIELDS, PrepConfig

    skip = tuple(n for n in flat_fields(PrepConfig) if n not in READ_FIELDS)
    add_dataclass_flags(p, PrepConfig, skip=skip, shown_defaults=shown_defaults)


def read_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The reading flags given on the command line, checked as PrepConfig's fields; the ones not
    given are left out, so the called function's defaults (as `--help` shows them) apply."""
    from lmforge.data.prep import PrepConfig

    given = namespace_overrides(ns, PrepConfig)
    prep = from_dict(PrepConfig, given)
    return {name: getattr(prep, name) for name in given}


def given(ns: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags among `names` that were given (those declared with `default=argparse.SUPPRESS`)."""
    return {name: getattr(ns, name) for name in names if hasattr(ns, name)}
