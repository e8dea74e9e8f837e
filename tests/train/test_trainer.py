"""The training loop: exact resume, NaN handling, early stopping, the metrics record."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from tests.conftest import make_tokens

from lmforge.data.batches import CausalLMBatches, eval_windows
from lmforge.errors import LmforgeError
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.objectives.clm import causal_lm
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

VOCAB = 64


def _tokens(n: int = 6000, seed: int = 0) -> np.ndarray:
    return make_tokens(VOCAB, n, seed)


def _trainer(run_dir, steps, *, dropout=0.1, objective=None, **train_kw):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=32, max_len=16, dropout=dropout)
    )
    settings = dict(
        max_steps=steps, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=2, log_every=2, eval_every=4,
        eval_batches=2, save_every=3, progress=False, tensorboard=False, plot=False,
    )  # fmt: skip
    cfg = TrainConfig(**{**settings, **train_kw})
    batches = CausalLMBatches(_tokens(), 16, 4, seed=cfg.seed)
    val = _tokens(800, seed=1)
    return Trainer(
        model, batches, cfg, run_dir, objective=objective or causal_lm(),
        val_batches=lambda: eval_windows(val, 16, 4, cfg.eval_batches),
    )  # fmt: skip


class Killed(Exception):
    pass


def _dies_at_call(n):
    """An objective that kills the run at its n-th call (mid-step, after some logging)."""
    from lmforge.objectives.clm import clm_loss

    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise Killed
        return clm_loss(model, batch)

    return objective


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path / "a", 10, grad_accum=2)
    straight.fit()
    # The same run killed inside step 9 (2 micro-batches a step): the last checkpoint is step 6,
    # and metrics rows of steps 7-8 were already written.
    killed = _trainer(tmp_path / "b", 10, grad_accum=2)
    killed.objective = dataclasses.replace(killed.objective, loss=_dies_at_call(18))
    with pytest.raises(Killed):
        killed.fit()
    torch.manual_seed(999)  # the restart must not depend on whatever the RNG was
    resumed = _trainer(tmp_path / "b", 10, grad_accum=2)
    assert resumed.resume() == 6
    resumed = _trainer(tmp_path / "b", 10, grad_accum=2)
    resumed.fit(resume=True)
    for (name, p1), p2 in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p1, p2), name
    rows_a = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)


def test_metrics_rows_and_loss_falls(tmp_path):
    t = _trainer(tmp_path, 40, dropout=0.0)
    result = t.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(train_rows[0])
    assert any("val_loss" in r for r in rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.5
    assert result.val_loss is not None and math.isfinite(result.val_loss)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "summary.json").is_file()


def test_nan_steps_are_skipped_then_stop(tmp_path):
    from lmforge.models.weights import load_weights

    t = _trainer(tmp_path, 30, dropout=0.0, max_nan_steps=3, eval_every=0, save_every=7)
    calls = {"n": 0}

    def nan_from_step_8(model, batch):
        from lmforge.objectives.clm import clm_loss

        loss, m = clm_loss(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] >= 8 else loss), m

    t.objective = dataclasses.replace(t.objective, loss=nan_from_step_8)
    with (
        pytest.warns(UserWarning, match="skipped .* non-finite"),
        pytest.raises(LmforgeError, match="NaN/inf for"),
    ):
        t.fit()
    # Every step from 8 on was skipped: the weights are exactly those checkpointed after step 7.
    at_step_7 = _trainer(tmp_path / "other", 1).model
    load_weights(at_step_7, tmp_path / "train_state" / "step_00000007" / "model.safetensors")
    for p1, p2 in zip(t.model.parameters(), at_step_7.parameters()):
        assert torch.equal(p1, p2)


def test_early_stopping(tmp_path):
    t = _trainer(tmp_path, 200, dropout=0.0, lr=1e-9, warmup_steps=0, early_stopping_patience=2)
    result = t.fit()
    assert result.stopped_early and result.steps < 200


def _scored(figures):
    """The causal-LM objective as a task's would be, its dev figures those of an evaluator."""
    return dataclasses.replace(causal_lm(), figures=figures)


def test_select_metric_picks_weights_by_an_evaluator_figure(tmp_path):
    scores = iter([0.5, 0.9, 0.7])
    objective = _scored(("loss", "accuracy"))
    t = _trainer(tmp_path, 12, eval_every=4, save_every=4, select_metric="accuracy", objective=objective)
    t.evaluator = lambda model: {"loss": 1.0, "accuracy": next(scores)}
    result = t.fit()
    assert result.select_metric == "accuracy" and result.best_step == 8 and result.best_score == 0.9
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_accuracy"] for r in rows if "val_accuracy" in r] == [0.5, 0.9, 0.7]


def test_select_metric_must_be_reported(tmp_path):
    """Refused before step 1 where the objective declares its figures, else at the first evaluation."""
    with pytest.raises(
        LmforgeError, match=r"select_metric='f1' is not a figure the clm validation reports \(loss, ppl\)"
    ):
        _trainer(tmp_path, 4, eval_every=4, select_metric="f1")
    assert not (tmp_path / "metrics.jsonl").exists()
    t = _trainer(tmp_path, 4, eval_every=4, select_metric="f1", objective=_scored(None))
    t.evaluator = lambda model: {"loss": 1.0, "accuracy": 0.5}
    with pytest.raises(
        LmforgeError, match=r"select_metric='f1' is not among the validation figures \(loss, accuracy\)"
    ):
        t.fit()


def test_summary_reports_the_derived_perplexity(tmp_path):
    result = _trainer(tmp_path / "run", 4).fit()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_ppl"] == pytest.approx(math.exp(result.val_loss)) == result.val_ppl
    assert summary["val_metrics"]["ppl"] == summary["val_ppl"] and summary["select_metric"] == "loss"


def test_resume_refuses_to_select_by_another_figure(tmp_path):
    _trainer(tmp_path / "run", 6).fit()  # selects by the objective's choice, the loss
    with pytest.raises(LmforgeError, match=r"kept its best weights by 'loss'.*--train.select_metric loss"):
        _trainer(tmp_path / "run", 10, select_metric="ppl").fit(resume=True)
    assert _trainer(tmp_path / "run", 10, select_metric="loss").fit(resume=True).steps == 10


def test_a_diverging_run_keeps_the_checkpoint_it_can_be_resumed_from(tmp_path):
    run = tmp_path / "run"
    _trainer(run, 6).fit()  # checkpoints at steps 3 and 6 (save_every=3)
    good = (run / "train_state" / "step_00000006" / "model.safetensors").read_bytes()
    diverging = _trainer(run, 15, lr=1e6, max_nan_steps=100)
    with pytest.warns(UserWarning, match="the weights have diverged"):
        diverging.fit(resume=True)
    steps = sorted(p.name for p in (run / "train_state").glob("step_*"))
    assert (
        steps[-1] == "step_00000006"
        and json.loads((run / "train_state" / "latest.json").read_text())["step"] == 6
    )
    assert (run / "train_state" / "step_00000006" / "model.safetensors").read_bytes() == good
    resumed = _trainer(run, 9)
    assert resumed.resume() == 6 and resumed.fit(resume=True).steps == 9
