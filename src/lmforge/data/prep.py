"""`PrepConfig`: how a raw corpus becomes shards (read, clean, split), for `lmforge prepare` and
for pretraining on raw text, whose `prep` section it is.

Its reading fields (`txt_unit`, `text_field`, `encoding`) are also the CLI's flags wherever a
command reads a corpus (tokenizer training, evaluation), so one declaration gives every command
the same names, defaults and help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmforge.text.clean import CleanConfig

READ_FIELDS: tuple[str, ...] = ("txt_unit", "text_field", "encoding")


@dataclass
class PrepConfig:
    val_fraction: float = (
        0.005  # share of documents (or of the tail, for one long text) held out for validation
    )
    # what one document is in a .txt file: paragraph = lines up to the next blank (or whitespace-only)
    # line, as BERT's data tools split text; file = the whole file; line = each non-empty line
    txt_unit: Literal["file", "paragraph", "line"] = "paragraph"
    text_field: str = "text"  # the field holding the text in .jsonl / .parquet
    encoding: str = "utf-8"  # encoding of text files (e.g. gbk, utf-16)
    clean: CleanConfig = field(default_factory=CleanConfig)
