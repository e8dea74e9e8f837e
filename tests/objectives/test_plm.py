"""Permutation LM (XLNet): factorisation orders on the data side, two-stream attention checked
against its definition and against the library's own Block, the loss, and a short training run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmforge.data.batches import CausalLMBatches
from lmforge.data.permutation_batches import (
    PermutationLMBatches,
    num_predict,
    permutation_eval_batches,
    sample_orders,
)
from lmforge.errors import LmforgeError
from lmforge.models import Encoder, build_model
from lmforge.models.config import ModelConfig
from lmforge.models.permutation import PermutationEncoder
from lmforge.objectives.plm import PLMConfig, plm_loss

VOCAB, QUERY_ID = 40, 1

ARCHS = {
    # BERT-like: post-norm, learned positions, LayerNorm with biases, embedding LayerNorm.
    "post-learned": {"norm_position": "post", "position": "learned", "activation": "gelu"},
    # Llama-like: pre-norm, rotary positions, grouped-query attention, RMSNorm, SwiGLU, no biases.
    "pre-rope-gqa": {
        "norm_position": "pre", "position": "rope", "n_head": 4, "n_kv_head": 2, "norm": "rmsnorm",
        "activation": "swiglu", "bias": False,
    },
    "pre-sinusoidal": {"norm_position": "pre", "position": "sinusoidal"},
}  # fmt: skip


def _config(**kw) -> ModelConfig:
    base = {"arch": "encoder", "vocab_size": VOCAB, "n_layer": 2, "n_head": 2, "d_model": 16, "max_len": 16}
    return ModelConfig(**{**base, "dropout": 0.0, "init_std": 0.3, **kw})


def _model(arch: str, *, full_context: bool = False) -> PermutationEncoder:
    """A tiny float64 model with large random weights, so every real dependence is far above rounding."""
    torch.manual_seed(0)
    return PermutationEncoder(_config(**ARCHS[arch]), QUERY_ID, full_context=full_context).double().eval()


def _order(T: int, P: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rank, targets = sample_orders(np.random.default_rng(seed), 1, T, P)
    return rank[0], targets[0]


# ----------------------------------------------------------------------------------------------
# Two-stream attention


@pytest.mark.parametrize("full_context", [False, True])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_streams_depend_exactly_on_the_tokens_their_order_allows(arch, full_context):
    """Perturb each input token in turn: the query stream at target i must change exactly for
    tokens j with rank(j) < rank(i) (never its own), the content stream at i exactly for
    rank(j) <= rank(i). With full_context the non-predicted tokens share one rank."""
    T, P = 10, 4
    model = _model(arch, full_context=full_context)
    rank, targets = _order(T, P)
    ids = torch.randint(2, VOCAB, (1, T), generator=torch.Generator().manual_seed(1))
    # Row 0: the input. Row j+1: the input with token j replaced by another (non-query) token.
    batch = ids.repeat(T + 1, 1)
    j = torch.arange(T)
    batch[j + 1, j] = (batch[j + 1, j] - 2 + 1 + torch.arange(T) % 5) % (VOCAB - 2) + 2
    assert (batch[1:] != ids).sum(1).eq(1).all()
    r, t = torch.from_numpy(rank)[None], torch.from_numpy(targets)[None]
    with torch.no_grad():
        g, h = model.two_stream(batch, r.expand(T + 1, T), t.expand(T + 1, P), content=True)
    changed_g = (g[1:] - g[:1]).abs().amax(-1) > 1e-9  # (T, P): [j, p] = target p's state moved with token j
    changed_h = (h[1:] - h[:1]).abs().amax(-1) > 1e-9  # (T, T): [j, i]

    eff = np.maximum(rank, T - P - 1) if full_context else rank
    assert np.array_equal(changed_g.numpy(), eff[:, None] < eff[targets][None, :])
    assert np.array_equal(changed_h.numpy(), eff[:, None] <= eff[None, :])
    assert not changed_g[t[0], torch.arange(P)].any()  # a target never sees its own token
    assert changed_h[j, j].all()  # ... while its content state does
    # The first target of the order sees all the context and nothing else.
    first = int(np.argmin(rank[targets]))
    assert changed_g[:, first].sum() == T - P


@pytest.mark.parametrize("full_context", [False, True])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_two_stream_matches_the_library_block_on_the_joint_sequence(arch, full_context):
    """Reference: run the unchanged `Block.forward` over [content | query] rows (each query row at
    its target's position), with keys from query rows masked out. That is the two-stream pass
    written with the model's own attention; ours slices the fused qkv weight and skips the last
    layer's content rows, and must give the same states."""
    T, P, B = 9, 3, 2
    model = _model(arch, full_context=full_context)
    rng = np.random.default_rng(3)
    rank, targets = sample_orders(rng, B, T, P)
    ids = torch.from_numpy(rng.integers(2, VOCAB, (B, T)))
    r, t = torch.from_numpy(rank), torch.from_numpy(targets)
    with torch.no_grad():
        g, h = model.two_stream(ids, r, t, content=True)
        g_only, none = model.two_stream(ids, r, t)
        assert none is None
        torch.testing.assert_close(g_only, g, rtol=0, atol=1e-12)
        for b in range(B):
            eff = r[b].clamp(min=T - P - 1) if full_context else r[b]
            rows = torch.cat([torch.arange(T), t[b]])  # position of each joint row
            row_rank = eff[rows] - torch.cat([torch.zeros(T), torch.full((P,), 0.5)]).double()
            mask = torch.zeros(T + P, T + P, dtype=torch.bool)
            mask[:, :T] = eff[None, :] <= row_rank[:, None]  # content: <=, query: < (rank - 0.5 >= rank j)
            x = torch.cat(
                [model.embed(ids[b : b + 1]), model.embed(torch.full((1, T), QUERY_ID))[:, t[b]]], dim=1
            )
            rope = None
            if model.rope is not None:
                cos, sin = model.rope(0, T)
                rope = (cos[rows], sin[rows])
            for block in model.blocks:
                x = block(x, rope=rope, causal=False, attn_mask=mask)
            x = model.norm_f(x)[0]
            torch.testing.assert_close(h[b], x[:T], rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(g[b], x[T:], rtol=1e-10, atol=1e-10)


def test_without_an_order_it_is_the_plain_encoder():
    """Same init, parameter names and forward as `Encoder`: a PLM run's weights load as an Encoder."""
    cfg = _config()
    torch.manual_seed(0)
    plm = PermutationEncoder(cfg, QUERY_ID)
    torch.manual_seed(0)
    enc = build_model(cfg)
    assert isinstance(enc, Encoder) and type(enc) is not PermutationEncoder
    sd, ref = plm.state_dict(), enc.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    ids = torch.randint(0, VOCAB, (2, 7))
    torch.testing.assert_close(plm(ids), enc(ids))


# ----------------------------------------------------------------------------------------------
# Data: orders


def test_sampled_orders_are_permutations_and_targets_are_their_last_steps():
    B, T, P = 64, 24, 4
    rank, targets = sample_orders(np.random.default_rng(0), B, T, P)
    assert rank.shape == (B, T) and targets.shape == (B, P)
    assert (np.sort(rank, axis=1) == np.arange(T)).all()  # each row a permutation of 0..T-1
    ranks_of_targets = np.take_along_axis(rank, targets, axis=1)
    assert (ranks_of_targets == np.arange(T - P, T)).all()  # the last P steps, in order
    assert len({tuple(r) for r in rank}) == B  # rows draw their own orders
    # Uniform orders: every position is a target about P/T of the time (6 standard deviations).
    _, many = sample_orders(np.random.default_rng(1), 2000, T, P)
    share = np.bincount(many.ravel(), minlength=T) / 2000
    assert np.abs(share - P / T).max() < 0.05


def test_predicted_share_is_about_one_in_k():
    assert num_predict(128, 6.0) == 21  # 16.4% of 128
    assert num_predict(512, 6.0) == 85  # XLNet-Large's num_predict for 512 tokens
    for T in (16, 64, 100, 256):
        for k in (2.0, 4.0, 6.0, 7.0):
            assert abs(num_predict(T, k) / T - 1 / k) <= 0.5 / T + 1e-12
    assert num_predict(2, 6.0) == 1  # at least one target
    assert num_predict(10, 1.0) == 9  # and at least one context token
    with pytest.raises(LmforgeError, match="seq_len"):
        num_predict(1, 6.0)
    with pytest.raises(LmforgeError, match=r"plm\.predict_k"):
        PLMConfig(predict_k=0.5).validate()


def _stream(n: int = 1000) -> np.ndarray:
    return (np.arange(n) % 37).astype(np.uint16)


def _batches(seed: int = 0, **kw) -> PermutationLMBatches:
    return PermutationLMBatches(CausalLMBatches(_stream(), 16, 4, seed=seed, **kw), predict_k=4.0)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batches_are_reproducible_and_resume_exactly():
    a, b = _batches(), _batches()
    assert a.batch_size == 4 and a.seq_len == 16 and a.n_predict == 4
    first = [a.next_batch() for _ in range(20)]  # 15 batches an epoch: crosses into epoch 1
    assert all(_same(x, y) for x, y in zip(first, (b.next_batch() for _ in range(20))))
    batch = first[0]
    assert batch["input_ids"].shape == batch["perm_rank"].shape == (4, 16)
    assert batch["target_positions"].shape == (4, 4)
    assert not torch.equal(first[0]["perm_rank"], first[1]["perm_rank"])
    assert not torch.equal(first[0]["perm_rank"], _batches(seed=1).next_batch()["perm_rank"])
    # The inputs are the windows' inputs: the targets are read from them, not from shifted ids.
    ref = CausalLMBatches(_stream(), 16, 4, seed=0)
    assert torch.equal(batch["input_ids"], ref.next_batch()[0])

    # Resume from a saved state mid-run (and across an epoch boundary).
    for cut in (3, 15):
        fresh = _batches()
        for _ in range(cut):
            fresh.next_batch()
        resumed = _batches()
        resumed.load_state_dict(fresh.state_dict())
        assert all(_same(first[i], resumed.next_batch()) for i in range(cut, 20))


def test_ranks_of_a_distributed_run_draw_different_orders():
    r0, r1 = _batches(rank=0, world_size=2), _batches(rank=1, world_size=2)
    b0, b1 = r0.next_batch(), r1.next_batch()
    assert not torch.equal(b0["input_ids"], b1["input_ids"])
    assert not torch.equal(b0["perm_rank"], b1["perm_rank"])


def test_validation_batches_are_the_same_at_every_evaluation():
    def val() -> list[dict]:
        return list(permutation_eval_batches(_stream(300), 16, 4, 3, predict_k=4.0, seed=5))

    first, again = val(), val()
    assert len(first) == 3 and all(_same(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0]["perm_rank"], first[1]["perm_rank"])


# ----------------------------------------------------------------------------------------------
# Loss


def test_loss_is_finite_reaches_every_weight_and_eval_matches_train():
    torch.manual_seed(0)
    model = PermutationEncoder(_config(**ARCHS["pre-rope-gqa"]), QUERY_ID)
    batch = _batches().next_batch()  # token ids 0..36 < VOCAB
    loss, metrics = plm_loss(model, batch)
    assert torch.isfinite(loss) and set(metrics) == {"plm_loss"}
    assert abs(loss.item() - math.log(VOCAB)) < 1.0  # about uniform at init
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("pooler.", "cls_head.")):  # the sentence-pair head, unused by PLM
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name

    model.eval()
    with torch.no_grad():
        eval_loss, eval_metrics = plm_loss(model, batch)
    assert set(eval_metrics) == {"plm_loss", "plm_acc"} and 0 <= eval_metrics["plm_acc"] <= 1
    torch.testing.assert_close(eval_loss, loss.detach(), rtol=1e-5, atol=1e-5)  # fused head == plain head


def _repetitive_text(n_lines: int = 400) -> str:
    """A few sentences over and over: each token is predictable from its neighbours on both sides."""
    sentences = [
        "the model reads the text and learns the words",
        "a token is predicted from the tokens before it in the order",
        "every order of the sentence is a different way to read it",
    ]
    return "\n".join(sentences[i % 3] + "." for i in range(n_lines)) + "\n"


@pytest.mark.slow
def test_short_run_learns_from_context_and_saves_a_plain_encoder(tmp_path):
    """A tiny run through `lmforge.pretrain`: the loss falls, and the validation loss ends well below
    the corpus' unigram entropy, which no model that ignores the context can reach. (Rotary positions:
    tiny models with learned positions take many more steps to find their neighbours, under MLM too.)"""
    from lmforge import pretrain
    from lmforge.data.shards import Shards
    from lmforge.models.weights import load_weights
    from lmforge.run import model_config_of

    data = tmp_path / "corpus.txt"
    data.write_text(_repetitive_text(), encoding="utf-8")
    run = tmp_path / "run"
    settings = {
        "model.n_layer": 2, "model.n_head": 2, "model.d_model": 64, "model.max_len": 32, "model.position": "rope",
        "tokenizer.vocab_size": 300, "prep.val_fraction": 0.1, "prep.clean.max_repetition": 1.0,
        "plm.predict_k": 4.0, "train.max_steps": 300, "train.batch_size": 8, "train.seq_len": 32, "train.lr": 3e-3,
        "train.warmup_steps": 4, "train.log_every": 20, "train.eval_every": 150, "train.eval_batches": 2,
        "train.save_every": 300, "train.progress": False, "train.tensorboard": False, "train.plot": False,
        "train.device": "cpu", "train.threads": 1,
    }  # fmt: skip
    result = pretrain(objective="plm", data=str(data), out=str(run), **settings)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 2.0, losses

    counts = np.bincount(np.asarray(Shards.open(run / "data").tokens("train")))
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())  # about 3.5 nats
    assert result.val_loss is not None and result.val_loss < unigram_entropy - 0.5
    assert result.val_metrics is not None and 0 < result.val_metrics["plm_acc"] <= 1

    cfg, saved = model_config_of(run)
    assert saved["objective"] == "plm" and cfg.arch == "encoder"
    enc = build_model(cfg)
    load_weights(enc, run / "model.safetensors")  # the run's weights are a plain Encoder's
