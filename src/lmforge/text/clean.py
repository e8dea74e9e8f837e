"""Clean a document stream: normalise text, drop garbage and duplicates, optionally scrub PII.

Web-scale and hand-collected corpora alike contain boilerplate, mojibake, keyword spam and many
copies of the same page; a small model trained on them spends its capacity memorising that junk.
`Cleaner` streams documents through cheap filters first (length), then batched NumPy ones (symbol
ratio, repetition, near duplicates), and keeps a `CleanSummary` of what it dropped and why, so a
user can see whether the defaults suit their data.

The defaults are chosen to keep ordinary prose in any script (English, Chinese, ...), code
documentation and verse, and to drop only what is obviously not text.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.text.corpus import Document
from lmforge.text.dedup import (
    LETTER,
    PUNCT,
    SYMBOL,
    ExactDeduplicator,
    NearDuplicateIndex,
    shingle_batch,
)

DROP_REASONS = ("empty", "too_short", "too_long", "symbols", "repetition", "duplicate", "near_duplicate")
PII_KINDS = ("email", "phone", "ip")

_DROP_HELP = {
    "empty": "nothing left after normalisation",
    "too_short": "shorter than min_chars",
    "too_long": "longer than max_chars",
    "symbols": "share of symbols above max_symbol_ratio",
    "repetition": "repeated lines or n-grams above max_repetition",
    "duplicate": "exact copy of an earlier document",
    "near_duplicate": "near copy of an earlier document",
}

# For the error raised when cleaning keeps nothing: the setting behind each drop reason, what it
# caught (formatted with the config) and how to relax it. `prepare` and `tokenizer train` take the
# settings as --clean.<name>, `pretrain` and `scaling` as --prep.clean.<name>.
_DROP_FIX = {
    "empty": ("empty-text", "no visible text", "check --data and --text_field"),
    "too_short": ("clean.min_chars", "shorter than {min_chars} chars", "lower --clean.min_chars"),
    "too_long": (
        "clean.max_chars", "longer than {max_chars} chars", "raise --clean.max_chars or set it to 0 (no limit)"
    ),
    "symbols": (
        "clean.max_symbol_ratio", "symbol share above {max_symbol_ratio}",
        "raise --clean.max_symbol_ratio (1 turns it off)",
    ),
    "repetition": (
        "clean.max_repetition", "repetition above {max_repetition}", "raise --clean.max_repetition (1 turns it off)"
    ),
    "duplicate": ("clean.dedup", "exact copies", "pass --clean.dedup false"),
    "near_duplicate": (
        "clean.near_dedup", "near copies", "pass --clean.near_dedup false or raise --clean.near_dedup_threshold"
    ),
}  # fmt: skip

# Documents are cleaned in batches so shingling and MinHash run as a few large NumPy operations.
_BATCH_DOCS = 512
_BATCH_CHARS = 2_000_000
# The n-gram repetition score needs enough n-grams to mean anything.
_MIN_NGRAMS_FOR_REPETITION = 20


@dataclass
class CleanConfig:
    """What the cleaner keeps. Every default keeps real prose, code docs and verse in any script."""

    # false: take the text exactly as it is (published benchmarks such as WikiText or Penn Treebank,
    # whose headings, short lines and repeats are part of the test): no normalising, filter or dedup
    enabled: bool = True
    # NFKC, drop invisible characters, tidy spaces and blank lines, so one meaning has one text form
    normalize: bool = True
    # drop documents shorter than this (after normalisation): headings and fragments, not text
    min_chars: int = 32
    # drop documents whose first chunk is longer; 0 = no limit (long books are good training data)
    max_chars: int = 0
    # drop documents with a larger share of symbols (mojibake, tables, binary junk); prose has <10%
    max_symbol_ratio: float = 0.3
    # drop documents with a larger share of repeated lines or 5-grams (spam, broken scrapes)
    max_repetition: float = 0.5
    # drop exact copies of earlier documents (copies only make a model memorise)
    dedup: bool = True
    # drop near copies (MinHash + LSH): mirrors, templated pages, lightly edited reposts
    near_dedup: bool = True
    # estimated Jaccard similarity of 5-gram shingles at/above which a document is a near copy
    near_dedup_threshold: float = 0.8
    # replace e-mail addresses, phone numbers and IP addresses with <EMAIL>, <PHONE>, <IP>
    pii: bool = False
    # MinHash signature length: longer estimates similarity more precisely but uses more memory
    num_perm: int = 128

    def __post_init__(self) -> None:
        self._check_ratio("max_symbol_ratio", self.max_symbol_ratio)
        self._check_ratio("max_repetition", self.max_repetition)
        self._check_ratio("near_dedup_threshold", self.near_dedup_threshold)
        for name in ("min_chars", "max_chars"):
            if getattr(self, name) < 0:
                raise LmforgeError(f"clean.{name}={getattr(self, name)} must be >= 0")
        if self.max_chars and self.max_chars < self.min_chars:
            raise LmforgeError(
                f"clean.max_chars={self.max_chars} is below clean.min_chars={self.min_chars}; "
                "raise max_chars or set it to 0 (no limit)"
            )
        if self.num_perm < 16:
            raise LmforgeError(f"clean.num_perm={self.num_perm} is too small for MinHash; use 64-256")

    @staticmethod
    def _check_ratio(name: str, value: float) -> None:
        if not 0.0 < value <= 1.0:
            raise LmforgeError(f"clean.{name}={value} must be in (0, 1]; 1 disables the filter")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> CleanConfig:
        """Build from a config mapping, rejecting unknown keys with the list of valid ones."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LmforgeError(
                f"clean: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(known))}"
            )
        return cls(**values)


