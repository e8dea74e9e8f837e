"""Tokenizers of Marian checkpoints (opus-mt-*), which ship SentencePiece files instead of a tokenizer.json.

A Marian directory holds `source.spm` and `target.spm` (one SentencePiece unigram model per language)
and `vocab.json`, the joint vocabulary whose ids are the model's embedding rows. `MarianTokenizer`
segments text with the side's SentencePiece model and looks every piece up in vocab.json; that is
how the checkpoint was trained (Marian maps `spm_encode`'s pieces through its vocabulary), so it is
what we reproduce, as one `tokenizers` Unigram model per side, in vocab.json's numbering:

* vocab.json's token i is the Unigram's entry i. A piece of the side's SentencePiece model keeps its
  score. A single character that model does not know scores as SentencePiece's unknown token
  (its lowest piece score minus 10): SentencePiece would emit that character as an unknown piece,
  which vocab.json then maps to the other language's entry for it. Every other entry (the other
  language's longer pieces, `</s>`, `<pad>`) scores far below anything else and is never chosen.
* A run of two or more unknown characters is one unknown piece for SentencePiece, looked up whole
  in vocab.json and so nearly always `<unk>`; the normaliser turns such a run into one character
  no entry contains, which the Unigram reads as `<unk>`.
* The normaliser is the model's precompiled character map followed by its whitespace rules
  (strip, collapse runs of spaces); a Metaspace pre-tokenizer and decoder put back "▁" and the
  dummy prefix. As in `MarianTokenizer.decode`, decoded text is stripped at both ends.
* `</s>`, `<unk>` and `<pad>` are special tokens (their roles follow from the names); a language
  code such as `>>de<<` (multilingual checkpoints) is kept whole. Encoding adds no `</s>`.

Not reproduced: a run of unknown characters that is itself an entry of vocab.json (Marian finds
it, we give `<unk>`); a language code in mid-text (MarianTokenizer only takes one at the start); a
SentencePiece piece that vocab.json lacks (MarianTokenizer gives `<unk>` for it, we cannot produce
it and segment with the other pieces).
Checkpoints with a second vocabulary (`separate_vocabs`, `target_vocab.json`) are refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

SPECIALS = ("</s>", "<unk>", "<pad>")  # eos, unk, pad: the names lmforge's Tokenizer reads as roles
SPIECE_UNDERLINE = "▁"
UNK_PENALTY = 10.0  # SentencePiece scores an unknown character at its lowest piece score minus this
ABSENT_SCORE = -1e9  # below any sum of real scores, so an entry the side cannot produce never wins
# SentencePiece's piece types (sentencepiece_model.proto).
NORMAL, USER_DEFINED = 1, 4
_LANGUAGE_CODE = re.compile(r">>.+<<")
_FIX = (
    "download the checkpoint's whole repository, e.g. `huggingface-cli download Helsinki-NLP/opus-mt-en-de`"
)


def _read_vocab(path: Path) -> list[str]:
    """vocab.json's tokens in id order; ids must be 0..N-1 and `</s>`, `<unk>`, `<pad>` present."""
    if not path.is_file():
        raise LmforgeError(
            f"{path}: not found; a Marian checkpoint needs vocab.json next to its .spm files; {_FIX}"
        )
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmforgeError(f"{path}: not valid JSON ({e}); restore it: {_FIX}") from None
    if not isinstance(vocab, dict) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()
    ):
        raise LmforgeError(
            f"{path}: expected an object mapping each token to its integer id; restore the file"
        )
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    for expected, (token, i) in enumerate(by_id):
        if i != expected:
            what = f"id {i} is given twice ({token!r})" if i < expected else f"id {expected} is missing"
            raise LmforgeError(
                f"{path}: ids must run 0..{len(vocab) - 1} without gaps (the model's embedding rows), "
                f"but {what}; restore the file"
            )
    missing = [t for t in SPECIALS if t not in vocab]
    if missing:
        raise LmforgeError(
            f"{path}: no {', '.join(missing)} entry, which a Marian vocabulary has; restore the file"
        )
    return [token for token, _ in by_id]


