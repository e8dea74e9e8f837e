"""Chat fine-tuning: reading conversations, assistant-only targets, truncation, packing, the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.conftest import make_text

import lmforge
from lmforge import chat_template as ct
from lmforge.errors import LmforgeError
from lmforge.finetuning import FinetuneConfig, load_task
from lmforge.models.heads import IGNORE
from lmforge.tasks import chat
from lmforge.tasks.framing import Specials
from lmforge.tasks.readers import LabelMap
from lmforge.tokenizer import Tokenizer, TokenizerConfig

SMALL_GPT = {
    "architecture.arch": "decoder", "architecture.n_layer": 2, "architecture.n_head": 2,
    "architecture.d_model": 32, "architecture.d_ff": 64, "architecture.max_len": 96,
    "architecture.position": "learned", "architecture.dropout": 0.0,
    "train.batch_size": 4, "train.lr": 3e-3, "train.threads": 1, "train.log_every": 100,
}  # fmt: skip


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def conversations(n, seed=0):
    rng = np.random.default_rng(seed)
    words = make_text(4000, seed=seed).split()
    out = []
    for i in range(n):
        turns = [
            " ".join(rng.choice(words, size=int(rng.integers(3, 9)))) for _ in range(int(rng.integers(2, 7)))
        ]
        out.append({"turns": turns} if i % 2 else {"messages": [
            {"role": ("user", "assistant")[k % 2], "content": t} for k, t in enumerate(turns)]})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_tok")
    tok = Tokenizer.train(make_text(5000).splitlines(), TokenizerConfig(kind="bpe", vocab_size=300))
    tok.save(d / "tok.json")
    return d / "tok.json"


@pytest.fixture
def tokenizer(tok_file):
    return Tokenizer.load(tok_file)


def test_read_conversations_layouts_and_errors(tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", [{"turns": ["hi", "hello", "bye"]},
                                           {"messages": [{"role": "system", "content": "s"},
                                                         {"role": "user", "content": "q"},
                                                         {"role": "assistant", "content": "a"}]}])  # fmt: skip
    convs = chat.read_conversations(f)
    assert [m["role"] for m in convs[0].messages] == ["user", "assistant", "user"]
    assert convs[1].line == 2 and convs[1].messages[0] == {"role": "system", "content": "s"}
    bad = {
        "x\n": "c.jsonl:1: invalid JSON",
        '{"messages": [{"role": "bot", "content": "a"}]}\n': "c.jsonl:1: message 0 has role 'bot'",
        '{"turns": ["only the user"]}\n': "c.jsonl:1: no assistant turn",
        '{"text": "a"}\n': "c.jsonl:1: no 'messages' list",
        "\n\n": "no conversations",
    }
    for content, message in bad.items():
        f.write_text(content, encoding="utf-8")
        with pytest.raises(LmforgeError, match=message):
            chat.read_conversations(f)
    f.write_bytes(b'{"turns": ["\xff"]}\n')
    with pytest.raises(LmforgeError, match=r"c\.jsonl: not UTF-8"):
        chat.read_conversations(f)


def test_targets_are_the_assistant_tokens_only(tokenizer, tmp_path):
    chat.prepare_tokenizer(tokenizer, "chatml")
    msgs = [{"role": "user", "content": "the model"}, {"role": "assistant", "content": "a word"},
            {"role": "user", "content": "and"}, {"role": "assistant", "content": "text data"}]  # fmt: skip
    data = chat.SPEC.featurize(FinetuneConfig(task="chat"), tmp_path, [chat.Conversation(msgs, 1)],
                               tokenizer, Specials(None, 0, 0), LabelMap([]), 96)  # fmt: skip
    f = data.features[0]
    enc = ct.encode_chat(tokenizer, msgs, tokenizer.chat_template)
    assert f["input_ids"].tolist() == enc.ids[:-1]
    learned = [t for t in f["lm_labels"].tolist() if t != IGNORE]
    assert learned == [i for i, m in zip(enc.ids, enc.assistant) if m]
    assert tokenizer.decode(learned, skip_special_tokens=False) == "a word<|im_end|>text data<|im_end|>"


def test_long_history_loses_its_oldest_exchanges(tokenizer, tmp_path):
    chat.prepare_tokenizer(tokenizer, "plain")
    long = [{"role": "system", "content": "keep me"}]
    for i in range(12):
        long += [{"role": "user", "content": f"question {i} about the model"},
                 {"role": "assistant", "content": f"answer {i} with a word"}]  # fmt: skip
    data = chat.SPEC.featurize(FinetuneConfig(task="chat"), tmp_path, [chat.Conversation(long, 1)],
                               tokenizer, Specials(None, 0, 0), LabelMap([]), 96)  # fmt: skip
    ids = data.features[0]["input_ids"]
    text = tokenizer.decode([*ids.tolist(), 0], skip_special_tokens=False)
    assert len(ids) <= 96 and text.startswith("System: keep me\nUser: question")
    assert "answer 11" in text and "question 0 " not in text
    assert any("lost their oldest turns" in n for n in data.notes)


def test_packing_keeps_each_conversation_to_itself(tokenizer, tmp_path):
    """Packed rows give every conversation the logits it gets alone."""
    from lmforge.models import build_model
    from lmforge.models.config import ModelConfig
    from lmforge.tasks.batches import collate

    chat.prepare_tokenizer(tokenizer, "plain")
    convs = [chat.Conversation(chat.read_conversations(write_jsonl(tmp_path / "c.jsonl", [c]))[0].messages, 1)
             for c in conversations(6)]  # fmt: skip
    data = chat.SPEC.featurize(FinetuneConfig(task="chat"), tmp_path, convs, tokenizer, Specials(None, 0, 0),
                               LabelMap([]), 256)  # fmt: skip
    single = data.features
    packed = chat.pack_features(single, 256)
    assert len(packed) < len(single) and all(len(r["input_ids"]) <= 256 for r in packed)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="decoder", vocab_size=320, n_layer=2, n_head=2, d_model=32, d_ff=64,
                                    max_len=256, position="learned")).eval()  # fmt: skip
    batch = collate(packed, 0)
    with torch.no_grad():
        rows = model(batch["input_ids"], positions=batch["positions"], segments=batch["segments"])
        alone = [model(torch.as_tensor(f["input_ids"])[None])[0] for f in single]
    got = [
        rows[r][batch["segments"][r] == s]
        for r in range(len(packed))
        for s in range(int(batch["segments"][r].max()) + 1)
    ]
    assert len(got) == len(alone)
    for a, b in zip(sorted(got, key=len), sorted(alone, key=len)):
        if len(a) == len(b):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert sum(int((r["lm_labels"] != IGNORE).sum()) for r in packed) == sum(
        int((f["lm_labels"] != IGNORE).sum()) for f in single
    )


class Killed(Exception):
    pass


def test_a_killed_chat_run_resumes_to_the_same_weights(tok_file, tmp_path, monkeypatch):
    """chatml adds two tokens to the tokenizer: the resumed run must add them alike."""
    from safetensors.torch import load_file

    train = write_jsonl(tmp_path / "train.jsonl", conversations(40, seed=1))
    args = dict(task="chat", from_scratch=True, tokenizer=str(tok_file), train_file=str(train),
                chat_template="chatml", pack=True, **{**SMALL_GPT, "architecture.dropout": 0.1},
                **{"train.max_steps": 8, "train.save_every": 4})  # fmt: skip
    lmforge.finetune(out=str(tmp_path / "a"), **args)
    original, calls = chat.ChatModel.forward, {"n": 0}

    def dies_in_step_6(self, batch):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:
                raise Killed
        return original(self, batch)

    monkeypatch.setattr(chat.ChatModel, "forward", dies_in_step_6)
    with pytest.raises(Killed):
        lmforge.finetune(out=str(tmp_path / "b"), **args)
    monkeypatch.setattr(chat.ChatModel, "forward", original)
    lmforge.finetune(out=str(tmp_path / "b"), resume=True)
    last = "train_state/step_00000008/model.safetensors"
    a, b = load_file(tmp_path / "a" / last), load_file(tmp_path / "b" / last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_chat_run_evaluates_and_talks(tok_file, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", conversations(40, seed=1))
    dev = write_jsonl(tmp_path / "dev.jsonl", conversations(8, seed=2))
    result = lmforge.finetune(
        task="chat", from_scratch=True, tokenizer=str(tok_file), train_file=str(train), dev_file=str(dev),
        out=str(tmp_path / "run"), chat_template="chatml", **SMALL_GPT,
        **{"train.max_steps": 12, "train.eval_every": 6},
    )  # fmt: skip
    assert 1 < result.val_metrics["ppl"] < 320
    task = load_task(tmp_path / "run")
    assert task.tokenizer.chat_template == ct.TEMPLATES["chatml"]
    assert (tmp_path / "run" / "chat_template.jinja").read_text(encoding="utf-8") == ct.TEMPLATES["chatml"]
    report = lmforge.evaluate(tmp_path / "run", dev)
    assert report["ppl"] == pytest.approx(result.val_metrics["ppl"], rel=1e-4)
    assert {"bleu1", "bleu2", "distinct1", "distinct2"} <= set(report)
    predicted = lmforge.predict(tmp_path / "run", dev, tmp_path / "replies.jsonl")
    rows = [
        json.loads(line) for line in (tmp_path / "replies.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    turns = [
        (c.line, k)
        for c in chat.read_conversations(dev)
        for k, m in enumerate(c.messages)
        if m["role"] == "assistant"
    ]
    assert [(r["line"], r["turn"]) for r in rows] == turns
    assert predicted["metrics"]["bleu2"] == pytest.approx(report["bleu2"])
    refs = [r["reference"] for r in rows]
    assert report["bleu1"] == pytest.approx(chat.dialogue_scores([r["reply"] for r in rows], refs)["bleu1"])

    talk = lmforge.Chat(tmp_path / "run", temperature=0, max_new_tokens=8)
    reply = talk.send("the model of language")
    assert isinstance(reply, str) and talk.history()[-1] == {"role": "assistant", "content": reply}
    assert talk.end_ids == sorted({task.tokenizer.eos_id, task.tokenizer.token_to_id("<|im_end|>")})


def test_chat_run_refuses_other_models_and_bad_templates(tok_file, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", conversations(4))
    base = dict(task="chat", from_scratch=True, tokenizer=str(tok_file), train_file=str(train),
                out=str(tmp_path / "r"), **SMALL_GPT, **{"train.max_steps": 1})  # fmt: skip
    with pytest.raises(LmforgeError, match="needs a decoder"):
        lmforge.finetune(**{**base, "architecture.arch": "encoder"})
    with pytest.raises(LmforgeError, match="marks no assistant text"):
        lmforge.finetune(**base, chat_template="{{ messages[0]['content'] }}", overwrite=True)


def test_chat_fine_tuning_of_an_imported_hugging_face_decoder_keeps_its_template(tok_file, tmp_path):
    """A GPT-2 folder with its own chat template (in tokenizer_config.json): `auto` trains with
    that template, and the run renders what the folder's tokenizer renders."""
    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "hf"
    tok = Tokenizer.load(tok_file)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token="<|endoftext|>")
    fast.chat_template = ct.TEMPLATES["plain"].replace("Assistant:", "Bot:")
    fast.save_pretrained(hf_dir)
    config = transformers.GPT2Config(vocab_size=320, n_positions=96, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(hf_dir)
    train = write_jsonl(tmp_path / "train.jsonl", conversations(8))
    lmforge.finetune(task="chat", model=str(hf_dir), train_file=str(train), out=str(tmp_path / "run"),
                     **{"train.max_steps": 2, "train.batch_size": 4, "train.threads": 1})  # fmt: skip
    task = load_task(tmp_path / "run")
    assert task.tokenizer.chat_template == fast.chat_template
    messages = [{"role": "user", "content": "the data"}, {"role": "assistant", "content": "a model"}]
    ours = ct.encode_chat(task.tokenizer, messages, task.tokenizer.chat_template).ids
    assert ours == fast.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]


def test_a_trailing_user_turn_does_not_push_the_reply_out(tokenizer, tmp_path):
    chat.prepare_tokenizer(tokenizer, "plain")
    msgs = [{"role": "user", "content": "the model"}, {"role": "assistant", "content": "a word of data"},
            {"role": "user", "content": "the data of the model " * 20}]  # fmt: skip
    data = chat.SPEC.featurize(FinetuneConfig(task="chat"), tmp_path, [chat.Conversation(msgs, 1)],
                               tokenizer, Specials(None, 0, 0), LabelMap([]), 40)  # fmt: skip
    learned = [t for t in data.features[0]["lm_labels"].tolist() if t != IGNORE]
    assert tokenizer.decode(learned, skip_special_tokens=False) == " a word of data<|endoftext|>"
