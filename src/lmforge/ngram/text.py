"""Read text files as sentences: one per line, every line kept (an empty line is an empty sentence).

Files go through `lmforge.text.corpus.read_documents`, so an n-gram model accepts the same inputs as
the rest of lmforge (a file, a directory, a glob, .gz, a byte-order mark) and fails the same way on
binary or mis-encoded files. Lines are not stripped of their blank neighbours: KenLM and the usual
WikiText convention both give an empty line its own `</s>`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.text.corpus import read_documents


def read_lines(data: str | Path | Sequence[str | Path], encoding: str = "utf-8") -> Iterator[str]:
    """Every line of the files named by `data` (file, directory, glob or a list of them), in order."""
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
