"""The classic baselines: Bengio et al.'s NNLM and the LSTM/GRU LM (shapes, context, ties, fused loss)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.models.rnn import NNLM, RecurrentLM
from lmforge.objectives.losses import linear_cross_entropy

V = 50


def _model(arch: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    settings = {"vocab_size": V, "d_model": 24, "n_layer": 2, "max_len": 16, "nnlm_context": 3, **kw}
    return build_model(ModelConfig(arch=arch, **settings)).eval()


def _ids(B: int = 3, T: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["lstm", "gru", "nnlm"])
def test_shapes_and_types(arch):
    m = _model(arch, rnn_hidden=40)
    assert isinstance(m, NNLM if arch == "nnlm" else RecurrentLM) and m.config.arch == arch
    logits, state = m(_ids())
    assert logits.shape == (3, 10, V)
    expected = {"lstm": [(2, 3, 40)] * 2, "gru": [(2, 3, 40)], "nnlm": [(3, 2)]}[arch]
    assert [tuple(s.shape) for s in state] == expected
    out = m(_ids())
    assert out.logits is out.output  # what eval code reads from transformers-style outputs


def test_baseline_config_ignores_attention_heads():
    # d_model=100 is not divisible by the default n_head=6: irrelevant to an LSTM.
    ModelConfig(arch="lstm", vocab_size=V, d_model=100)
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(arch="decoder", vocab_size=V, d_model=100)
    with pytest.raises(LmforgeError, match="vocab_size"):
        build_model(ModelConfig(arch="gru", vocab_size=0))


def test_nnlm_sees_exactly_the_last_n_minus_1_tokens():
    m = _model("nnlm", nnlm_context=3)
    x = _ids(1, 12)
    base = m(x).logits
    for s in range(12):
        y = x.clone()
        y[0, s] = (y[0, s] + 1) % V
        changed = (m(y).logits - base).abs().amax(-1)[0] > 0  # (T,)
        # Position t conditions on tokens t-2, t-1, t: a change at s reaches t = s, s+1, s+2 only.
        want = torch.zeros(12, dtype=torch.bool)
        want[s : s + 3] = True
        assert torch.equal(changed, want), s


def test_nnlm_carried_context_continues_the_text():
    m = _model("nnlm", nnlm_context=4)
    x = _ids(2, 12)
    whole = m(x).logits
    first, state = m(x[:, :5])
    second, _ = m(x[:, 5:], state)
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-6)
    # Without the carried context the first 3 positions of the second window differ, the rest not.
    fresh = m(x[:, 5:]).logits
    diff = (fresh - whole[:, 5:]).abs().amax(-1).amax(0)
    assert (diff[:3] > 0).all() and (diff[3:] == 0).all()


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_carried_state_equals_one_long_window(arch):
    m = _model(arch)
    x = _ids(3, 12)
    whole, end_state = m(x)
    a, state = m(x[:, :7])
    b, state = m(x[:, 7:], state)
    assert torch.allclose(torch.cat([a, b], 1), whole, atol=1e-5)
    assert all(torch.allclose(s1, s2, atol=1e-6) for s1, s2 in zip(state, end_state))
    # and the state matters: the second window from zeros is different
    assert not torch.allclose(m(x[:, 7:]).logits, b, atol=1e-4)


@pytest.mark.parametrize("arch", ["lstm", "nnlm"])
def test_tied_weights_and_projection(arch):
    tied = _model(arch)  # hidden == d_model: the output layer is the embedding itself
    assert tied.lm_head.weight is tied.tok_emb.weight and tied.proj is None
    proj = _model(arch, rnn_hidden=40)  # hidden != d_model: projected to d_model first
    assert proj.lm_head.weight is proj.tok_emb.weight and tuple(proj.proj.weight.shape) == (24, 40)
    untied = _model(arch, rnn_hidden=40, tie_embeddings=False)
    assert untied.proj is None and untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.lm_head.weight.shape == (V, 40)
    # The tie is counted once; the untied model pays for a second vocab-sized matrix.
    assert untied.num_params() - proj.num_params() == V * 40 - 24 * 40
    assert untied.num_params(non_embedding=True) == untied.num_params() - V * 24 - (
        24 if arch == "nnlm" else 0
    )


def test_param_count_and_flops_of_the_lstm():
    m = _model("lstm", tie_embeddings=False)
    d = h = 24
    per_layer = 4 * h * (d + h) + 2 * 4 * h  # input and recurrent matrices, two bias vectors
    head = V * h + V
    assert m.num_params(non_embedding=True) == 2 * per_layer + head
    assert m.num_params() == 2 * per_layer + head + V * d
    assert m.flops_per_token(16) == 6 * (2 * per_layer + head)


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("lstm", {}),
        ("gru", {"tie_embeddings": False}),
        ("nnlm", {}),
        ("nnlm", {"nnlm_direct": True, "rnn_hidden": 40}),
    ],
)
def test_fused_loss_equals_cross_entropy_of_the_logits(arch, kw):
    m = _model(arch, **kw)
    if m.config.nnlm_direct:  # direct connections start at zero; make them count
        torch.nn.init.normal_(m.direct.weight, std=0.1)
    x, y = _ids(2, 9), _ids(2, 9, seed=1)
    y[0, 3] = -100  # ignored, as in F.cross_entropy
    logits, _ = m(x)
    ref = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    m.train()  # the fused training path (gradients made in the forward pass); dropout is 0
    features, _ = m(x, features=True)
    head = m.output_layer()
    loss = linear_cross_entropy(
        features.flatten(0, 1), head.weight, y.flatten(), bias=head.bias, chunk_rows=head.chunk_rows
    )
    assert torch.allclose(loss, ref, atol=1e-5)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    F.cross_entropy(m(x).logits.flatten(0, 1), y.flatten()).backward()
    for n, p in m.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-5), n


def test_state_cache_decoding_matches_the_full_forward():
    from lmforge.infer.generate import GenerationConfig, generate_ids

    m = _model("lstm")
    x = _ids(1, 8)
    cache = m.new_cache(1)
    steps = [m(x[:, :5], cache=cache)] + [m(x[:, t : t + 1], cache=cache) for t in range(5, 8)]
    assert cache.length == 8
    assert torch.allclose(torch.cat(steps, 1), m(x).logits, atol=1e-5)
    out = list(generate_ids(m, x, GenerationConfig(max_new_tokens=5, temperature=0.0)))
    assert len(out) == 5 and all(0 <= int(t) < V for t in out)


def test_weights_round_trip(tmp_path):
    from lmforge.models.weights import load_weights, save_weights

    m = _model("lstm")
    save_weights(m, tmp_path / "w.safetensors")
    other = _model("lstm", init_std=0.5)
    torch.nn.init.zeros_(other.tok_emb.weight)
    load_weights(other, tmp_path / "w.safetensors")
    assert torch.equal(other(_ids()).logits, m(_ids()).logits)
