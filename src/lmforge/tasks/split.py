"""Hold out part of a task's labelled file as a dev set (`lmforge split`, `lmforge.split`).

Public task data often comes as one labelled file: SQuAD's official dev set is the file most people
have, and many classification and NER sets ship a train file only. Fine-tuning wants a train file
and a dev file that share nothing, so the split is made on the unit that would otherwise leak:

- qa: SQuAD JSON, by article (`split_squad_by_article`), so no context is in both parts;
- classify: TSV/CSV/JSONL, by row, at random; a header row goes at the top of both parts;
- ner: CoNLL, by `-DOCSTART-` document when the file has several, else by sentence.

Rows, documents and sentences are copied byte for byte (the user's columns, spacing and line
endings), not parsed and written again; only SQuAD JSON is re-serialised, through `write_squad`, so
any SQuAD tool reads the parts. Which units go to dev depends only on the seed; each part is written
atomically, and existing parts are replaced only with `overwrite`.
"""

from __future__ import annotations

import csv
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.tasks.readers import read_squad, split_squad_by_article, write_squad
from lmforge.utils.io import atomic_write_text

# The tasks a file can be split for, with what each split keeps apart (the CLI's help).
SPLITS: dict[str, str] = {
    "qa": "SQuAD JSON, split by article so that no context is in both parts",
    "classify": "TSV/CSV/JSONL rows, split at random; a header row goes to both parts",
    "ner": "CoNLL, split by -DOCSTART- document where the file has several, else by sentence",
}

PARTS = ("train", "dev")
_CONLL_SUFFIXES = (".txt", ".conll", ".conllx", ".tsv", ".bio", ".iob", ".iob2", ".bioes")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass
class _Split:
    """A split made in memory: the unit it was made on, each part's counts and how to write it."""

    by: str  # article, row, document or sentence
    counts: dict[str, dict[str, int]]  # part -> unit -> how many
    writers: dict[str, Callable[[Path], object]]  # part -> writes that part to a path
    extra: dict[str, Any] = field(default_factory=dict)  # what else the result reports


def split_task_file(
    task: str,
    data: str | Path,
    out: str | Path,
    *,
    dev_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
    has_header: bool | None = None,
) -> dict[str, Any]:
    """Split `data` into `out/train<ext>` and `out/dev<ext>` for `task` (classify, ner or qa).

    `has_header` (classify, TSV/CSV): whether the first row is a header; None detects it (see
    `looks_like_header`). Returns the paths, the unit split on and each part's counts.
    """
    if task not in SPLITS:
        raise LmforgeError(f"split: unknown task '{task}'; use one of {', '.join(SPLITS)}")
    dev_fraction = _check_fraction(dev_fraction)
    data = Path(data)
    if not data.is_file():
        raise LmforgeError(f"{data}: file not found; give the labelled file to split as --data")
    if task == "qa":
        made = _split_qa(data, dev_fraction, seed)
    elif task == "classify":
        made = _split_classify(data, dev_fraction, seed, has_header)
    else:
        made = _split_ner(data, dev_fraction, seed)
    _check_parts(data, made)
    paths = output_paths(task, data, Path(out), overwrite=overwrite)
    for part in PARTS:
        made.writers[part](paths[part])
    return {
        "task": task, "data": str(data), "split_by": made.by, "dev_fraction": dev_fraction, "seed": seed,
        "train": str(paths["train"]), "dev": str(paths["dev"]),
        "train_counts": made.counts["train"], "dev_counts": made.counts["dev"], **made.extra,
    }  # fmt: skip


def _check_fraction(dev_fraction: Any) -> float:
    """`dev_fraction` as a float strictly between 0 and 1: either part empty is never a split."""
    try:
        value = float(dev_fraction)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(dev_fraction, bool) or not 0.0 < value < 1.0:
        raise LmforgeError(
            f"--dev_fraction {dev_fraction!r} is not between 0 and 1 (exclusive); use e.g. 0.1 for a tenth"
        )
    return value


def _check_parts(data: Path, made: _Split) -> None:
    """A part that holds no sentence (CoNLL documents without any) is as useless as no part."""
    for part in PARTS:
        for unit, n in made.counts[part].items():
            if n == 0:
                raise LmforgeError(
                    f"{data}: the {part} part would hold no {unit}; use another --seed or --dev_fraction"
                )


def output_paths(task: str, data: Path, out: Path, *, overwrite: bool) -> dict[str, Path]:
    """Where the parts go: `train` and `dev` with the input's extension (.json for SQuAD), refused
    when one exists (unless `overwrite`) or is the input itself, which would be lost."""
    if out.exists() and not out.is_dir():
        raise LmforgeError(f"--out {out} is a file; give a folder for the train and dev files")
    if task == "qa":
        suffix = ".json"
    elif task == "ner":
        suffix = data.suffix if data.suffix.lower() in _CONLL_SUFFIXES else ".txt"
    else:
        suffix = data.suffix
    paths = {part: out / f"{part}{suffix}" for part in PARTS}
    for path in paths.values():
        if path.resolve() == data.resolve():
            raise LmforgeError(f"--out {out}: {path} is the file being split; choose another --out")
        if path.exists() and not overwrite:
            raise LmforgeError(
                f"{path} already exists; choose another --out, or add --overwrite to replace it"
            )
    return paths


