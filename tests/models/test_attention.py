"""Cross-attention against a plain reference, the KV cache's cross entries and reorder, q/k/v layouts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.models import KVCache, ModelConfig, build_model
from lmforge.models.layers import Attention, Block
from lmforge.models.weights import fused_weights, load_tensors, weights_for_save


def reference_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d)) v with einsum; q (B, H, T, D), k/v (B, H, S, D), mask (B, S) bool."""
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / q.size(-1) ** 0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cross_attention_matches_reference(fused, kv_heads):
    cfg = ModelConfig(n_head=4, n_kv_head=kv_heads, d_model=32, fused_qkv=fused)
    torch.manual_seed(0)
    attn = Attention(cfg, cross=True).double().eval()
    x, memory = torch.randn(2, 5, 32, dtype=torch.float64), torch.randn(2, 7, 32, dtype=torch.float64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    out = attn(x, memory=memory, memory_mask=mask)

    B, H, D = 2, 4, 8
    q = attn.project_q(x).transpose(1, 2)  # (B, H, T, D)
    k, v = (t.transpose(1, 2).repeat_interleave(H // kv_heads, dim=1) for t in attn.project_kv(memory))
    want = reference_attention(q, k, v, mask).transpose(1, 2).reshape(B, 5, H * D)
    torch.testing.assert_close(out, attn.proj(want), atol=1e-12, rtol=0)
    # Padding of the memory is invisible: changing it changes nothing.
    memory2 = memory.clone()
    memory2[1, 4:] = 100.0
    torch.testing.assert_close(attn(x, memory=memory2, memory_mask=mask), out, atol=1e-12, rtol=0)


def test_cross_entries_are_computed_once_and_reordered():
    cfg = ModelConfig(n_head=2, d_model=16, n_layer=1)
    torch.manual_seed(0)
    block = Block(cfg, 0, cross=True).double().eval()
    memory = torch.randn(3, 6, 16, dtype=torch.float64)
    x = torch.randn(3, 4, 16, dtype=torch.float64)
    full = block(x, memory=memory)  # causal self-attention + cross-attention, no cache
    cache = KVCache(1, 3, 2, 8, 8, dtype=torch.float64)
    steps = [block(x[:, :2], memory=memory, cache=cache)]
    cache.length = 2
    assert cache.cross(0) is not None
    steps.append(block(x[:, 2:], memory=None, cache=cache))  # the memory is not needed any more
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-12, rtol=0)

    cache.length = 4
    index = torch.tensor([2, 2, 0, 1])
    k_self, k_cross = cache.k[0][:, :4].clone(), cache.cross_k[0].clone()
    cache.reorder(index, index)
    assert cache.batch_size == 4
    torch.testing.assert_close(cache.k[0][:, :4], k_self[index], atol=0, rtol=0)
    torch.testing.assert_close(cache.cross_k[0], k_cross[index], atol=0, rtol=0)
    cache.reorder(torch.tensor([3, 0]))  # into the other buffers, which are large enough
    torch.testing.assert_close(cache.k[0][:, :4], k_self[[1, 2]], atol=0, rtol=0)
    assert cache.cross_k[0].size(0) == 4  # no cross_index: the cross entries stay


def test_grouped_rows_share_their_inputs_cross_entries():
    """Beam search's K consecutive rows per input attend over one copy of the input's memory."""
    cfg = ModelConfig(n_head=2, d_model=16, n_layer=1)
    torch.manual_seed(0)
    block = Block(cfg, 0, cross=True).double().eval()
    memory = torch.randn(2, 6, 16, dtype=torch.float64)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    x = torch.randn(6, 1, 16, dtype=torch.float64)  # 3 rows per input
    grouped = block(x, memory=memory, memory_mask=mask)
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    copied = block(x, memory=memory[rows], memory_mask=mask[rows])
    torch.testing.assert_close(grouped, copied, atol=1e-12, rtol=0)
    with pytest.raises(LmforgeError, match="cannot be grouped"):
        block(x[:5], memory=memory, memory_mask=mask)


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_fused_and_separate_qkv_give_the_same_outputs(arch):
    cfg = ModelConfig(arch=arch, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_len=16)
    torch.manual_seed(0)
    fused = build_model(cfg).eval()
    separate = build_model(dataclasses.replace(cfg, fused_qkv=False)).eval()
    assert "blocks.0.attn.q.weight" in weights_for_save(separate)
    assert "blocks.0.attn.qkv.weight" not in weights_for_save(separate)
    load_tensors(separate, weights_for_save(fused), "fused")  # split on load
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(separate(idx), fused(idx), atol=1e-6, rtol=0)
    # And back: separate weights stack into a fused model, and export in the fused layout.
    again = build_model(cfg).eval()
    load_tensors(again, weights_for_save(separate), "separate")
    with torch.no_grad():
        assert torch.equal(again(idx), fused(idx))
    assert fused_weights(separate).keys() == weights_for_save(fused).keys()
