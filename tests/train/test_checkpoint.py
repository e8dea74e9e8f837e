import json

import pytest
import torch
from torch import nn

from lmforge.train import checkpoint as ckpt


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 11, bias=False)
        self.head.weight = self.emb.weight


def _opt_with_state(model):
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model.mid(model.emb(torch.tensor([1, 2]))).sum().backward()
    opt.step()
    return opt


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    opt = _opt_with_state(model)
    ckpt.write_checkpoint(
        tmp_path, 5, model, opt, {"sampler": {"epoch": 1, "position": 8}}, device=torch.device("cpu")
    )
    expected_rand = torch.rand(3)
    model2 = Tied()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1, fused=True)
    path, meta = ckpt.find_resumable(tmp_path)
    torch.manual_seed(123)
    ckpt.load_checkpoint(path, meta, model2, opt2, device=torch.device("cpu"))
    assert meta["sampler"] == {"epoch": 1, "position": 8} and meta["step"] == 5
    assert torch.equal(torch.rand(3), expected_rand)
    for p1, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p1, p2)
        s1, s2 = opt.state[p1], opt2.state[p2]
        assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_damaged_latest_falls_back_without_deleting(tmp_path):
    model = Tied()
    opt = _opt_with_state(model)
    for step in (1, 2):
        ckpt.write_checkpoint(
            tmp_path, step, model, opt, {"sampler": {}}, device=torch.device("cpu"), keep_last=3
        )
    damaged = tmp_path / "step_00000002" / "optimizer.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-8])
    with pytest.warns(UserWarning, match="checksum mismatch"):
        _path, meta = ckpt.find_resumable(tmp_path)
    assert meta["step"] == 1 and damaged.exists()
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 2


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model = Tied()
    opt = _opt_with_state(model)
    for step in range(1, 5):
        ckpt.write_checkpoint(tmp_path, step, model, opt, {}, device=torch.device("cpu"), keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000003", "step_00000004"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_an_edited_state_file_is_caught_by_its_checksum(tmp_path):
    """A flipped digit of the step in state.json would resume 100 steps off; the digest catches it."""
    model = Tied()
    opt = _opt_with_state(model)
    for step in (1, 2):
        ckpt.write_checkpoint(
            tmp_path, step, model, opt, {"sampler": {"position": 8}}, device=torch.device("cpu"), keep_last=3
        )
    state = tmp_path / "step_00000002" / "state.json"
    state.write_text(state.read_text().replace('"step": 2', '"step": 102'))
    with pytest.warns(UserWarning, match="state.json: does not match its checksum"):
        _path, meta = ckpt.find_resumable(tmp_path)
    assert meta["step"] == 1


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    """A full disk in the middle of a checkpoint: the error propagates, the half-written
    temporary directory is removed, and the last good checkpoint is still the one to resume."""
    import errno

    model = Tied()
    opt = _opt_with_state(model)
    ckpt.write_checkpoint(tmp_path, 1, model, opt, {}, device=torch.device("cpu"))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(ckpt, "optimizer_for_save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ckpt.write_checkpoint(tmp_path, 2, model, opt, {}, device=torch.device("cpu"))
    assert not list(tmp_path.glob(".tmp-*"))
    assert ckpt.find_resumable(tmp_path)[1]["step"] == 1
