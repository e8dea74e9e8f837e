"""Tokenizers: train one on your corpus, save it as a single `tokenizer.json`, load it anywhere.

`Tokenizer` is a thin, typed wrapper over the Rust `tokenizers.Tokenizer`: all the heavy lifting
(training, parallel batch encoding) stays in Rust, and the file on disk is the standard Hugging Face
`tokenizer.json`, so a tokenizer trained here loads in `transformers` and one downloaded from the
Hub (GPT-2, BERT, ...) loads here.

Five kinds, chosen for how they treat text (Chinese included):

* ``bpe``: byte-level BPE as in GPT-2. Every string maps to bytes first, so it never needs
  `<unk>` and ``decode(encode(x)) == x`` exactly, for any language or emoji.
* ``wordpiece``: BERT's WordPiece with BERT's normaliser: control characters are dropped,
  whitespace is unified, every CJK character becomes its own word (as in BERT-Chinese) and, with
  ``lowercase=True``, text is lowercased and accents are stripped as in ``bert-base-uncased``.
  Decoding therefore returns the normalised text with spaces between words and punctuation;
  the spaces it would put around CJK characters are removed again (see `join_cjk`).
* ``unigram``: a SentencePiece-style unigram LM over Metaspace (``▁`` marks spaces), which needs
  no word boundaries and so suits Chinese well. Characters never seen in training become `<unk>`.
* ``char``: one token per Unicode character; characters outside the vocabulary become `<unk>`.
* ``word``: one token per whitespace-separated word, for pre-tokenized benchmark text (WikiText,
  Penn Treebank) run as the literature ran it: a closed vocabulary of the most frequent words,
  every other word read as the unknown token. When the corpus writes its own ``<unk>`` (WikiText
  does), that word is the unknown token, so unseen words and the corpus's ``<unk>`` are one event,
  as for an n-gram model. Decoding joins the words with single spaces.

Special-token roles (eos, pad, unk, mask, cls, sep, bos) are never stored separately: they are
recovered from the token names in the file, which is what lets a bare `tokenizer.json` from a run
directory or from the Hub be used directly. GPT-style kinds use `<|endoftext|>` as eos and
`<|pad|>`, `<|unk|>`, `<|mask|>`, `<|cls|>`, `<|sep|>` for the other roles (the `<|...|>` form
keeps them from colliding with text such as WikiText's literal ``<unk>``); wordpiece uses BERT's
``[PAD] [UNK] [CLS] [SEP] [MASK]`` with ``[SEP]`` doubling as eos. Byte-level BPE keeps an unk
token too, so every kind exposes the same roles, but it is never produced by encoding.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.errors import LmforgeError
from lmforge.utils.io import atomic_write_text

if TYPE_CHECKING:
    from lmforge.text.clean import CleanConfig

TokenizerKind = Literal["bpe", "wordpiece", "unigram", "char", "word"]
KINDS: tuple[str, ...] = ("bpe", "wordpiece", "unigram", "char", "word")

# Role -> token, in id order (ids 0..5 of a freshly trained tokenizer).
GPT_SPECIALS: dict[str, str] = {
    "eos": "<|endoftext|>",
    "pad": "<|pad|>",
    "unk": "<|unk|>",
    "mask": "<|mask|>",
    "cls": "<|cls|>",
    "sep": "<|sep|>",
}
BERT_SPECIALS: dict[str, str] = {
    "pad": "[PAD]",
    "unk": "[UNK]",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
}

# Names that identify a role in a tokenizer.json of unknown origin, most specific first. Only
# special (added) tokens are matched, so a merged text token that happens to read "<s>" is ignored.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "eos": ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "[EOS]"),
    "bos": ("<s>", "<bos>", "<|bos|>", "<|begin_of_text|>", "<|startoftext|>", "[BOS]"),
    "pad": ("<|pad|>", "<pad>", "[PAD]", "<|padding|>"),
    "unk": ("<|unk|>", "<unk>", "[UNK]"),
    "mask": ("<|mask|>", "<mask>", "[MASK]"),
    "cls": ("<|cls|>", "[CLS]", "<cls>"),
    "sep": ("<|sep|>", "[SEP]", "<sep>"),
}
UNIGRAM_CHAR_COVERAGE = 0.9995  # SentencePiece's default for CJK-rich text

ROLES: tuple[str, ...] = ("eos", "bos", "pad", "unk", "mask", "cls", "sep")

# BERT's definition of a "Chinese character" (CJK ideographs), plus CJK and full-width punctuation:
# WordPiece decoding puts a space around each of these, which Chinese text never had.
_CJK = (
    "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
    "\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"
)
_CJK_CHAR = re.compile(f"[{_CJK}]")
_LATIN_CHAR = re.compile("[A-Za-z]")
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")
_SPACE_BY_CJK = re.compile(f"(?<=[{_CJK}]) | (?=[{_CJK}])")


def join_cjk(text: str) -> str:
    """Undo WordPiece's spaces around CJK characters.

    Spaces between two CJK characters always go. In mostly-Chinese text, spaces between a CJK
    character and a Latin word or a number go too ("据ESPN消息", "4月12日"); in mostly-English text
    they stay ("the word 中国 means"), since there they were usually in the original.
    """
    if " " not in text:
        return text
    n_cjk = len(_CJK_CHAR.findall(text))
    if not n_cjk:
        return text
    rule = _SPACE_BY_CJK if n_cjk >= len(_LATIN_CHAR.findall(text)) else _SPACE_BETWEEN_CJK
    return rule.sub("", text)


@dataclass
class TokenizerConfig:
    """What to train. `vocab_size` counts the special tokens."""

    # bpe (byte-level, GPT-2), wordpiece (BERT), unigram (SentencePiece-style), char or word (whitespace
    # words, closed vocabulary); "auto" in a pretraining config picks bpe for causal LM and wordpiece
    # for the masked-LM objectives.
    kind: Literal["auto", "bpe", "wordpiece", "unigram", "char", "word"] = "bpe"
    vocab_size: int = 8000  # vocabulary size, special tokens included
    min_frequency: int = 2  # ignore merges/pieces seen fewer times
    lowercase: bool = False  # lowercase text before tokenizing

    def validate(self) -> None:
        """Fail before a long training run, naming the key and the fix."""
        if self.kind == "auto":
            self.kind = "bpe"
        if self.kind not in KINDS:
            raise LmforgeError(f"tokenizer kind={self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        floor = 256 + len(GPT_SPECIALS) if self.kind == "bpe" else 2 * len(GPT_SPECIALS)
        if int(self.vocab_size) < floor:
            why = (
                " (byte-level BPE needs all 256 bytes plus the special tokens)" if self.kind == "bpe" else ""
            )
            raise LmforgeError(
                f"tokenizer vocab_size={self.vocab_size} is too small{why}; use at least {floor}"
            )
        if int(self.min_frequency) < 0:
            raise LmforgeError(f"tokenizer min_frequency={self.min_frequency} must be >= 0")


def _build(cfg: TokenizerConfig) -> tuple[tokenizers.Tokenizer, Any]:
    """An untrained backend and its trainer for `cfg.kind`."""
    vs, mf, progress = int(cfg.vocab_size), int(cfg.min_frequency), False
    lower = [normalizers.Lowercase()] if cfg.lowercase else []
    if cfg.kind == "bpe":
        tok = tokenizers.Tokenizer(models.BPE())
        if lower:
            tok.normalizer = normalizers.Sequence(lower)
        # No prefix space and no normaliser: that is what makes decode(encode(x)) == x exact.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vs,
            min_frequency=mf,
            special_tokens=list(GPT_SPECIALS.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress,
        )
    elif cfg.kind == "wordpiece":
        tok = tokenizers.Tokenizer(
            models.WordPiece(unk_token=BERT_SPECIALS["unk"], max_input_chars_per_word=100)
        )
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=bool(cfg.lowercase)
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vs,
            min_frequency=mf,
            special_tokens=list(BERT_SPECIALS.values()),
            continuing_subword_prefix="##",
            # Keep the commonest characters only, so a CJK corpus's thousands of rare characters
            # cannot push the vocabulary past vocab_size; the rest become [UNK] as in BERT.
            limit_alphabet=max(1, int(0.8 * (vs - len(BERT_SPECIALS)))),
            show_progress=progress,
        )
    elif cfg.kind == "unigram":
        tok = tokenizers.Tokenizer(models.Unigram())
        if lower:
            tok.normalizer = normalizers.Sequence(lower)
        # "first": only the start of the text gets a ▁, so newlines and spaces survive decoding.
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        trainer = trainers.UnigramTrainer(
            vocab_size=vs,
            special_tokens=list(GPT_SPECIALS.values()),
            unk_token=GPT_SPECIALS["unk"],
            show_progress=progress,
        )
    elif cfg.kind == "word":
        tok = tokenizers.Tokenizer(models.WordLevel(unk_token=GPT_SPECIALS["unk"]))
        if lower:
            tok.normalizer = normalizers.Sequence(lower)
        # Split on whitespace only: pre-tokenized text keeps its punctuation tokens ("@-@", ",") as
        # words. No decoder: the library's default decoding joins tokens with single spaces.
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # vocab_size (specials included) and min_frequency are the cut-off of the closed vocabulary.
        trainer = trainers.WordLevelTrainer(
            vocab_size=vs,
            min_frequency=mf,
            special_tokens=list(GPT_SPECIALS.values()),
            show_progress=progress,
        )
    else:  # char
        tok = tokenizers.Tokenizer(models.WordLevel(unk_token=GPT_SPECIALS["unk"]))
        if lower:
            tok.normalizer = normalizers.Sequence(lower)
        tok.pre_tokenizer = pre_tokenizers.FixedLength(length=1)  # splits on characters, not bytes
        tok.decoder = decoders.Fuse()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vs,
            min_frequency=mf,
            special_tokens=list(GPT_SPECIALS.values()),
            show_progress=progress,
        )
    return tok, trainer


def _train_unigram(
    backend: tokenizers.Tokenizer, trainer: Any, texts: Iterable[str], *, vocab_size: int
) -> None:
    """Unigram training with SentencePiece's character coverage.

    The Rust unigram trainer insists on a vocabulary holding every character it sees, which a
    Chinese corpus (thousands of characters, many seen once) easily exceeds. Like SentencePiece we
    keep the characters that cover 99.95% of the text (capped to leave room for longer pieces) and
    drop the rest from the training text; at encode time they become <unk>. Counting needs a first
    pass, so the texts are spooled to a temporary file instead of being held in memory.
    """
    counts: Counter[str] = Counter()
    with tempfile.TemporaryFile() as spool:
        for text in texts:
            counts.update(text)
            data = text.encode("utf-8")
            spool.write(len(data).to_bytes(8, "little"))
            spool.write(data)
        budget = max(1, int(0.9 * (vocab_size - len(GPT_SPECIALS))))
        total, covered, keep = sum(counts.values()), 0, 0
        for _, n in counts.most_common(budget):
            if total and covered / total >= UNIGRAM_CHAR_COVERAGE:
                break
            covered, keep = covered + n, keep + 1
        dropped = {ord(c): None for c, _ in counts.most_common()[keep:]}

        def replay() -> Iterator[str]:
            spool.seek(0)
            while header := spool.read(8):
                text = spool.read(int.from_bytes(header, "little")).decode("utf-8")
                yield text.translate(dropped) if dropped else text

        backend.train_from_iterator(replay(), trainer=trainer)


CORPUS_UNK = "<unk>"  # how WikiText and Penn Treebank write their own unknown word


def _corpus_unk(backend: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """A trained word-level tokenizer whose unknown token is the corpus's own `<unk>`, if it has one.

    Benchmark text that already replaced its rare words by `<unk>` expects every other unseen word
    to be that same event (an n-gram model reads both as `<unk>`); mapping them to a second token
    would split the probability mass and make per-word perplexities incomparable.
    """
    if backend.token_to_id(CORPUS_UNK) is None:
        return backend
    spec = json.loads(backend.to_str())
    spec["model"]["unk_token"] = CORPUS_UNK
    return tokenizers.Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def _walk_types(node: Any) -> Iterator[dict[str, Any]]:
    """Every component dict in a (possibly nested Sequence) normaliser/pre-tokenizer/decoder."""
    if isinstance(node, dict):
        yield node
        for key in ("pretokenizers", "decoders", "normalizers", "processors"):
            for child in node.get(key) or []:
                yield from _walk_types(child)


def _infer_kind(spec: dict[str, Any]) -> str:
    model = (spec.get("model") or {}).get("type")
    parts = [*_walk_types(spec.get("pre_tokenizer")), *_walk_types(spec.get("decoder"))]
    types = {p.get("type") for p in parts}
    if model == "BPE":
        return "bpe" if "ByteLevel" in types else "sentencepiece-bpe"
    if model == "WordPiece":
        return "wordpiece"
    if model == "Unigram":
        return "unigram"
    if model == "WordLevel":
        char = any(p.get("type") == "FixedLength" and p.get("length") == 1 for p in parts)
        return "char" if char else "word"
    return str(model or "unknown").lower()


def _infer_roles(backend: tokenizers.Tokenizer, spec: dict[str, Any]) -> dict[str, str]:
    """Role -> token string, from the tokenizer's own metadata and well-known special-token names."""
    specials = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    roles: dict[str, str] = {}

    def put(role: str, token: Any) -> None:
        if role not in roles and isinstance(token, str) and backend.token_to_id(token) is not None:
            roles[role] = token

    # Explicit metadata first: the model's unk token, the post-processor's cls/sep, the pad token.
    model = spec.get("model") or {}
    put("unk", model.get("unk_token"))
    if isinstance(model.get("unk_id"), int):
        put("unk", backend.id_to_token(model["unk_id"]))
    for proc in _walk_types(spec.get("post_processor")):
        for role in ("cls", "sep"):
            if isinstance(proc.get(role), list) and proc[role]:
                put(role, proc[role][0])
    put("pad", (spec.get("padding") or {}).get("pad_token"))
    for role in ROLES:
        for name in ROLE_NAMES[role]:
            if name in specials:
                put(role, name)
    if "eos" not in roles and "sep" in roles:  # BERT: [SEP] ends a sequence
        roles["eos"] = roles["sep"]
    return {r: roles[r] for r in ROLES if r in roles}


