"""Packed, memory-mapped token shards: the one format training reads.

`prepare` turns a corpus into a directory of flat token files that the data loader memory-maps,
so training never tokenizes on the fly and a corpus larger than RAM trains fine::

    <out>/manifest.json   format, dtype, vocab size, eos id, per-split counts and sha256 (written last)
    <out>/tokenizer.json  the tokenizer that produced the ids
    <out>/train.bin       token ids (uint16 when the vocabulary fits, else uint32); each document's
                          tokens are followed by eos (GPT-2 style packing)
    <out>/train.idx       int64 .npy array of document start offsets, documents+1 long, last = tokens
    <out>/val.bin, <out>/val.idx

Why it is built this way:

* Streaming. Documents are read, cleaned and encoded in batches and appended to the .bin files, so
  memory does not grow with the corpus. The Rust tokenizer encodes one batch on its own threads
  while Python reads and cleans the next.
* A stable split. A hash of each document's text decides train or validation, so re-running gives
  the same split and a document never lands in both. A corpus with too few documents (one novel)
  is split by position instead: the last `val_fraction` of the token stream becomes validation.
* All or nothing. The directory is built under a temporary name next to `<out>` and renamed into
  place at the end, with the manifest written last, so an interrupted run never leaves a
  directory that looks valid. `Shards.open` checks sizes against the manifest before training.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer
from lmforge.utils.io import atomic_write_json, read_json, sha256_file

FORMAT = "lmforge-shards"
VERSION = 1
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
# Below this many documents a hashed split is too lumpy (or empty), so split by position.
MIN_DOCS_FOR_DOCUMENT_SPLIT = 20
# Bound on one encode batch, so a few huge documents cannot make a batch use gigabytes.
MAX_BATCH_CHARS = 8_000_000
_COPY_BYTES = 1 << 24
_IN_FLIGHT = 2  # encode batches queued behind the one being cleaned: overlap without unbounded RAM
_FIX = "re-run `lmforge prepare` to rebuild the shards"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: uint16 halves disk and page-cache use."""
    return np.dtype(np.uint16) if int(vocab_size) <= 65535 else np.dtype(np.uint32)


def is_val_document(text_utf8: bytes, val_fraction: float) -> bool:
    """Deterministic split decision from the text alone (stable across runs, machines and Pythons)."""
    if val_fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(text_utf8, digest_size=8).digest(), "little")
    return h < val_fraction * 2.0**64


# ------------------------------------------------------------------------------------- writing


class _SplitWriter:
    """Appends one split's tokens to `<name>.bin` and remembers where documents start.

    Document starts and per-document byte counts go to raw side files rather than lists, so even a
    corpus with hundreds of millions of documents keeps memory flat; they become `<name>.idx` at
    the end.
    """

    def __init__(self, root: Path, name: str, dtype: np.dtype) -> None:
        self.root, self.name, self.dtype = root, name, dtype
        self.bin: BinaryIO = open(root / f"{name}.bin", "wb")  # noqa: SIM115 - closed in close()
        self.starts_f: BinaryIO = open(root / f".{name}.starts", "wb")  # noqa: SIM115
        self.bytes_f: BinaryIO = open(root / f".{name}.docbytes", "wb")  # noqa: SIM115
        self.sha = hashlib.sha256()
        self.tokens = 0
        self.documents = 0
        self.bytes = 0

    def write(self, tokens: np.ndarray, starts: list[int], doc_bytes: list[int]) -> None:
        if len(tokens):
            buf = tokens.tobytes()
            self.bin.write(buf)
            self.sha.update(buf)
        if starts:
            np.asarray(starts, dtype=np.int64).tofile(self.starts_f)
        if doc_bytes:
            np.asarray(doc_bytes, dtype=np.int64).tofile(self.bytes_f)
            self.bytes += sum(doc_bytes)
        self.tokens += len(tokens)
        self.documents += len(starts)

    def close(self) -> None:
        for f in (self.bin, self.starts_f, self.bytes_f):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    @property
    def bin_path(self) -> Path:
        return self.root / f"{self.name}.bin"

    def starts(self) -> np.ndarray:
        return np.fromfile(self.root / f".{self.name}.starts", dtype=np.int64)

    def doc_bytes(self) -> np.ndarray:
        return np.fromfile(self.root / f".{self.name}.docbytes", dtype=np.int64)


@dataclass
class EncodeBatch:
    """Texts to encode plus, per text, whether it starts a document and which split it belongs to."""

    texts: list[str] = field(default_factory=list)
    new_doc: list[bool] = field(default_factory=list)
    is_val: list[bool] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    chars: int = 0


