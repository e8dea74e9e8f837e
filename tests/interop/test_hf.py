"""Hugging Face interop: exported checkpoints run in transformers with our logits, and back."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.infer.generate import GenerationConfig, generate_ids
from lmforge.interop.hf import export_hf, import_hf
from lmforge.models import ModelConfig, build_model
from lmforge.tokenizer import Tokenizer, TokenizerConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

VOCAB = 320  # larger than the tokenizer's 297 tokens: padded rows must survive
TOL = dict(atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    corpus = ["The quick brown fox jumps over the lazy dog. 你好，世界！"] * 30
    return Tokenizer.train(corpus, TokenizerConfig(kind="bpe", vocab_size=300))


def random_config(layout: str, seed: int) -> ModelConfig:
    """A small random config of the given layout (the seed picks sizes and options)."""
    rng = random.Random(seed)
    n_head = rng.choice([2, 4])
    common = dict(
        vocab_size=VOCAB,
        n_layer=rng.choice([1, 2]),
        n_head=n_head,
        d_model=n_head * rng.choice([8, 16]),
        max_len=rng.choice([32, 48]),
        tie_embeddings=rng.random() < 0.5,
        norm_eps=rng.choice([1e-5, 1e-6]),
    )
    if layout == "gpt2":
        return ModelConfig(
            **common, activation=rng.choice(["gelu_tanh", "gelu", "relu"]), d_ff=rng.choice([None, 40])
        )
    return ModelConfig(
        **common,
        norm="rmsnorm",
        position="rope",
        activation="swiglu",
        bias=False,
        n_kv_head=rng.choice([1, n_head // 2, n_head]),
        rope_theta=rng.choice([10000.0, 500000.0]),
    )


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter (norm weights and biases too), so no mapping mistake hides behind ones/zeros."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def hf_greedy(hf_model, prompt: torch.Tensor, n: int) -> list[int]:
    out = hf_model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, prompt.size(1) :].tolist()


def our_greedy(model, prompt: torch.Tensor, n: int) -> list[int]:
    return [int(t) for t in generate_ids(model, prompt, GenerationConfig(max_new_tokens=n, temperature=0))]


@pytest.mark.parametrize(("layout", "seed"), [("gpt2", 0), ("gpt2", 1), ("llama", 0), ("llama", 1)])
def test_export_matches_transformers(tmp_path, tokenizer, layout, seed):
    torch.manual_seed(seed)
    ours = randomised(build_model(random_config(layout, seed)))
    export_hf(ours, tokenizer, tmp_path)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (tmp_path / name).is_file()

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    expected = "GPT2LMHeadModel" if layout == "gpt2" else "LlamaForCausalLM"
    assert type(hf).__name__ == expected
    idx = torch.randint(0, VOCAB, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx), **TOL)
    prompt = torch.tensor([tokenizer.encode("The quick brown")])
    assert our_greedy(ours, prompt, 12) == hf_greedy(hf, prompt, 12)

    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "The lazy fox 你好 🌍"
    assert hf_tok.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    assert hf_tok.eos_token_id == tokenizer.eos_id


def save_hf(model, tokenizer: Tokenizer, path) -> None:
    model.save_pretrained(path)
    tokenizer.save(path / "tokenizer.json")


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mistral"])
def test_import_matches_transformers(tmp_path, tokenizer, kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        hf_cfg = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_positions=40,
            n_embd=32,
            n_layer=2,
            n_head=4,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        hf = transformers.GPT2LMHeadModel(hf_cfg)
    elif kind == "llama":
        hf_cfg = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=40,
            bos_token_id=0,
            eos_token_id=0,
        )
        hf = transformers.LlamaForCausalLM(hf_cfg)
    else:
        hf_cfg = transformers.MistralConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            max_position_embeddings=64,
            sliding_window=32,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
        )
        hf = transformers.MistralForCausalLM(hf_cfg)
    hf = randomised(hf)
    save_hf(hf, tokenizer, tmp_path)

    ours, tok = import_hf(tmp_path)
    assert not ours.training and ours.config.vocab_size == VOCAB
    assert tok.encode("hello 世界") == tokenizer.encode("hello 世界") and tok.eos_id == tokenizer.eos_id
    idx = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, **TOL)
    prompt = torch.tensor([tokenizer.encode("The quick brown")])
    assert our_greedy(ours, prompt, 10) == hf_greedy(hf, prompt, 10)
    if kind == "mistral":
        assert ours.config.max_len == 32  # capped at the sliding window, where attention is exact


def test_round_trip_keeps_padded_vocab_and_weights(tmp_path, tokenizer):
    torch.manual_seed(0)
    ours = randomised(build_model(random_config("llama", 3)))
    assert ours.config.vocab_size > tokenizer.vocab_size
    back, tok = import_hf(export_hf(ours, tokenizer, tmp_path))
    assert back.config == ours.config
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    assert tok.special_tokens == tokenizer.special_tokens


def test_import_gpt2_vocab_merges_and_pytorch_bin(tmp_path, tokenizer):
    """Old GPT-2 style directories: vocab.json + merges.txt and a pickled (tensors-only) state dict."""
    torch.manual_seed(0)
    hf = randomised(
        transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=VOCAB,
                n_positions=16,
                n_embd=16,
                n_layer=1,
                n_head=2,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    )
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    tokenizer.backend.model.save(str(tmp_path))  # writes vocab.json and merges.txt
    ours, tok = import_hf(tmp_path)
    text = "The quick brown fox"
    assert tok.encode(text) == tokenizer.encode(text) and tok.decode(tok.encode(text)) == text
    assert tok.eos_id == tokenizer.eos_id
    idx = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, **TOL)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(norm_position="post"), "model.norm_position"),
        (dict(position="sinusoidal"), "model.position"),
        (dict(bias=False), "model.bias"),
        (dict(n_kv_head=2), "model.n_kv_head"),
        (dict(activation="swiglu"), "model.activation"),
        (dict(norm="rmsnorm"), "model.position"),
        (dict(norm="rmsnorm", position="rope", activation="gelu"), "model.activation"),
    ],
)
def test_export_names_the_blocking_field(tmp_path, tokenizer, change, field):
    cfg = ModelConfig(**{**dict(vocab_size=VOCAB, n_layer=1, n_head=4, d_model=16, max_len=16), **change})
    with pytest.raises(LmforgeError, match=field):
        export_hf(build_model(cfg), tokenizer, tmp_path)


def test_import_errors(tmp_path, tokenizer):
    with pytest.raises(LmforgeError, match=r"config\.json: file not found"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "longt5"}')
    with pytest.raises(LmforgeError, match="model_type='longt5' is not supported"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(LmforgeError, match="no 'vocab_size' entry, which a bert config needs"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(LmforgeError, match="qwen2 has biases on q/k/v"):
        import_hf(tmp_path)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    )
    hf_cfg.save_pretrained(tmp_path)
    with pytest.raises(LmforgeError, match="rope scaling 'linear' is not supported"):
        import_hf(tmp_path)
    transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(tmp_path)
    with pytest.raises(LmforgeError, match=r"no model\.safetensors or pytorch_model\.bin"):
        import_hf(tmp_path)


def test_import_reads_only_sound_files_inside_the_model_folder(tmp_path, tokenizer):
    """A truncated safetensors file and an index naming files outside the folder are one-line errors."""
    torch.manual_seed(0)
    hf_dir = export_hf(randomised(build_model(random_config("gpt2", 1))), tokenizer, tmp_path / "hf")
    weights = hf_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(LmforgeError, match=r"model\.safetensors: corrupt or truncated safetensors file"):
        import_hf(hf_dir)

    weights.write_bytes(data)
    weights.rename(hf_dir / "shard-1.safetensors")
    secret = tmp_path / "elsewhere.safetensors"
    secret.write_bytes(data)
    index = hf_dir / "model.safetensors.index.json"
    for outside in ("../elsewhere.safetensors", str(secret), "sub/../../elsewhere.safetensors"):
        index.write_text(json.dumps({"weight_map": {"wte.weight": outside, "h.0.x": "shard-1.safetensors"}}))
        with pytest.raises(LmforgeError, match=r"index\.json: names .*which is not a file in"):
            import_hf(hf_dir)
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"wte.weight": "shard-1.safetensors"}}))
    ours, _ = import_hf(hf_dir)  # an index naming the shard beside it is followed
    assert ours.config.n_layer == random_config("gpt2", 1).n_layer


def test_chat_template_travels_both_ways(tmp_path, tokenizer):
    """An exported chat model's tokenizer renders and masks as ours; both of transformers' storage
    places are read back on import, and generation stops at the end of a turn."""
    from lmforge import chat_template as ct

    backend = type(tokenizer.backend).from_str(tokenizer.backend.to_str())  # a copy: the fixture is shared
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok = Tokenizer.from_backend(backend)
    tok.chat_template = ct.TEMPLATES["chatml"]
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_len=32)).eval()
    out = export_hf(model, tok, tmp_path / "hf")
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == ct.TEMPLATES["chatml"]
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == ct.TEMPLATES["chatml"]
    im_end = tok.token_to_id("<|im_end|>")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == sorted(
        {tok.eos_id, im_end}
    )

    messages = [{"role": "user", "content": "The quick fox"}, {"role": "assistant", "content": "你好 dog"}]
    hf = transformers.AutoTokenizer.from_pretrained(out)
    got = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ours = ct.encode_chat(tok, messages, tok.chat_template)
    assert list(got["input_ids"]) == ours.ids and list(got["assistant_masks"]) == [
        int(m) for m in ours.assistant
    ]

    assert import_hf(out)[1].chat_template == ct.TEMPLATES["chatml"]
    (out / "chat_template.jinja").unlink()  # older exports: the tokenizer_config.json entry only
    assert import_hf(out)[1].chat_template == ct.TEMPLATES["chatml"]
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "tool_use", "template": "x"},
        {"name": "default", "template": "{{ 1 }}"},
    ]
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    assert import_hf(out)[1].chat_template == "{{ 1 }}"
    del config["chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    assert import_hf(out)[1].chat_template is None
