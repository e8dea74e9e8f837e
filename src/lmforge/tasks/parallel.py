"""Parallel text: the (source, target) pairs that translation and summarisation learn from.

Three layouts, the ones parallel corpora ship in:

- two line-aligned files, given as `train.en,train.de` (or a pair of paths): line i of the first
  is the source of line i of the second, as Multi30k, WMT and Tatoeba come;
- TSV (.tsv, or .txt as Anki/Tatoeba exports come), one pair per line, `source<TAB>target` (a
  first line naming the two fields is a header);
- JSONL, one object per line with a source and a target field (`{"src": ..., "tgt": ...}` by
  default; DialogSum's `dialogue` / `summary` with `src_field` / `tgt_field`).

A JSONL field may be a string or a list of strings, as summarisation sets ship them (SciTLDR's
`source` is the abstract's sentences, its `target` several summaries). A source list is one
document: its sentences joined by single spaces. A target list is references: the first non-empty
one is the training target, all the non-empty ones are what the pair is scored against
(`Pair.references`). `ref_field` takes the references from another field than the target
(DialogSum's test set: `summary` to train on, `summaries` to score against); a record without it is
scored against its target alone, so one setting serves a training file that lacks the field.

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
    """One example: the source, the target trained on, and the references scored against.

    `refs` is empty when the target is the only reference (every layout but a JSONL target list or
    `ref_field`), so `Pair(src, tgt, line)` stays the whole story for single-reference text.
    """

    src: str
    tgt: str
    line: int  # 1-based line of the pair in its file(s), for messages
    refs: tuple[str, ...] = ()

    @property
    def references(self) -> tuple[str, ...]:
        """What a hypothesis for this pair is scored against: `refs`, or the target alone."""
        return self.refs or (self.tgt,)


@dataclass
class ParallelText:
    """The pairs of one parallel corpus and what reading them skipped."""

    pairs: list[Pair]
    sources: tuple[str, ...]  # the file(s) read
    skipped_empty: int = 0
    layout: str = "aligned"  # aligned | tsv | jsonl
    ref_field: str | None = None  # JSONL: the field the references came from
    without_refs: int = 0  # records with nothing in `ref_field`: scored against their target

    def __len__(self) -> int:
        return len(self.pairs)

    def notes(self) -> list[str]:
        """One line for each thing reading left out, for the run's log."""
        where = ", ".join(self.sources)
        notes = []
        if self.skipped_empty:
            notes.append(f"{where}: skipped {self.skipped_empty} pair(s) with an empty side")
        if self.without_refs:
            notes.append(
                f"{where}: {self.without_refs} record(s) have no references in {self.ref_field!r}; "
                "they are scored against their target alone"
            )
        return notes


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
    ref_field: str | None = None,
    encoding: str = "utf-8",
) -> ParallelText:
    """Read a parallel corpus in any of the three layouts (see the module docstring).

    `ref_field` is read from JSONL only: the other layouts have one target per pair, which is then
    the reference too.
    """
    files = parallel_files(spec)
    for f in files:
        if not f.is_file():
            raise LmforgeError(f"{f}: parallel text file not found")
    if len(files) == 2:
        return _read_aligned(files[0], files[1], encoding)
    path = files[0]
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, src_field, tgt_field, ref_field)
    if path.suffix.lower() in (".tsv", ".txt", ".tab"):
        return _read_tsv(path, src_field, tgt_field, encoding)
    raise LmforgeError(
        f"{path}: not a layout of parallel text (.tsv or .jsonl); give two line-aligned files as SRC,TGT"
    )


Row = tuple[int, str, str, tuple[str, ...]]  # line, source, target, references (() = the target)


def _collect(rows: list[Row], sources: tuple[str, ...], layout: str) -> ParallelText:
    pairs, skipped = [], 0
    for line, src, tgt, refs in rows:
        src, tgt = src.strip(), tgt.strip()
        refs = tuple(r.strip() for r in refs if r.strip())
        if src and tgt:
            pairs.append(Pair(src, tgt, line, () if refs == (tgt,) else refs))
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
    rows = [(i, s, t, ()) for i, (s, t) in enumerate(zip(src, tgt), 1)]
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
        rows.append((i, cells[0], cells[1], ()))
    return _collect(rows, (str(path),), "tsv")


def _read_jsonl(path: Path, src_field: str, tgt_field: str, ref_field: str | None) -> ParallelText:
    rows: list[Row] = []
    without_refs = 0
    for i, record in iter_jsonl(path):
        if not isinstance(record, dict):
            raise LmforgeError(f"{path}:{i}: expected an object with {src_field!r} and {tgt_field!r}")
        src = _texts(path, i, record, src_field, "src_field")
        tgt = _texts(path, i, record, tgt_field, "tgt_field")
        refs: list[str] = []
        if ref_field is not None and record.get(ref_field) is not None:  # null is as absent
            refs = _texts(path, i, record, ref_field, "ref_field")
        without_refs += ref_field is not None and not refs
        rows.append((i, " ".join(src), tgt[0] if tgt else "", tuple(refs or tgt)))
    text = _collect(rows, (str(path),), "jsonl")
    text.ref_field, text.without_refs = ref_field, without_refs
    return text


def _texts(path: Path, line: int, record: dict, name: str, flag: str) -> list[str]:
    """The non-empty texts of a field that holds a string or a list of strings, stripped.

    A list is what summarisation sets ship: a document's sentences, or several references.
    """
    value = record.get(name)
    if value is None:
        keys = ", ".join(sorted(record)) or "none"
        raise LmforgeError(
            f"{path}:{line}: no text field {name!r} (fields: {keys}); name the right one with --{flag}"
        )
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise LmforgeError(
            f"{path}:{line}: field {name!r} is {_kind(value)}, not a string or a list of strings; "
            f"fix the record or name another field with --{flag}"
        )
    return [x.strip() for x in items if x.strip()]


_JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "a list",
               type(None): "null"}  # fmt: skip


def _kind(value: object) -> str:
    """A bad JSON value's type as a message names it: 'a number', 'a list holding an object'."""
    if isinstance(value, list):
        odd = next(x for x in value if not isinstance(x, str))
        return f"a list holding {_JSON_KINDS[type(odd)]}"
    return _JSON_KINDS[type(value)]


__all__ = ["Pair", "ParallelText", "parallel_files", "read_parallel"]
