"""Read raw text corpora as a stream of `Document`s.

Users point lmforge at whatever they have: one file, a folder, a glob, a list of those, or a
Hugging Face dataset (`hf:NAME[:CONFIG[:SPLIT]]`). Every reader streams, so a corpus far larger than
RAM can be prepared: plain-text files are decoded incrementally and documents longer than
`chunk_chars` are yielded as several chunks (`part` 0, 1, 2, ...), split at line boundaries.

Hostile input fails early with a one-line `LmforgeError` naming the file (and line or byte offset)
and the fix, because a silent skip would quietly train a model on the wrong data.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from lmforge.errors import LmforgeError

TxtUnit = Literal["file", "paragraph", "line"]

# Extensions picked up when scanning a directory; explicitly named files are read whatever their
# extension (e.g. WikiText's `.tokens`), as plain text unless the extension says otherwise.
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json-lines", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
# Directory scans skip .md: dataset folders carry README/PROVENANCE notes that are not corpus text.
# A .md file named explicitly is still read as text.
DIR_SUFFIXES = (".txt", ".text", *JSONL_SUFFIXES, *PARQUET_SUFFIXES)

_READ_BYTES = 1 << 20  # decode in 1 MiB pieces: large enough to be fast, small enough for any RAM
_SNIFF_BYTES = 8192  # NUL bytes in this prefix mean "binary", like git and grep decide
_PARQUET_BATCH_ROWS = 1024

_BOMS = (  # longest first: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class EmptyInputWarning(UserWarning):
    """An input file had no text and was skipped (it was one of several inputs)."""


@dataclass(frozen=True)
class Document:
    """One document, or one chunk of a document too large to hold in memory at once.

    `part` is 0 for the first (often only) chunk of a document and 1, 2, ... for its continuation
    chunks; consumers that care about document boundaries (EOS tokens, dedup) start a new document
    exactly when `part == 0`.
    """

    text: str
    source: str
    part: int = 0


# --------------------------------------------------------------------------------------------
# Resolving a spec to files
# --------------------------------------------------------------------------------------------


def _is_hf(item: str | Path) -> bool:
    return isinstance(item, str) and item.startswith("hf:")


def _as_items(spec: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """The items of a spec; a string naming no file is a comma-separated list (`a.en,a.de`)."""
    if isinstance(spec, str) and "," in spec and not Path(spec).exists() and not _is_hf(spec):
        return [part for part in spec.split(",") if part]
    if isinstance(spec, (str, Path)):
        return [spec]
    items = list(spec)
    if not items:
        raise LmforgeError("no input given: pass a file, a directory, a glob like 'corpus/*.txt' or hf:NAME")
    return items


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _scan_dir(root: Path) -> list[Path]:
    """Supported files under `root`, recursively, sorted; hidden files and folders are skipped.

    Files of other extensions are left out, and said so on stderr (README.md and PROVENANCE.md
    notes quietly): WikiText's `wiki.train.tokens` in a corpus folder would otherwise vanish from
    the corpus without a word."""
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune .git, .cache, ...
        for name in filenames:
            path = Path(dirpath, name)
            if name.startswith("."):
                continue
            if _base_suffix(path) in DIR_SUFFIXES:
                found.append(path)
            elif _base_suffix(path) != ".md":
                skipped.append(path.relative_to(root).as_posix())
    if skipped:
        import sys

        shown = ", ".join(sorted(skipped)[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        print(
            f"note: {root}: {len(skipped)} file(s) of other extensions not read ({shown}); name them directly, "
            f"or rename them {'/'.join(DIR_SUFFIXES[:2])}",
            file=sys.stderr,
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _resolve_one(item: str | Path) -> list[Path]:
    path = Path(item)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = _scan_dir(path)
        if not files:
            raise LmforgeError(
                f"{path}: directory has no {'/'.join(DIR_SUFFIXES)} files; put text files there or name files directly"
            )
        return files
    if isinstance(item, str) and _has_magic(item):
        matches = sorted(glob.glob(item, recursive=True))
        files: list[Path] = []
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                files.extend(_scan_dir(mp))
            elif mp.is_file():
                files.append(mp)
        if not files:
            raise LmforgeError(f"{item}: glob matches no files; check the pattern and the current directory")
        return files
    raise LmforgeError(
        f"{item}: no such file or directory; give a file, a directory, a glob like 'corpus/*.txt' or hf:NAME"
    )


def resolve_files(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand a corpus spec (file, directory, glob, or a list of these, also comma-separated) to the
    files it names.

    Directories are scanned recursively for .txt/.text/.jsonl/.json-lines/.ndjson/.parquet
    files (optionally .gz-compressed) in sorted order so a corpus always reads the same way; a file
    named twice is read once. `hf:` specs have no local files and are rejected here.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for item in _as_items(spec):
        if _is_hf(item):
            raise LmforgeError(
                f"{item}: a Hugging Face dataset has no local files; read it with read_documents"
            )
        for p in _resolve_one(item):
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


# --------------------------------------------------------------------------------------------
# Byte-level helpers: compression, BOMs, binary sniffing, incremental decoding
# --------------------------------------------------------------------------------------------


def _base_suffix(path: Path) -> str:
    """The format suffix, looking through a trailing `.gz` (`a.jsonl.gz` -> `.jsonl`)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _open_bytes(path: Path) -> IO[bytes]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _is_wide_encoding(encoding: str) -> bool:
    name = codecs.lookup(encoding).name
    return name.startswith(("utf-16", "utf-32"))


