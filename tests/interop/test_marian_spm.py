"""Marian's SentencePiece tokenizers: ids, decoded text and special tokens as transformers'
`MarianTokenizer` gives them, on two small SentencePiece models trained here."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from lmforge.errors import LmforgeError
from lmforge.interop.marian_spm import marian_tokenizers
from lmforge.tokenizer import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

EN_WORDS = (
    "the", "a", "cat", "dog", "house", "tree", "runs", "sleeps", "quickly", "green", "small", "big",
    "river", "city", "walks", "eats", "bread", "water", "friend", "teacher", "book", "reads", "writes",
    "on", "in", "under", "near", "today", "yesterday", "café", "naïve",
)  # fmt: skip
DE_WORDS = (
    "der", "die", "das", "Katze", "Hund", "Haus", "Baum", "läuft", "schläft", "schnell", "grün", "klein",
    "groß", "Fluss", "Stadt", "geht", "isst", "Brot", "Wasser", "Freund", "Lehrer", "Buch", "liest",
    "schreibt", "auf", "in", "unter", "neben", "heute", "gestern", "Straße", "Mädchen", "Öl", "Übung",
)  # fmt: skip
EDGE_CASES = [
    "",
    "   ",
    "Hello  world",  # double space
    "  leading and trailing  ",
    "a\nb\tc",
    "The cat ☃ sleeps.",  # a character neither model knows
    "☃☃ ☃",
    "☃ ß",  # unknown first: the decoded text starts with the German character
    "Groß ☃",
    "Mädchen☃ßä",  # a run of characters the English model does not know
    "Café naïve, 12,5 % — «Straße» (1999)!",
    "ＡＢＣ ① ½",  # NFKC folds these
    "the   cat\u3000sat?!",
    "x </s> y",
    "x<unk>y",
    "Die Übung: 3 Öl-Fässer, 42 Äpfel.",
]


def _sentences(words: tuple[str, ...], n: int, rng: random.Random) -> list[str]:
    """`n` short sentences: random words, a capital, punctuation and sometimes a number."""
    out = []
    for _ in range(n):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        s = s[0].upper() + s[1:] + rng.choice([".", "!", "?", ",", ""])
        out.append(s + (f" {rng.randint(0, 999)}" if rng.random() < 0.3 else ""))
    return out


def _train_spm(texts: list[str], vocab_size: int) -> bytes:
    """A SentencePiece unigram model with Marian's piece layout (<unk>, <s>, </s> first)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _joint_vocab(d: Path, extra: tuple[str, ...] = ()) -> dict[str, int]:
    """opus-mt's joint vocabulary: </s>, <unk>, `extra`, both models' pieces (union), then <pad>."""
    tokens = ["</s>", "<unk>", *extra]
    for name in ("source.spm", "target.spm"):
        sp = spm.SentencePieceProcessor(model_file=str(d / name))
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if not (sp.is_control(i) or sp.is_unknown(i)) and piece not in tokens:
                tokens.append(piece)
    return {t: i for i, t in enumerate([*tokens, "<pad>"])}


def _write_checkpoint(d: Path, spms: tuple[bytes, bytes], extra: tuple[str, ...] = ()) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "source.spm").write_bytes(spms[0])
    (d / "target.spm").write_bytes(spms[1])
    (d / "vocab.json").write_text(json.dumps(_joint_vocab(d, extra), ensure_ascii=False), encoding="utf-8")
    return d


def _reference(d: Path) -> Any:
    with warnings.catch_warnings():  # it recommends sacremoses, which its encoding does not use
        warnings.simplefilter("ignore")
        return transformers.MarianTokenizer(
            source_spm=str(d / "source.spm"), target_spm=str(d / "target.spm"), vocab=str(d / "vocab.json")
        )


@pytest.fixture(scope="module")
def spms() -> tuple[bytes, bytes]:
    rng = random.Random(0)
    return _train_spm(_sentences(EN_WORDS, 400, rng), 120), _train_spm(_sentences(DE_WORDS, 400, rng), 150)


@pytest.fixture(scope="module")
def marian_dir(spms: tuple[bytes, bytes], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_checkpoint(tmp_path_factory.mktemp("opus-mt-en-de"), spms)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """English, German (also read by the English side, whose model lacks its letters) and edge cases."""
    rng = random.Random(1)
    return _sentences(EN_WORDS, 20, rng) + _sentences(DE_WORDS, 20, rng) + EDGE_CASES


def test_source_ids_are_marian_input_ids(marian_dir: Path, texts: list[str]) -> None:
    source, _ = marian_tokenizers(marian_dir)
    ref = _reference(marian_dir)
    for text in texts:
        assert [*source.encode(text), source.eos_id] == ref(text).input_ids, text


def test_target_ids_are_marian_labels(marian_dir: Path, texts: list[str]) -> None:
    _, target = marian_tokenizers(marian_dir)
    ref = _reference(marian_dir)
    for text in texts:
        assert [*target.encode(text), target.eos_id] == ref(text_target=text).input_ids, text


def test_decode_is_marian_decode(marian_dir: Path, texts: list[str]) -> None:
    ref = _reference(marian_dir)
    for tok in marian_tokenizers(marian_dir):
        for text in texts:
            ids = [*tok.encode(text), tok.eos_id]
            assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True), text