def dev_size(n: int, dev_fraction: float, unit: str, source: Path) -> int:
    """How many of `n` units go to dev: round(n * dev_fraction), halves up, as in
    `split_squad_by_article`; an empty part is an error naming a fraction that works instead."""
    if n < 2:
        raise LmforgeError(f"{source}: {n} {unit}(s) found; need at least 2 to split into train and dev")
    k = math.floor(n * dev_fraction + 0.5)
    if k == 0:
        least = math.ceil(50 / n) / 100
        raise LmforgeError(
            f"{source}: --dev_fraction {dev_fraction} of {n} {unit}s puts none in dev; use {least} or more"
        )
    if k == n:
        most = math.floor(100 * (n - 0.5) / n) / 100
        raise LmforgeError(
            f"{source}: --dev_fraction {dev_fraction} of {n} {unit}s leaves none for train; "
            f"use less than {most}"
        )
    return k


def pick_dev(n: int, k: int, seed: int) -> set[int]:
    """The indices of the `k` of `n` units that go to dev; the same for the same seed."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return set(order[:k])


def _parts_of(items: Sequence[Any], dev: set[int]) -> dict[str, list[Any]]:
    """`items` into train and dev (indices in `dev`), each keeping the file's order."""
    return {
        "train": [x for i, x in enumerate(items) if i not in dev],
        "dev": [x for i, x in enumerate(items) if i in dev],
    }


def _text_writer(text: str) -> Callable[[Path], object]:
    return lambda path: atomic_write_text(path, text)


# ----------------------------------------------------------------------------------------------------
# SQuAD: by article
# ----------------------------------------------------------------------------------------------------


def _split_qa(path: Path, dev_fraction: float, seed: int) -> _Split:
    """Questions stay with their article, so no context (and no answer) is in both parts."""
    examples = read_squad(path)
    dev_size(len({ex.title for ex in examples}), dev_fraction, "article", path)
    train, dev = split_squad_by_article(examples, dev_fraction, seed)
    parts = {"train": train, "dev": dev}
    counts = {
        part: {"articles": len({ex.title for ex in exs}), "questions": len(exs)}
        for part, exs in parts.items()
    }
    return _Split("article", counts, {part: partial(write_squad, exs) for part, exs in parts.items()})


# ----------------------------------------------------------------------------------------------------
# Classification: by row
# ----------------------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    """The file's lines with their own endings (\\n, \\r\\n or \\r, as the readers split them)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return list(f)
    except UnicodeDecodeError as e:
        raise LmforgeError(
            f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8 and split again"
        ) from e


def _line_ending(lines: Sequence[str]) -> str:
    """The ending the file uses, for the few lines written that the file did not end itself."""
    return "\r\n" if lines and lines[0].endswith("\r\n") else "\n"


def _ended(line: str, eol: str) -> str:
    return line if line.endswith(("\n", "\r")) else line + eol


def _split_classify(path: Path, dev_fraction: float, seed: int, has_header: bool | None) -> _Split:
    """Rows picked at random; the header (TSV/CSV) is written at the top of both parts."""
    if has_header and path.suffix.lower() in (".jsonl", ".json"):
        raise LmforgeError(f"{path}: a JSONL file has no header row; leave has_header unset")
    lines = _read_lines(path)
    records, rows = _classification_records(path, lines)
    header: str | None = None
    if rows and (looks_like_header(rows) if has_header is None else has_header):
        header, records = records[0], records[1:]
    if not records:
        raise LmforgeError(f"{path}: no rows to split")
    dev = pick_dev(len(records), dev_size(len(records), dev_fraction, "row", path), seed)
    eol = _line_ending(lines)
    head = [_ended(header, eol)] if header is not None else []
    parts = _parts_of(records, dev)
    counts = {part: {"rows": len(recs)} for part, recs in parts.items()}
    writers = {
        part: _text_writer("".join(head + [_ended(r, eol) for r in recs])) for part, recs in parts.items()
    }
    return _Split("row", counts, writers, {"header": header is not None})


