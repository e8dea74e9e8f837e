"""Tokenizer: training each kind, save/load fidelity, special-token roles, Chinese and round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from lmforge.errors import LmforgeError
from lmforge.tokenizer import KINDS, Tokenizer, TokenizerConfig, join_cjk, train_tokenizer

ENGLISH = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Language models learn the statistics of text, one token at a time.",
    "A tokenizer splits raw text into pieces that a model can embed.",
    "Rivers run to the sea, and the sea returns the rain to the hills.",
    "She sells sea shells by the sea shore on a bright summer morning.",
]
CHINESE = [
    "数学是利用符号语言研究数量、结构、变化以及空间等概念的一门学科。",
    "北京时间四月十二日，湖人队在主场加时击败了国王队。",
    "语言模型通过预测下一个字来学习文本的统计规律。",
    "我爱北京天安门，天安门上太阳升。",
    "今天天气很好，我们一起去公园散步吧。",
]
CORPUS = [s for _ in range(4) for s in ENGLISH + CHINESE]
SAMPLES = [*ENGLISH[:2], *CHINESE[:2], "Mixed 中文 and English.\nNew line\tand tab."]
VOCAB = {"bpe": 400, "wordpiece": 300, "unigram": 300, "char": 300, "word": 300}


@pytest.fixture(scope="module")
def trained() -> dict[str, Tokenizer]:
    return {k: Tokenizer.train(CORPUS, TokenizerConfig(kind=k, vocab_size=VOCAB[k])) for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_identical_tokenizer(
    trained: dict[str, Tokenizer], kind: str, tmp_path: Path
) -> None:
    tok = trained[kind]
    path = tmp_path / "tok.json"
    tok.save(path)
    back = Tokenizer.load(path)
    assert back.kind == tok.kind == kind
    assert back.vocab_size == tok.vocab_size <= VOCAB[kind]
    assert back.special_tokens == tok.special_tokens
    assert back.sha256 == tok.sha256
    for text in SAMPLES:
        assert back.encode(text) == tok.encode(text)
    assert back.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]
    assert not list(tmp_path.glob(".*tmp")), "atomic save must not leave temp files"


@pytest.mark.parametrize("kind", KINDS)
def test_special_token_roles(trained: dict[str, Tokenizer], kind: str) -> None:
    tok = trained[kind]
    roles = tok.special_tokens
    assert {"eos", "pad", "unk", "mask", "cls", "sep"} <= set(roles)
    if kind == "wordpiece":
        assert roles == {
            "eos": "[SEP]",
            "pad": "[PAD]",
            "unk": "[UNK]",
            "mask": "[MASK]",
            "cls": "[CLS]",
            "sep": "[SEP]",
        }
        assert tok.eos_id == tok.sep_id
    else:
        assert roles["eos"] == "<|endoftext|>"
        ids = [tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id, tok.cls_id, tok.sep_id]
        assert len(set(ids)) == 6
    assert tok.bos_id is None
    for role, token in roles.items():
        assert getattr(tok, f"{role}_id") == tok.token_to_id(token)
        assert tok.id_to_token(tok.token_to_id(token)) == token
    # encode() never adds special tokens: the data pipeline places eos itself.
    ids = tok.encode(ENGLISH[0])
    assert tok.eos_id not in ids and tok.cls_id not in ids
    assert tok.decode([*ids, tok.eos_id]) == tok.decode(ids)


def test_bpe_round_trips_any_text_exactly(trained: dict[str, Tokenizer]) -> None:
    tok = trained["bpe"]
    texts = [
        *SAMPLES,
        "Emoji 😀🎉👩‍👩‍👧 and flags 🇨🇳🇬🇧",
        "  leading and trailing spaces  \n\n\ttabs\r\n",
        "Unseen scripts: مرحبا, Ελληνικά, 日本語のテキスト, 한국어, rare 𠀀𪚥",
        "Ｆｕｌｌｗｉｄｔｈ，标点！“引号”",
        "",
    ]
    for text in texts:
        ids = tok.encode(text)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text
    # Batch encoding agrees with single encoding.
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_char_is_one_token_per_character(trained: dict[str, Tokenizer]) -> None:
    tok = trained["char"]
    text = CHINESE[3] + " " + ENGLISH[0]
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    ids = tok.encode("北京🦄")
    assert len(ids) == 3 and ids[2] == tok.unk_id


def test_wordpiece_normalises_like_bert(trained: dict[str, Tokenizer]) -> None:
    tok = trained["wordpiece"]
    # Every CJK character is its own word (BERT-Chinese), so pieces never span two characters.
    ids = tok.encode(CHINESE[3])
    tokens = [tok.id_to_token(i) for i in ids]
    assert all(len(t) == 1 for t in tokens if t not in (",", "，", "。"))
    # Decoding joins words with spaces, but none are left between CJK characters.
    assert tok.decode(ids) == CHINESE[3]
    assert tok.decode(tok.encode("the river\x00 bank")) == "the river bank"  # control chars dropped
    # Spaces next to CJK are dropped in mostly-Chinese text, kept next to words in English text.
    assert join_cjk("据 ESPN 消 息 ， 4 月 12 日") == "据ESPN消息，4月12日"
    assert join_cjk("the word 中 国 means china") == "the word 中国 means china"
    lower = Tokenizer.train(CORPUS, TokenizerConfig(kind="wordpiece", vocab_size=300, lowercase=True))
    assert lower.decode(lower.encode("THE Sea")) == "the sea"
    assert lower.encode("Café") == lower.encode("cafe")  # accents stripped, as bert-base-uncased


def test_unigram_handles_chinese(trained: dict[str, Tokenizer]) -> None:
    tok = trained["unigram"]
    for text in [*CHINESE, ENGLISH[1], "语言 模型，学习"]:
        ids = tok.encode(text)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text
    pieces = [tok.id_to_token(i) for text in CHINESE for i in tok.encode(text)]
    assert any(len(p) > 1 and "▁" not in p for p in pieces)  # learned multi-character Chinese pieces


def test_unigram_and_wordpiece_fit_more_characters_than_vocab() -> None:
    # 600 distinct characters, vocabulary of 300: rare characters become unk instead of failing.
    chars = [chr(0x4E00 + i) for i in range(600)]
    texts = ["".join(chars[: 100 + i]) + "。常用字常用字常用字" for i in range(0, 500, 5)]
    for kind in ("unigram", "wordpiece"):
        tok = Tokenizer.train(texts, TokenizerConfig(kind=kind, vocab_size=300))
        assert tok.vocab_size <= 300
        assert tok.unk_id in tok.encode(chars[-1])


def _gpt2_style(path: Path) -> Path:
    """A byte-level BPE file whose only special token is <|endoftext|>, like GPT-2's."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(ENGLISH, trainer=trainer)
    backend.add_special_tokens(["<|endoftext|>"])
    backend.save(str(path))
    return path


