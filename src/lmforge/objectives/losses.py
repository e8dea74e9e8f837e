"""The LM head fused with its loss: cross-entropy of `x @ weight.T + bias` without the logits.

This is the fast path every language-modelling objective takes (causal LM, masked LM, permutation
LM, ELECTRA's generator, the recurrent baselines): models hand over their final features and their
`OutputLayer`, and the objective calls `linear_cross_entropy`. It lives with the objectives because
it is a loss; models only ever return logits or features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.autograd.function import FunctionCtx

if TYPE_CHECKING:
    from lmforge.models.layers import OutputLayer


def output_layer_loss(features: torch.Tensor, head: OutputLayer, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `head`'s logits of features (..., k) against targets (...): the model's
    output layer fused with the loss, in the chunks the model asks for (`OutputLayer.chunk_rows`)."""
    return linear_cross_entropy(
        features.flatten(0, -2), head.weight, targets.flatten(), bias=head.bias, chunk_rows=head.chunk_rows
    )


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """`F.cross_entropy(x @ weight.T + bias, targets, label_smoothing=...)` without ever holding the
    (N, vocab) logits.

    x (N, d) are the final hidden states, weight (vocab, d) the LM head, targets (N,) token ids;
    the result is the mean over targets != ignore_index, like `F.cross_entropy`'s. With a
    vocabulary of thousands the logits are a small model's largest activation, and the unfused
    loss walks over them several times (log-softmax, the one-hot scatter, the log-softmax
    gradient), each time through main memory. Here the logits of `chunk_rows` rows at a time
    (default: 16 MB of float32, at least 256 rows) are computed, reduced to their loss and, when
    training, turned into their gradient on the spot while still in cache, then folded into the
    gradients of x and weight. The backward pass only rescales those: no logits are stored.

    Softmax statistics are taken in float32 whatever the precision; under autocast the matmuls run
    in the autocast dtype, as `lm_head` would. `label_smoothing` ε trains towards (1 - ε) on the
    target and ε/vocab on every token (Szegedy et al.; PyTorch's definition), as translation does.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and needs_grad:
        return _LinearCrossEntropy.apply(x, weight, bias, targets, ignore_index, chunk_rows, label_smoothing)
    return _linear_cross_entropy(
        x, weight, bias, targets, ignore_index, chunk_rows, label_smoothing, with_grads=False
    )[0]


class _LinearCrossEntropy(torch.autograd.Function):
    """Autograd wrapper of `_linear_cross_entropy`: gradients made in forward, scaled in backward."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        ignore_index: int,
        chunk_rows: int | None,
        label_smoothing: float,
    ) -> torch.Tensor:
        loss, count, grad_x, grad_w, grad_b = _linear_cross_entropy(
            x, weight, bias, targets, ignore_index, chunk_rows, label_smoothing, with_grads=True
        )
        ctx.save_for_backward(grad_x, grad_w, grad_b, count)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x, grad_w, grad_b, count = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_loss.float() / count  # the mean's 1/count, applied here (see below)
        grad_bias = (grad_b * scale).to(b_dtype) if b_dtype is not None else None
        return (grad_x * scale).to(x_dtype), (grad_w * scale).to(w_dtype), grad_bias, None, None, None, None


def _linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    ignore_index: int,
    chunk_rows: int | None,
    label_smoothing: float = 0.0,
    *,
    with_grads: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(mean loss, number of counted targets, and with_grads the gradients of the *summed* loss
    with respect to x, weight and bias (None without a bias)).

    The gradients are left unscaled by 1/count so that, in float16, the per-logit gradients
    (softmax - one_hot, at most 1 in size) do not underflow before the loss scale is applied.
    """
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    x, w = x.to(dtype), weight.to(dtype)
    # The x gradient (grad @ w) reads w through a transposed copy: the same speed for float32 BLAS,
    # but on CPUs without native bf16, PyTorch's bf16 matmul is only fast when exactly one operand
    # is transposed (about 20x faster for this product).
    w_t = w.t().contiguous() if with_grads else None
    chunk_rows = chunk_rows or max(256, (1 << 22) // w.size(0))
    ignored = targets == ignore_index
    count = (~ignored).sum()
    counted = (~ignored).unsqueeze(1).float()  # (N, 1): 1 for rows with a target, 0 for ignored ones
    targets = targets.masked_fill(ignored, 0).unsqueeze(1)  # (N, 1); ignored rows read logit 0, weighted 0
    loss_sum = torch.zeros((), device=x.device)
    grad_x = torch.empty_like(x) if with_grads else None
    grad_w = torch.zeros_like(w, dtype=torch.float32) if with_grads else None
    b = bias.float() if bias is not None else None  # added to the float32 logits
    grad_b = torch.zeros_like(b) if (with_grads and b is not None) else None
    # One logits buffer for all chunks: a fresh 16 MB tensor per chunk would be freed back to the
    # OS and page-faulted in again each time (~5% of the head's time).
    buffer = x.new_empty(min(chunk_rows, x.size(0)), w.size(0))
    for start in range(0, x.size(0), chunk_rows):
        rows = slice(start, start + chunk_rows)
        chunk = x[rows]
        logits = torch.mm(chunk, w.t(), out=buffer[: chunk.size(0)]).float()  # (rows, vocab); stats in fp32
        if b is not None:
            logits += b
        # loss = logsumexp(logits) - logits[target]; one exp pass serves both it and the softmax.
        # Smoothed: logsumexp - (1 - eps) * logits[target] - eps * mean(logits).
        target_logit = logits.gather(1, targets[rows])
        if label_smoothing:
            target_logit = (1 - label_smoothing) * target_logit + label_smoothing * logits.mean(
                1, keepdim=True
            )
        peak = logits.amax(1, keepdim=True)
        exp_sum = logits.sub_(peak).exp_().sum(1, keepdim=True)  # logits now hold exp(logits - peak)
        loss_sum += ((exp_sum.log() + peak - target_logit) * counted[rows]).sum()
        if with_grads:
            # d loss / d logits = softmax - target distribution, zero on ignored rows.
            grad = logits.mul_(counted[rows] / exp_sum)
            if label_smoothing:
                grad.sub_(counted[rows] * (label_smoothing / grad.size(1)))
            grad = grad.scatter_add_(1, targets[rows], -(1 - label_smoothing) * counted[rows])
            if grad_b is not None:
                grad_b += grad.sum(0)
            grad = grad.to(dtype)
            torch.mm(grad, w_t.t(), out=grad_x[rows])
            if grad_w.dtype == dtype:  # float32: accumulate in place
                grad_w.addmm_(grad.t(), chunk)
            else:  # bf16/fp16 products, accumulated in float32
                grad_w += grad.t() @ chunk
    return loss_sum / count, count, grad_x, grad_w, grad_b


__all__ = ["linear_cross_entropy", "output_layer_loss"]
