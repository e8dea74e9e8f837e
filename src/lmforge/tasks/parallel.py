"""Parallel text: the (source, target) pairs that translation and summarisation learn from.

Three layouts, the ones parallel corpora ship in:

- two line-aligned files, given as `train.en,train.de` (or a pair of paths): line i of the first
  is the source of line i of the second, as Multi30k, WMT and Tatoeba come;
- TSV (.tsv, or .txt as Anki/Tatoeba exports come), one pair per line, `source<TAB>target` (a
  first line naming the two fields is a header);
- JSONL, one object per line with a source and a target field (`{"src": ..., "tgt": ...}` by
  default; DialogSum's `dialogue` / `summary` with `src_field` / `tgt_field`).

Plain-text files are decoded by `lmforge.text.corpus.read_lines`, so a binary, mis-encoded or
NUL-carrying file fails as it does everywhere else; JSONL is read as the task readers read it. Each side is stripped of surrounding whitespace. A pair with
an empty side teaches nothing and is skipped, and counted (`ParallelText.notes` says how many);
files whose line counts differ are refused, naming both files and both counts, since every pair
after the first missing line would be misaligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tasks.readers import iter_jsonl
from lmforge.text.corpus import read_lines


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str
    line: int  # 1-based line of the pair in its file(s), for messages


@dataclass
class ParallelText:
    """The pairs of one parallel corpus and what reading them skipped."""

    pairs: list[Pair]
    sources: tuple[str, ...]  # the file(s) read
    skipped_empty: int = 0
    layout: str = "aligned"  # aligned | tsv | jsonl

    def __len__(self) -> int:
        return len(self.pairs)

    def notes(self) -> list[str]:
        """One line for each thing reading left out, for the run's log."""
        if not self.skipped_empty:
            return []
        return [f"{', '.join(self.sources)}: skipped {self.skipped_empty} pair(s) with an empty side"]


def parallel_files(spec: str | Path | Sequence[str | Path]) -> tuple[Path, ...]:
    """`a.en,a.de` or a pair of paths -> two aligned files; one path -> a TSV or JSONL file."""
    parts = [p for p in str(spec).split(",") if p] if isinstance(spec, (str, Path)) else list(spec)
    if len(parts) not in (1, 2):
        raise LmforgeError(
            f"{spec!r}: give one TSV/JSONL file of pairs, or two line-aligned files as SRC,TGT "
            "(e.g. train.en,train.de)"
        )
    return tuple(Path(p) for p in parts)


def read_parallel(
    spec: str | Path | Sequence[str | Path],
    *,
    src_field: str = "src",
    tgt_field: str = "tgt",
    encoding: str = "utf-8",
) -> ParallelText:
    """Read a parallel corpus in any of the three layouts (see the module docstring)."""
    files = parallel_files(spec)
    for f in files:
        if not f.is_file():
            raise LmforgeError(f"{f}: parallel text file not found")
    if len(files) == 2:
        return _read_aligned(files[0], files[1], encoding)
    path = files[0]
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, src_field, tgt_field)
    if path.suffix.lower() in (".tsv", ".txt", ".tab"):
        return _read_tsv(path, src_field, tgt_field, encoding)
    raise LmforgeError(
        f"{path}: not a layout of parallel text (.tsv or .jsonl); give two line-aligned files as SRC,TGT"
    )


def _collect(rows: list[tuple[int, str, str]], sources: tuple[str, ...], layout: str) -> ParallelText:
    pairs, skipped = [], 0
    for line, src, tgt in rows:
        src, tgt = src.strip(), tgt.strip()
        if src and tgt:
            pairs.append(Pair(src, tgt, line))
        else:
            skipped += 1
    if not pairs:
        raise LmforgeError(f"{', '.join(sources)}: no pair with text on both sides")
    return ParallelText(pairs, sources, skipped, layout)


def _lines(path: Path, encoding: str) -> list[str]:
    return [line.removesuffix("\r") for line in read_lines(path, encoding=encoding)]


def _read_aligned(src_path: Path, tgt_path: Path, encoding: str) -> ParallelText:
    src, tgt = _lines(src_path, encoding), _lines(tgt_path, encoding)
    if len(src) != len(tgt):
        raise LmforgeError(
            f"{src_path} has {len(src):,} lines but {tgt_path} has {len(tgt):,}: line-aligned files must "
            "have one line per sentence on both sides (check for a missing or extra line)"
        )
    rows = [(i, s, t) for i, (s, t) in enumerate(zip(src, tgt), 1)]
    return _collect(rows, (str(src_path), str(tgt_path)), "aligned")


def _read_tsv(path: Path, src_field: str, tgt_field: str, encoding: str) -> ParallelText:
    rows = []
    for i, line in enumerate(_lines(path, encoding), 1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 2:
            raise LmforgeError(
                f"{path}:{i}: {len(cells)} tab-separated field(s); each line must be source<TAB>target"
            )
        if i == 1 and [c.strip().lower() for c in cells] == [src_field.lower(), tgt_field.lower()]:
            continue  # a header naming the two fields
        rows.append((i, cells[0], cells[1]))
    return _collect(rows, (str(path),), "tsv")


def _read_jsonl(path: Path, src_field: str, tgt_field: str) -> ParallelText:
    rows = []
    for i, record in iter_jsonl(path):
        if not isinstance(record, dict):
            raise LmforgeError(f"{path}:{i}: expected an object with {src_field!r} and {tgt_field!r}")
        for name, flag in ((src_field, "src_field"), (tgt_field, "tgt_field")):
            if not isinstance(record.get(name), str):
                keys = ", ".join(sorted(record)) or "none"
                raise LmforgeError(
                    f"{path}:{i}: no text field {name!r} (fields: {keys}); name the right one with --{flag}"
                )
        rows.append((i, record[src_field], record[tgt_field]))
    return _collect(rows, (str(path),), "jsonl")


__all__ = ["Pair", "ParallelText", "parallel_files", "read_parallel"]