@dataclass
class CleanSummary:
    """Counts of what the cleaner saw, kept and dropped (documents, not continuation chunks)."""

    docs_in: int = 0
    docs_kept: int = 0
    chars_in: int = 0
    chars_kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    pii_replaced: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PII_KINDS, 0))  # in kept docs

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A small table for the terminal: kept and dropped documents, and why."""

        def pct(n: int, total: int) -> str:
            return f"{100.0 * n / total:5.1f}%" if total else "    -"

        lines = [
            f"{'documents in':<16}{self.docs_in:>12,}   chars in {self.chars_in:,}",
            f"{'kept':<16}{self.docs_kept:>12,} {pct(self.docs_kept, self.docs_in)}"
            f"   chars kept {self.chars_kept:,} ({pct(self.chars_kept, self.chars_in).strip()})",
            f"{'dropped':<16}{self.docs_in - self.docs_kept:>12,} {pct(self.docs_in - self.docs_kept, self.docs_in)}",
        ]
        for reason in DROP_REASONS:
            n = self.dropped.get(reason, 0)
            if n:
                lines.append(f"  {reason:<14}{n:>12,} {pct(n, self.docs_in)}   {_DROP_HELP[reason]}")
        if any(self.pii_replaced.values()):
            parts = ", ".join(f"{k} {v:,}" for k, v in self.pii_replaced.items())
            lines.append(f"{'pii replaced':<16}{parts}")
        return "\n".join(lines)

    def all_dropped_message(self, cfg: CleanConfig) -> str:
        """One line naming the filter(s) that dropped every document and the flag that relaxes each,
        so a user whose whole corpus vanished knows which setting to change instead of guessing."""
        reasons = [r for r in DROP_REASONS if self.dropped.get(r)]
        values = asdict(cfg)
        caught = " and ".join(
            f"the {_DROP_FIX[r][0]} filter ({self.dropped[r]:,}: {_DROP_FIX[r][1].format(**values)})"
            for r in reasons
        )
        fixes = ", ".join(_DROP_FIX[r][2] for r in reasons)
        return (
            f"all {self.docs_in:,} document(s) were dropped by {caught}; {fixes}, or turn cleaning off "
            "with --clean.enabled false (in pretrain and scaling: --prep.clean.*)"
        )


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

# Full-width punctuation is the standard punctuation of Chinese/Japanese prose, not a compatibility
# variant; NFKC would turn "你好，世界" into "你好,世界", so these are kept as written.
_CJK_PUNCT_RE = re.compile("([，！？：；（）])")
_SPACE_RUN_RE = re.compile(r" {2,}")
_EXTRA_BLANK_LINES_RE = re.compile(r"\n{4,}")


@lru_cache(maxsize=1)
def _invisible_re() -> re.Pattern[str]:
    """Control (Cc, except tab/newline), format (Cf) and lone surrogate (Cs) characters.

    Format characters (zero-width spaces, bidi marks, soft hyphens, BOMs) are invisible, split
    words unpredictably for a tokenizer and mostly come from copy-paste; planes 0, 1 and 14 hold
    all of them.
    """
    chars = [
        i
        for plane in (0x00000, 0x10000, 0xE0000)
        for i in range(plane, plane + 0x10000)
        if unicodedata.category(chr(i)) in ("Cc", "Cf", "Cs") and chr(i) not in "\t\n"
    ]
    ranges = []
    start = prev = chars[0]
    for i in [*chars[1:], -1]:
        if i != prev + 1:
            ranges.append(f"{_esc(start)}-{_esc(prev)}" if prev > start else _esc(start))
            start = i
        prev = i
    return re.compile("[" + "".join(ranges) + "]+")


def _esc(cp: int) -> str:
    return f"\\U{cp:08x}"


def _nfkc(text: str) -> str:
    if unicodedata.is_normalized("NFKC", text):
        return text
    if not _CJK_PUNCT_RE.search(text):
        return unicodedata.normalize("NFKC", text)
    parts = _CJK_PUNCT_RE.split(text)  # odd indices are the protected punctuation marks
    parts[::2] = [unicodedata.normalize("NFKC", p) for p in parts[::2]]
    return "".join(parts)


def _tidy_lines(text: str) -> str:
    """Strip trailing spaces/tabs and collapse inner runs of spaces, keeping leading indentation."""
    if "  " not in text and " \n" not in text and "\t\n" not in text and not text.endswith((" ", "\t")):
        return text  # the common case, found with fast substring searches
    out = []
    for line in text.split("\n"):
        line = line.rstrip(" \t")
        if "  " in line:
            body = line.lstrip(" ")
            if "  " in body:
                line = line[: len(line) - len(body)] + _SPACE_RUN_RE.sub(" ", body)
        out.append(line)
    return "\n".join(out)


def normalize_text(text: str, *, first_part: bool = True) -> str:
    """NFKC (keeping CJK full-width punctuation), no invisible characters, tidy spaces and lines.

    Runs of spaces inside a line collapse to one, but leading indentation is kept so code and
    verse keep their shape; trailing spaces go; at most two blank lines in a row survive. A
    document's first chunk loses leading blank lines, and trailing blank lines shrink to a single
    newline, so joining a document's chunks still gives its text. Each step first checks with a
    fast built-in string method whether it has anything to do, since most text is already clean.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\n").replace("\u2029", "\n\n")
    text = _nfkc(text)
    if not text.replace("\n", " ").replace("\t", " ").isprintable():
        text = _invisible_re().sub("", text)
    text = _tidy_lines(text)
    if "\n\n\n\n" in text:
        text = _EXTRA_BLANK_LINES_RE.sub("\n\n\n", text)
    if first_part and text.startswith("\n"):
        text = text.lstrip("\n")
    if text.endswith("\n\n"):
        text = text.rstrip("\n") + "\n"
    return text


