"""The bidirectional encoder: attention sees both sides, padding is invisible, heads and counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.models import Encoder, ModelConfig, build_model
from lmforge.objectives.losses import linear_cross_entropy


def _cfg(**kw) -> ModelConfig:
    base = dict(arch="encoder", vocab_size=97, n_layer=2, n_head=2, d_model=32, max_len=24,
                norm_position="post", activation="gelu", norm_eps=1e-12)  # fmt: skip
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_bidirectional_and_shapes(norm_position):
    torch.manual_seed(0)
    m = build_model(_cfg(norm_position=norm_position)).eval()
    assert isinstance(m, Encoder)
    x = torch.randint(0, 97, (2, 10))
    h = m(x)
    assert (
        h.shape == (2, 10, 32) and m.pair_logits(h).shape == (2, 2) and m.mlm_logits(h).shape == (2, 10, 97)
    )
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 97
    assert not torch.allclose(m(y)[:, 0], h[:, 0])  # the first position sees the last token


def test_padding_is_invisible():
    torch.manual_seed(0)
    m = build_model(_cfg()).eval()
    x = torch.randint(0, 97, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 8:] = False
    other = x.clone()
    other[0, 8:] = torch.randint(0, 97, (4,))
    types = torch.zeros_like(x)
    a = m(x, attention_mask=mask, token_type_ids=types)[0, :8]
    b = m(other, attention_mask=mask, token_type_ids=types)[0, :8]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, m(x[:, :8])[0], atol=1e-5, rtol=1e-5)  # as if the pad were not there


def test_segments_change_the_output():
    torch.manual_seed(0)
    m = build_model(_cfg()).eval()
    x = torch.randint(0, 97, (1, 8))
    assert not torch.allclose(m(x), m(x, token_type_ids=torch.ones_like(x)))
    torch.testing.assert_close(m(x), m(x, token_type_ids=torch.zeros_like(x)))


def test_mlm_loss_matches_full_logits():
    torch.manual_seed(0)
    m = build_model(_cfg())
    with torch.no_grad():
        m.mlm_bias.normal_()
    x = torch.randint(0, 97, (3, 10))
    h = m(x)
    pos = torch.tensor([0, 7, 13, 29])
    tgt = torch.tensor([5, 6, 7, 8])
    head = m.output_layer()
    fused = linear_cross_entropy(m.mlm_features(h, pos), head.weight, tgt, bias=head.bias)
    ref = F.cross_entropy(m.mlm_logits(h).flatten(0, 1)[pos], tgt)
    torch.testing.assert_close(fused, ref)
    g1 = torch.autograd.grad(fused, [m.mlm_bias, m.tok_emb.weight], retain_graph=True)
    g2 = torch.autograd.grad(ref, [m.mlm_bias, m.tok_emb.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_fused_loss_bias_gradient():
    torch.manual_seed(0)
    x = torch.randn(20, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    b = torch.randn(30, requires_grad=True)
    t = torch.randint(0, 30, (20,))
    t[3] = -100
    loss = linear_cross_entropy(x, w, t, bias=b, chunk_rows=7)
    ref = F.cross_entropy(x @ w.t() + b, t)
    torch.testing.assert_close(loss, ref)
    for a, c in zip(torch.autograd.grad(loss, [x, w, b]), torch.autograd.grad(ref, [x, w, b])):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)


def test_tied_head_and_counts():
    m = build_model(_cfg())
    assert m.lm_head.weight is m.tok_emb.weight
    n = m.num_params()
    assert n == sum(p.numel() for p in m.parameters())
    non_emb = m.num_params(non_embedding=True)
    assert non_emb == n - m.pos_emb.weight.numel() - m.type_emb.weight.numel()
    full, masked = m.flops_per_token(24), m.flops_per_token(24, predicted_fraction=0.15)
    head = m.mlm_head.dense.weight.numel() + m.lm_head.weight.numel()
    assert full - masked == pytest.approx(6 * head * 0.85)


def test_too_long_input_is_an_error():
    m = build_model(_cfg())
    with pytest.raises(LmforgeError, match="max_len"):
        m(torch.zeros(1, 25, dtype=torch.long))


def test_no_segment_table():
    m = build_model(_cfg(type_vocab_size=0))
    assert m.type_emb is None
    assert m(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 32)


def test_unpadded_path_matches_and_takes_a_precomputed_index():
    torch.manual_seed(0)
    m = build_model(_cfg(norm_position="pre", position="rope"))
    x = torch.randint(0, 97, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 9:] = False
    h = m(x, attention_mask=mask)
    index = mask.reshape(-1).nonzero().squeeze(1)
    torch.testing.assert_close(m(x, attention_mask=mask, token_index=index), h)
    assert (h[~mask] == 0).all()
    torch.testing.assert_close(h[1], m(x[1:2])[0], atol=1e-5, rtol=1e-5)  # an unpadded row as if alone
    h.sum().backward()  # gradients flow through the gather/scatter
    assert m.blocks[0].attn.qkv.weight.grad is not None