def _read_spm(path: Path) -> Any:
    """The SentencePiece ModelProto of `path`, checked to be a model we can reproduce."""
    if not path.is_file():
        raise LmforgeError(f"{path}: not found; a Marian checkpoint needs source.spm and target.spm; {_FIX}")
    try:
        import sentencepiece
    except ImportError:
        raise LmforgeError(
            f"{path}: reading Marian's SentencePiece files needs the sentencepiece package: "
            "pip install sentencepiece"
        ) from None
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise LmforgeError(
            f"{path}: reading SentencePiece models needs protobuf: pip install protobuf sentencepiece"
        ) from None
    data = path.read_bytes()
    try:
        sentencepiece.SentencePieceProcessor().LoadFromSerializedProto(data)  # validates the whole model
    except Exception:  # the C++ loader's messages differ between versions and name its own sources
        raise LmforgeError(f"{path}: not a readable SentencePiece model; restore it: {_FIX}") from None
    proto = sentencepiece_model_pb2.ModelProto.FromString(data)
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != 1:  # 1 = UNIGRAM
        raise LmforgeError(
            f"{path}: a non-unigram SentencePiece model (model_type={trainer.model_type}); "
            "lmforge reads Marian's unigram models only"
        )
    if trainer.byte_fallback or trainer.treat_whitespace_as_suffix or not norm.escape_whitespaces:
        raise LmforgeError(
            f"{path}: SentencePiece options byte_fallback, treat_whitespace_as_suffix or "
            "escape_whitespaces=false are not supported; Marian's models use none of them"
        )
    return proto


def _scores(vocab: list[str], proto: Any) -> list[tuple[str, float]]:
    """(token, score) for each vocab.json entry, as this side's SentencePiece model would rank it."""
    own = {p.piece: p.score for p in proto.pieces if p.type == NORMAL}
    unk_score = min(own.values()) - UNK_PENALTY
    return [(t, own[t] if t in own else unk_score if len(t) == 1 else ABSENT_SCORE) for t in vocab]


def _placeholder(vocab: list[str]) -> str:
    """A character no vocab.json entry contains, so the Unigram can only read it as `<unk>`."""
    used = set("".join(vocab))
    for c in ("\ufffd", "\uffff", "\U0010ffff", *map(chr, range(0xE000, 0xF900))):
        if c not in used:
            return c
    raise LmforgeError("vocab.json uses every candidate placeholder character; cannot mark unknown runs")


def _normalizer(proto: Any, placeholder: str) -> normalizers.Normalizer:
    """The model's character map and whitespace rules, then runs of unknown characters -> placeholder."""
    norm = proto.normalizer_spec
    steps: list[normalizers.Normalizer] = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:  # SentencePiece counts spaces only, not newlines or tabs
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    elif norm.add_dummy_prefix:  # Metaspace adds no prefix to text starting with a space; SentencePiece does
        steps.append(normalizers.Replace(Regex(r"\A "), "  "))
    known = {p.piece for p in proto.pieces if p.type in (NORMAL, USER_DEFINED) and len(p.piece) == 1}
    known |= {" ", SPIECE_UNDERLINE}
    char_class = "".join(f"\\x{{{ord(c):x}}}" for c in sorted(known))
    steps.append(normalizers.Replace(Regex(f"[^{char_class}]{{2,}}"), placeholder))
    return normalizers.Sequence(steps)


def _side(vocab: list[str], proto: Any) -> Tokenizer:
    """One side's Tokenizer: vocab.json's ids, segmented as `proto` segments."""
    split = bool(proto.trainer_spec.split_by_whitespace)
    prepend = "always" if proto.normalizer_spec.add_dummy_prefix else "never"
    backend = tokenizers.Tokenizer(models.Unigram(_scores(vocab, proto), unk_id=vocab.index("<unk>")))
    backend.normalizer = _normalizer(proto, _placeholder(vocab))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPIECE_UNDERLINE, prepend_scheme=prepend, split=split
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme=prepend, split=split),
            decoders.Fuse(),  # one string, so the strip below applies to the text's ends only
            decoders.Replace(Regex(r"\A\s+|\s+\z"), ""),
        ]
    )
    user_defined = {p.piece for p in proto.pieces if p.type == USER_DEFINED}
    literal = [t for t in vocab if t in user_defined or _LANGUAGE_CODE.fullmatch(t)]
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in literal])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS])
    return Tokenizer.from_backend(backend)


def marian_tokenizers(d: Path) -> tuple[Tokenizer, Tokenizer]:
    """(source tokenizer, target tokenizer) of a Marian checkpoint directory holding source.spm,
    target.spm and vocab.json: ids in vocab.json's numbering (the embedding rows), vocab_size =
    len(vocab.json), `tok.encode(text)` = MarianTokenizer's ids without the trailing `</s>`."""
    d = Path(d)
    if (d / "target_vocab.json").is_file():
        raise LmforgeError(
            f"{d / 'target_vocab.json'}: this Marian checkpoint has separate source and target vocabularies "
            "(separate_vocabs), which lmforge does not import; use a checkpoint with one joint vocab.json"
        )
    vocab = _read_vocab(d / "vocab.json")
    return _side(vocab, _read_spm(d / "source.spm")), _side(vocab, _read_spm(d / "target.spm"))


__all__ = ["marian_tokenizers"]
