"""Reading and writing ARPA files, the text format every n-gram toolkit exchanges models in.

    \\data\\
    ngram 1=5
    ngram 2=7

    \\1-grams:
    -1.2041200  <unk>   -0.30103
    -99         <s>     -0.4771
    ...
    \\2-grams:
    -0.69897    <s> the
    ...
    \\end\\

Each entry is `log10 p <TAB> w1 .. wn [<TAB> log10 backoff]`. We write a backoff for exactly the
n-grams that are the context of a longer one (as KenLM's lmplz does) and give `<s>` the
probability -99. Probabilities are stored as float32 and written with 9 significant digits, which
reads back to the identical float32, so a model loaded from its ARPA file scores exactly like the
trained one.

Reading is strict: a truncated or malformed file fails with one line naming the file, the line
number and what was expected there. Reading is lenient where the meaning is unambiguous: words
may be separated by spaces instead of tabs, and an n-gram whose context n-gram is absent (some
pruned SRILM models; KenLM's default model refuses them) gets that context added with the
probability the backoff rule gives it and backoff 0, which leaves every score unchanged.
"""

from __future__ import annotations

import gc
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress, islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.ngram.model import NGramLM
from lmforge.ngram.vocab import BOS_WORD, EOS_WORD, SPECIAL_WORDS, UNK_WORD, Vocabulary

META_PREFIX = "# lmforge n-gram model: "  # KenLM and SRILM skip '#' lines before \data\
MISSING_UNK_LOG10 = -100.0  # what KenLM assumes for a model without <unk>
_WRITE_CHUNK = 500_000  # entries formatted per write: bounds memory on large models
_READ_CHUNK = 1_000_000


