"""Readers for fine-tuning task files: text classification, CoNLL token tagging and SQuAD v1.1.

Every reader returns plain dataclasses that remember where each example came from (its line, or its
question id), so a later error about an example can point back at the file. Malformed input raises a
one-line `LmforgeError` naming the file and line; repairs that are safe (broken BIO tags, SQuAD answer
offsets that are off by a few characters) are made, counted on the examples, and logged once per file.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

Column = int | str

# ----------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassificationExample:
    """One labelled text (or text pair). `label` is always a string, even for numeric labels."""

    text: str
    label: str
    text_pair: str | None = None
    line: int = 0  # 1-based line in the source file where the record ends


_DELIMITERS = {".tsv": "\t", ".csv": ",", ".jsonl": None, ".json": None}


def _column_index(col: Column) -> int | None:
    """An int, or a string of digits, is a 0-based column index; anything else is a header name."""
    if isinstance(col, int):
        return col
    return int(col) if col.isdigit() else None


def _iter_delimited(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line, row). TSV is read without quoting (GLUE-style: quotes are text); CSV with it."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        try:
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    yield reader.line_num, row
        except csv.Error as e:
            raise LmforgeError(f"{path}:{reader.line_num}: cannot parse as delimited text ({e})") from e


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict | list]]:
    """(line number, record) of each non-blank line of a JSONL file (task files and parallel text)."""
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LmforgeError(f"{path}:{i}: invalid JSON ({e.msg})") from e
                if not isinstance(obj, dict | list):
                    raise LmforgeError(f"{path}:{i}: expected a JSON object or array per line")
                yield i, obj
    except UnicodeDecodeError as e:
        raise LmforgeError(
            f"{path}: not UTF-8 (byte {e.start}); JSON Lines files are UTF-8, save it so"
        ) from None


def _label_of(row: list[str], idx: int) -> str | None:
    return row[idx].strip() if idx < len(row) else None


def _detect_header(rows: list[tuple[int, list[str]]], label_idx: int) -> bool:
    """Headerless-or-not guess for files addressed by column index only.

    Rule: the first row is a header when its label cell is not an integer and that value never occurs
    as a label in any later row (e.g. `label` in SST-2). A real first example's label almost always
    reappears in a file of any size; pass `has_header` explicitly for tiny files with unique labels.
    """
    if not rows:
        return False
    first = _label_of(rows[0][1], label_idx)
    if first is None or re.fullmatch(r"[+-]?\d+", first):
        return False
    return all(_label_of(r, label_idx) != first for _, r in rows[1:])


def read_classification(
    path: str | Path,
    *,
    text_column: Column,
    label_column: Column,
    text_pair_column: Column | None = None,
    delimiter: str | None = None,
    has_header: bool | None = None,
) -> list[ClassificationExample]:
    """Read a TSV/CSV/JSONL classification file.

    Columns are header names or 0-based indices (int, or a string of digits). For delimited files
    the delimiter comes from the extension (`.tsv` tab, read without quoting; `.csv` comma, with
    standard CSV quoting) unless `delimiter` is given. `has_header=None` means: a header is required
    when any column is given by name; with indices only, it is auto-detected (see `_detect_header`).
    JSONL lines are objects (columns are keys) or arrays (columns are indices).

    Empty texts and empty labels are errors naming the file and line, not silently skipped: an empty
    example usually means a wrong column or a broken file, and dropping rows would shift counts unseen.
    """
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: classification file not found")
    suffix = path.suffix.lower()
    columns: dict[str, Column] = {"text": text_column, "label": label_column}
    if text_pair_column is not None:
        columns["text_pair"] = text_pair_column

    if delimiter is None and suffix in (".jsonl", ".json"):
        return _read_classification_jsonl(path, columns)
    if delimiter is None:
        if suffix not in _DELIMITERS:
            raise LmforgeError(
                f"{path}: cannot tell the columns of a '{suffix}' file; rename it to .tsv (tab-separated), "
                ".csv (comma-separated) or .jsonl (one JSON object per line)"
            )
        delimiter = _DELIMITERS[suffix]
    assert delimiter is not None
    rows = list(_iter_delimited(path, delimiter))
    if not rows:
        raise LmforgeError(f"{path}: file has no rows")

    indices, rows = _column_indices(path, rows, columns, has_header)
    out: list[ClassificationExample] = []
    for line, row in rows:
        cells = {}
        for role, idx in indices.items():
            if idx >= len(row):
                raise LmforgeError(
                    f"{path}:{line}: column {idx} ({role}) missing; the row has {len(row)} columns "
                    f"(available: 0..{len(row) - 1})"
                )
            cells[role] = row[idx]
        out.append(_make_example(path, line, cells))
    return out


def _column_indices(
    path: Path, rows: list[tuple[int, list[str]]], columns: dict[str, Column], has_header: bool | None
) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """The row index of each role's column, and the data rows (the header, if any, dropped).

    `has_header=None` decides: a header when any column is a name, else `_detect_header`.
    """
    by_name = any(_column_index(c) is None for c in columns.values())
    if has_header is None:
        if by_name:
            has_header = True
        else:
            label_idx = _column_index(columns["label"])
            assert label_idx is not None
            has_header = _detect_header(rows, label_idx)

    indices: dict[str, int] = {}
    if not has_header:
        for role, col in columns.items():
            idx = _column_index(col)
            if idx is None:
                raise LmforgeError(
                    f"{path}: column '{col}' ({role}) is a name but has_header=False; use a 0-based index"
                )
            indices[role] = idx
        return indices, rows
    header = [h.strip() for h in rows[0][1]]
    for role, col in columns.items():
        idx = _column_index(col)
        if idx is None:
            if col not in header:
                raise LmforgeError(
                    f"{path}: column '{col}' ({role}) not in the header; available: {', '.join(header)}"
                )
            idx = header.index(str(col))
        elif idx >= len(header):
            raise LmforgeError(
                f"{path}: column {idx} ({role}) out of range; available: 0..{len(header) - 1} "
                f"({', '.join(header)})"
            )
        indices[role] = idx
    return indices, rows[1:]


def _read_classification_jsonl(path: Path, columns: dict[str, Column]) -> list[ClassificationExample]:
    out: list[ClassificationExample] = []
    for line, obj in iter_jsonl(path):
        cells: dict[str, str] = {}
        for role, col in columns.items():
            if isinstance(obj, dict):
                key = str(col)
                if key not in obj:
                    raise LmforgeError(
                        f"{path}:{line}: column '{key}' ({role}) missing; available: {', '.join(map(str, obj))}"
                    )
                value = obj[key]
            else:
                idx = _column_index(col)
                if idx is None or idx >= len(obj):
                    raise LmforgeError(
                        f"{path}:{line}: column {col!r} ({role}) missing; the array has {len(obj)} items"
                    )
                value = obj[idx]
            if value is None or isinstance(value, dict | list):
                raise LmforgeError(f"{path}:{line}: column {col!r} ({role}) is not a string or number")
            cells[role] = str(value)
        out.append(_make_example(path, line, cells))
    return out


def _make_example(path: Path, line: int, cells: dict[str, str]) -> ClassificationExample:
    for role in ("text", "text_pair", "label"):
        if role in cells and not cells[role].strip():
            raise LmforgeError(f"{path}:{line}: empty {role}")
    return ClassificationExample(
        text=cells["text"].strip(),
        label=cells["label"].strip(),
        text_pair=cells["text_pair"].strip() if "text_pair" in cells else None,
        line=line,
    )


@dataclass
class LabelMap:
    """Label names <-> contiguous ids, fixed from the training data and saved beside the model.

    The order is stable across runs: numeric order when every label is an integer (so "0", "1", "2"
    keep their usual ids), otherwise sorted names.
    """

    names: list[str]

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise LmforgeError(f"label map has duplicate names: {self.names}")
        self._ids = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> LabelMap:
        uniq = {str(lab) for lab in labels}
        if not uniq:
            raise LmforgeError("cannot build a label map from no labels")
        if all(re.fullmatch(r"[+-]?\d+", u) for u in uniq):
            return cls(sorted(uniq, key=int))
        return cls(sorted(uniq))

    @classmethod
    def from_examples(cls, examples: Iterable[ClassificationExample]) -> LabelMap:
        return cls.from_labels(ex.label for ex in examples)

    def __len__(self) -> int:
        return len(self.names)

    def id(self, label: str, *, source: str | Path | None = None, line: int | None = None) -> int:
        """Id of `label`; an unseen label (e.g. in dev but not train) is an error naming where it was."""
        try:
            return self._ids[label]
        except KeyError:
            where = f"{source}:{line}: " if source is not None and line is not None else ""
            where = where or (f"{source}: " if source is not None else "")
            raise LmforgeError(
                f"{where}label '{label}' is not in the label map (known: {', '.join(self.names)})"
            ) from None

    def name(self, idx: int) -> str:
        return self.names[idx]

    def encode(
        self, examples: Sequence[ClassificationExample], source: str | Path | None = None
    ) -> list[int]:
        return [self.id(ex.label, source=source, line=ex.line) for ex in examples]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps({"labels": self.names}, ensure_ascii=False, indent=2) + "\n", "utf-8"
        )

    @classmethod
    def load(cls, path: str | Path) -> LabelMap:
        try:
            data = json.loads(Path(path).read_text("utf-8"))
            names = data["labels"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise LmforgeError(f"{path}: not a label map JSON with a 'labels' list ({e})") from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise LmforgeError(f"{path}: 'labels' must be a list of strings")
        return cls(names)


# ----------------------------------------------------------------------------------------------------
# CoNLL token tagging
# ----------------------------------------------------------------------------------------------------

SCHEMES = ("iob1", "iob2", "bioes")
_SCHEME_ALIASES = {
    "bio": "iob2",
    "iob": "iob2",
    "iobes": "bioes",
    "iob1": "iob1",
    "iob2": "iob2",
    "bioes": "bioes",
}


@dataclass
class TokenExample:
    """One sentence: tokens and their IOB2 tags (after any conversion and repair)."""

    tokens: list[str]
    tags: list[str]
    line: int = 0  # 1-based line of the sentence's first token
    repaired: int = 0  # tags changed by `repair_iob2` in this sentence
    columns: list[list[str]] = field(default_factory=list, repr=False)  # all columns, per token


def _split_tag(tag: str) -> tuple[str, str | None]:
    """("B", "PER") for "B-PER", ("O", None) for "O"; raises ValueError for anything else."""
    if tag == "O":
        return "O", None
    prefix, sep, typ = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not typ:
        raise ValueError(tag)
    return prefix, typ


def repair_iob2(tags: Sequence[str]) -> tuple[list[str], int]:
    """Make tags valid IOB2: an `I-X` that does not continue an `X` chunk becomes `B-X`.

    Returns the new tags and how many were changed. This is also exactly the IOB1 -> IOB2 conversion,
    because IOB1 starts chunks with `I-` and only uses `B-` between two adjacent same-type chunks.
    """
    out: list[str] = []
    changed = 0
    prev_type: str | None = None
    for tag in tags:
        prefix, typ = _split_tag(tag)
        if prefix == "I" and typ != prev_type:
            tag = f"B-{typ}"
            changed += 1
        out.append(tag)
        prev_type = typ
    return out, changed


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """Convert one sentence's tags from `scheme` (iob1, iob2/bio, bioes/iobes) to IOB2.

    For iob2 input the tags are returned unchanged (use `repair_iob2` to fix broken ones).
    """
    scheme = _normalize_scheme(scheme)
    if scheme == "iob2":
        return list(tags)
    if scheme == "iob1":
        return repair_iob2(tags)[0]
    out = []
    for tag in tags:
        prefix, typ = _split_tag(tag)
        out.append({"S": f"B-{typ}", "E": f"I-{typ}"}.get(prefix, tag))
    return out


def _normalize_scheme(scheme: str) -> str:
    try:
        return _SCHEME_ALIASES[scheme.lower()]
    except KeyError:
        raise LmforgeError(f"unknown tag scheme '{scheme}'; use auto, iob1, iob2 (bio) or bioes") from None


def detect_scheme(sentences: Iterable[Sequence[str]]) -> str:
    """Guess the tag scheme of a corpus.

    bioes when any `E-`/`S-` tag occurs; iob1 when some chunk starts with `I-` and every `B-X` directly
    follows an `X` tag (the only place IOB1 uses `B-`); otherwise iob2.
    """
    i_starts = 0
    b_after_same = b_total = 0
    for tags in sentences:
        prev_type: str | None = None
        for tag in tags:
            prefix, typ = _split_tag(tag)
            if prefix in ("E", "S"):
                return "bioes"
            if prefix == "I" and typ != prev_type:
                i_starts += 1
            if prefix == "B":
                b_total += 1
                b_after_same += typ == prev_type
            prev_type = typ
    if i_starts and b_after_same == b_total:
        return "iob1"
    return "iob2"


_FIELD_SEP = re.compile(r"[ \t]+")  # ASCII only: a full-width space can be a token in Chinese data


def read_conll(
    path: str | Path, *, token_column: int = 0, tag_column: int = -1, scheme: str = "auto"
) -> list[TokenExample]:
    """Read a CoNLL column file into sentences with IOB2 tags.

    One token per line, columns separated by spaces or tabs; blank lines end sentences; `-DOCSTART-`
    lines are skipped. Every token line must have as many columns as the first one (error with
    file:line otherwise). Tags in `scheme` (auto-detected by default) are converted to IOB2, then
    `repair_iob2` fixes tags that break IOB2; the per-sentence count is in `TokenExample.repaired`
    and the total is logged as a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: CoNLL file not found")
    raw: list[tuple[int, list[list[str]]]] = []
    n_cols: int | None = None
    cur: list[list[str]] = []
    start = 0
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            text = line.rstrip("\r\n").strip(" \t")
            if not text or text.startswith("-DOCSTART-"):
                if cur:
                    raw.append((start, cur))
                    cur = []
                continue
            cols = _FIELD_SEP.split(text)
            if n_cols is None:
                n_cols = len(cols)
                for name, c in (("token", token_column), ("tag", tag_column)):
                    if not -n_cols <= c < n_cols:
                        raise LmforgeError(
                            f"{path}:{i}: {name} column {c} out of range; lines have {n_cols} columns"
                        )
                if n_cols < 2:
                    raise LmforgeError(f"{path}:{i}: expected at least 2 columns (token and tag), got 1")
            elif len(cols) != n_cols:
                raise LmforgeError(
                    f"{path}:{i}: expected {n_cols} columns like the first line, got {len(cols)}"
                )
            if not cur:
                start = i
            cur.append(cols)
    if cur:
        raw.append((start, cur))
    if not raw:
        raise LmforgeError(f"{path}: no sentences found")

    tag_sents = []
    for start, rows in raw:
        tags = [r[tag_column] for r in rows]
        for k, tag in enumerate(tags):
            try:
                _split_tag(tag)
            except ValueError:
                raise LmforgeError(
                    f"{path}:{start + k}: tag '{tag}' is not O or B-/I-/E-/S- followed by a type"
                ) from None
        tag_sents.append(tags)

    resolved = detect_scheme(tag_sents) if scheme == "auto" else _normalize_scheme(scheme)
    out: list[TokenExample] = []
    total = 0
    for (start, rows), tags in zip(raw, tag_sents):
        if resolved != "bioes" and any(t[0] in "ES" for t in tags):
            k = next(k for k, t in enumerate(tags) if t[0] in "ES")
            raise LmforgeError(f"{path}:{start + k}: tag '{tags[k]}' is not valid in scheme {resolved}")
        fixed, n = repair_iob2(to_iob2(tags, resolved))
        total += n
        out.append(TokenExample([r[token_column] for r in rows], fixed, line=start, repaired=n, columns=rows))
    if total:
        log.warning(
            "%s: repaired %d tag(s) that broke IOB2 (I-X not continuing an X chunk -> B-X)", path, total
        )
    return out


