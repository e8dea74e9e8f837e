"""Raw text in: read a corpus as documents (`corpus`), then normalise, filter and deduplicate them
(`clean`, `dedup`). Tokenizer training, `lmforge prepare`, evaluation and the n-gram models all
read text through here, so they agree on what a document is and on what cleaning removes."""
