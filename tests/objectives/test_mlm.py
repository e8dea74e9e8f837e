"""Masked-LM pretraining end to end: the loss falls, metrics are logged, the toy model fills masks."""

from __future__ import annotations

import json
import random

import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.errors import LmforgeError

FACTS = ["the sky is blue .", "the grass is green .", "the sun is hot .", "the snow is cold ."]
FILLER = [
    "a",
    "dog",
    "ran",
    "to",
    "the",
    "old",
    "house",
    "and",
    "a",
    "cat",
    "sat",
    "on",
    "the",
    "mat",
    "while",
    "we",
    "read",
]


def _corpus(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("facts")
    rng = random.Random(0)
    for i in range(40):
        sents = []
        for _ in range(30):
            if rng.random() < 0.8:
                sents.append(rng.choice(FACTS))
            else:
                sents.append(" ".join(rng.choice(FILLER) for _ in range(rng.randint(4, 9))) + " .")
        (d / f"doc{i}.txt").write_text(" ".join(sents) + "\n", encoding="utf-8")
    return str(d)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bert"
    torch.manual_seed(0)
    result = lmforge.pretrain(
        "configs/bert-tiny.yaml", data=_corpus(tmp_path_factory), out=str(out), **{
            # rope: relative offsets ("sky is _") are learned far sooner than with absolute positions
            "model.position": "rope", "model.n_layer": 2, "model.d_model": 64, "model.n_head": 2, "model.d_ff": 128, "model.max_len": 32,
            "model.dropout": 0.0, "tokenizer.vocab_size": 120, "train.max_steps": 400, "train.batch_size": 32,
            "train.seq_len": 32, "train.lr": 2e-3, "train.warmup_steps": 10, "train.eval_every": 200,
            "train.log_every": 10, "train.tensorboard": False, "train.plot": False, "train.progress": False,
            "prep.val_fraction": 0.1,
        },
    )  # fmt: skip
    return out, result


def test_loss_falls_and_metrics_are_logged(bert_run):
    out, result = bert_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert train[-1]["mlm_loss"] < train[0]["mlm_loss"] - 1.0
    assert {"pair_loss", "pair_acc", "tokens_per_s"} <= train[-1].keys()
    evals = [r for r in rows if "val_loss" in r]
    assert evals and {"val_mlm_acc", "val_pair_acc", "val_mlm_loss"} <= evals[-1].keys()
    assert result.val_metrics["mlm_acc"] > 0.3


def test_fill_mask_predicts_the_obvious_token(bert_run):
    out, _ = bert_run
    preds = lmforge.fill_mask(out, "the sky is [MASK] .", top_k=3)
    assert len(preds) == 1 and preds[0][0].token == "blue"
    assert preds[0][0].score > preds[0][1].score and preds[0][0].text == "the sky is blue."
    two = lmforge.fill_mask(out, "the [MASK] is [MASK] .", top_k=2)
    assert len(two) == 2


def test_eval_reports_masked_metrics(bert_run, tmp_path, capsys):
    out, _ = bert_run
    held = tmp_path / "held.txt"
    held.write_text("\n\n".join(" ".join(FACTS * 3) for _ in range(6)), encoding="utf-8")
    assert main(["eval", str(out), "--data", str(held), "--txt_unit", "paragraph", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["mlm_accuracy"] > 0.5 and res["masked_tokens"] > 0 and res["pair_accuracy"] is not None


def test_cli_fill_mask_and_errors(bert_run, capsys):
    out, _ = bert_run
    assert main(["fill-mask", str(out), "the grass is [MASK] .", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["masks"][0][0]["token"] == "green"
    assert main(["fill-mask", str(out), "no mask here"]) == 2
    assert "no mask in the text" in capsys.readouterr().err


def test_fill_mask_refuses_a_causal_run(tmp_path, tiny_corpus):
    run = tmp_path / "gpt"
    lmforge.pretrain(data=str(tiny_corpus), out=str(run), **{
        "model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "model.max_len": 32, "tokenizer.vocab_size": 300,
        "train.max_steps": 2, "train.batch_size": 2, "train.tensorboard": False, "train.plot": False,
        "train.progress": False,
    })  # fmt: skip
    with pytest.raises(LmforgeError, match="masked-LM run"):
        lmforge.fill_mask(run, "the [MASK] of")


def test_clm_objective_with_encoder_is_an_error(tmp_path, tiny_corpus):
    with pytest.raises(LmforgeError, match="--objective clm trains a decoder"):
        lmforge.pretrain(data=str(tiny_corpus), out=str(tmp_path / "x"), **{"model.arch": "encoder"})
