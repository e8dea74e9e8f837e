"""Token shards: packing matches a direct encode, splits are stable, and damage is caught on open."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from lmforge.data.shards import MIN_DOCS_FOR_DOCUMENT_SPLIT, Shards, is_shard_dir, is_val_document, prepare
from lmforge.errors import LmforgeError
from lmforge.text.clean import CleanConfig, Cleaner
from lmforge.text.corpus import Document, read_documents
from lmforge.tokenizer import Tokenizer, TokenizerConfig
from lmforge.utils.shared_data import shared_data_path

# fmt: off
WORDS = [
    "river", "stone", "light", "garden", "winter", "market", "letter", "window", "silver", "forest",
    "morning", "harbor", "engine", "village", "mountain", "paper", "music", "quiet", "yellow", "bridge",
    "teacher", "station", "ocean", "valley", "summer", "cloud", "story", "kitchen", "number", "field",
    "orange", "planet", "school", "castle", "island", "pencil", "thunder", "candle", "mirror",
]
# fmt: on
HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞"


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Distinct, non-repetitive documents in English and Chinese that any cleaner keeps."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 3 == 2:
            body = "".join(rng.choice(HANZI) for _ in range(rng.randint(60, 160)))
            docs.append("，".join(body[k : k + 12] for k in range(0, len(body), 12)) + "。")
        else:
            words = [rng.choice(WORDS) for _ in range(rng.randint(30, 90))]
            docs.append(" ".join(words).capitalize() + ".")
    return docs


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(make_docs(90, seed=1), TokenizerConfig(kind="bpe", vocab_size=500))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tok: Tokenizer) -> tuple[Path, Path]:
    """One corpus (60 docs plus one exact duplicate) and its shards, shared by read-only tests."""
    root = tmp_path_factory.mktemp("built")
    docs = make_docs(60)
    corpus = write_jsonl(root / "corpus.jsonl", [*docs, docs[7]])
    prepare(corpus, tok, root / "shards", val_fraction=0.2, show_progress=False)
    return corpus, root / "shards"


def expected_stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    out: list[int] = []
    for t in texts:
        out += [*tok.encode(t), tok.eos_id]
    return np.asarray(out, dtype=np.int64)


def split_at_eos(tokens: np.ndarray, eos: int) -> list[tuple[int, ...]]:
    ends = np.flatnonzero(tokens == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tuple(tokens[s : e + 1].tolist()) for s, e in zip(starts, ends)]


def test_prepare_packs_exactly_the_kept_documents(built: tuple[Path, Path], tok: Tokenizer) -> None:
    corpus, out = built
    cleaner = Cleaner(CleanConfig())
    kept = [d.text for d in cleaner(read_documents(corpus))]
    assert len(kept) == 60  # the duplicate is gone
    val = [is_val_document(t.encode("utf-8"), 0.2) for t in kept]
    parts = {
        "train": [t for t, v in zip(kept, val) if not v],
        "val": [t for t, v in zip(kept, val) if v],
    }
    assert parts["val"] and parts["train"]

    shards = Shards.open(out)
    m = shards.manifest
    assert m["format"] == "lmforge-shards" and m["version"] == 1
    assert m["dtype"] == "uint16" and shards.dtype == np.uint16
    assert m["vocab_size"] == tok.vocab_size and m["eos_id"] == tok.eos_id
    assert m["tokenizer_sha256"] == tok.sha256 == shards.tokenizer().sha256
    assert m["split_by"] == "document" and m["val_fraction"] == 0.2
    assert m["cleaning"] == cleaner.summary.to_dict()
    assert m["sources"] == [str(corpus)]
    for name, texts in parts.items():
        info = m["splits"][name]
        tokens = shards.tokens(name)
        assert isinstance(tokens, np.memmap) and not tokens.flags.writeable
        np.testing.assert_array_equal(tokens, expected_stream(tok, texts))
        assert info["tokens"] == len(tokens) == sum(len(tok.encode(t)) + 1 for t in texts)
        assert info["documents"] == len(texts)
        assert info["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        assert info["sha256"] == hashlib.sha256((out / f"{name}.bin").read_bytes()).hexdigest()
        offsets = shards.doc_offsets(name)
        assert offsets.dtype == np.int64 and len(offsets) == len(texts) + 1
        lengths = [len(tok.encode(t)) + 1 for t in texts]
        np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(lengths)]))
        assert (tokens[offsets[1:] - 1] == tok.eos_id).all()
    shards.verify()
    assert is_shard_dir(out) and not is_shard_dir(corpus.parent) and not is_shard_dir(None)


def test_document_split_is_deterministic(built: tuple[Path, Path], tok: Tokenizer, tmp_path: Path) -> None:
    corpus, out = built
    tok.save(tmp_path / "tok.json")  # a tokenizer can also be given as a path
    again = prepare(
        corpus, str(tmp_path / "tok.json"), tmp_path / "again", val_fraction=0.2, show_progress=False
    )
    first = Shards.open(out).manifest
    for name in ("train", "val"):
        assert again["splits"][name] == first["splits"][name]
    # The decision is a fixed function of the text (pinned: changing the hash would reshuffle every
    # existing split), and sends about val_fraction of documents to validation.
    assert [is_val_document(f"doc {i}".encode(), 0.5) for i in range(8)] == [0, 1, 0, 1, 0, 1, 1, 1]
    assert 340 < sum(is_val_document(f"doc {i}".encode(), 0.2) for i in range(2000)) < 460
    assert not is_val_document(b"anything", 0.0)


def test_single_long_document_splits_by_position(tmp_path: Path, tok: Tokenizer) -> None:
    text = "\n".join(make_docs(40, seed=3))  # one file = one document (txt_unit="file")
    path = tmp_path / "novel.txt"
    path.write_text(text + "\n", encoding="utf-8")
    (doc,) = list(Cleaner()(read_documents(path)))
    m = prepare(path, tok, tmp_path / "shards", val_fraction=0.1, show_progress=False)
    assert m["split_by"] == "position"
    shards = Shards.open(tmp_path / "shards")
    shards.verify()
    stream = expected_stream(tok, [doc.text])
    train, val = shards.tokens("train"), shards.tokens("val")
    assert len(val) == round(len(stream) * 0.1)
    np.testing.assert_array_equal(np.concatenate([train, val]), stream)
    np.testing.assert_array_equal(shards.doc_offsets("train"), [0, len(train)])
    np.testing.assert_array_equal(shards.doc_offsets("val"), [0, len(val)])
    s = m["splits"]
    assert s["train"]["documents"] == s["val"]["documents"] == 1
    assert s["train"]["bytes"] + s["val"]["bytes"] == len(doc.text.encode("utf-8"))
    assert 0 < s["val"]["bytes"] < s["train"]["bytes"]
    assert not list(tmp_path.glob(".shards*")), "temporary directories must be cleaned up"


def test_few_documents_split_by_position(tmp_path: Path, tok: Tokenizer) -> None:
    texts = make_docs(MIN_DOCS_FOR_DOCUMENT_SPLIT - 8, seed=4)
    corpus = write_jsonl(tmp_path / "few.jsonl", texts)
    m = prepare(corpus, tok, tmp_path / "shards", val_fraction=0.3, show_progress=False)
    assert m["split_by"] == "position"
    shards = Shards.open(tmp_path / "shards")
    train, val = shards.tokens("train"), shards.tokens("val")
    stream = np.concatenate([train, val])
    assert sorted(split_at_eos(stream, tok.eos_id)) == sorted(
        split_at_eos(expected_stream(tok, texts), tok.eos_id)
    )
    assert len(val) == round(len(stream) * 0.3)
    for name, arr in (("train", train), ("val", val)):
        offsets = shards.doc_offsets(name)
        assert offsets[0] == 0 and offsets[-1] == len(arr) and (np.diff(offsets) > 0).all()
    docs = m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    assert docs in (len(texts), len(texts) + 1)  # +1 when the cut falls inside a document


def test_val_fraction_zero_gives_empty_val(tmp_path: Path, tok: Tokenizer) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(5, seed=5))
    m = prepare(corpus, tok, tmp_path / "shards", val_fraction=0.0, show_progress=False)
    assert m["split_by"] == "document" and m["splits"]["val"]["tokens"] == 0
    shards = Shards.open(tmp_path / "shards")
    assert len(shards.tokens("val")) == 0 and list(shards.doc_offsets("val")) == [0]
    shards.verify()
    with pytest.raises(LmforgeError, match="val_fraction"):
        prepare(corpus, tok, tmp_path / "bad", val_fraction=1.0)


def test_continuation_chunks_get_one_eos(
    tmp_path: Path, tok: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = make_docs(30, seed=6)
    chunked = [texts[0][:100], texts[0][100:]]  # one document read in two chunks

    def fake_read(spec: object, **kw: object) -> Iterator[Document]:
        yield Document(chunked[0], "big.txt", 0)
        yield Document(chunked[1], "big.txt", 1)
        for i, t in enumerate(texts[1:]):
            yield Document(t, f"doc{i}", 0)

    monkeypatch.setattr("lmforge.text.corpus.read_documents", fake_read)
    clean = CleanConfig(normalize=False)
    m = prepare("virtual", tok, tmp_path / "shards", clean=clean, val_fraction=0.0, show_progress=False)
    shards = Shards.open(tmp_path / "shards")
    expected = [*tok.encode(chunked[0]), *tok.encode(chunked[1]), tok.eos_id]
    for t in texts[1:]:
        expected += [*tok.encode(t), tok.eos_id]
    np.testing.assert_array_equal(shards.tokens(), expected)
    assert m["splits"]["train"]["documents"] == 30
    assert shards.doc_offsets()[1] == len(tok.encode(chunked[0])) + len(tok.encode(chunked[1])) + 1


def _big_vocab_tokenizer() -> Tokenizer:
    """A character tokenizer whose real characters sit above id 65535, forcing uint32 shards."""
    vocab = {f"<unused{i}>": i for i in range(66_000)}
    for ch in sorted(set("".join(make_docs(10, seed=7)))):
        vocab[ch] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab["<|unk|>"] = len(vocab)
    backend = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.FixedLength(length=1)
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(["<|endoftext|>", "<|unk|>"])
    return Tokenizer.from_backend(backend)


def test_large_vocab_uses_uint32(tmp_path: Path) -> None:
    tok = _big_vocab_tokenizer()
    assert tok.vocab_size > 65535 and tok.kind == "char"
    texts = make_docs(10, seed=7)
    corpus = write_jsonl(tmp_path / "c.jsonl", texts)
    m = prepare(corpus, tok, tmp_path / "shards", val_fraction=0.0, show_progress=False)
    assert m["dtype"] == "uint32"
    shards = Shards.open(tmp_path / "shards")
    assert (
        shards.dtype == np.uint32
        and (tmp_path / "shards" / "train.bin").stat().st_size == 4 * m["splits"]["train"]["tokens"]
    )
    np.testing.assert_array_equal(shards.tokens(), expected_stream(tok, texts))
    assert shards.tokens().max() > 65535


def _damaged(built: tuple[Path, Path], tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(built[1], dst)
    return dst


def _edit_manifest(path: Path, **changes: object) -> None:
    m = json.loads((path / "manifest.json").read_text())
    for key, value in changes.items():
        if key == "train_tokens":
            m["splits"]["train"]["tokens"] = value
        else:
            m[key] = value
    (path / "manifest.json").write_text(json.dumps(m))


def test_open_rejects_damaged_directories(built: tuple[Path, Path], tmp_path: Path) -> None:
    def broken(name: str, match: str) -> None:
        with pytest.raises(LmforgeError, match=match) as err:
            Shards.open(tmp_path / name)
        assert "lmforge prepare" in str(err.value)

    d = _damaged(built, tmp_path, "truncated")
    with open(d / "train.bin", "r+b") as f:
        f.truncate((d / "train.bin").stat().st_size - 2)
    broken("truncated", r"train\.bin: truncated")

    d = _damaged(built, tmp_path, "tokens")
    _edit_manifest(d, train_tokens=Shards.open(d).manifest["splits"]["train"]["tokens"] - 1)
    broken("tokens", r"train\.bin: longer than the manifest says")

    for name, change, match in [
        ("format", {"format": "something-else"}, "not an lmforge shard manifest"),
        ("version", {"version": 99}, "newer than this lmforge reads"),
        ("dtype", {"dtype": "int8"}, "dtype 'int8'"),
        ("eos", {"eos_id": 10**6}, "eos_id"),
    ]:
        _edit_manifest(_damaged(built, tmp_path, name), **change)
        if name == "version":
            with pytest.raises(LmforgeError, match=match):
                Shards.open(tmp_path / name)
        else:
            broken(name, match)

    d = _damaged(built, tmp_path, "corrupt")
    (d / "manifest.json").write_text('{"format": "lmforge-sh')
    broken("corrupt", r"manifest\.json: corrupt JSON")

    for missing in ("val.idx", "train.bin", "tokenizer.json", "manifest.json"):
        d = _damaged(built, tmp_path, f"missing-{missing}")
        (d / missing).unlink()
        broken(f"missing-{missing}", rf"{missing.replace('.', '[.]')}: missing")
    assert not is_shard_dir(tmp_path / "missing-manifest.json")

    d = _damaged(built, tmp_path, "idx")
    np.save(d / "x.npy", np.zeros(3, dtype=np.int64))
    (d / "x.npy").replace(d / "train.idx")
    broken("idx", r"train\.idx: document offsets do not match")

    with pytest.raises(LmforgeError, match="no such shard directory"):
        Shards.open(tmp_path / "nowhere")


def test_verify_and_tokenizer_catch_silent_changes(built: tuple[Path, Path], tmp_path: Path) -> None:
    d = _damaged(built, tmp_path, "flipped")
    data = bytearray((d / "val.bin").read_bytes())
    data[0] ^= 1
    (d / "val.bin").write_bytes(bytes(data))
    shards = Shards.open(d)  # same size: only the hash can tell
    with pytest.raises(LmforgeError, match=r"val\.bin: contents do not match the sha256"):
        shards.verify()

    d = _damaged(built, tmp_path, "other-tok")
    Tokenizer.train(make_docs(20), TokenizerConfig(kind="char", vocab_size=300)).save(d / "tokenizer.json")
    with pytest.raises(LmforgeError, match=r"tokenizer\.json: does not match"):
        Shards.open(d).tokenizer()


def test_an_out_of_range_id_is_caught_on_open(built: tuple[Path, Path], tmp_path: Path) -> None:
    """A damaged id would crash training with an IndexError inside the embedding; open names the file."""
    d = _damaged(built, tmp_path, "out-of-range")
    tokens = np.memmap(d / "train.bin", dtype=np.uint16, mode="r+")
    tokens[3] = np.iinfo(np.uint16).max
    tokens.flush()
    del tokens
    with pytest.raises(
        LmforgeError, match=r"train\.bin: holds token id 65535, outside the \d+-token vocabulary"
    ):
        Shards.open(d)


class _Interrupting(Tokenizer):
    """Simulates Ctrl-C in the middle of tokenizing."""

    calls = 0

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        type(self).calls += 1
        if type(self).calls == 3:
            raise KeyboardInterrupt
        return super().encode_batch(texts)


def test_interrupted_prepare_leaves_nothing_that_looks_valid(
    built: tuple[Path, Path], tok: Tokenizer, tmp_path: Path
) -> None:
    corpus, _ = built
    _Interrupting.calls = 0
    bad = _Interrupting(tokenizers.Tokenizer.from_str(tok.backend.to_str()))
    out = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus, bad, out, batch_docs=4, show_progress=False)
    assert not out.exists() and not is_shard_dir(out)
    assert list(tmp_path.iterdir()) == []  # the temporary build directory is gone too

    # An interrupted re-run leaves the previous, complete shards untouched.
    first = prepare(corpus, tok, out, val_fraction=0.2, show_progress=False)
    _Interrupting.calls = 0
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus, bad, out, val_fraction=0.5, batch_docs=4, show_progress=False)
    shards = Shards.open(out)
    shards.verify()
    assert shards.manifest == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_rerun_replaces_shards_but_never_other_files(
    built: tuple[Path, Path],
    tok: Tokenizer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar is drawn on terminals only
    corpus, _ = built
    out = tmp_path / "shards"
    prepare(corpus, tok, out, val_fraction=0.2, show_progress=False)
    small = write_jsonl(tmp_path / "small.jsonl", make_docs(25, seed=8))
    m = prepare(small, tok, out, val_fraction=0.2, show_progress=True)
    assert "prepare" in capsys.readouterr().err  # the progress bar goes to stderr
    assert Shards.open(out).manifest == m and m["sources"] == [str(small)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "small.jsonl"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(LmforgeError, match="does not hold shards"):
        prepare(small, tok, other, show_progress=False)
    assert (other / "keep.txt").read_text() == "mine"


def test_tokenizer_without_eos_is_rejected(tmp_path: Path) -> None:
    backend = tokenizers.Tokenizer(models.WordLevel(vocab={"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(3))
    with pytest.raises(LmforgeError, match="no end-of-text token"):
        prepare(corpus, Tokenizer.from_backend(backend), tmp_path / "shards", show_progress=False)
    assert not (tmp_path / "shards").exists()


@pytest.mark.shared_data
def test_chinese_corpus_round_trips_through_shards(tmp_path: Path) -> None:
    path = shared_data_path("zh_corpus", "zhwiki_sample.txt")
    if path is None:
        pytest.skip("shared dataset zh_corpus/zhwiki_sample.txt is not available")
    docs = [d.text for d in Cleaner()(read_documents(path, txt_unit="paragraph"))]
    tok = Tokenizer.train(docs[:8], TokenizerConfig(kind="bpe", vocab_size=400))  # byte-level: no unk
    m = prepare(path, tok, tmp_path / "zh", txt_unit="paragraph", show_progress=False)
    assert m["split_by"] == "document" and m["splits"]["val"]["documents"] > 0
    shards = Shards.open(tmp_path / "zh")
    got = []
    for name in ("train", "val"):
        tokens, offsets = shards.tokens(name), shards.doc_offsets(name)
        got += [tok.decode(tokens[a : b - 1].tolist()) for a, b in itertools.pairwise(offsets)]
    assert sorted(got) == sorted(docs)


def test_a_separate_validation_file_is_the_val_split_as_written(tmp_path: Path, tok: Tokenizer) -> None:
    """--val_data: all of --data trains, and the val split is the given file, neither cleaned nor
    deduplicated (a duplicate of a training document stays), so its perplexity is the standard one."""
    train_docs, val_docs = make_docs(30), make_docs(34)[30:]
    corpus = write_jsonl(tmp_path / "train.jsonl", train_docs)
    valid = write_jsonl(tmp_path / "valid.jsonl", [*val_docs, train_docs[0], "x"])
    m = prepare(corpus, tok, tmp_path / "shards", val_data=valid, val_fraction=0.3, show_progress=False)
    shards = Shards.open(tmp_path / "shards")
    assert m["split_by"] == "document" and m["val_sources"] == [str(valid)]
    assert np.array_equal(shards.tokens("val"), expected_stream(tok, [*val_docs, train_docs[0], "x"]))
    assert shards.manifest["splits"]["train"]["documents"] == len(train_docs)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(LmforgeError, match=r"empty\.jsonl: file is empty"):
        prepare(corpus, tok, tmp_path / "again", val_data=empty, show_progress=False)
    assert not (tmp_path / "again").exists()
