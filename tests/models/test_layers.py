"""The building blocks, each checked against a direct re-statement of its formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.models.config import ModelConfig
from lmforge.models.layers import (
    MLP,
    Attention,
    Block,
    KVCache,
    RelativePositionBias,
    RMSNorm,
    RotaryEmbedding,
    apply_rope,
    gelu_tanh,
    make_norm,
    relative_position_bucket,
    sinusoidal_table,
    with_position_bias,
)


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=50, n_layer=2, n_head=4, d_model=32, max_len=16)
    return ModelConfig(**{**base, **kw})


def reference_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d) + mask) v, written out, with key/value heads repeated for GQA."""
    rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def test_rmsnorm_formula_and_fp32_statistics():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    # bf16 input: statistics in fp32, result back in bf16.
    xb = (x * 300).bfloat16()
    assert norm.to(torch.bfloat16)(xb).dtype == torch.bfloat16


def test_make_norm_follows_config():
    assert isinstance(make_norm(cfg(norm="rmsnorm")), RMSNorm)
    ln = make_norm(cfg(bias=False))
    assert isinstance(ln, torch.nn.LayerNorm) and ln.bias is None
    assert make_norm(cfg()).bias is not None


def test_sinusoidal_table_values():
    table = sinusoidal_table(10, 6)
    pos, i = 7, 2  # channel pair (4, 5)
    angle = pos / 10000 ** (2 * i / 6)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_table(4, 5).shape == (4, 5)  # odd widths work too


def test_rope_rotates_and_depends_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=8, max_len=32)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def rotated(x, pos):
        return apply_rope(x, *rope(pos, 1))

    # A rotation: norms are preserved.
    torch.testing.assert_close(rotated(q, 5).norm(), q.norm())
    # <R(m) q, R(n) k> depends on m - n only.
    a = (rotated(q, 9) * rotated(k, 4)).sum()
    b = (rotated(q, 20) * rotated(k, 15)).sum()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Rotate-half layout: channel i pairs with channel i + head_dim/2.
    x = torch.zeros(1, 1, 1, 8)
    x[..., 0] = 1.0
    y = rotated(x, 3)
    nonzero = torch.nonzero(y.flatten().abs() > 1e-6).flatten().tolist()
    assert nonzero == [0, 4]


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_attention_matches_reference(n_kv_head):
    torch.manual_seed(0)
    c = cfg(n_kv_head=n_kv_head)
    attn = Attention(c).eval()
    x = torch.randn(2, 7, 32)
    B, T, H, KV, D = 2, 7, 4, n_kv_head, 8
    qkv = attn.qkv(x).view(B, T, H + 2 * KV, D).transpose(1, 2)
    q, k, v = qkv[:, :H], qkv[:, H : H + KV], qkv[:, H + KV :]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    y = reference_attention(q, k, v, causal).transpose(1, 2).reshape(B, T, H * D)
    torch.testing.assert_close(attn(x), attn.proj(y), atol=1e-5, rtol=1e-5)


def test_attention_causal_flag_and_padding_mask():
    torch.manual_seed(0)
    attn = Attention(cfg()).eval()
    x = torch.randn(1, 6, 32)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    # Causal: earlier outputs ignore later inputs.
    torch.testing.assert_close(attn(x)[:, :4], attn(x2)[:, :4])
    # Bidirectional (encoder): they do not.
    assert not torch.allclose(attn(x, causal=False)[:, :4], attn(x2, causal=False)[:, :4])
    # A padding mask hides the padded keys entirely.
    keep = torch.tensor([True, True, True, True, False, False]).view(1, 1, 1, 6)
    torch.testing.assert_close(
        attn(x, causal=False, attn_mask=keep)[:, :4], attn(x2, causal=False, attn_mask=keep)[:, :4]
    )


def test_attention_with_cache_equals_full_sequence():
    torch.manual_seed(0)
    attn = Attention(cfg(n_kv_head=2)).eval()
    x = torch.randn(2, 9, 32)
    cache = KVCache(n_layer=1, batch_size=2, n_kv_head=2, max_len=16, head_dim=8)
    outs = []
    for a, b in [(0, 4), (4, 5), (5, 9)]:  # a prefill, one token, then a chunk of several
        outs.append(attn(x[:, a:b], cache=cache))
        cache.length = b
    torch.testing.assert_close(torch.cat(outs, 1), attn(x), atol=1e-5, rtol=1e-5)


