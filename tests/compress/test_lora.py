"""LoRA layers: an identity at initialisation, merges exactly, targets by name, freezes the rest."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.compress.lora import LoRALinear, apply_lora, lora_modules, lora_state_dict, merge_lora
from lmforge.errors import LmforgeError
from lmforge.models import build_model
from lmforge.models.config import ModelConfig


def gpt(**kw):
    torch.manual_seed(0)
    cfg = dict(arch="decoder", vocab_size=64, n_layer=2, n_head=2, d_model=16, d_ff=32, max_len=16)
    return build_model(ModelConfig(**{**cfg, **kw})).eval()


def test_an_adapter_starts_as_the_identity_and_merges_to_the_same_function():
    model = gpt()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        before = model(ids)
    names = apply_lora(model, r"attn\.|mlp\.", r=4, alpha=8)
    assert names and all(".attn." in n or ".mlp." in n for n in names)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before)  # B = 0
        for _, m in lora_modules(model):
            m.lora_B.weight.normal_(std=0.1)
        tuned = model(ids)
    assert not torch.allclose(tuned, before)
    assert merge_lora(model) == len(names) and not lora_modules(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), tuned, atol=1e-5, rtol=0)


def test_only_the_adapters_train_and_their_state_dict_is_the_adapter():
    model = gpt()
    total = sum(p.numel() for p in model.parameters())
    names = apply_lora(model, r"attn\.qkv", r=2, alpha=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_lora == len(names) * 2 * (16 + 48) and n_lora < 0.1 * total
    assert set(lora_state_dict(model)) == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    loss = model(torch.randint(0, 64, (2, 8))).sum()
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_ranks_per_layer_rslora_and_unmerge():
    model = gpt()
    apply_lora(model, r"mlp\.", r=4, alpha=8, rslora=True, ranks={r"blocks\.1\.": 2})
    mods = dict(lora_modules(model))
    assert {m.r for n, m in mods.items() if n.startswith("blocks.0.")} == {4}
    assert {m.r for n, m in mods.items() if n.startswith("blocks.1.")} == {2}
    m = next(iter(mods.values()))
    assert m.scaling == pytest.approx(8 / math.sqrt(m.r))
    with torch.no_grad():
        m.lora_B.weight.normal_()
    w = m.base.weight.clone()
    effective = m.weight.detach().clone()
    m.merge()
    torch.testing.assert_close(m.base.weight, effective)
    m.unmerge()
    torch.testing.assert_close(m.base.weight, w, atol=1e-6, rtol=0)


def test_a_pattern_that_matches_nothing_lists_the_modules_that_exist():
    with pytest.raises(LmforgeError, match=r"matches none .* blocks\.N\.attn\.qkv"):
        apply_lora(gpt(), r"query_proj")
    with pytest.raises(LmforgeError, match="not a regular expression"):
        apply_lora(gpt(), r"attn(")
    with pytest.raises(LmforgeError, match="rank"):
        LoRALinear(torch.nn.Linear(4, 4), 0, 1.0)
