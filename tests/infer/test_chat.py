"""Chat sessions: prompts from the history through the template, replies that stop at the turn's end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tests.conftest import make_text

from lmforge import chat_template as ct
from lmforge.errors import LmforgeError
from lmforge.infer.chat import ChatSession
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.tokenizer import Tokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer.train(make_text(4000).splitlines(), TokenizerConfig(kind="bpe", vocab_size=300))
    tok.chat_template = ct.TEMPLATES["plain"]
    return tok


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="decoder", vocab_size=320, n_layer=2, n_head=2, d_model=32, d_ff=64, max_len=128)
    return build_model(cfg).eval()


def test_the_prompt_is_the_rendered_history_with_a_generation_prompt(model, tokenizer):
    chat = ChatSession(model, tokenizer, system="be brief", temperature=0, max_new_tokens=5)
    chat.messages = [{"role": "user", "content": "the model"}, {"role": "assistant", "content": "a word"}]
    chat.messages.append({"role": "user", "content": "and data"})
    text, _ = ct.render(ct.TEMPLATES["plain"], chat.history(), add_generation_prompt=True,
                        variables=ct.template_variables(tokenizer))  # fmt: skip
    assert chat.prompt_ids() == tokenizer.backend.encode(text, add_special_tokens=False).ids
    assert text.startswith("System: be brief\n") and text.endswith("User: and data\nAssistant:")


def test_replies_join_the_history_and_greedy_is_reproducible(model, tokenizer):
    chat = ChatSession(model, tokenizer, temperature=0, max_new_tokens=6)
    first = chat.send("the model of language")
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] and chat.messages[1][
        "content"
    ] == first
    streamed = "".join(
        ChatSession(model, tokenizer, temperature=0, max_new_tokens=6).stream("the model of language")
    )
    assert streamed.strip() == first
    chat.send("and the data")
    assert len(chat.messages) == 4
    chat.reset()
    assert chat.messages == []


def test_the_oldest_exchanges_leave_the_prompt_first(model, tokenizer):
    chat = ChatSession(model, tokenizer, system="keep", temperature=0, max_new_tokens=32)
    for i in range(20):
        chat.messages += [{"role": "user", "content": f"question {i} of the model"},
                          {"role": "assistant", "content": f"answer {i} with data"}]  # fmt: skip
    chat.messages.append({"role": "user", "content": "last one"})
    ids = chat.prompt_ids()
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert len(ids) <= 128 - 32
    assert text.startswith("System: keep\nUser: question") and text.endswith("User: last one\nAssistant:")
    assert "question 0 " not in text and "answer 19" in text
    assert len(chat.messages) == 41  # the history itself is kept whole


def test_stops_at_the_turn_end_token(model, tokenizer):
    """A model that always says the end-of-text token replies with nothing at all."""
    chat = ChatSession(model, tokenizer, temperature=0, max_new_tokens=20)
    with torch.no_grad():
        bias = torch.full((model.config.vocab_size,), -1e4)
        bias[tokenizer.eos_id] = 1e4
        original = model.lm_head.forward
        model.lm_head.forward = lambda x: original(x) + bias
        try:
            assert chat.send("the model") == ""
        finally:
            del model.lm_head.forward


def test_bad_requests(model, tokenizer, tmp_path):
    chat = ChatSession(model, tokenizer, temperature=0, max_new_tokens=4)
    with pytest.raises(LmforgeError, match="empty"):
        chat.send("   ")
    with pytest.raises(LmforgeError, match="more than the"):
        chat.send("the model " * 200)
    assert chat.messages == []  # a refused message leaves no trace
    with pytest.raises(LmforgeError, match="unknown generation option 'beam'"):
        ChatSession(model, tokenizer, beam=4)
    bare = Tokenizer.from_backend(tokenizer.backend)
    with pytest.raises(LmforgeError, match="no chat template"):
        ChatSession(model, bare)


def test_save_appends_a_record_chat_finetuning_reads(model, tokenizer, tmp_path):
    from lmforge.tasks.chat import read_conversations

    chat = ChatSession(model, tokenizer, system="s", temperature=0, max_new_tokens=3)
    chat.send("the model")
    chat.save(tmp_path / "c.jsonl")
    chat.save(tmp_path / "c.jsonl")
    convs = read_conversations(tmp_path / "c.jsonl")
    assert len(convs) == 2 and convs[0].messages == chat.history()


def test_lmforge_chat_reads_stdin_and_runs_commands(model, tokenizer, tmp_path):
    from lmforge.run import write_run

    run = write_run(tmp_path / "run", model=model, model_config=model.config, tokenizer=tokenizer,
                    config={"objective": "clm"})  # fmt: skip
    script = "the model\n/system be kind\n/save " + str(tmp_path / "c.jsonl") + "\nand data\n/reset\n/quit\n"
    out = subprocess.run(
        [sys.executable, "-m", "lmforge", "chat", str(run), "--temperature", "0", "--max_new_tokens", "4"],
        input=script, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "(system message set)" in out.stderr and "(conversation cleared)" in out.stderr
    saved = json.loads((tmp_path / "c.jsonl").read_text(encoding="utf-8"))
    assert saved["messages"][0] == {"role": "system", "content": "be kind"}
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant"]
    assert len(out.stdout.splitlines()) == 2  # one reply line per message
