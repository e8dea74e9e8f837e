"""`lmforge scaling`: sizes, the shape and budget rules, the power-law fit, and a tiny ladder end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.scaling import budget_steps, count_params, fit_power_law, parse_sizes, shape_for

A, ALPHA, C = 420.0, 0.31, 1.8


def test_fit_recovers_a_known_power_law():
    n = np.array([1e5, 3e5, 1e6, 3e6, 1e7, 3e7])
    fit = fit_power_law(n, A * n**-ALPHA + C)
    assert fit.a == pytest.approx(A, rel=1e-3)
    assert fit.alpha == pytest.approx(ALPHA, rel=1e-4)
    assert fit.c == pytest.approx(C, abs=1e-4)
    assert fit.rmse < 1e-6 and fit.points == 6 and "3 degree(s) of freedom" in fit.note
    assert fit.predict(1e8) == pytest.approx(A * 1e8**-ALPHA + C, rel=1e-5)


def test_fit_with_noise_and_with_few_points():
    rng = np.random.default_rng(0)
    n = np.geomspace(1e5, 1e8, 8)
    noisy = fit_power_law(n, (A * n**-ALPHA + C) * (1 + rng.normal(0, 0.002, len(n))))
    assert noisy.alpha == pytest.approx(ALPHA, rel=0.15) and noisy.c == pytest.approx(C, abs=0.25)
    four = fit_power_law(n[::2], A * n[::2] ** -ALPHA + C)
    assert four.alpha == pytest.approx(ALPHA, rel=1e-3) and four.c == pytest.approx(C, abs=1e-3)
    three = fit_power_law(n[:3], A * n[:3] ** -ALPHA + C)  # as many points as parameters
    assert three.rmse < 1e-6 and "passes through" in three.note
    two = fit_power_law([1e5, 1e6], [4.0, 2.0])  # a pure power law: c is not identifiable
    assert two.c == 0.0 and two.alpha == pytest.approx(np.log10(2.0)) and "c fixed at 0" in two.note
    with pytest.raises(LmforgeError, match="at least two"):
        fit_power_law([1e5], [3.0])


def test_sizes_parse_and_sort():
    assert parse_sizes("1M, 0.1M,300k,2B,1.5e6") == [
        ("0.1M", 100_000), ("300k", 300_000), ("1M", 1_000_000), ("1.5e6", 1_500_000), ("2B", 2_000_000_000),
    ]  # fmt: skip
    for bad in ("10q", "", "0.1M,0.1M", "-1M"):
        with pytest.raises(LmforgeError, match="sizes"):
            parse_sizes(bad)


@pytest.mark.parametrize("target", [30_000, 100_000, 300_000, 1_000_000, 3_000_000, 30_000_000])
def test_shape_rule_lands_near_the_target(target):
    cfg = shape_for(target)
    n = count_params(cfg)
    assert 0.6 < n / target < 1.6
    assert cfg.d_model % cfg.n_head == 0 and cfg.head_dim in (16, 32, 64)
    assert 0.4 < cfg.d_model / (64 * cfg.n_layer) < 2.5  # the aspect ratio of the rule


def test_shape_rule_keeps_other_model_settings():
    base = ModelConfig(norm="rmsnorm", activation="swiglu", position="rope", bias=False, max_len=64)
    cfg = shape_for(1_000_000, base)
    assert (cfg.norm, cfg.activation, cfg.position, cfg.bias, cfg.max_len) == (
        "rmsnorm",
        "swiglu",
        "rope",
        False,
        64,
    )


def test_budget_rule():
    assert budget_steps(1000, 20, 100, 10_000) == (200, False)
    assert budget_steps(1000, 20, 100, 50) == (50, True)
    assert budget_steps(1, 1, 4096, 10) == (1, False)


def test_tiny_ladder_end_to_end(tmp_path, tiny_corpus, capsys):
    out = tmp_path / "ladder"
    argv = [
        "scaling", "--data", str(tiny_corpus), "--sizes", "10k,50k", "--out", str(out), "--max_steps", "4",
        "--tokenizer.vocab_size", "300", "--prep.val_fraction", "0.1", "--model.max_len", "32",
        "--train.batch_size", "4", "--train.eval_batches", "2", "--train.device", "cpu", "--train.threads", "1",
        "--train.progress", "false", "--train.tensorboard", "false", "--train.plot", "false", "--json",
    ]  # fmt: skip
    code = main(argv)
    stdout, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert [r["label"] for r in res["rungs"]] == ["10k", "50k"]
    small, large = res["rungs"]
    assert small["params"] < large["params"] and all(r["steps"] == 4 and r["capped"] for r in res["rungs"])
    assert all(r["val_loss"] > 0 and r["compute"] > r["compute_6nd"] > 0 for r in res["rungs"])
    assert res["fit"]["points"] == 2 and "formula" in res["fit"]
    assert json.loads((out / "scaling.json").read_text()) == res
    for name in ("loss_vs_params.png", "loss_vs_compute.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    for run in ("10k", "50k"):
        assert (out / run / "model.safetensors").is_file()
    assert (out / "data" / "manifest.json").is_file()  # prepared once, shared by the ladder

    # Re-running finds every rung trained and only refits.
    assert main(argv) == 0
    stdout, _ = capsys.readouterr()
    assert stdout.count("already trained") == 2 and "training a bpe tokenizer" not in stdout
    assert json.loads(stdout.strip().splitlines()[-1])["rungs"] == res["rungs"]


def test_ladder_refuses_the_keys_it_sets(tmp_path, tiny_corpus, capsys):
    code = main(["scaling", "--data", str(tiny_corpus), "--sizes", "10k,50k", "--out", str(tmp_path / "x"),
                 "--train.max_steps", "5"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "train.max_steps is set by the scaling ladder" in err
    code = main(["scaling", "--data", str(tiny_corpus), "--sizes", "10k,11k", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "give the same model" in err and not (tmp_path / "x").exists()