# --------------------------------------------------------------------------------------------
# PII
# --------------------------------------------------------------------------------------------

_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])")
_IPV4_RE = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|\.\d)"
)
_IPV6_RE = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
_PHONE_RE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){6,15}(?!\w)")
_PHONE_GROUPS_RE = re.compile(r"[ .-]")


def _is_phone(match: str) -> bool:
    """Tell phone numbers from other digit runs (years, prices, IDs) by digit count and grouping."""
    digits = sum(c.isdigit() for c in match)
    if not 9 <= digits <= 15:
        return False
    if re.fullmatch(r"1[3-9]\d{9}", match):  # Chinese mobile number
        return True
    body = match.lstrip("+(")
    groups = [g.strip("()") for g in _PHONE_GROUPS_RE.split(body.replace(")", " "))]
    groups = [g for g in groups if g]
    if len(groups) < 2 and not match.startswith("+"):
        return False  # a bare long number is more often an ID than a phone number
    if any(len(g) > 5 for g in groups[1:]) or sum(len(g) == 1 for g in groups) > 1:
        return False
    # Space-separated numbers without a prefix or other separator are usually lists of figures.
    return not (" " in match and not re.search(r"[-.()]", match) and not match.startswith(("+", "0")))


def _valid_ipv6(match: str) -> bool:
    if sum(c in "0123456789abcdefABCDEF" for c in match) < 2:
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replace e-mail addresses, IP addresses and phone numbers; return the text and counts.

    E-mails go first (they contain digits and dots), then IPs (dotted quads look like phone
    numbers), then phones, which are checked for a plausible digit count and grouping.
    """
    counts = dict.fromkeys(PII_KINDS, 0)

    def sub(kind: str, token: str, valid: Any = None) -> Any:
        def repl(m: re.Match[str]) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return token

        return repl

    if "@" in text:
        text = _EMAIL_RE.sub(sub("email", "<EMAIL>"), text)
    if "." in text:
        text = _IPV4_RE.sub(sub("ip", "<IP>"), text)
    if ":" in text:
        text = _IPV6_RE.sub(sub("ip", "<IP>", _valid_ipv6), text)
    text = _PHONE_RE.sub(sub("phone", "<PHONE>", _is_phone), text)
    return text, counts


# --------------------------------------------------------------------------------------------
# Quality signals
# --------------------------------------------------------------------------------------------


def line_repetition(text: str) -> float:
    """Share of the text's non-blank characters that sit in lines already seen earlier.

    This is Gopher's duplicate-line character fraction: 1.0 means the text is one line repeated.
    """
    if "\n" not in text:
        return 0.0
    seen: set[str] = set()
    dup = total = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            dup += len(line)
        else:
            seen.add(line)
    return dup / total if total else 0.0


def symbol_ratios(class_counts: np.ndarray) -> np.ndarray:
    """Share of symbols among non-whitespace characters (CJK ideographs count as letters)."""
    visible = class_counts[:, LETTER] + class_counts[:, PUNCT] + class_counts[:, SYMBOL]
    return class_counts[:, SYMBOL] / np.maximum(visible, 1)


def ngram_repetition(ngram_counts: np.ndarray, distinct_counts: np.ndarray) -> np.ndarray:
    """Share of 5-gram occurrences (words, or characters for Chinese) that repeat an earlier one."""
    rep = 1.0 - distinct_counts / np.maximum(ngram_counts, 1)
    rep[ngram_counts < _MIN_NGRAMS_FOR_REPETITION] = 0.0
    return rep


# --------------------------------------------------------------------------------------------
# The cleaner
# --------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """A document or chunk waiting in the current batch."""

    doc: Document
    text: str
    group: int  # index of its document in the batch's decision list; -1 = earlier batch
    pii: dict[str, int] | None = None  # replacements made, counted only if the document is kept


class Cleaner:
    """Stream filter: `for doc in Cleaner(cfg)(read_documents(...))` yields the kept, cleaned docs.

    Decisions are made on a document's first chunk (part 0); its continuation chunks are
    normalised and scrubbed like it and share its fate. Deduplication state (digests and MinHash
    bands of kept documents) lives as long as the Cleaner, so one Cleaner deduplicates across all
    the inputs it is given.
    """

    def __init__(self, cfg: CleanConfig | None = None, *, allow_empty: bool = False) -> None:
        self.cfg = cfg or CleanConfig()
        # False: a stream whose every document is dropped is an error naming the filters, since
        # training on nothing is never intended; True for callers that clean small pieces on their own
        self.allow_empty = allow_empty
        self._summary = CleanSummary()
        self._exact = ExactDeduplicator() if self.cfg.dedup else None
        self._near = (
            NearDuplicateIndex(self.cfg.near_dedup_threshold, self.cfg.num_perm)
            if self.cfg.near_dedup
            else None
        )
        self._opened = False  # has any document started yet?
        self._last_kept = True  # fate of the last document, for its chunks in the next batch

    @property
    def summary(self) -> CleanSummary:
        """A snapshot of the counts so far (complete once the stream is exhausted)."""
        s = self._summary
        return CleanSummary(
            s.docs_in, s.docs_kept, s.chars_in, s.chars_kept, dict(s.dropped), dict(s.pii_replaced)
        )

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        if not self.cfg.enabled:
            yield from self._pass_through(docs)
            return
        batch: list[_Item] = []
        decisions: list[str | None] = []  # per document of the batch: drop reason or None (kept)
        chars = 0
        for doc in docs:
            item = self._prepare(doc, batch, decisions)
            batch.append(item)
            chars += len(item.text)
            if len(decisions) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                yield from self._flush(batch, decisions)
                batch, decisions, chars = [], [], 0
        yield from self._flush(batch, decisions)
        self._check_kept_some()

    def _check_kept_some(self) -> None:
        s = self._summary
        if s.docs_in and not s.docs_kept and not self.allow_empty:
            raise LmforgeError(s.all_dropped_message(self.cfg))

    def _pass_through(self, docs: Iterable[Document]) -> Iterator[Document]:
        """Every document unchanged (cleaning disabled), still counted in the summary."""
        s = self._summary
        for doc in docs:
            if doc.part == 0:
                s.docs_in += 1
                s.docs_kept += 1
            s.chars_in += len(doc.text)
            s.chars_kept += len(doc.text)
            yield doc

    def clean_text(self, text: str, *, first_part: bool = True) -> str:
        """The normalisation and PII scrubbing applied to every kept document (no filtering)."""
        return self._transform(text, first_part)[0]

    def _transform(self, text: str, first_part: bool) -> tuple[str, dict[str, int] | None]:
        if not self.cfg.enabled:
            return text, None
        if self.cfg.normalize:
            text = normalize_text(text, first_part=first_part)
        if self.cfg.pii:
            return scrub_pii(text)
        return text, None

    def _prepare(self, doc: Document, batch: list[_Item], decisions: list[str | None]) -> _Item:
        self._summary.chars_in += len(doc.text)
        opens = doc.part == 0 or not self._opened  # a stream may start mid-document: treat as new
        text, pii = self._transform(doc.text, opens)
        if not opens:
            return _Item(doc, text, batch[-1].group if batch else -1, pii)
        self._opened = True
        self._summary.docs_in += 1
        decisions.append(self._cheap_reason(text))
        return _Item(doc, text, len(decisions) - 1, pii)

    def _cheap_reason(self, text: str) -> str | None:
        n = len(text.strip())
        if n == 0:
            return "empty"
        if n < self.cfg.min_chars:
            return "too_short"
        if self.cfg.max_chars and n > self.cfg.max_chars:
            return "too_long"
        return None

    def _flush(self, batch: list[_Item], decisions: list[str | None]) -> Iterator[Document]:
        if not batch:
            return
        first_texts = {}
        for item in batch:
            if item.group >= 0 and item.group not in first_texts:
                first_texts[item.group] = item.text
        self._decide(decisions, first_texts)
        for reason in decisions:
            if reason is None:
                self._summary.docs_kept += 1
            else:
                self._summary.dropped[reason] += 1
        for item in batch:
            kept = self._last_kept if item.group < 0 else decisions[item.group] is None
            if item.group >= 0:
                self._last_kept = kept
            if kept and item.pii:
                for kind, n in item.pii.items():
                    self._summary.pii_replaced[kind] += n
            if kept and item.text:
                self._summary.chars_kept += len(item.text)
                yield Document(item.text, item.doc.source, item.doc.part)

    def _decide(self, decisions: list[str | None], texts: dict[int, str]) -> None:
        """Fill in the batch-level decisions: symbols, repetition, exact and near duplicates."""
        cfg = self.cfg
        live = [g for g, reason in enumerate(decisions) if reason is None]
        check_symbols = cfg.max_symbol_ratio < 1.0
        check_repetition = cfg.max_repetition < 1.0
        dedup = self._exact is not None or self._near is not None
        if not live or not (check_symbols or check_repetition or dedup):
            return
        shingles = shingle_batch([texts[g] for g in live])
        symbols = symbol_ratios(shingles.class_counts)
        ngram_rep = ngram_repetition(shingles.ngram_counts, shingles.distinct_counts())
        survivors = []
        for k, g in enumerate(live):
            if check_symbols and symbols[k] > cfg.max_symbol_ratio:
                decisions[g] = "symbols"
            elif check_repetition and max(ngram_rep[k], line_repetition(texts[g])) > cfg.max_repetition:
                decisions[g] = "repetition"
            elif self._exact is not None and not self._exact.add_if_new(texts[g]):
                decisions[g] = "duplicate"
            else:
                survivors.append(k)
        if self._near is not None and survivors:
            sig = self._near.hasher.signatures(shingles.select(np.asarray(survivors)))
            for k, is_new in zip(survivors, self._near.add_signatures(sig)):
                if not is_new:
                    decisions[live[k]] = "near_duplicate"