def _pick_encoding(head: bytes, encoding: str) -> str:
    """Let a byte-order mark override the requested encoding, so BOM files just work."""
    for bom, enc in _BOMS:
        if head.startswith(bom):
            return enc
    return encoding


def _check_not_binary(path: Path, head: bytes, encoding: str) -> None:
    if b"\x00" in head and not _is_wide_encoding(encoding):
        raise LmforgeError(
            f"{path}: looks binary (NUL bytes in the first {_SNIFF_BYTES} bytes); give text, JSONL or "
            "Parquet files, or pass --encoding utf-16 if it is UTF-16 text without a byte-order mark"
        )


def _check_no_nul(path: Path, text: str, lines_before: int, wide: bool) -> None:
    """Reject a NUL character anywhere in the decoded text, not only in the sniffed head.

    A NUL is never text: it marks a binary tail, a broken export or UTF-16 read as a narrow
    encoding, and left in, it ends up inside tokens, n-gram vocabularies and ARPA files.
    """
    if "\x00" not in text:  # the common case: one fast substring search per ~1 MiB piece
        return
    line = lines_before + text.count("\n", 0, text.index("\x00")) + 1
    hint = "" if wide else ", or pass --encoding utf-16 if it is UTF-16 text without a byte-order mark"
    raise LmforgeError(f"{path}:{line}: NUL character in the text; remove the NUL bytes{hint}")


def _decode_error(path: Path, offset: int, encoding: str) -> LmforgeError:
    return LmforgeError(
        f"{path}: not valid {encoding} text at byte {offset}; pass the file's real encoding "
        "(--encoding / encoding=, e.g. gbk, latin-1 or utf-16)"
    )