def _open(path: Path, mode: str) -> IO[Any]:
    """Text for writing, bytes for reading (split on ASCII whitespace, like KenLM); .gz transparently."""
    if path.suffix == ".gz":
        if mode == "w":
            return gzip.open(path, "wt", encoding="utf-8", compresslevel=6)
        return gzip.open(path, "rb")
    if mode == "w":
        return open(path, "w", encoding="utf-8", newline="\n")
    return open(path, "rb")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def ngram_texts(model: NGramLM) -> Iterator[list[str]]:
    """The n-grams of each order as space-joined words, in table order (built from the prefix rows)."""
    words = list(model.vocab.words)
    texts = words
    yield texts
    V = len(words)
    for n in range(2, model.order + 1):
        keys = model.keys[n - 1]
        prev = texts
        texts = [prev[p] + " " + words[w] for p, w in zip((keys // V).tolist(), (keys % V).tolist())]
        yield texts


def write_arpa(model: NGramLM, path: str | Path) -> Path:
    """Write `model` as an ARPA file (gzip when `path` ends in .gz); returns the path."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with _open(path, "w") as f:
        f.write(META_PREFIX + json.dumps(model.meta, sort_keys=True, default=str) + "\n\n\\data\\\n")
        for n, count in enumerate(model.ngram_counts(), 1):
            f.write(f"ngram {n}={count}\n")
        for n, texts in enumerate(ngram_texts(model), 1):
            f.write(f"\n\\{n}-grams:\n")
            lp, bo, has = model.logprob[n - 1], model.backoff[n - 1], model.has_backoff[n - 1]
            for lo in range(0, len(texts), _WRITE_CHUNK):
                hi = lo + _WRITE_CHUNK
                lines = [
                    f"{p:.9g}\t{t}\t{b:.9g}\n" if h else f"{p:.9g}\t{t}\n"
                    for p, t, b, h in zip(
                        lp[lo:hi].tolist(), texts[lo:hi], bo[lo:hi].tolist(), has[lo:hi].tolist()
                    )
                ]
                f.write("".join(lines))
        f.write("\n\\end\\\n")
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class _Reader:
    """Lines of an ARPA file (as bytes) with their numbers, and errors that cite them."""

    def __init__(self, f: IO[bytes], path: Path):
        self.f, self.path, self.lineno = f, path, 0

    def error(self, message: str, lineno: int | None = None) -> LmforgeError:
        return LmforgeError(f"{self.path}:{self.lineno if lineno is None else lineno}: {message}")

    def _io_error(self, e: Exception) -> LmforgeError:
        return self.error(f"cannot read the file ({e}); it is damaged or truncated")

    def next_nonblank(self) -> str | None:
        """The next non-empty line, stripped and decoded (None at end of file)."""
        while True:
            try:
                line = self.f.readline()
            except (OSError, EOFError, zlib.error) as e:
                raise self._io_error(e) from None
            if not line:
                return None
            self.lineno += 1
            if line.strip():
                return self.decode(line.strip())

    def decode(self, raw: bytes, lineno: int | None = None) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("not valid UTF-8 text; ARPA files are UTF-8", lineno) from None

    def block(self, count: int) -> list[bytes]:
        try:
            lines = list(islice(self.f, count))
        except (OSError, EOFError, zlib.error) as e:
            raise self._io_error(e) from None
        self.lineno += len(lines)
        return lines


@dataclass
class _Section:
    """The entries of one order as read: word ids (rows = entries), log10 p, backoff, line numbers."""

    ids: np.ndarray  # int64 (count, n)
    logprob: np.ndarray  # float32
    backoff: np.ndarray  # float32
    has_backoff: np.ndarray  # bool
    first_line: int  # line number of the first entry


def _header(r: _Reader) -> tuple[list[int], dict[str, Any]]:
    meta: dict[str, Any] = {}
    while True:
        s = r.next_nonblank()
        if s is None:
            raise r.error("no '\\data\\' line; this is not an ARPA file (or it is empty)")
        if s == "\\data\\":
            break
        if s.startswith(META_PREFIX.strip()):
            try:
                meta = json.loads(s[len(META_PREFIX.strip()) :])
            except json.JSONDecodeError:
                meta = {}
    counts: list[int] = []
    while True:
        s = r.next_nonblank()
        if s is None:
            raise r.error("the file ends inside \\data\\; it is truncated (write it again)")
        if not s.startswith("ngram "):
            break
        name, _, value = s[len("ngram ") :].partition("=")
        try:
            n, c = int(name), int(value)
        except ValueError:
            raise r.error(f"expected 'ngram N=COUNT' in \\data\\, got {s[:60]!r}") from None
        if n != len(counts) + 1 or c < 0:
            raise r.error(f"expected 'ngram {len(counts) + 1}=COUNT' in \\data\\, got {s[:60]!r}")
        counts.append(c)
    if not counts:
        raise r.error(f"\\data\\ lists no 'ngram N=COUNT' lines (got {s[:60]!r}); this is not an ARPA file")
    if s != "\\1-grams:":
        raise r.error(f"expected '\\1-grams:' after \\data\\, got {s[:60]!r}")
    return counts, meta


def _float_column(r: _Reader, values: list[bytes], line_numbers: np.ndarray, what: str, n: int) -> np.ndarray:
    try:
        return np.fromiter(map(float, values), dtype=np.float64, count=len(values)).astype(np.float32)
    except ValueError:
        for i, v in enumerate(values):
            try:
                float(v)
            except ValueError:
                raise r.error(
                    f"the {what} {v[:40].decode(errors='replace')!r} of a {n}-gram is not a number; "
                    f"expected 'log10prob w1 .. w{n} [backoff]'",
                    int(line_numbers[i]),
                ) from None
        raise  # unreachable: some value failed above


def _section(
    r: _Reader, n: int, count: int, is_top: bool, index: dict[bytes, int] | None
) -> tuple[_Section, list[bytes]]:
    """Parse the `count` entries of order n; for n = 1 also return the words (the vocabulary).

    Lines are split as bytes on ASCII whitespace (as KenLM does) and every column is pulled out with
    `map`/`itemgetter`, so the per-line work stays in C; word ids come from one dict lookup each.
    """
    first_line = r.lineno + 1
    ids_cols: list[np.ndarray] = []
    probs, bows, has = [], [], []
    unigram_words: list[bytes] = []
    done = 0
    while done < count:
        want = min(_READ_CHUNK, count - done)
        lines = r.block(want)
        start = first_line + done
        if len(lines) < want:
            raise r.error(
                f"the file ends after {done + len(lines)} of the {count} {n}-grams that \\data\\ announces; "
                "it is truncated (write it again)"
            )
        fields = list(map(bytes.split, lines))
        lens = np.fromiter(map(len, fields), dtype=np.int64, count=len(fields))
        bad = np.flatnonzero((lens != n + 1) & ((lens != n + 2) | is_top))
        if len(bad):
            i = int(bad[0])
            got = lines[i].strip().decode(errors="replace")
            hint = "an empty line (fewer entries than \\data\\ announces?)" if not got else repr(got[:60])
            shape = f"log10prob w1 .. w{n}" + ("" if is_top else " [backoff]")
            raise r.error(f"expected a {n}-gram entry '{shape}', got {hint}", start + i)
        numbers = start + np.arange(len(fields))
        probs.append(_float_column(r, list(map(itemgetter(0), fields)), numbers, "probability", n))
        with_bo = lens == n + 2
        bo = np.zeros(len(fields), dtype=np.float32)
        if with_bo.any():
            where = np.flatnonzero(with_bo)
            values = list(map(itemgetter(-1), compress(fields, with_bo.tolist())))
            bo[where] = _float_column(r, values, numbers[where], "backoff", n)
        bows.append(bo)
        has.append(with_bo)
        if n == 1:
            unigram_words.extend(map(itemgetter(1), fields))
            ids_cols.append(np.empty((len(fields), 1), dtype=np.int64))
        else:
            assert index is not None
            get = index.get
            cols = np.empty((len(fields), n), dtype=np.int64)
            for j in range(n):
                words = map(itemgetter(j + 1), fields)
                cols[:, j] = np.fromiter(map(get, words, repeat(-1)), dtype=np.int64, count=len(fields))
            unknown = np.flatnonzero((cols < 0).any(axis=1))
            if len(unknown):
                i = int(unknown[0])
                word = next(w for w in fields[i][1 : n + 1] if w not in index)
                raise r.error(
                    f"the {n}-gram uses {word.decode(errors='replace')!r}, which is not among the 1-grams; "
                    "the file is inconsistent",
                    start + i,
                )
            ids_cols.append(cols)
        done += len(lines)
    if count == 0:
        empty = np.empty(0, np.float32)
        return _Section(np.empty((0, n), np.int64), empty, empty, np.empty(0, bool), first_line), []
    section = _Section(
        np.concatenate(ids_cols), np.concatenate(probs), np.concatenate(bows), np.concatenate(has), first_line
    )
    return section, unigram_words


def read_arpa(path: str | Path) -> NGramLM:
    """Load an ARPA file (plain or .gz) as an `NGramLM` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(
            f"{path}: no such ARPA file; give the path of a model written by 'lmforge ngram train'"
        )
    gc_was_on = gc.isenabled()
    gc.disable()  # millions of small lists: the cyclic collector would rescan them again and again
    try:
        with _open(path, "rb") as f:
            return _read(_Reader(f, path))  # type: ignore[arg-type]
    finally:
        if gc_was_on:
            gc.enable()


def _read(r: _Reader) -> NGramLM:
    counts, meta = _header(r)
    sections: list[_Section] = []
    index: dict[bytes, int] | None = None
    words: list[str] = []
    for n, count in enumerate(counts, 1):
        if n > 1:
            s = r.next_nonblank()
            if s is None:
                raise r.error(
                    f"the file ends before the \\{n}-grams: section; it is truncated (write it again)"
                )
            if s != f"\\{n}-grams:":
                raise r.error(
                    f"expected '\\{n}-grams:' after {counts[n - 2]} {n - 1}-grams, got {s[:60]!r}; "
                    "the counts in \\data\\ do not match the entries"
                )
        section, unigram_words = _section(r, n, count, n == len(counts), index)
        if n == 1:
            words, section = _unigram_vocabulary(r, unigram_words, section)
            index = {w.encode("utf-8"): i for i, w in enumerate(words)}
        sections.append(section)
    s = r.next_nonblank()
    if s is None:
        raise r.error("the file ends without '\\end\\'; it is truncated (write it again)")
    if s != "\\end\\":
        raise r.error(
            f"expected '\\end\\' after the {len(counts)}-grams, got {s[:60]!r}; "
            "the counts in \\data\\ do not match the entries"
        )
    return _build(r, Vocabulary(tuple(words)), sections, meta)


def _unigram_vocabulary(r: _Reader, raw_words: list[bytes], section: _Section) -> tuple[list[str], _Section]:
    """Reorder the 1-grams so `<unk>`, `<s>`, `</s>` get ids 0, 1, 2; add `<unk>` if missing."""
    words = [r.decode(w, section.first_line + i) for i, w in enumerate(raw_words)]
    where: dict[str, int] = {}
    for i, w in enumerate(words):
        if w in where:
            raise r.error(
                f"the 1-gram {w!r} is listed twice (also on line {section.first_line + where[w]})",
                section.first_line + i,
            )
        where[w] = i
    for special in (BOS_WORD, EOS_WORD):
        if special not in where:
            raise r.error(
                f"the 1-grams have no {special!r}; lmforge needs a sentence-level model with <s> and </s>"
            )
    lp, bo, has = section.logprob, section.backoff, section.has_backoff
    if UNK_WORD not in where:
        where[UNK_WORD] = len(words)
        words = [*words, UNK_WORD]
        lp = np.append(lp, np.float32(MISSING_UNK_LOG10))
        bo = np.append(bo, np.float32(0))
        has = np.append(has, False)
    order = [where[w] for w in SPECIAL_WORDS] + [i for i, w in enumerate(words) if w not in SPECIAL_WORDS]
    perm = np.array(order, dtype=np.int64)
    vocab = [words[i] for i in order]
    ids = np.arange(len(vocab), dtype=np.int64)[:, None]
    return vocab, _Section(ids, lp[perm], bo[perm], has[perm], section.first_line)


def _build(r: _Reader, vocab: Vocabulary, sections: list[_Section], meta: dict[str, Any]) -> NGramLM:
    """Sorted tables from the parsed sections, adding any missing context n-grams (see the docstring)."""
    V = len(vocab)
    N = len(sections)
    ids = [s.ids for s in sections]
    logprob = [s.logprob for s in sections]
    backoff = [s.backoff for s in sections]
    has = [s.has_backoff for s in sections]
    lines = [s.first_line + np.arange(len(s.logprob)) for s in sections]
    keys: list[np.ndarray] = [np.arange(V, dtype=np.int64)] + [np.empty(0, np.int64)] * (N - 1)
    blank = [np.zeros(len(lp), dtype=bool) for lp in logprob]
    probe = NGramLM(vocab, keys, logprob, backoff, has, meta)
    n = 2
    while n <= N:
        prefix = _rows(probe, ids[n - 1][:, : n - 1])
        missing = prefix < 0
        if missing.any():
            # Add the absent contexts to order n - 1 as blanks and redo it (and, if needed, below).
            new = np.unique(ids[n - 1][missing, : n - 1], axis=0)
            ids[n - 2] = np.concatenate([ids[n - 2], new])
            logprob[n - 2] = np.append(logprob[n - 2], np.full(len(new), np.nan, np.float32))
            backoff[n - 2] = np.append(backoff[n - 2], np.zeros(len(new), np.float32))
            has[n - 2] = np.append(has[n - 2], np.ones(len(new), bool))
            blank[n - 2] = np.append(blank[n - 2], np.ones(len(new), bool))
            lines[n - 2] = np.append(lines[n - 2], np.full(len(new), -1))
            n = max(n - 1, 2)
            continue
        key = prefix * V + ids[n - 1][:, -1]
        perm = np.argsort(key, kind="stable")
        key = key[perm]
        dup = np.flatnonzero(key[1:] == key[:-1])
        if len(dup):
            i, j = lines[n - 1][perm[dup[0]]], lines[n - 1][perm[dup[0] + 1]]
            raise r.error(f"this {n}-gram is listed twice (also on line {min(i, j)})", max(i, j))
        keys[n - 1] = key
        for arrays in (ids, logprob, backoff, has, blank, lines):
            arrays[n - 1] = arrays[n - 1][perm]
        probe = NGramLM(vocab, keys, logprob, backoff, has, meta)
        n += 1
    for m in range(2, N + 1):
        rows = np.flatnonzero(blank[m - 1])
        if len(rows):
            logprob[m - 1][rows] = _backoff_scores(probe, ids[m - 1][rows], m - 1)
    return NGramLM(vocab, keys, logprob, backoff, has, meta)


def _rows(model: NGramLM, grams: np.ndarray) -> np.ndarray:
    """Row of each n-gram (one per row of `grams`) in its order's table, -1 where absent."""
    rows = grams[:, 0].copy()
    for j in range(1, grams.shape[1]):
        ok = np.flatnonzero(rows >= 0)
        found = np.full(len(rows), -1, dtype=np.int64)
        found[ok] = model._lookup(j + 1, rows[ok], grams[ok, j])
        rows = found
    return rows


def _backoff_scores(model: NGramLM, grams: np.ndarray, max_order: int) -> np.ndarray:
    """log10 p(last word | the others) of each n-gram, using only orders up to `max_order`."""
    count, m = grams.shape
    first = np.zeros(count * m, dtype=bool)
    first[::m] = True
    lp, _ = model._score_stream(grams.reshape(-1), first, max_order=max_order)
    return lp[m - 1 :: m].astype(np.float32)