def test_load_gpt2_style_file_recovers_eos_only(tmp_path: Path) -> None:
    tok = Tokenizer.load(_gpt2_style(tmp_path / "tokenizer.json"))
    assert tok.kind == "bpe"
    assert tok.special_tokens == {"eos": "<|endoftext|>"}
    assert tok.eos_id == tok.vocab_size - 1
    assert tok.pad_id is None and tok.unk_id is None and tok.mask_id is None
    assert tok.decode(tok.encode("hello 世界")) == "hello 世界"
    assert Tokenizer.load(tmp_path).sha256 == tok.sha256  # a directory means its tokenizer.json


def test_load_bert_and_roberta_style_files(tmp_path: Path) -> None:
    words = ["hello", "world", "##s", "中", "文"]
    bert_vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    bert = tokenizers.Tokenizer(models.WordPiece(vocab=bert_vocab, unk_token="[UNK]"))
    bert.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    bert.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bert.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    bert.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    bert.enable_padding(pad_id=0, pad_token="[PAD]", length=16)  # would corrupt packing if left on
    bert.save(str(tmp_path / "bert.json"))
    tok = Tokenizer.load(tmp_path / "bert.json")
    assert tok.kind == "wordpiece"
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.eos_id) == (0, 1, 2, 3, 4, 3)
    assert tok.encode("Hello worlds 中文") == [5, 6, 7, 8, 9]
    assert tok.decode(tok.encode("Hello 中文")) == "hello 中文"

    rob_vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "a", "b"])}
    rob = tokenizers.Tokenizer(models.BPE(vocab=rob_vocab, merges=[], unk_token="<unk>"))
    rob.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    rob.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    rob.save(str(tmp_path / "roberta.json"))
    tok = Tokenizer.load(tmp_path / "roberta.json")
    assert tok.special_tokens == {
        "eos": "</s>",
        "bos": "<s>",
        "pad": "<pad>",
        "unk": "<unk>",
        "mask": "<mask>",
        "cls": "<s>",
        "sep": "</s>",
    }