def _check_encoding(path: Path, encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise LmforgeError(
            f"{path}: unknown encoding {encoding!r}; use a Python codec name such as utf-8, gbk or utf-16"
        ) from None


def _decoded_pieces(path: Path, encoding: str) -> Iterator[str]:
    """Yield the file's text in ~1 MiB pieces, BOM removed and CRLF/CR turned into LF.

    The decoder is incremental so a multi-byte character split across two reads decodes correctly;
    a trailing CR is held back one piece in case the next starts with the LF of a CRLF pair.
    """
    _check_encoding(path, encoding)
    try:
        yield from _decode_stream(path, encoding)
    except (OSError, EOFError, zlib.error) as e:  # unreadable file, truncated or corrupt .gz
        raise LmforgeError(f"{path}: cannot read ({e}); check the file and its permissions") from None


def _decode_stream(path: Path, encoding: str) -> Iterator[str]:
    with _open_bytes(path) as f:
        head = f.read(_SNIFF_BYTES)
        enc = _pick_encoding(head, encoding)
        _check_not_binary(path, head, enc)
        decoder = codecs.getincrementaldecoder(enc)(errors="strict")
        wide = _is_wide_encoding(enc)
        consumed = 0  # bytes handed to the decoder before the current read
        lines = 0  # newlines yielded so far, to name the line of a NUL character
        carry = ""
        data = head
        while True:
            final = len(data) == 0
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as e:
                pending = len(decoder.getstate()[0])
                raise _decode_error(path, consumed - pending + e.start, enc) from None
            consumed += len(data)
            text = carry + text
            carry = ""
            if text.endswith("\r") and not final:
                text, carry = text[:-1], "\r"
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                _check_no_nul(path, text, lines, wide)
                lines += text.count("\n")
                yield text
            if final:
                return
            data = f.read(_READ_BYTES)


def _split_long(text: str, limit: int) -> list[str]:
    """Cut `text` into pieces of at most `limit` chars, preferring line ends, then spaces."""
    if len(text) <= limit:
        return [text]
    pieces = []
    start = 0
    while len(text) - start > limit:
        end = start + limit
        cut = text.rfind("\n", start, end)
        if cut < start:
            space = text.rfind(" ", start, end)
            cut = space if space >= start + limit // 2 else end - 1
        pieces.append(text[start : cut + 1])
        start = cut + 1
    pieces.append(text[start:])
    return pieces


# --------------------------------------------------------------------------------------------
# Plain text
# --------------------------------------------------------------------------------------------


def _read_txt_file_unit(path: Path, source: str, encoding: str, chunk_chars: int) -> Iterator[Document]:
    """One document per file; a file above `chunk_chars` comes out as several line-aligned chunks."""
    buf = ""
    part = 0
    for piece in _decoded_pieces(path, encoding):
        buf += piece
        while len(buf) > chunk_chars:
            head, buf = _take_chunk(buf, chunk_chars)
            yield Document(head, source, part)
            part += 1
    if part == 0 and not buf.strip():
        return
    if buf:
        yield Document(buf, source, part)


def _take_chunk(buf: str, limit: int) -> tuple[str, str]:
    first = _split_long(buf[: limit + 1], limit)[0]
    return first, buf[len(first) :]


def _iter_lines(pieces: Iterator[str], limit: int) -> Iterator[tuple[int, str, bool]]:
    """Yield (line number, text without LF, ends_line); lines above `limit` come in several pieces.

    A line still waiting for its LF is kept as a list of pieces, so a very long line (a huge JSON
    record) is joined once instead of being re-copied with every new piece.
    """
    lineno = 1
    pending: list[str] = []
    pending_len = 0
    for piece in pieces:
        if "\n" not in piece:
            pending.append(piece)
            pending_len += len(piece)
            if pending_len > limit:
                rest = "".join(pending)
                while len(rest) > limit:
                    head, rest = _take_chunk(rest, limit)
                    yield lineno, head, False
                pending, pending_len = [rest], len(rest)
            continue
        lines = ("".join(pending) + piece).split("\n")
        last = lines.pop()
        pending, pending_len = [last], len(last)
        for line in lines:
            if len(line) > limit:
                *heads, line = _split_long(line, limit)
                for h in heads:
                    yield lineno, h, False
            yield lineno, line, True
            lineno += 1
    if pending_len:
        yield lineno, "".join(pending), True


def _read_txt_lines(path: Path, source: str, encoding: str, chunk_chars: int) -> Iterator[Document]:
    part = 0
    for lineno, line, ends in _iter_lines(_decoded_pieces(path, encoding), chunk_chars):
        if part == 0 and not line.strip():
            continue
        yield Document(line.strip() if part == 0 and ends else line, f"{source}:{lineno}", part)
        part = 0 if ends else part + 1


def _read_txt_paragraphs(path: Path, source: str, encoding: str, chunk_chars: int) -> Iterator[Document]:
    """Documents separated by blank (whitespace-only) lines; huge paragraphs are chunked."""
    lines: list[str] = []
    size = 0
    start = 0
    part = 0
    for lineno, line, ends in _iter_lines(_decoded_pieces(path, encoding), chunk_chars):
        if ends and not line.strip() and not (lines and not lines[-1].endswith("\n")):
            if lines:
                yield Document("".join(lines).rstrip("\n"), f"{source}:{start}", part)
            lines, size, part = [], 0, 0
            continue
        if not lines and part == 0:
            start = lineno
        text = line + "\n" if ends else line
        if size + len(text) > chunk_chars and lines:
            yield Document("".join(lines), f"{source}:{start}", part)
            lines, size, part = [], 0, part + 1
        lines.append(text)
        size += len(text)
    if lines:
        yield Document("".join(lines).rstrip("\n"), f"{source}:{start}", part)


# --------------------------------------------------------------------------------------------
# JSONL / JSON / Parquet / Hugging Face
# --------------------------------------------------------------------------------------------


def _record_text(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise LmforgeError(
            f"{where}: expected a JSON object with a {field!r} field, got {type(record).__name__}; "
            "write one object per line"
        )
    if field not in record:
        keys = ", ".join(repr(k) for k in list(record)[:20]) or "none"
        raise LmforgeError(
            f"{where}: no {field!r} field (this line has keys: {keys}); pass --text_field / text_field= "
            "with the key that holds the text"
        )
    value = record[field]
    if value is None:
        return ""  # a null text is an empty document; the cleaner counts it under "empty"
    if not isinstance(value, str):
        raise LmforgeError(
            f"{where}: field {field!r} is a {type(value).__name__}, expected a string; fix that record or "
            "choose another --text_field"
        )
    return value


def _chunked(text: str, source: str, chunk_chars: int) -> Iterator[Document]:
    if "\x00" in text:  # a `\u0000` escape or a Parquet/Hub value: decoded text was checked already
        raise LmforgeError(f"{source}: NUL character in the text; remove it from that record")
    for part, piece in enumerate(_split_long(text, chunk_chars)):
        yield Document(piece, source, part)


def _read_jsonl(path: Path, source: str, field: str, encoding: str, chunk_chars: int) -> Iterator[Document]:
    # JSON lines are never split, so a record may exceed chunk_chars while it is parsed.
    for lineno, line, _ends in _iter_lines(_decoded_pieces(path, encoding), 1 << 62):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmforgeError(
                f"{where}: malformed JSON ({e.msg} at column {e.colno}); fix or delete that line "
                "(each line must be one complete JSON object)"
            ) from None
        yield from _chunked(_record_text(record, field, where), f"{source}:{lineno}", chunk_chars)


def _read_json(path: Path, source: str, field: str, encoding: str, chunk_chars: int) -> Iterator[Document]:
    """A `.json` file is JSON lines unless it starts with `[` (an array of objects, read whole)."""
    pieces = _decoded_pieces(path, encoding)
    first = next(pieces, "")
    if not first.lstrip().startswith("["):
        yield from _read_jsonl(path, source, field, encoding, chunk_chars)
        return
    text = first + "".join(pieces)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise LmforgeError(
            f"{path}:{e.lineno}: malformed JSON ({e.msg}); fix the file or convert it to JSON lines"
        ) from None
    for i, record in enumerate(records):
        yield from _chunked(
            _record_text(record, field, f"{path}:item {i}"), f"{source}:item {i}", chunk_chars
        )


def _read_parquet(path: Path, source: str, field: str, chunk_chars: int) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LmforgeError(
            f"{path}: reading Parquet needs pyarrow; run pip install 'lmforge[parquet]'"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise LmforgeError(f"{path}: not a readable Parquet file ({e}); re-export it") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise LmforgeError(
            f"{path}: no column {field!r} (columns: {', '.join(names)}); pass --text_field / text_field="
        )
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[field]):
        for value in batch.column(0).to_pylist():
            if value is not None and not isinstance(value, str):
                raise LmforgeError(
                    f"{path}: column {field!r} holds {type(value).__name__} values, expected strings; "
                    "choose the text column with --text_field"
                )
            yield from _chunked(value or "", f"{source}:row {row}", chunk_chars)
            row += 1


def _parse_hf(spec: str) -> tuple[str, str | None, str]:
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise LmforgeError(f"{spec}: expected hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return name, config, split


def _read_hf(spec: str, field: str, chunk_chars: int) -> Iterator[Document]:
    """Stream a Hub dataset row by row (`streaming=True`), so nothing is downloaded up front."""
    name, config, split = _parse_hf(spec)
    try:
        import datasets
    except ImportError:
        raise LmforgeError(
            f"{spec}: reading Hugging Face datasets needs the datasets library; run pip install 'lmforge[hf]'"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # network, auth and missing-config errors all surface here
        raise LmforgeError(
            f"{spec}: could not load the dataset ({e}); check NAME, CONFIG and SPLIT"
        ) from None
    for row, record in enumerate(ds):
        where = f"hf:{name}:row {row}"
        yield from _chunked(_record_text(record, field, where), where, chunk_chars)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _read_file(
    path: Path, *, text_field: str, txt_unit: TxtUnit, encoding: str, chunk_chars: int
) -> Iterator[Document]:
    source = path.as_posix()
    kind = _base_suffix(path)
    if kind in JSONL_SUFFIXES:
        return _read_jsonl(path, source, text_field, encoding, chunk_chars)
    if kind == ".json":
        return _read_json(path, source, text_field, encoding, chunk_chars)
    if kind in PARQUET_SUFFIXES:
        return _read_parquet(path, source, text_field, chunk_chars)
    reader = {"file": _read_txt_file_unit, "paragraph": _read_txt_paragraphs, "line": _read_txt_lines}
    return reader[txt_unit](path, source, encoding, chunk_chars)


def _check_args(txt_unit: str, chunk_chars: int) -> None:
    if txt_unit not in ("file", "paragraph", "line"):
        raise LmforgeError(f"txt_unit={txt_unit!r} is not valid; use 'file', 'paragraph' or 'line'")
    if chunk_chars < 1:
        raise LmforgeError(f"chunk_chars={chunk_chars} must be a positive number of characters")


def read_documents(
    spec: str | Path | Sequence[str | Path],
    *,
    text_field: str = "text",
    txt_unit: TxtUnit = "paragraph",
    encoding: str = "utf-8",
    chunk_chars: int = 4_000_000,
) -> Iterator[Document]:
    """Stream the documents of a corpus spec, in a deterministic order.

    `txt_unit` says what a document is in plain-text files: a paragraph (lines up to the next blank
    or whitespace-only line; the default, as in BERT's data tools, so one text file still gives
    NSP, dedup and the length filters many documents), the whole file, or a non-empty line.
    JSONL/JSON/Parquet/`hf:` inputs take the `text_field` of each record. An empty file is an error
    when it is the only input and a warning otherwise, so a stray empty file in a folder does not
    stop a long job while a wrong single path still fails loudly.
    """
    _check_args(txt_unit, chunk_chars)
    items = _as_items(spec)
    plan: list[str | Path] = []
    seen: set[Path] = set()
    for item in items:
        if _is_hf(item):
            plan.append(item)
            continue
        for path in resolve_files(item):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                plan.append(path)
    only_input = len(plan) == 1
    total = 0
    for entry in plan:
        if isinstance(entry, str):
            for doc in _read_hf(entry, text_field, chunk_chars):
                total += 1
                yield doc
            continue
        count = 0
        for doc in _read_file(
            entry, text_field=text_field, txt_unit=txt_unit, encoding=encoding, chunk_chars=chunk_chars
        ):
            count += 1
            yield doc
        if count == 0:
            if only_input:
                raise LmforgeError(f"{entry}: file is empty; give a file with text")
            warnings.warn(f"{entry}: file is empty, skipped", EmptyInputWarning, stacklevel=2)
        total += count
    if total == 0 and not only_input:
        raise LmforgeError(f"{spec}: no text found in any input file; give files with text")


def read_lines(data: str | Path | Sequence[str | Path], encoding: str = "utf-8") -> Iterator[str]:
    """Every line of the files named by `data` (file, directory, glob or a list of them), in order,
    an empty line included: what line-based readers (n-gram models, parallel text) consume. The
    files are decoded by `read_documents`, so they fail the same way on binary or mis-encoded
    input; a file that does not end with a newline still ends its last line."""
    carry = ""
    for doc in read_documents(data, txt_unit="file", encoding=encoding):
        if doc.part == 0 and carry:
            yield carry  # the previous file (or record) ended without a newline
            carry = ""
        lines = (carry + doc.text).split("\n")
        carry = lines.pop()
        yield from lines
    if carry:
        yield carry