def test_special_tokens_and_vocab_size(marian_dir: Path) -> None:
    ref = _reference(marian_dir)
    n = len(json.loads((marian_dir / "vocab.json").read_text(encoding="utf-8")))
    for tok in marian_tokenizers(marian_dir):
        assert (tok.eos_id, tok.pad_id, tok.unk_id) == (ref.eos_token_id, ref.pad_token_id, ref.unk_token_id)
        assert (tok.eos_id, tok.unk_id, tok.pad_id) == (0, 1, n - 1)
        assert tok.vocab_size == len(tok) == n == ref.vocab_size
        assert tok.encode("Hello") and tok.eos_id not in tok.encode("Hello")  # encoding adds no </s>


def test_saved_tokenizer_json_encodes_the_same(marian_dir: Path, texts: list[str], tmp_path: Path) -> None:
    for side, tok in zip(("source", "target"), marian_tokenizers(marian_dir)):
        tok.save(tmp_path / f"{side}.json")
        loaded = Tokenizer.load(tmp_path / f"{side}.json")
        assert loaded.special_tokens == tok.special_tokens and loaded.sha256 == tok.sha256
        assert loaded.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_language_code_is_one_token(spms: tuple[bytes, bytes], tmp_path: Path) -> None:
    d = _write_checkpoint(tmp_path / "opus-mt-en-mul", spms, extra=(">>de<<", ">>nl<<"))
    source, _ = marian_tokenizers(d)
    ref = _reference(d)
    for text in (">>de<< The cat sleeps.", ">>nl<<Today", ">>de<<"):
        ids = [*source.encode(text), source.eos_id]
        assert ids == ref(text).input_ids, text
        assert source.decode(ids) == ref.decode(ids, skip_special_tokens=True), text


def _copy(marian_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "ckpt"
    shutil.copytree(marian_dir, d)
    return d


def test_missing_vocab_json_is_named(marian_dir: Path, tmp_path: Path) -> None:
    d = _copy(marian_dir, tmp_path)
    (d / "vocab.json").unlink()
    with pytest.raises(LmforgeError, match=r"vocab\.json: not found.*huggingface-cli download"):
        marian_tokenizers(d)


def test_missing_spm_is_named(marian_dir: Path, tmp_path: Path) -> None:
    d = _copy(marian_dir, tmp_path)
    (d / "target.spm").unlink()
    with pytest.raises(LmforgeError, match=r"target\.spm: not found"):
        marian_tokenizers(d)


def test_unreadable_spm_is_named(marian_dir: Path, tmp_path: Path) -> None:
    d = _copy(marian_dir, tmp_path)
    (d / "source.spm").write_bytes(b"not a model")
    with pytest.raises(LmforgeError, match=r"source\.spm: not a readable SentencePiece model"):
        marian_tokenizers(d)


def test_separate_vocabs_are_refused(marian_dir: Path, tmp_path: Path) -> None:
    d = _copy(marian_dir, tmp_path)
    shutil.copy(d / "vocab.json", d / "target_vocab.json")
    with pytest.raises(LmforgeError, match=r"target_vocab\.json: .*separate_vocabs") as e:
        marian_tokenizers(d)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v: v.update({"<pad>": len(v)}), "id .* is missing"),  # a gap where <pad> was
        (lambda v: v.update({"<pad>": 1}), "id 1 is given twice"),
    ],
)
def test_non_contiguous_ids_are_refused(marian_dir: Path, tmp_path: Path, change: Any, message: str) -> None:
    d = _copy(marian_dir, tmp_path)
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    change(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(LmforgeError, match=rf"vocab\.json: ids must run 0\.\.\d+ without gaps.*{message}"):
        marian_tokenizers(d)


def test_an_opus_mt_layout_checkpoint_imports_with_both_tokenizers(marian_dir: Path, tmp_path: Path) -> None:
    """A Marian checkpoint that ships only SentencePiece files imports as a run holding both
    tokenizers; fine-tuning from it encodes the sources with the source one."""
    import torch

    import lmforge

    d = tmp_path / "opus-mt"
    shutil.copytree(marian_dir, d)
    n = len(json.loads((d / "vocab.json").read_text(encoding="utf-8")))
    cfg = transformers.MarianConfig(
        vocab_size=n, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
        pad_token_id=n - 1, eos_token_id=0, decoder_start_token_id=n - 1, forced_eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.MarianMTModel(cfg).save_pretrained(d)
    lmforge.import_hf(d, tmp_path / "run")
    lm = lmforge.load(str(tmp_path / "run"))
    ref = _reference(d)
    text = "The small cat sleeps near the river."
    assert [*lm.source_tokenizer.encode(text), lm.source_tokenizer.eos_id] == ref(text).input_ids
    assert lm.tokenizer.encode("Die Katze schläft.") == ref(text_target="Die Katze schläft.").input_ids[:-1]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("the cat sleeps\tdie Katze schläft\na dog runs\tder Hund läuft\n", encoding="utf-8")
    quiet = {"train.plot": False, "train.tensorboard": False, "train.progress": False}
    lmforge.finetune(
        task="seq2seq", model=str(tmp_path / "run"), train_file=str(pairs), out=str(tmp_path / "ft"),
        **{"train.max_steps": 2, "train.batch_size": 2, "beam": 1, "max_new_tokens": 4}, **quiet,
    )  # fmt: skip
    task = lmforge.load(str(tmp_path / "ft"))
    assert task.source_tokenizer.sha256 == lm.source_tokenizer.sha256 != task.tokenizer.sha256
    assert len(lmforge.translate(task, ["the cat sleeps"])) == 1