class _Packer:
    """Encodes batches and appends them to the split files, in order, on one worker thread.

    It owns the "open document" state: eos is written when the next document starts (or at the
    end), which is what keeps continuation chunks of one document free of eos between them.
    """

    def __init__(self, tok: Tokenizer, writers: dict[bool, _SplitWriter], dtype: np.dtype) -> None:
        self.tok, self.writers, self.dtype = tok, writers, dtype
        self.eos = int(tok.eos_id)  # type: ignore[arg-type]  # checked by prepare
        self.open_val: bool | None = None  # split of the document being written, None before the first
        self.open_bytes = 0

    def pack(self, batch: EncodeBatch) -> None:
        ids = self.tok.encode_batch(batch.texts)
        pieces: dict[bool, list[list[int]]] = {False: [], True: []}
        counts = {False: self.writers[False].tokens, True: self.writers[True].tokens}
        starts: dict[bool, list[int]] = {False: [], True: []}
        doc_bytes: dict[bool, list[int]] = {False: [], True: []}
        eos = [self.eos]
        for seq, new, val, nb in zip(ids, batch.new_doc, batch.is_val, batch.nbytes):
            if new:
                if self.open_val is not None:
                    pieces[self.open_val].append(eos)
                    counts[self.open_val] += 1
                    doc_bytes[self.open_val].append(self.open_bytes)
                starts[val].append(counts[val])
                self.open_val, self.open_bytes = val, 0
            else:
                val = bool(self.open_val)
            pieces[val].append(seq)
            counts[val] += len(seq)
            self.open_bytes += nb
        self._flush(pieces, counts, starts, doc_bytes)

    def finish(self) -> None:
        """Close the last document with its eos."""
        if self.open_val is not None:
            val = self.open_val
            tokens = np.asarray([self.eos], dtype=self.dtype)
            self.writers[val].write(tokens, [], [self.open_bytes])
            self.open_val = None

    def _flush(self, pieces: dict, counts: dict, starts: dict, doc_bytes: dict) -> None:
        for val, writer in self.writers.items():
            n = counts[val] - writer.tokens
            # One C-level pass from the encoder's lists to a packed array; no per-token Python work.
            flat = np.fromiter(itertools.chain.from_iterable(pieces[val]), dtype=self.dtype, count=n)
            writer.write(flat, starts[val], doc_bytes[val])