def test_from_backend_switches_padding_off() -> None:
    backend = tokenizers.Tokenizer.from_str(
        Tokenizer.train(ENGLISH, TokenizerConfig(vocab_size=300)).backend.to_str()
    )
    backend.enable_padding(length=64)
    backend.enable_truncation(max_length=3)
    tok = Tokenizer.from_backend(backend)
    assert len(tok.encode(ENGLISH[0])) > 3
    assert [len(x) for x in tok.encode_batch(["a", ENGLISH[0]])] == [1, len(tok.encode(ENGLISH[0]))]


def test_load_missing_or_corrupt_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(LmforgeError, match=r"nope\.json.*not found"):
        Tokenizer.load(missing)
    for name, content in [
        ("trunc.json", '{"model": {"type": "BPE"'),
        ("junk.json", '{"hello": 1}'),
        ("bin.json", "\udcff"),
    ]:
        p = tmp_path / name
        p.write_bytes(content.encode("utf-8", "surrogateescape"))
        with pytest.raises(LmforgeError, match=rf"{name}.*not a valid tokenizer\.json") as err:
            Tokenizer.load(p)
        assert "\n" not in str(err.value)


def test_sha256_ignores_formatting(trained: dict[str, Tokenizer], tmp_path: Path) -> None:
    tok = trained["unigram"]  # float scores: the case where the Rust reader may move a last digit
    compact = tmp_path / "compact.json"
    compact.write_text(tok.backend.to_str(pretty=False), encoding="utf-8")
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(tok.backend.to_str()), indent=4), encoding="utf-8")
    assert Tokenizer.load(compact).sha256 == Tokenizer.load(pretty).sha256 == tok.sha256
    assert trained["bpe"].sha256 != tok.sha256


def test_config_is_validated() -> None:
    with pytest.raises(LmforgeError, match="kind='sentencepiece'"):
        Tokenizer.train(ENGLISH, TokenizerConfig(kind="sentencepiece"))  # type: ignore[arg-type]
    with pytest.raises(LmforgeError, match=r"vocab_size=100.*at least 262"):
        Tokenizer.train(ENGLISH, TokenizerConfig(kind="bpe", vocab_size=100))


def test_train_tokenizer_from_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):  # the default cleaner keeps documents of 32+ characters
        text = f"{ENGLISH[i]}\n{CHINESE[i]}\n{ENGLISH[(i + 1) % 5]}\n"
        (corpus / f"doc{i}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "tok" / "tokenizer.json"
    tok = train_tokenizer(corpus, kind="bpe", vocab_size=300, out=out)
    assert out.is_file()
    back = Tokenizer.load(out)
    assert back.sha256 == tok.sha256
    assert back.decode(back.encode(CHINESE[0])) == CHINESE[0]