def test_mlp_variants():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32)
    glu = MLP(cfg(activation="swiglu", bias=False))
    expected = glu.down(F.silu(glu.gate(x)) * glu.up(x))
    torch.testing.assert_close(glu(x), expected)
    assert glu.gate.weight.shape == (cfg(activation="swiglu").ff_dim, 32)
    plain = MLP(cfg(activation="gelu"))
    torch.testing.assert_close(plain(x), plain.proj(F.gelu(plain.fc(x))))


def test_gelu_tanh_is_gpt2s_formula_with_atens_gradient():
    # Wide range: the sigmoid form must neither overflow for large |x| nor lose the tails.
    x64 = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4])]).double()
    expected = 0.5 * x64 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    x = x64.float().requires_grad_()
    y = gelu_tanh(x)
    torch.testing.assert_close(y.double(), expected, atol=2e-6, rtol=1e-6)
    assert torch.isfinite(y).all()
    grad = torch.randn_like(y)
    y.backward(grad)
    reference = x.detach().clone().requires_grad_()
    F.gelu(reference, approximate="tanh").backward(grad)
    assert torch.equal(x.grad, reference.grad)  # the backward is ATen's own
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)  # float64: the ATen path
    assert torch.autograd.gradcheck(gelu_tanh, (x,))
    mlp = MLP(cfg(activation="gelu_tanh"))
    h = torch.randn(2, 3, 32)
    torch.testing.assert_close(mlp(h), mlp.proj(F.gelu(mlp.fc(h), approximate="tanh")))


def test_post_norm_block_ends_normalised():
    torch.manual_seed(0)
    block = Block(cfg(norm_position="post")).eval()
    y = block(torch.randn(2, 5, 32) * 10)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)


def test_pre_norm_block_is_residual():
    torch.manual_seed(0)
    block = Block(cfg()).eval()
    for p in (block.attn.proj.weight, block.attn.proj.bias, block.mlp.proj.weight, block.mlp.proj.bias):
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(block(x), x)  # zeroed sublayer outputs leave the identity path


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("buckets", "max_distance"), [(32, 128), (8, 12), (6, 40)])
def test_relative_buckets_equal_t5s(bidirectional, buckets, max_distance):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    relative = torch.arange(-300, 301)[None, :] - torch.arange(0, 5)[:, None]
    ours = relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance
    )
    theirs = t5.T5Attention._relative_position_bucket(relative, bidirectional, buckets, max_distance)
    assert torch.equal(ours, theirs) and int(ours.min()) >= 0 and int(ours.max()) < buckets


@pytest.mark.parametrize("decoder", [False, True])
def test_relative_position_bias_equals_t5s_compute_bias(decoder):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    from transformers import T5Config

    hf = t5.T5Attention(
        T5Config(d_model=32, d_kv=8, num_heads=4, is_decoder=decoder, relative_attention_num_buckets=8,
                 relative_attention_max_distance=20),
        has_relative_attention_bias=True,
    )  # fmt: skip
    ours = RelativePositionBias(
        ModelConfig(vocab_size=10, d_model=32, n_head=4, position="t5", relative_buckets=8, relative_max_distance=20),
        bidirectional=not decoder,
    )  # fmt: skip
    with torch.no_grad():
        ours.bias.weight.copy_(torch.randn(8, 4))
        hf.relative_attention_bias.weight.copy_(ours.bias.weight)
        # a whole sequence, and the last 3 queries after 9 cached positions
        torch.testing.assert_close(ours(0, 30, 30), hf.compute_bias(30, 30))
        torch.testing.assert_close(ours(9, 3, 12), hf.compute_bias(3, 12, past_seen_tokens=9))


def test_position_bias_folds_padding_and_the_causal_triangle():
    bias = torch.randn(1, 2, 3, 5)
    keys = torch.tensor([True, True, True, True, False])[None, None, None, :]
    mask = with_position_bias(bias, keys, causal=True)  # the last 3 of 5 positions
    seen = torch.isfinite(mask[0, 0])
    assert seen.tolist() == [[True, True, True, False, False], [True, True, True, True, False],
                             [True, True, True, True, False]]  # fmt: skip
    torch.testing.assert_close(mask[torch.isfinite(mask)], bias.expand_as(mask)[torch.isfinite(mask)])
    assert with_position_bias(bias, None, causal=False) is bias