def _write_idx(path: Path, starts: np.ndarray, total: int) -> None:
    """Write document offsets as an int64 .npy file (any file name: np.load reads the magic)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(len(starts) + 1,))
    arr[:-1] = starts
    arr[-1] = total
    arr.flush()
    del arr


def _copy_range(src: Path, dst: BinaryIO, start: int = 0, length: int | None = None) -> None:
    with open(src, "rb") as f:
        f.seek(start)
        left = length
        while left is None or left > 0:
            chunk = f.read(_COPY_BYTES if left is None else min(_COPY_BYTES, left))
            if not chunk:
                break
            dst.write(chunk)
            if left is not None:
                left -= len(chunk)


def _split_entry(tokens: int, documents: int, nbytes: int, sha: str) -> dict[str, Any]:
    return {"tokens": int(tokens), "documents": int(documents), "bytes": int(nbytes), "sha256": sha}


def _finish_by_document(tmp: Path, writers: dict[bool, _SplitWriter]) -> dict[str, dict[str, Any]]:
    splits = {}
    for w in writers.values():
        _write_idx(tmp / f"{w.name}.idx", w.starts(), w.tokens)
        splits[w.name] = _split_entry(w.tokens, w.documents, w.bytes, w.sha.hexdigest())
    return splits


def _finish_by_position(
    tmp: Path, writers: dict[bool, _SplitWriter], dtype: np.dtype, val_fraction: float
) -> dict[str, dict[str, Any]]:
    """Make the last `val_fraction` of the token stream the validation split, streaming on disk.

    Any documents the hash had sent to validation are appended to train first; then the tail of
    train.bin is copied into val.bin and train.bin is truncated, so RAM never holds the stream.
    """
    train, val = writers[False], writers[True]
    item = dtype.itemsize
    starts = train.starts()
    doc_bytes = train.doc_bytes()
    if val.tokens:
        with open(train.bin_path, "ab") as f:
            _copy_range(val.bin_path, f)
        starts = np.concatenate([starts, val.starts() + train.tokens])
        doc_bytes = np.concatenate([doc_bytes, val.doc_bytes()])
    total = train.tokens + val.tokens
    total_bytes = int(doc_bytes.sum())
    n_val = min(total - 1, max(1, round(total * val_fraction))) if total >= 2 else 0
    cut = total - n_val
    with open(val.bin_path, "wb") as f:
        _copy_range(train.bin_path, f, cut * item)
        f.flush()
        os.fsync(f.fileno())
    os.truncate(train.bin_path, cut * item)

    k = int(np.searchsorted(starts, cut, side="left"))  # documents starting before the cut
    train_starts = starts[:k]
    val_starts = starts[k:] - cut
    if n_val and (not len(val_starts) or val_starts[0] != 0):  # validation opens mid-document
        val_starts = np.concatenate([np.zeros(1, np.int64), val_starts])
    # Bytes: whole documents on each side, plus the straddling document shared by token share.
    train_bytes = int(doc_bytes[: max(k - 1, 0)].sum())
    if k:
        end = int(starts[k]) if k < len(starts) else total
        begin = int(starts[k - 1])
        share = (cut - begin) / (end - begin) if end > begin else 1.0
        train_bytes += round(int(doc_bytes[k - 1]) * min(share, 1.0))
    _write_idx(tmp / "train.idx", train_starts, cut)
    _write_idx(tmp / "val.idx", val_starts, n_val)
    return {
        "train": _split_entry(cut, len(train_starts), train_bytes, sha256_file(train.bin_path)),
        "val": _split_entry(n_val, len(val_starts), total_bytes - train_bytes, sha256_file(val.bin_path)),
    }


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished directory into place; an old shard directory there is swapped out first."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise LmforgeError(f"{out}: exists and is a file; choose a directory path for --out")
    if out.is_dir() and any(out.iterdir()) and not is_shard_dir(out):
        raise LmforgeError(
            f"{out}: directory exists and does not hold shards; choose a new --out (prepare will not "
            "overwrite other files)"
        )


def _sources(data: Any) -> list[str]:
    if isinstance(data, (str, Path)):
        return [str(data)]
    return [str(s) for s in data] if isinstance(data, Sequence) else [str(data)]


def _progress(show: bool) -> Any:
    from tqdm.auto import tqdm

    # A bar only on a terminal: in logs and CI, carriage-return updates are noise.
    return tqdm(
        desc="prepare", unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr,
        disable=not (show and sys.stderr.isatty()),
    )  # fmt: skip


def encode_batches(
    docs: Iterable[Any], val_fraction: float, batch_docs: int, max_chars: int = MAX_BATCH_CHARS
) -> Iterator[EncodeBatch]:
    """Group cleaned documents into the batches `prepare` encodes, and decide each document's split
    (public so that the prepare benchmark times the reference tokenizer on exactly these batches)."""
    batch = EncodeBatch()
    source: str | None = None
    val = False
    for doc in docs:
        text = doc.text
        raw = text.encode("utf-8")
        new = doc.part == 0 or doc.source != source
        if new:
            # A continuation chunk whose first part was dropped starts a document of its own.
            source = doc.source
            val = is_val_document(raw, val_fraction)
        batch.texts.append(text)
        batch.new_doc.append(new)
        batch.is_val.append(val)
        batch.nbytes.append(len(raw))
        batch.chars += len(text)
        if len(batch.texts) >= batch_docs or batch.chars >= max_chars:
            yield batch
            batch = EncodeBatch()
    if batch.texts:
        yield batch


def _as_val(batches: Iterable[EncodeBatch]) -> Iterator[EncodeBatch]:
    """Batches of a separate validation corpus: every document goes to the val split."""
    for batch in batches:
        batch.is_val = [True] * len(batch.is_val)
        yield batch


def _packing_tokenizer(tokenizer: Tokenizer | str | Path) -> Tokenizer:
    """The tokenizer to encode with, which must have an end-of-text token to close each document."""
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    if tok.eos_id is None:
        raise LmforgeError(
            "the tokenizer has no end-of-text token (<|endoftext|>, </s>, [SEP] ...) to separate documents; "
            "train one with `lmforge tokenizer train` or add such a special token"
        )
    return tok


def _pack(packer: _Packer, batches: Iterable[EncodeBatch], show_progress: bool) -> None:
    """Encode and append every batch: one batch encodes on a worker thread while the next is read
    and cleaned, with at most `_IN_FLIGHT` queued so memory stays bounded."""
    start = time.perf_counter()
    n_docs = 0
    pool = ThreadPoolExecutor(1, thread_name_prefix="lmforge-pack")
    try:
        with _progress(show_progress) as bar:
            pending: deque[Future[None]] = deque()
            for batch in batches:
                while len(pending) >= _IN_FLIGHT:
                    pending.popleft().result()
                pending.append(pool.submit(packer.pack, batch))
                n_docs += sum(batch.new_doc)
                bar.update(sum(batch.nbytes))
                rate = n_docs / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{n_docs:,} docs, {rate:,.0f} docs/s", refresh=False)
            while pending:
                pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on error, do not encode what is queued
    packer.finish()


def _finish_splits(
    tmp: Path, writers: dict[bool, _SplitWriter], dtype: np.dtype, val_fraction: float
) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Whether the split is by position (too few documents, or one side empty), and the splits'
    manifest entries; the side files the writers kept are removed."""
    docs_total = writers[False].documents + writers[True].documents
    by_position = val_fraction > 0 and (
        docs_total < MIN_DOCS_FOR_DOCUMENT_SPLIT
        or not writers[True].documents
        or not writers[False].documents
    )
    if by_position:
        splits = _finish_by_position(tmp, writers, dtype, val_fraction)
    else:
        splits = _finish_by_document(tmp, writers)
    for name in SPLITS:
        for side in (f".{name}.starts", f".{name}.docbytes"):
            (tmp / side).unlink(missing_ok=True)
    return by_position, splits


