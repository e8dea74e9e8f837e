"""`lmforge average`: the mean of a run's newest checkpoints, as a new run every command takes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lmforge
from lmforge.cli import main
from lmforge.errors import LmforgeError

QUIET = {"train.plot": False, "train.tensorboard": False, "train.progress": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.conftest import make_text

    d = tmp_path_factory.mktemp("avg")
    (d / "corpus.txt").write_text(make_text(3000), encoding="utf-8")
    out = d / "run"
    lmforge.pretrain(data=str(d / "corpus.txt"), out=str(out), **{
        "model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "model.max_len": 16,
        "tokenizer.vocab_size": 300, "train.max_steps": 8, "train.batch_size": 4, "train.save_every": 2,
        "train.eval_every": 4, "train.keep_last": 3, **QUIET,
    })  # fmt: skip
    return out


def test_the_average_is_the_mean_of_the_newest_checkpoints_and_loads_as_a_run(run, tmp_path):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = lmforge.average(str(run), tmp_path / "avg", last=3)
    assert res["steps"] == [4, 6, 8]
    parts = [load_file(run / f"train_state/step_{s:08d}/model.safetensors") for s in (4, 6, 8)]
    got = load_file(tmp_path / "avg" / "model.safetensors")
    for name, t in got.items():
        torch.testing.assert_close(t, sum(p[name].double() for p in parts).div(3).float(), rtol=0, atol=1e-7)
    assert json.loads((tmp_path / "avg" / "average.json").read_text())["steps"] == [4, 6, 8]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # source untouched
    scores = lmforge.evaluate(str(tmp_path / "avg"), str(run.parent / "corpus.txt"))
    assert scores.perplexity > 1
    with pytest.raises(LmforgeError, match="--resume"):
        lmforge.pretrain(out=str(tmp_path / "avg"), resume=True)


def test_the_cli_refuses_too_few_checkpoints_and_a_non_empty_out(run, tmp_path, capsys):
    assert main(["average", str(run), "--last", "9", "--out", str(tmp_path / "a")]) == 2
    assert "3 checkpoint(s) to average, --last 9" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("mine")
    assert main(["average", str(run), "--last", "2", "--out", str(tmp_path / "b")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["average", str(run), "--last", "2", "--out", str(tmp_path / "c"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == [6, 8]