def _canonical_json(text: str) -> str:
    """Key-sorted, compact JSON with floats at 12 significant digits.

    The Rust JSON reader may move a float by one ulp on load (unigram scores), so hashing the raw
    text would give a saved-then-loaded tokenizer a different hash; 12 digits absorb that.
    """
    spec = json.loads(text, parse_float=lambda x: float(f"{float(x):.12g}"))
    return json.dumps(spec, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class Tokenizer:
    """A trained tokenizer: encode/decode text, know its special tokens, save/load `tokenizer.json`."""

    def __init__(self, backend: tokenizers.Tokenizer, *, _spec: dict[str, Any] | None = None) -> None:
        # Padding/truncation belong to the data loader; left on, they would silently pad or cut
        # every document that goes through encode_batch.
        if backend.padding is not None:
            backend.no_padding()
            _spec = None
        if backend.truncation is not None:
            backend.no_truncation()
            _spec = None
        spec = _spec if _spec is not None else json.loads(backend.to_str())
        self.backend = backend
        self.kind: str = _infer_kind(spec)
        self.special_tokens: dict[str, str] = _infer_roles(backend, spec)
        ids = {role: backend.token_to_id(tok) for role, tok in self.special_tokens.items()}
        self.eos_id: int | None = ids.get("eos")
        self.bos_id: int | None = ids.get("bos")
        self.pad_id: int | None = ids.get("pad")
        self.unk_id: int | None = ids.get("unk")
        self.mask_id: int | None = ids.get("mask")
        self.cls_id: int | None = ids.get("cls")
        self.sep_id: int | None = ids.get("sep")
        self._fast = hasattr(backend, "encode_batch_fast")
        # A Jinja chat template (lmforge.chat_template), stored beside tokenizer.json as
        # chat_template.jinja the way transformers stores it; None until a chat run sets one.
        self.chat_template: str | None = None

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def train(
        cls, texts: Iterable[str], cfg: TokenizerConfig | None = None, *, show_progress: bool = False
    ) -> Tokenizer:
        """Train a new tokenizer on an iterable of texts (streamed; the corpus is never held in RAM)."""
        cfg = cfg or TokenizerConfig()
        cfg.validate()
        backend, trainer = _build(cfg)
        trainer.show_progress = bool(show_progress)
        if cfg.kind == "unigram":
            _train_unigram(backend, trainer, texts, vocab_size=int(cfg.vocab_size))
        else:
            backend.train_from_iterator(texts, trainer=trainer)
        if cfg.kind == "word":
            backend = _corpus_unk(backend)
        if cfg.kind == "wordpiece":
            cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
            # Lets transformers' BERT-style encode add [CLS] ... [SEP]; our encode() never does.
            backend.post_processor = processors.TemplateProcessing(
                single="[CLS] $A [SEP]",
                pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
            )
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json` (ours or a Hugging Face one); a directory means its tokenizer.json."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise LmforgeError(
                f"{path}: tokenizer file not found; pass the path of a tokenizer.json "
                "(create one with `lmforge tokenizer train`)"
            )
        try:
            text = path.read_text(encoding="utf-8")
            spec = json.loads(text)
            backend = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # json, UTF-8 and the Rust deserialiser all fail differently
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LmforgeError(
                f"{path}: not a valid tokenizer.json ({first}); re-train it with `lmforge tokenizer train` "
                "or restore the file"
            ) from None
        return cls(backend, _spec=spec)

    @classmethod
    def from_backend(cls, backend: tokenizers.Tokenizer) -> Tokenizer:
        """Wrap an existing `tokenizers.Tokenizer` (its padding/truncation are switched off)."""
        return cls(backend)

    def save(self, path: str | Path) -> None:
        """Write `tokenizer.json` atomically, so a crash never leaves a half-written file."""
        atomic_write_text(path, self.backend.to_str(pretty=True))

    # ----------------------------------------------------------------------------- encode/decode
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no special tokens are added (the data pipeline adds eos itself)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of many texts at once, encoded in parallel on the Rust thread pool (GIL released)."""
        if self._fast:  # skips offset tracking, which we never use
            encs = self.backend.encode_batch_fast(texts, add_special_tokens=False)
        else:  # pragma: no cover - tokenizers < 0.20
            encs = self.backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encs]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. For wordpiece, the spaces decoding puts around CJK characters are removed."""
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.kind == "wordpiece":
            text = join_cjk(text)
        return text

    def token_to_id(self, tok: str) -> int | None:
        return self.backend.token_to_id(tok)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    # ----------------------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Embedding rows needed: one past the largest id, special tokens included."""
        n = self.backend.get_vocab_size(with_added_tokens=True)
        added = self.backend.get_added_tokens_decoder()
        return max(n, max(added) + 1) if added else n

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON: equal for the same tokenizer however the file was formatted."""
        return hashlib.sha256(_canonical_json(self.backend.to_str()).encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"


def train_tokenizer(
    data: Any,
    *,
    kind: TokenizerKind = "bpe",
    vocab_size: int = 8000,
    out: str | Path | None = None,
    min_frequency: int = 2,
    lowercase: bool = False,
    clean: CleanConfig | None = None,
    txt_unit: str = "paragraph",
    text_field: str = "text",
    encoding: str = "utf-8",
    show_progress: bool = False,
) -> Tokenizer:
    """Train a tokenizer on a corpus spec (file, directory, glob, list or ``hf:NAME``); save it to `out`.

    Documents are streamed through the same cleaner as `lmforge prepare`, so the tokenizer learns
    from exactly the text it will later encode (normalised, deduplicated, filtered).
    """
    from lmforge.text.clean import Cleaner
    from lmforge.text.corpus import read_documents

    cfg = TokenizerConfig(kind=kind, vocab_size=vocab_size, min_frequency=min_frequency, lowercase=lowercase)
    cfg.validate()  # before reading a possibly large corpus
    if out is not None and Path(out).is_dir():
        raise LmforgeError(
            f"{out}: is a folder; --out names the tokenizer file to write, e.g. {Path(out) / 'tokenizer.json'}"
        )
    docs = Cleaner(clean)(read_documents(data, text_field=text_field, txt_unit=txt_unit, encoding=encoding))
    seen = 0

    def texts() -> Iterator[str]:
        nonlocal seen
        for doc in docs:
            seen += 1
            yield doc.text

    tok = Tokenizer.train(texts(), cfg, show_progress=show_progress)
    if seen == 0:
        raise LmforgeError(
            f"no text to train the tokenizer on in {data!r} (after cleaning); check --data, "
            "--text_field or loosen the cleaning filters"
        )
    if out is not None:
        tok.save(out)
    return tok
