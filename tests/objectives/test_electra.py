"""ELECTRA: generator sizing, shared embeddings, labels, gradients, weights, and a short training run."""

from __future__ import annotations

import json

import pytest
import torch

import lmforge
from lmforge.data.masking import MaskingConfig
from lmforge.errors import LmforgeError
from lmforge.models import Encoder, ModelConfig, build_model
from lmforge.models.electra import ElectraModel, corrupt, generator_config, sample_tokens
from lmforge.models.weights import load_weights, read_safetensors, save_weights, weights_for_save
from lmforge.objectives.electra import ElectraConfig, discriminator_loss, electra_loss, electra_masking
from lmforge.run import load

V, MASK = 96, 4


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        arch="encoder", vocab_size=V, n_layer=2, n_head=2, d_model=32, max_len=16, norm_position="post"
    )
    return ModelConfig(**{**base, **kw})


def make_batch(B: int = 3, T: int = 16, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """A masked batch as MaskedLMBatches makes them: every 4th token of each row masked, the last
    row padded after 10 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    attention = torch.ones(B, T, dtype=torch.bool)
    attention[-1, 10:] = False
    ids[~attention] = 0
    picked = torch.zeros(B, T, dtype=torch.bool)
    picked[:, 1::4] = True
    picked &= attention
    positions = picked.flatten().nonzero().flatten()
    targets = ids.flatten()[positions].clone()
    ids.view(-1)[positions] = MASK
    u = torch.rand(positions.numel(), generator=g)
    return {"input_ids": ids, "attention_mask": attention, "token_type_ids": None, "mlm_positions": positions,
            "mlm_targets": targets, "sample_u": u}  # fmt: skip


def forward(model: ElectraModel, batch: dict):
    return model(
        batch["input_ids"], mlm_positions=batch["mlm_positions"], mlm_targets=batch["mlm_targets"],
        sample_u=batch["sample_u"], attention_mask=batch["attention_mask"],
    )  # fmt: skip


# ------------------------------------------------------------ sizes and sharing


def test_generator_is_narrower_with_sensible_heads():
    small = generator_config(ModelConfig(arch="encoder", n_layer=4, n_head=4, d_model=256, d_ff=1024), 0.25)
    assert (small.d_model, small.n_head, small.ff_dim, small.n_layer) == (64, 1, 256, 4)  # ELECTRA-Small's
    base = generator_config(ModelConfig(arch="encoder", n_layer=12, n_head=12, d_model=768), 0.25)
    assert (base.d_model, base.n_head, base.head_dim) == (192, 3, 64)
    rope = generator_config(ModelConfig(arch="encoder", n_head=6, d_model=60, position="rope"), 0.25)
    assert rope.head_dim % 2 == 0
    with pytest.raises(LmforgeError, match=r"electra\.generator_size"):
        generator_config(tiny_config(), 1.5)
    with pytest.raises(LmforgeError, match=r"electra\.disc_weight"):
        ElectraConfig(disc_weight=0).validate()


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_embeddings_are_shared_tensors(position):
    m = ElectraModel(tiny_config(position=position))
    g, d = m.generator, m.discriminator
    assert g.tok_emb.weight is d.tok_emb.weight and g.lm_head.weight is d.tok_emb.weight
    assert g.type_emb.weight is d.type_emb.weight and g.emb_norm is d.emb_norm
    if position == "learned":
        assert g.pos_emb.weight is d.pos_emb.weight
    elif position == "sinusoidal":
        assert g.pos_emb is d.pos_emb
    assert g.config.d_model < d.config.d_model
    assert g.embed(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, g.config.d_model)
    # Shared parameters count once, as they are stored once.
    assert m.num_params() == sum(t.numel() for t in weights_for_save(m).values())


@pytest.mark.parametrize(
    "options",
    [
        {
            "norm_position": "pre",
            "norm": "rmsnorm",
            "activation": "swiglu",
            "position": "rope",
            "bias": False,
        },
        {"tie_embeddings": False, "type_vocab_size": 0, "n_head": 4, "n_kv_head": 2},
    ],
)
def test_other_architectures_train(options):
    torch.manual_seed(0)
    m = ElectraModel(tiny_config(**options))
    for p in m.unused_parameters():
        p.requires_grad_(False)
    loss, _ = electra_loss(m, make_batch())
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


# ------------------------------------------------------------ labels, sampling, losses


def test_sample_equal_to_original_is_labelled_original():
    ids = torch.tensor([[2, MASK, 7, MASK], [MASK, 9, 9, 3]])
    positions = torch.tensor([1, 3, 4])
    targets = torch.tensor([5, 6, 8])
    sampled = torch.tensor([5, 11, 12])  # the first sample equals its original
    corrupted, replaced = corrupt(ids, positions, targets, sampled)
    assert corrupted.tolist() == [[2, 5, 7, 11], [12, 9, 9, 3]]
    assert replaced.tolist() == [[False, False, False, True], [True, False, False, False]]


def test_labels_end_to_end_when_the_generator_always_samples_one_token():
    torch.manual_seed(0)
    m = ElectraModel(tiny_config())
    batch = make_batch()
    favourite = int(batch["mlm_targets"][0])
    with torch.no_grad():
        m.generator.mlm_bias.fill_(-1e4)
        m.generator.mlm_bias[favourite] = 1e4  # every sample is `favourite`
    out = forward(m, batch)
    expected = torch.zeros(batch["input_ids"].numel(), dtype=torch.bool)
    expected[batch["mlm_positions"]] = batch["mlm_targets"] != favourite
    assert torch.equal(out.replaced.flatten(), expected)
    assert 0 < int(expected.sum()) < batch["mlm_positions"].numel()  # both kinds occur


def test_sampling_follows_the_generator_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, -30.0]]).expand(30000, 4)
    u = torch.rand(30000, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(sample_tokens(logits, u), minlength=4).float() / 30000
    assert torch.allclose(counts, torch.softmax(logits[0], -1), atol=0.01)
    assert torch.equal(sample_tokens(logits, u), sample_tokens(logits, u))  # a function of u
    cold = torch.bincount(sample_tokens(logits, u, temperature=0.05), minlength=4)
    assert cold[2] == 30000


def test_loss_shapes_metrics_and_gradients_reach_both_models():
    torch.manual_seed(0)
    m = ElectraModel(tiny_config())
    for p in m.unused_parameters():
        p.requires_grad_(False)
    batch = make_batch()
    loss, metrics = electra_loss(m, batch, disc_weight=50.0)
    assert loss.shape == () and set(metrics) == {"gen_loss", "disc_loss", "disc_acc"}
    assert all(v.shape == () for v in metrics.values())
    assert torch.allclose(loss, metrics["gen_loss"] + 50.0 * metrics["disc_loss"])
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing  # DDP needs every trainable parameter to get a gradient
    assert m.generator.blocks[0].attn.qkv.weight.grad.any() and m.disc_head.dense.weight.grad.any()

    m.eval()
    _, metrics = electra_loss(m, batch)
    assert {"gen_acc", "replaced_recall"} <= set(metrics) and all(v.shape == () for v in metrics.values())


def test_discriminator_loss_sends_no_gradient_through_the_samples():
    torch.manual_seed(0)
    m = ElectraModel(tiny_config())
    discriminator_loss(forward(m, make_batch())).backward()
    generator_only = {n: p for n, p in m.generator.named_parameters() if not n.startswith(("tok_emb", "pos_emb",
                      "type_emb", "emb_norm", "lm_head"))}  # fmt: skip
    assert generator_only and all(p.grad is None for p in generator_only.values())
    assert m.discriminator.tok_emb.weight.grad.any()  # the shared embeddings learn from both
    assert m.discriminator.blocks[0].attn.qkv.weight.grad.any()


def test_padding_is_left_out_of_the_discriminator_loss():
    torch.manual_seed(0)
    m = ElectraModel(tiny_config())
    batch = make_batch()
    before = discriminator_loss(forward(m, batch))
    batch["input_ids"][-1, 12] = 50  # change a padded position: the loss must not move
    assert torch.allclose(discriminator_loss(forward(m, batch)), before)


def test_masking_defaults_to_all_mask_but_respects_the_user():
    electra = electra_masking(MaskingConfig(rate=0.2, whole_word=True))
    assert (electra.rate, electra.mask_prob, electra.random_prob, electra.whole_word) == (0.2, 1.0, 0.0, True)
    released = electra_masking(MaskingConfig(mask_prob=0.85, random_prob=0.0))
    assert (released.mask_prob, released.random_prob) == (0.85, 0.0)


# ------------------------------------------------------------ weights


def test_weights_round_trip_keeps_ties_and_the_discriminator_loads_as_an_encoder(tmp_path):
    torch.manual_seed(0)
    a = ElectraModel(tiny_config())
    torch.manual_seed(1)
    b = ElectraModel(tiny_config())
    save_weights(a, tmp_path / "m.safetensors")
    stored = read_safetensors(tmp_path / "m.safetensors")
    assert "discriminator.tok_emb.weight" in stored and not any(
        k.startswith("generator.tok_emb") for k in stored
    )
    load_weights(b, tmp_path / "m.safetensors")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert b.generator.tok_emb.weight is b.discriminator.tok_emb.weight
    batch = make_batch()
    a.eval(), b.eval()
    assert torch.equal(forward(a, batch).disc_logits, forward(b, batch).disc_logits)

    enc = build_model(a.config)
    save_weights(a.discriminator, tmp_path / "d.safetensors")
    load_weights(enc, tmp_path / "d.safetensors")
    assert isinstance(enc, Encoder) and set(weights_for_save(enc)) == set(weights_for_save(a.discriminator))


# ------------------------------------------------------------ training runs

RUN = {
    "objective": "electra", "model.n_layer": 2, "model.d_model": 64, "model.n_head": 2, "model.max_len": 64,
    "tokenizer.kind": "wordpiece", "tokenizer.vocab_size": 300, "train.batch_size": 8, "train.lr": 3e-3,
    "train.warmup_steps": 5, "train.log_every": 5, "train.eval_every": 10, "train.eval_batches": 2,
    "train.progress": False, "train.tensorboard": False, "train.plot": False, "train.device": "cpu",
    "train.threads": 1, "prep.val_fraction": 0.1,
}  # fmt: skip


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_discriminator_loss_and_the_run_loads(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    result = lmforge.pretrain(data=str(tiny_corpus), out=str(run), **{**RUN, "train.max_steps": 30})
    train = [r for r in rows(run) if "disc_loss" in r]
    assert train[-1]["disc_loss"] < train[0]["disc_loss"] - 0.1
    assert {"gen_acc", "replaced_recall", "disc_acc"} <= set(result.val_metrics)

    lm = load(run)
    assert isinstance(lm.model, ElectraModel) and isinstance(lm.model.discriminator, Encoder)
    stored = read_safetensors(run / "model.safetensors")
    assert torch.equal(lm.model.discriminator.tok_emb.weight, stored["discriminator.tok_emb.weight"])
    ids = torch.tensor([lm.tokenizer.encode("the model")])
    assert lm.model.detect(ids).shape == ids.shape


def test_resume_is_exact(tmp_path, tiny_corpus):
    """Interrupted at step 4 and resumed, a run ends with the weights of an uninterrupted one:
    the generator's samples come from the batches, not from a random state the resume could miss."""
    small = {**RUN, "model.d_model": 32, "model.max_len": 32, "train.schedule": "constant", "train.save_every": 4,
             "train.eval_every": 4, "train.log_every": 2}  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    lmforge.pretrain(data=str(tiny_corpus), out=str(whole), **{**small, "train.max_steps": 8})
    shards = str(whole / "data")
    lmforge.pretrain(data=shards, out=str(parts), **{**small, "train.max_steps": 4})
    lmforge.pretrain(out=str(parts), resume=True, **{"train.max_steps": 8})
    a = read_safetensors(whole / "train_state" / "step_00000008" / "model.safetensors")
    b = read_safetensors(parts / "train_state" / "step_00000008" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
