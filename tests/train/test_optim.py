import itertools

import pytest
import torch
from torch import nn

from lmforge.train.config import TrainConfig
from lmforge.train.optim import lr_at, make_optimizer, param_groups


def test_schedules_warm_up_then_reach_the_floor():
    for schedule in ("cosine", "linear", "wsd"):
        cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule=schedule)
        assert lr_at(0, cfg) == pytest.approx(0.1)
        assert lr_at(9, cfg) == pytest.approx(1.0)
        assert lr_at(100, cfg) == pytest.approx(0.1)
        lrs = [lr_at(s, cfg) for s in range(10, 101)]
        assert all(a >= b - 1e-12 for a, b in itertools.pairwise(lrs)), (
            schedule
        )  # never increases after warmup
    wsd = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, schedule="wsd", decay_ratio=0.2)
    assert lr_at(80, wsd) == pytest.approx(1.0)  # still stable before the last 20%
    assert lr_at(50, TrainConfig(max_steps=100, warmup_steps=0, lr=1.0, schedule="constant")) == 1.0
    cos = TrainConfig(max_steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.0)
    assert lr_at(60, cos) == pytest.approx(0.5)  # halfway through the cosine


def test_weight_decay_only_on_matrices():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4  # embedding, bias, norm weight, norm bias
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    assert opt.defaults["fused"] is True