def prepare(
    data: Any,
    tokenizer: Tokenizer | str | Path,
    out: str | Path,
    *,
    clean: Any = None,
    val_fraction: float = 0.005,
    text_field: str = "text",
    txt_unit: str = "paragraph",
    encoding: str = "utf-8",
    batch_docs: int = 256,
    show_progress: bool = True,
    val_data: Any = None,
) -> dict[str, Any]:
    """Read, clean, deduplicate, tokenize and pack a corpus into a shard directory; return its manifest.

    The API twin of `lmforge prepare --data corpus/ --tokenizer tok.json --out shards/`. `clean` is
    a `CleanConfig` (None = defaults). Memory stays flat whatever the corpus size.

    `val_data` names a separate validation corpus (the valid file most corpora ship): all of `data`
    is then training text, and the validation split is `val_data` exactly as written, neither
    cleaned nor deduplicated, and a plain-text file as one stream (no end-of-text token between its
    paragraphs), so that its perplexity is the one others report on that file.
    """
    from lmforge.text.clean import Cleaner
    from lmforge.text.corpus import read_documents

    if not 0.0 <= float(val_fraction) < 1.0:
        raise LmforgeError(f"val_fraction={val_fraction} must be in [0, 1), e.g. 0.005")
    if int(batch_docs) < 1:
        raise LmforgeError(f"batch_docs={batch_docs} must be at least 1")
    tok = _packing_tokenizer(tokenizer)
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    vocab_size = tok.vocab_size
    dtype = dtype_for_vocab(vocab_size)
    cleaner = Cleaner(clean)
    read = {"text_field": text_field, "txt_unit": txt_unit, "encoding": encoding}
    docs = cleaner(read_documents(data, **read))  # type: ignore[arg-type]
    if val_data is not None:
        val_fraction = 0.0
        batches = itertools.chain(
            encode_batches(docs, 0.0, int(batch_docs)),
            # A plain-text validation file is one stream (txt_unit "file"), as benchmarks score it.
            _as_val(
                encode_batches(read_documents(val_data, **{**read, "txt_unit": "file"}), 0.0, int(batch_docs))
            ),  # type: ignore[arg-type]
        )
    else:
        batches = encode_batches(docs, float(val_fraction), int(batch_docs))

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    writers: dict[bool, _SplitWriter] = {}
    try:
        writers = {False: _SplitWriter(tmp, "train", dtype), True: _SplitWriter(tmp, "val", dtype)}
        packer = _Packer(tok, writers, dtype)
        _pack(packer, batches, show_progress)
        for w in writers.values():
            w.close()
        if writers[False].tokens == 0 and (val_data is not None or writers[True].tokens == 0):
            raise LmforgeError(
                f"no text left to tokenize in {data!r} after cleaning; check --data and --text_field, "
                "or loosen the cleaning filters"
            )
        if val_data is not None and writers[True].tokens == 0:
            raise LmforgeError(
                f"no text in the validation data {val_data!r}; check --val_data and --text_field"
            )
        by_position, splits = _finish_splits(tmp, writers, dtype, float(val_fraction))
        tok.save(tmp / TOKENIZER)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": dtype.name,
            "vocab_size": int(vocab_size),
            "eos_id": int(tok.eos_id),
            "tokenizer_sha256": tok.sha256,
            "tokenizer_kind": tok.kind,
            "split_by": "position" if by_position else "document",
            "val_fraction": float(val_fraction),
            "splits": splits,
            "cleaning": cleaner.summary.to_dict(),
            "sources": _sources(data),
            **({"val_sources": _sources(val_data)} if val_data is not None else {}),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(tmp / MANIFEST, manifest)  # last: its presence marks a complete directory
        _replace_dir(tmp, out)
    except BaseException as e:
        for w in writers.values():
            with contextlib.suppress(Exception):
                w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not e.filename:  # a buffered write's error names no file
            raise OSError(e.errno, e.strerror, str(out)) from e
        raise
    return manifest


