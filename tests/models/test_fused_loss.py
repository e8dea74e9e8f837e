"""The LM head fused with the loss must equal logits -> F.cross_entropy, in value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.objectives.clm import clm_loss
from lmforge.objectives.losses import linear_cross_entropy


@pytest.mark.parametrize("chunk_rows", [None, 3])
def test_matches_cross_entropy_values_and_grads(chunk_rows):
    torch.manual_seed(0)
    x = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    y = torch.randint(0, 50, (10,))
    y[2] = -100  # ignored target
    ours = linear_cross_entropy(x, w, y, chunk_rows=chunk_rows)
    gx, gw = torch.autograd.grad(ours, (x, w))
    ref = F.cross_entropy(x @ w.t(), y, ignore_index=-100)
    rx, rw = torch.autograd.grad(ref, (x, w))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(x, w, y, chunk_rows=chunk_rows), ref)


@pytest.mark.parametrize("chunk_rows", [None, 3])
def test_matches_cross_entropy_under_bf16_autocast(chunk_rows):
    """Under autocast both run the matmuls in bf16 (softmax statistics in fp32 for both), so they
    differ only by bf16 rounding of the products: agreement to bf16 precision, not fp32's."""
    torch.manual_seed(0)
    x = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    y = torch.randint(0, 50, (10,))
    y[2] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(x, w, y, chunk_rows=chunk_rows)
        ref = F.cross_entropy(x @ w.t(), y, ignore_index=-100)
    assert ours.dtype == ref.dtype == torch.float32
    gx, gw = torch.autograd.grad(ours, (x, w))
    rx, rw = torch.autograd.grad(ref, (x, w))
    assert gx.dtype == rx.dtype == gw.dtype == rw.dtype == torch.float32
    # Same bf16 logits, fp32 statistics: the losses agree closely. The gradients pass through one
    # more bf16 product each (summed in different orders), so they get bf16's tolerance, 2^-8.
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(gx, rx, atol=4e-3, rtol=1.6e-2)
    torch.testing.assert_close(gw, rw, atol=4e-3, rtol=1.6e-2)


def test_fused_clm_loss_equals_loss_on_logits():
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_len=8))
    x, y = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
    ref = F.cross_entropy(m(x).view(-1, 64), y.view(-1))
    torch.testing.assert_close(clm_loss(m, (x, y))[0], ref)