# ----------------------------------------------------------------------------------------------------
# SQuAD v1.1
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset into the context


@dataclass
class QAExample:
    """One question over a context, with its gold answers (offsets checked against the context)."""

    id: str
    title: str
    context: str
    question: str
    answers: list[Answer]
    repaired: int = 0  # answers whose offset was moved to where the text actually is


MAX_ANSWER_SHIFT = 64  # how far (in characters) a wrong answer_start may be from the real text


def _repair_offset(context: str, text: str, start: int) -> int | None:
    """Offset of the occurrence of `text` nearest to `start`, within MAX_ANSWER_SHIFT; else None."""
    lo = max(0, start - MAX_ANSWER_SHIFT)
    hi = min(len(context), start + len(text) + MAX_ANSWER_SHIFT)
    best: int | None = None
    pos = context.find(text, lo, hi)
    while pos != -1:
        if best is None or abs(pos - start) < abs(best - start):
            best = pos
        pos = context.find(text, pos + 1, hi)
    return best


def read_squad(path: str | Path) -> list[QAExample]:
    """Read a SQuAD v1.1 JSON file (`{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}`).

    Each answer's `answer_start` must point at its text in the context. When it does not but the text
    occurs within MAX_ANSWER_SHIFT characters, the offset is moved to the nearest occurrence (counted
    in `QAExample.repaired`, total logged); otherwise it is an error naming the question id.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path}: SQuAD file not found") from None
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from e
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise LmforgeError(f"{path}: not SQuAD JSON (expected a top-level 'data' list)")
    out: list[QAExample] = []
    seen: set[str] = set()
    total = 0
    try:
        for article in data["data"]:
            title = str(article.get("title", ""))
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    qid = str(qa["id"])
                    if qid in seen:
                        raise LmforgeError(f"{path}: duplicate question id {qid}")
                    seen.add(qid)
                    answers, n = _check_answers(path, qid, context, qa.get("answers", []))
                    total += n
                    out.append(QAExample(qid, title, context, qa["question"], answers, repaired=n))
    except (KeyError, TypeError, AttributeError) as e:
        raise LmforgeError(f"{path}: malformed SQuAD structure (missing or wrong field: {e})") from e
    if total:
        log.warning("%s: repaired %d answer offset(s) that did not match the context", path, total)
    return out


def _check_answers(path: Path, qid: str, context: str, raw: list[dict]) -> tuple[list[Answer], int]:
    answers: list[Answer] = []
    repaired = 0
    for a in raw:
        text, start = a["text"], int(a["answer_start"])
        if not text.strip():
            raise LmforgeError(f"{path}: question {qid}: empty answer text")
        if context[start : start + len(text)] != text:
            fixed = _repair_offset(context, text, start)
            if fixed is None:
                raise LmforgeError(
                    f"{path}: question {qid}: answer {text!r} not found at offset {start} "
                    f"or within {MAX_ANSWER_SHIFT} characters of it"
                )
            start = fixed
            repaired += 1
        answers.append(Answer(text, start))
    return answers, repaired


def split_squad_by_article(
    examples: Sequence[QAExample], dev_fraction: float, seed: int = 0
) -> tuple[list[QAExample], list[QAExample]]:
    """Split into (train, dev) by article title so no article's contexts leak across the split.

    Deterministic for a given seed: titles are sorted, shuffled with `random.Random(seed)`, and the
    first round(n * dev_fraction) (at least 1, at most n - 1) go to dev. Example order is preserved.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise LmforgeError(f"dev_fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    titles = sorted({ex.title for ex in examples})
    if len(titles) < 2:
        raise LmforgeError(f"cannot split by article: need at least 2 articles, found {len(titles)}")
    random.Random(seed).shuffle(titles)
    n_dev = min(len(titles) - 1, max(1, math.floor(len(titles) * dev_fraction + 0.5)))
    dev_titles = set(titles[:n_dev])
    train = [ex for ex in examples if ex.title not in dev_titles]
    dev = [ex for ex in examples if ex.title in dev_titles]
    return train, dev


def write_squad(examples: Sequence[QAExample], path: str | Path) -> Path:
    """Write examples back as SQuAD v1.1 JSON (articles and contexts regrouped, order kept), e.g.
    the two halves of `split_squad_by_article`, so that any SQuAD tool can read them."""
    from lmforge.utils.io import atomic_write_text

    articles: dict[str, dict[str, list[dict]]] = {}
    for ex in examples:
        qa = {"id": ex.id, "question": ex.question,
              "answers": [{"text": a.text, "answer_start": a.start} for a in ex.answers]}  # fmt: skip
        articles.setdefault(ex.title, {}).setdefault(ex.context, []).append(qa)
    data = [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in contexts.items()]}
        for title, contexts in articles.items()
    ]
    atomic_write_text(Path(path), json.dumps({"version": "1.1", "data": data}, ensure_ascii=False) + "\n")
    return Path(path)
