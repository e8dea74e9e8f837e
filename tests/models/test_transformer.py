"""The Transformer: names, shapes, causality, the KV cache, init, counts and checkpoint state dicts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.models import (
    ModelConfig,
    Transformer,
    build_model,
)
from lmforge.models.weights import load_tensors, weights_for_save

GPT2 = dict(vocab_size=64, n_layer=2, n_head=4, d_model=32, max_len=24)
LLAMA = dict(
    GPT2, norm="rmsnorm", position="rope", activation="swiglu", bias=False, n_kv_head=2, tie_embeddings=False
)
SINUSOIDAL_POST = dict(GPT2, position="sinusoidal", norm_position="post", activation="relu")
T5_POSITIONS = dict(GPT2, position="t5", relative_buckets=8, relative_max_distance=12, init_std=0.3)
LAYOUTS = {"gpt2": GPT2, "llama": LLAMA, "sinusoidal-post": SINUSOIDAL_POST, "t5-positions": T5_POSITIONS}


def model(layout: str = "gpt2", **kw) -> Transformer:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**LAYOUTS[layout], **kw})).eval()


def test_parameter_names_are_stable():
    gpt2 = set(weights_for_save(model("gpt2")))
    assert {
        "tok_emb.weight",
        "pos_emb.weight",
        "blocks.0.norm1.weight",
        "blocks.0.norm1.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.1.mlp.fc.weight",
        "blocks.1.mlp.proj.weight",
        "norm_f.weight",
    } <= gpt2
    assert "lm_head.weight" not in gpt2  # tied: saved once, as tok_emb.weight
    llama = set(weights_for_save(model("llama")))
    assert {
        "blocks.0.mlp.gate.weight",
        "blocks.0.mlp.up.weight",
        "blocks.0.mlp.down.weight",
        "lm_head.weight",
    } <= llama
    assert not any(k.endswith(".bias") for k in llama) and "pos_emb.weight" not in llama
    m = model("llama")
    assert m.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 2) * 8, 32)  # fused q, k, v


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_forward_shape_and_causality(layout):
    m = model(layout)
    idx = torch.randint(0, 64, (2, 12))
    logits = m(idx)
    assert logits.shape == (2, 12, 64)
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 64
    torch.testing.assert_close(m(changed)[:, :8], logits[:, :8])
    assert not torch.allclose(m(changed)[:, 8:], logits[:, 8:])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kv_cache_matches_full_forward(layout):
    m = model(layout)
    idx = torch.randint(0, 64, (2, 20))
    full = m(idx)
    cache = m.new_cache(2)
    pieces = [m(idx[:, a:b], cache=cache) for a, b in [(0, 7), (7, 8), (8, 13), (13, 14), (14, 20)]]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_length_errors():
    m = model()
    with pytest.raises(
        LmforgeError, match=r"sequence of length 25 exceeds model.max_len=24; raise --model.max_len"
    ):
        m(torch.zeros(1, 25, dtype=torch.long))
    cache = m.new_cache(1, max_len=8)
    m(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(LmforgeError, match="KV cache holds 8 positions"):
        m(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(LmforgeError, match=r"exceeds model\.max_len"):
        m.new_cache(1, max_len=100)


def test_config_errors():
    with pytest.raises(LmforgeError, match=r"model\.vocab_size=0"):
        Transformer(ModelConfig())
    with pytest.raises(LmforgeError, match=r"model\.arch='encoder'"):
        Transformer(ModelConfig(vocab_size=10, arch="encoder"))


def test_new_cache_follows_model_device_and_dtype():
    m = model("llama").to(torch.bfloat16)
    cache = m.new_cache(3)
    assert cache.k[0].shape == (3, 24, 2, 8) and cache.k[0].dtype == torch.bfloat16
    assert len(cache.k) == len(cache.v) == 2 and cache.batch_size == 3 and cache.max_len == 24
    assert m(torch.zeros(3, 4, dtype=torch.long), cache=cache).dtype == torch.bfloat16


def test_gpt2_init():
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=512, n_layer=4, n_head=4, d_model=128, max_len=64))
    assert m.lm_head.weight is m.tok_emb.weight
    assert m.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    resid = 0.02 / math.sqrt(2 * 4)
    assert m.blocks[0].attn.proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert m.blocks[3].mlp.proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert all(p.abs().sum() == 0 for n, p in m.named_parameters() if n.endswith("bias") and "norm" not in n)
    assert torch.equal(m.norm_f.weight, torch.ones(128))


def test_param_and_flop_counts():
    d, L, V, T = 32, 2, 64, 24
    per_block = (4 * d * d + 4 * d) + (8 * d * d + 5 * d) + 4 * d  # attn, mlp, two layernorms
    m = model("gpt2")
    assert m.num_params() == V * d + T * d + L * per_block + 2 * d
    assert m.num_params(non_embedding=True) == m.num_params() - T * d  # tied table stays: it is the head
    assert m.flops_per_token(16) == 6 * m.num_params(non_embedding=True) + 12 * L * d * 16
    untied = model("gpt2", tie_embeddings=False)
    assert untied.num_params() == m.num_params() + V * d
    assert untied.num_params(non_embedding=True) == m.num_params(non_embedding=True)


def test_training_step_reaches_every_parameter():
    m = model("llama").train()
    idx = torch.randint(0, 64, (2, 10))
    loss = F.cross_entropy(m(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_dropout_only_in_training():
    m = model("gpt2", dropout=0.5)
    idx = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(m(idx), m(idx))
    m.train()
    assert not torch.allclose(m(idx), m(idx))


@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_safetensors_round_trip(tmp_path, layout):
    m = model(layout)
    save_file(weights_for_save(m), str(tmp_path / "model.safetensors"))
    fresh = build_model(m.config)
    load_tensors(fresh, load_file(str(tmp_path / "model.safetensors")), "test")
    idx = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(fresh.eval()(idx), m(idx))
    if m.config.tie_embeddings:
        assert fresh.lm_head.weight is fresh.tok_emb.weight


def test_strict_loading_names_the_offender():
    m = model()
    sd = weights_for_save(m)
    missing = {k: v for k, v in sd.items() if k != "norm_f.bias"}
    with pytest.raises(LmforgeError, match=r"missing weight 'norm_f\.bias' \(32,\).*different model config"):
        load_tensors(m, missing, "test")
    with pytest.raises(LmforgeError, match=r"unexpected weight 'extra\.weight'"):
        load_tensors(m, {**sd, "extra.weight": torch.zeros(2)}, "test")
    bigger = weights_for_save(model(vocab_size=128))
    with pytest.raises(
        LmforgeError, match=r"'tok_emb\.weight' has shape \(128, 32\) but the model expects \(64, 32\)"
    ):
        load_tensors(m, bigger, "test")
    with pytest.raises(LmforgeError, match=r"unexpected weight 'lm_head\.weight'"):
        load_tensors(m, weights_for_save(model(tie_embeddings=False)), "test")
