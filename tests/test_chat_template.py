"""Chat templates: rendering and assistant masks equal transformers' apply_chat_template."""

from __future__ import annotations

import pytest
from tests.conftest import make_text

from lmforge import chat_template as ct
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer, TokenizerConfig

transformers = pytest.importorskip("transformers")

CONVERSATION = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "the model of language"},
    {"role": "assistant", "content": "a token is a word"},
    {"role": "user", "content": "你好，世界"},
    {"role": "assistant", "content": "数据 and text 。"},
]

# A template written the way hub models write theirs (Zephyr-like headers, loop variables,
# namespace(), a raise_exception guard), to check the sandbox behaves as transformers' does.
HUB_STYLE = (
    "{% set ns = namespace(n=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}"
    "{% set ns.n = ns.n + 1 %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim }}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{{ '' if ns.n > 0 else ('x' | tojson) }}"
)


@pytest.fixture(scope="module")
def tokenizer():
    text = make_text(3000, seed=1) + "\n你好，世界。数据和文本。\n" * 20
    tok = Tokenizer.train(text.splitlines(), TokenizerConfig(kind="bpe", vocab_size=400))
    tok.backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return Tokenizer.from_backend(tok.backend)


def hf_tokenizer(tok, template):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend, **{f"{r}_token": t for r, t in tok.special_tokens.items()}
    )
    hf.chat_template = template
    return hf


@pytest.mark.parametrize("name", ["plain", "chatml", "hub"])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_render_and_mask_equal_transformers(tokenizer, name, generation_prompt):
    template = HUB_STYLE if name == "hub" else ct.TEMPLATES[name]
    messages = CONVERSATION if not generation_prompt else CONVERSATION[:-1]
    ours = ct.encode_chat(tokenizer, messages, template, add_generation_prompt=generation_prompt)
    hf = hf_tokenizer(tokenizer, template)
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert ours.text == text
    out = hf.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        add_generation_prompt=generation_prompt,
    )  # fmt: skip
    assert ours.ids == list(out["input_ids"])
    assert [int(m) for m in ours.assistant] == list(out["assistant_masks"])
    assert any(ours.assistant)


def test_mask_covers_exactly_the_assistant_text(tokenizer):
    enc = ct.encode_chat(tokenizer, CONVERSATION, ct.TEMPLATES["chatml"])
    said = tokenizer.decode([i for i, m in zip(enc.ids, enc.assistant) if m], skip_special_tokens=False)
    assert said == "a token is a word<|im_end|>数据 and text 。<|im_end|>"


def test_overlap_mask_counts_a_token_that_straddles_a_span():
    offsets = [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert ct.overlap_mask(offsets, [(4, 7)]) == [False, True, True, False]
    assert ct.overlap_mask(offsets, []) == [False] * 4
    assert ct.overlap_mask(offsets, [(0, 3), (9, 12)]) == [True, False, False, True]


def test_turn_end_ids(tokenizer):
    assert ct.turn_end_ids(tokenizer, ct.TEMPLATES["plain"]) == [tokenizer.eos_id]
    im_end = tokenizer.token_to_id("<|im_end|>")
    assert ct.turn_end_ids(tokenizer, ct.TEMPLATES["chatml"]) == sorted({tokenizer.eos_id, im_end})


def test_sandbox_refuses_escapes(tokenizer):
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(LmforgeError, match="chat template failed"):
        ct.render(evil, CONVERSATION)
    with pytest.raises(LmforgeError, match="chat template failed"):
        ct.render("{% set ns = namespace(_x=1) %}", CONVERSATION)


def test_template_errors_are_one_line(tokenizer):
    with pytest.raises(LmforgeError, match="does not parse"):
        ct.render("{% for m in messages %}", CONVERSATION)
    with pytest.raises(LmforgeError, match="unknown role"):
        ct.render(ct.TEMPLATES["plain"], [{"role": "tool", "content": "x"}], variables={"eos_token": "e"})


def test_check_messages():
    assert ct.check_messages([{"role": "user", "content": "hi", "name": "x"}]) == [
        {"role": "user", "content": "hi"}
    ]
    with pytest.raises(LmforgeError, match="role 'robot'"):
        ct.check_messages([{"role": "robot", "content": "hi"}], "f.jsonl:3")
    with pytest.raises(LmforgeError, match=r"f.jsonl:3: message 0 .* not text"):
        ct.check_messages([{"role": "user", "content": 3}], "f.jsonl:3")
    with pytest.raises(LmforgeError, match="no messages"):
        ct.check_messages([])


def test_resolve_template(tmp_path):
    assert ct.resolve_template("chatml") == (ct.TEMPLATES["chatml"], ("<|im_start|>", "<|im_end|>"))
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    assert ct.resolve_template(str(f))[0] == "{{ messages[0]['content'] }}"
    assert ct.resolve_template("{{ x }}") == ("{{ x }}", ())
    with pytest.raises(LmforgeError, match="not a built-in template"):
        ct.resolve_template("nonexistent.jinja")


def test_tools_and_documents_are_none_as_transformers_passes_them(tokenizer):
    template = "{% if tools is not none %}TOOLS{% endif %}{% if documents is not none %}DOCS{% endif %}{{ messages[0]['content'] }}"
    hf = hf_tokenizer(tokenizer, template)
    assert ct.render(template, CONVERSATION[:1])[0] == hf.apply_chat_template(
        CONVERSATION[:1], tokenize=False
    )