# ------------------------------------------------------------------------------------- reading


def is_shard_dir(path: str | Path | None) -> bool:
    """True when `path` is a complete shard directory (has a manifest of our format); never raises."""
    if path is None:
        return False
    p = Path(path) / MANIFEST
    try:
        return p.is_file() and read_json(p).get("format") == FORMAT
    except Exception:
        return False


class Shards:
    """A validated, read-only view of a shard directory written by `prepare`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.vocab_size = int(manifest["vocab_size"])
        self.eos_id = int(manifest["eos_id"])
        self.split_by = str(manifest.get("split_by", "document"))
        self._tokenizer: Tokenizer | None = None

    @classmethod
    def open(cls, path: str | Path) -> Shards:
        """Open and check a shard directory: manifest fields, files present, sizes match the counts."""
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise LmforgeError(f"{path}: no such shard directory; create it with `lmforge prepare`")
        if not mpath.is_file():
            raise LmforgeError(f"{mpath}: missing, so {path} is not a complete shard directory; {_FIX}")
        try:
            manifest = read_json(mpath)
        except LmforgeError:
            raise LmforgeError(f"{mpath}: corrupt JSON; {_FIX}") from None
        cls._check_manifest(mpath, manifest)
        self = cls(path, manifest)
        if not (path / TOKENIZER).is_file():
            raise LmforgeError(f"{path / TOKENIZER}: missing; {_FIX}")
        for split in SPLITS:
            self._check_split(split)
        return self

    @staticmethod
    def _check_manifest(mpath: Path, m: Any) -> None:
        def bad(what: str) -> LmforgeError:
            return LmforgeError(f"{mpath}: {what}; {_FIX}")

        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise bad(f"not an lmforge shard manifest (format must be {FORMAT!r})")
        version = m.get("version")
        if not isinstance(version, int) or version < 1:
            raise bad(f"invalid version {version!r}")
        if version > VERSION:
            raise LmforgeError(
                f"{mpath}: shard format version {version} is newer than this lmforge reads ({VERSION}); "
                "upgrade lmforge or re-run `lmforge prepare` with this version"
            )
        if m.get("dtype") not in ("uint16", "uint32"):
            raise bad(f"dtype {m.get('dtype')!r} must be 'uint16' or 'uint32'")
        vocab, eos = m.get("vocab_size"), m.get("eos_id")
        if not isinstance(vocab, int) or vocab < 1:
            raise bad(f"vocab_size {vocab!r} must be a positive integer")
        if np.iinfo(np.dtype(m["dtype"])).max < vocab - 1:
            raise bad(f"dtype {m['dtype']} cannot hold ids of a {vocab}-token vocabulary")
        if not isinstance(eos, int) or not 0 <= eos < vocab:
            raise bad(f"eos_id {eos!r} is not an id of the {vocab}-token vocabulary")
        splits = m.get("splits")
        if not isinstance(splits, dict):
            raise bad("no 'splits' section")
        for split in SPLITS:
            s = splits.get(split)
            if not isinstance(s, dict):
                raise bad(f"no {split!r} split")
            for key in ("tokens", "documents", "bytes"):
                if not isinstance(s.get(key), int) or s[key] < 0:
                    raise bad(f"splits.{split}.{key} must be a non-negative integer, got {s.get(key)!r}")
            if not isinstance(s.get("sha256"), str):
                raise bad(f"splits.{split}.sha256 is missing")

    def _check_split(self, split: str) -> None:
        info = self.manifest["splits"][split]
        bin_path, idx_path = self.path / f"{split}.bin", self.path / f"{split}.idx"
        for p in (bin_path, idx_path):
            if not p.is_file():
                raise LmforgeError(f"{p}: missing; {_FIX}")
        expected = info["tokens"] * self.dtype.itemsize
        size = bin_path.stat().st_size
        if size != expected:
            what = "truncated" if size < expected else "longer than the manifest says"
            raise LmforgeError(
                f"{bin_path}: {what} ({size:,} bytes, manifest says {info['tokens']:,} {self.dtype.name} "
                f"tokens = {expected:,} bytes); {_FIX}"
            )
        try:
            idx = np.load(idx_path, mmap_mode="r")
        except Exception:
            raise LmforgeError(f"{idx_path}: not a readable offsets file; {_FIX}") from None
        ok = (
            idx.ndim == 1
            and idx.dtype == np.int64
            and len(idx) == info["documents"] + 1
            and int(idx[0]) == 0
            and int(idx[-1]) == info["tokens"]
        )
        if not ok:
            raise LmforgeError(
                f"{idx_path}: document offsets do not match the manifest ({info['documents']} documents, "
                f"{info['tokens']} tokens); {_FIX}"
            )
        self._check_ids(split)

    def _check_ids(self, split: str, chunk: int = 1 << 26) -> None:
        """Every id must be one of the vocabulary's: a damaged byte would otherwise surface as an
        IndexError deep in the embedding. One vectorised max per 64M tokens (a fraction of a second
        per GB), cheaper than re-hashing the file, which `verify` does."""
        tokens = self.tokens(split)
        for start in range(0, len(tokens), chunk):
            top = int(tokens[start : start + chunk].max())
            if top >= self.vocab_size:
                raise LmforgeError(
                    f"{self.path / f'{split}.bin'}: holds token id {top}, outside the {self.vocab_size}-token "
                    f"vocabulary of {MANIFEST} (the file is damaged); {_FIX}"
                )

    def _split(self, split: str) -> dict[str, Any]:
        if split not in SPLITS:
            raise LmforgeError(f"split {split!r} is unknown; use 'train' or 'val'")
        return self.manifest["splits"][split]

    def num_tokens(self, split: str = "train") -> int:
        return int(self._split(split)["tokens"])

    def tokens(self, split: str = "train") -> np.memmap:
        """The split's token ids as a read-only 1-D memmap (nothing is loaded until touched)."""
        n = self.num_tokens(split)
        if n == 0:  # mmap cannot map an empty file; an empty read-only array behaves the same
            empty = np.zeros(0, dtype=self.dtype)
            empty.flags.writeable = False
            return empty  # type: ignore[return-value]
        return np.memmap(self.path / f"{split}.bin", dtype=self.dtype, mode="r", shape=(n,))

    def doc_offsets(self, split: str = "train") -> np.ndarray:
        """Start offset of each document in `tokens(split)`, plus the total token count at the end."""
        self._split(split)
        return np.load(self.path / f"{split}.idx", mmap_mode="r")

    def tokenizer(self) -> Tokenizer:
        """The tokenizer that produced the ids, checked against the manifest's hash."""
        if self._tokenizer is None:
            tok = Tokenizer.load(self.path / TOKENIZER)
            if tok.sha256 != self.manifest.get("tokenizer_sha256"):
                raise LmforgeError(
                    f"{self.path / TOKENIZER}: does not match the tokenizer these shards were made with "
                    f"(sha256 differs from {MANIFEST}); {_FIX}"
                )
            self._tokenizer = tok
        return self._tokenizer

    def verify(self) -> None:
        """Re-hash the .bin files and check the offsets are sorted: catches silent corruption."""
        for split in SPLITS:
            info = self._split(split)
            p = self.path / f"{split}.bin"
            if sha256_file(p) != info["sha256"]:
                raise LmforgeError(f"{p}: contents do not match the sha256 in {MANIFEST} (corrupted); {_FIX}")
            idx = self.doc_offsets(split)
            if len(idx) > 1 and bool(np.any(np.diff(idx) < 0)):
                raise LmforgeError(
                    f"{self.path / f'{split}.idx'}: offsets are not sorted (corrupted); {_FIX}"
                )

    def __repr__(self) -> str:
        s = self.manifest["splits"]
        return (
            f"Shards({str(self.path)!r}, train={s['train']['tokens']:,} tokens, val={s['val']['tokens']:,} "
            f"tokens, dtype={self.dtype.name}, split_by={self.split_by})"
        )
