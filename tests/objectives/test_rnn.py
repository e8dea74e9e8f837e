"""Truncated BPTT for the baselines: stream batches, the carried state, exact resume, `--arch lstm`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tests.conftest import make_tokens

import lmforge
from lmforge.data.stream_batches import StreamBatches, stream_eval_windows
from lmforge.errors import LmforgeError
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.objectives.rnn import CarriedStateLoss
from lmforge.train.config import TrainConfig
from lmforge.train.optim import lr_at
from lmforge.train.trainer import Trainer

VOCAB = 64


def _tokens(n: int = 6000, seed: int = 0) -> np.ndarray:
    return make_tokens(VOCAB, n, seed)


# ---------------------------------------------------------------- stream batches


def test_rows_continue_across_batches():
    tokens = np.arange(1000, dtype=np.int64)  # token value = its position: continuity is visible
    b = StreamBatches(tokens, seq_len=7, batch_size=4)
    xs, ys = zip(*[b.next_batch() for _ in range(5)])
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)  # (4, 35): each row one contiguous run of the text
    assert torch.equal(y, x + 1)
    assert (x[:, 1:] - x[:, :-1] == 1).all()
    L = (1000 - 1) // 4
    assert x[:, 0].tolist() == [0, L, 2 * L, 3 * L]  # the streams split the text evenly (batchify)
    assert b.first_of_epoch is False and b.state_dict() == {"epoch": 0, "position": 5}


def test_epochs_reset_shift_and_ranks_take_their_own_streams():
    tokens = np.arange(200, dtype=np.int64)
    b = StreamBatches(tokens, seq_len=8, batch_size=3, seed=5)
    per_epoch = b.windows_per_epoch  # (199 // 3) // 8 = 8
    assert per_epoch == 8
    firsts = []
    for _ in range(3 * per_epoch):
        x, _ = b.next_batch()
        firsts.append(b.first_of_epoch)
        if b.first_of_epoch:
            start = int(x[0, 0])
            assert start == 0 if b.state.epoch == 0 else 0 <= start < 8
    assert [i for i, f in enumerate(firsts) if f] == [0, 8, 16]
    # Two ranks of batch 2 read exactly the 4 streams a single process of batch 4 reads.
    whole = StreamBatches(tokens, 8, 4).next_batch()[0]
    halves = [StreamBatches(tokens, 8, 2, rank=r, world_size=2).next_batch()[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)


def test_stream_batches_resume_and_errors():
    tokens = _tokens(3000)
    a = StreamBatches(tokens, 16, 4, seed=3)
    for _ in range(50):  # crosses an epoch boundary (46 windows per epoch)
        a.next_batch()
    b = StreamBatches(tokens, 16, 4, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # plain ints, as in state.json
    for _ in range(60):
        assert all(torch.equal(p, q) for p, q in zip(a.next_batch(), b.next_batch()))
    with pytest.raises(LmforgeError, match="batch_size"):
        StreamBatches(tokens[:100], 16, 8)


def test_eval_windows_read_every_stream_in_order():
    tokens = np.arange(101, dtype=np.int64)
    batches = list(stream_eval_windows(tokens, seq_len=8, batch_size=4, max_batches=100))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 8), (4, 8), (4, 8), (4, 1)]  # 25 per stream
    x = torch.cat([x for x, _ in batches], 1)
    assert torch.equal(x, torch.arange(100).view(4, 25))  # all tokens, each stream in order
    again = list(stream_eval_windows(tokens, 8, 4, 2))
    assert len(again) == 2 and torch.equal(again[1][0], batches[1][0])


# ---------------------------------------------------------------- the carried state


def _lstm(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {"arch": "lstm", "vocab_size": VOCAB, "n_layer": 2, "d_model": 32, "max_len": 16, **kw}
    return build_model(ModelConfig(**cfg))


def test_loss_carries_the_lstm_state_across_batches():
    model = _lstm()
    tokens = torch.from_numpy(_tokens(400).astype(np.int64))
    batches = StreamBatches(tokens.numpy(), seq_len=10, batch_size=2)
    loss_fn = CarriedStateLoss(batches)
    got = [loss_fn(model, batches.next_batch())[0] for _ in range(2)]
    # The same two windows as one long window of 20 tokens: the same mean loss.
    L = (400 - 1) // 2
    rows = torch.stack([tokens[s * L : s * L + 21] for s in range(2)])
    whole = CarriedStateLoss()(model, (rows[:, :-1], rows[:, 1:]))[0]
    assert torch.allclose((got[0] + got[1]) / 2, whole, atol=1e-5)
    # Detached between batches: the second loss has no graph back into the first window.
    assert all(not t.requires_grad for t in loss_fn.train_state)
    # A fresh state at each epoch start, and evaluation keeps its own state.
    batches.load_state_dict({"epoch": 1, "position": 0})
    x, y = batches.next_batch()
    assert torch.allclose(loss_fn(model, (x, y))[0], CarriedStateLoss()(model, (x, y))[0], atol=1e-6)
    model.eval()
    train_state = loss_fn.train_state
    loss_fn.reset_eval()
    loss_fn(model, (x, y))
    assert loss_fn.train_state is train_state and loss_fn.eval_state is not None


class Killed(Exception):
    pass


class DiesAt(CarriedStateLoss):
    """The carried-state loss of a run killed at its n-th training call (mid-step)."""

    def __init__(self, batches, n: int) -> None:
        super().__init__(batches)
        self.calls, self.n = 0, n

    def __call__(self, model, batch):
        if model.training:
            self.calls += 1
            if self.calls == self.n:
                raise Killed
        return super().__call__(model, batch)


def _trainer(run_dir, steps: int, *, die_at: int = 0, **train_kw) -> Trainer:
    model = _lstm(dropout=0.1)
    settings = dict(
        max_steps=steps, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=2, log_every=2, eval_every=4,
        eval_batches=3, save_every=3, progress=False, tensorboard=False, plot=False,
    )  # fmt: skip
    cfg = TrainConfig(**{**settings, **train_kw})
    batches = StreamBatches(_tokens(), 16, 4, seed=cfg.seed)
    loss = DiesAt(batches, die_at) if die_at else CarriedStateLoss(batches)
    val = _tokens(800, seed=1)

    def val_batches():
        loss.reset_eval()
        return stream_eval_windows(val, 16, 4, cfg.eval_batches)

    return Trainer(model, batches, cfg, run_dir, val_batches=val_batches, objective=loss)


def test_resume_with_the_carried_state_is_bitwise_identical(tmp_path):
    straight = _trainer(tmp_path / "a", 10, grad_accum=2)
    straight.fit()
    # Killed inside step 9 (2 micro-batches a step): the last checkpoint is step 6.
    with pytest.raises(Killed):
        _trainer(tmp_path / "b", 10, grad_accum=2, die_at=18).fit()
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    assert (tmp_path / "b" / "train_state" / "step_00000006" / "objective.rank0.safetensors").is_file()
    meta = json.loads((tmp_path / "b" / "train_state" / "step_00000006" / "state.json").read_text())
    assert "objective.rank0.safetensors" in meta["sha256"]
    torch.manual_seed(999)  # the restart must not depend on whatever the RNG was
    resumed = _trainer(tmp_path / "b", 10, grad_accum=2)
    resumed.fit(resume=True)
    for (name, p1), p2 in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p1, p2), name
    assert straight.last_val == resumed.last_val
    # Without the saved state the continuation differs: the test would see a lost state.
    lost = _trainer(tmp_path / "c", 10, grad_accum=2)
    assert lost.resume() == 6
    lost.objective.loss.load_state_tensors({})
    while lost.step < 10:
        lost.train_step(lr_at(lost.step, lost.cfg))
        lost.step += 1
    assert not all(
        torch.equal(p1, p2) for p1, p2 in zip(straight.model.parameters(), lost.model.parameters())
    )


# ---------------------------------------------------------------- through pretrain and the CLI


TINY = {
    "model.n_layer": 1, "model.d_model": 32, "model.max_len": 16, "tokenizer.vocab_size": 300,
    "train.batch_size": 4, "train.seq_len": 16, "train.lr": 1e-2, "train.warmup_steps": 2,
    "train.log_every": 5, "train.eval_every": 0, "train.eval_batches": 4, "train.progress": False, "train.tensorboard": False,
    "train.plot": False, "train.device": "cpu", "train.threads": 1, "prep.val_fraction": 0.1,
}  # fmt: skip


@pytest.mark.parametrize("arch", ["lstm", "nnlm"])
def test_pretrain_lowers_the_loss_and_the_run_loads(tmp_path, tiny_corpus, arch):
    run = tmp_path / "run"
    result = lmforge.pretrain(data=str(tiny_corpus), out=str(run), **{**TINY, "model.arch": arch,
                              "train.max_steps": 60})  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.val_loss is not None and result.val_ppl < 300
    assert (run / "train_state" / "step_00000060" / "objective.rank0.safetensors").is_file()  # state carried
    lm = lmforge.load(run)
    assert lm.model_config.arch == arch and lm.config["objective"] == "clm"
    ids = torch.tensor([lm.tokenizer.encode("the model")])
    assert lm.model(ids).logits.shape[:2] == ids.shape


def test_cli_arch_shortcut(tmp_path, tiny_corpus, capsys):
    from lmforge.cli import main

    flags = [f"--{k}={v}" for k, v in TINY.items()]
    run = tmp_path / "run"
    argv = ["pretrain", "--arch", "gru", "--data", str(tiny_corpus), "--out", str(run), *flags]
    assert main([*argv, "--train.max_steps", "6", "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 6
    saved = (run / "config.yaml").read_text()
    assert "arch: gru" in saved and "arch: null" in saved  # the shortcut lands in model.arch
    # Resume through the saved config, then the errors: two different archs, a masked-LM objective.
    assert main(["pretrain", "--out", str(run), "--resume", "--train.max_steps", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 8
    assert main(["pretrain", "--arch", "lstm", "--model.arch", "gru", "--out", str(tmp_path / "x")]) == 2
    assert "--model.arch" in capsys.readouterr().err
    assert main(["pretrain", "--arch", "lstm", "--objective", "mlm", "--data", str(tiny_corpus),
                 "--out", str(tmp_path / "y"), *flags]) == 2  # fmt: skip
    assert "--objective clm" in capsys.readouterr().err