def _classification_records(path: Path, lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """The file's records (raw text; blank ones left out) and, for TSV/CSV, each one's cells.

    A TSV record is one line (tabs only, quotes are text, as the reader takes them); a CSV record
    can span lines inside quotes, so the lines are grouped by what `csv` reads as one row.
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return [ln for ln in lines if ln.strip()], []
    if suffix == ".tsv":
        kept = [ln for ln in lines if ln.strip()]
        return kept, [ln.rstrip("\r\n").split("\t") for ln in kept]
    if suffix != ".csv":
        raise LmforgeError(
            f"{path}: cannot tell the rows of a '{suffix}' file; rename it to .tsv (tab-separated), "
            ".csv (comma-separated) or .jsonl (one JSON object per line)"
        )
    records: list[str] = []
    rows: list[list[str]] = []
    reader = csv.reader(iter(lines))
    done = 0
    try:
        for row in reader:
            record, done = "".join(lines[done : reader.line_num]), reader.line_num
            if any(cell.strip() for cell in row):
                records.append(record)
                rows.append(row)
    except csv.Error as e:
        raise LmforgeError(f"{path}:{reader.line_num}: cannot parse as CSV ({e})") from e
    return records, rows


def looks_like_header(rows: Sequence[Sequence[str]]) -> bool:
    """Whether the first row of a TSV/CSV file is a header, without knowing its columns.

    Rule: no cell of the first row is a number, and the row either names a column that fine-tuning
    finds by name (sentence, text, label, ...), or, in a column of labels (its values repeat: at most
    half of them distinct), holds a value that no later row has. Tiny files can fool any guess;
    `has_header` says it outright.
    """
    from lmforge.tasks.classify import LABEL_NAMES, PAIR_NAMES, TEXT_NAMES

    if len(rows) < 2:
        return False
    first = [cell.strip() for cell in rows[0]]
    if any(_NUMBER.fullmatch(cell) for cell in first):
        return False
    if any(cell.lower() in (*TEXT_NAMES, *PAIR_NAMES, *LABEL_NAMES) for cell in first):
        return True
    for i, name in enumerate(first):
        values = [row[i].strip() for row in rows[1:] if i < len(row)]
        if name and values and name not in values and 2 * len(set(values)) <= len(values):
            return True
    return False


# ----------------------------------------------------------------------------------------------------
# CoNLL: by document, else by sentence
# ----------------------------------------------------------------------------------------------------


def _is_docstart(line: str) -> bool:
    return line.rstrip("\r\n").strip(" \t").startswith("-DOCSTART-")


def _is_blank(line: str) -> bool:
    return not line.rstrip("\r\n").strip(" \t")  # as read_conll: ASCII spaces only


def _sentences(lines: Sequence[str]) -> list[list[str]]:
    """The sentences of CoNLL lines: runs of token lines, ended by blank or `-DOCSTART-` lines."""
    out: list[list[str]] = []
    cur: list[str] = []
    for line in lines:
        if _is_blank(line) or _is_docstart(line):
            if cur:
                out.append(cur)
                cur = []
        else:
            cur.append(line)
    return out + ([cur] if cur else [])


def _documents(lines: Sequence[str]) -> list[list[str]]:
    """The documents: each from its `-DOCSTART-` line to the next; sentences before the first
    `-DOCSTART-` make a document of their own."""
    docs: list[list[str]] = [[]]
    for line in lines:
        if _is_docstart(line):
            docs.append([])
        docs[-1].append(line)
    return docs if _sentences(docs[0]) else docs[1:]


def _split_ner(path: Path, dev_fraction: float, seed: int) -> _Split:
    """By document when the file has two or more, so no document is cut in two; else by sentence."""
    lines = _read_lines(path)
    docs = _documents(lines)
    if sum(_is_docstart(doc[0]) for doc in docs) >= 2:
        return _split_documents(path, docs, _line_ending(lines), dev_fraction, seed)
    return _split_sentences(path, lines, dev_fraction, seed)


def _split_documents(path: Path, docs: list[list[str]], eol: str, dev_fraction: float, seed: int) -> _Split:
    """Whole documents, each with its `-DOCSTART-` line, blank lines and sentences as they are."""
    dev = pick_dev(len(docs), dev_size(len(docs), dev_fraction, "document", path), seed)
    parts = _parts_of(docs, dev)
    counts = {
        part: {"documents": len(ds), "sentences": sum(len(_sentences(d)) for d in ds)}
        for part, ds in parts.items()
    }
    writers = {
        part: _text_writer("".join(_ended(line, eol) for d in ds for line in d)) for part, ds in parts.items()
    }
    return _Split("document", counts, writers)


def _split_sentences(path: Path, lines: list[str], dev_fraction: float, seed: int) -> _Split:
    """Sentences, one blank line after each; a single `-DOCSTART-` line (a file that is one
    document) is kept at the top of both parts."""
    sentences = _sentences(lines)
    if not sentences:
        raise LmforgeError(f"{path}: no sentences found (token lines, separated by blank lines)")
    dev = pick_dev(len(sentences), dev_size(len(sentences), dev_fraction, "sentence", path), seed)
    eol = _line_ending(lines)
    docstart = [line for line in lines if _is_docstart(line)]
    head = _ended(docstart[0], eol) + eol if docstart else ""
    parts = _parts_of(sentences, dev)
    counts = {part: {"sentences": len(ss)} for part, ss in parts.items()}
    writers = {
        part: _text_writer(head + "".join("".join(_ended(ln, eol) for ln in s) + eol for s in ss))
        for part, ss in parts.items()
    }
    return _Split("sentence", counts, writers)
