"""Encoder-decoder pretraining end to end: T5 span corruption and BART denoising train a tiny model
whose loss falls, the run loads and is what `finetune seq2seq` starts from, and wrong configs or
commands are refused with what to do instead."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import make_text

import lmforge
from lmforge.errors import LmforgeError

QUIET = {"train.tensorboard": False, "train.plot": False, "train.progress": False}
TINY = {
    "model.n_layer": 2, "model.d_model": 64, "model.n_head": 2, "model.d_ff": 128, "model.max_len": 64,
    "tokenizer.vocab_size": 300, "train.batch_size": 16, "train.seq_len": 64, "train.lr": 3e-3,
    "train.warmup_steps": 5, "train.log_every": 10, "train.eval_every": 40, "prep.val_fraction": 0.1, **QUIET,
}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for i in range(30):
        (d / f"doc{i:02d}.txt").write_text(make_text(200, seed=i), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    tok = lmforge.train_tokenizer(str(corpus), kind="bpe", vocab_size=300, out=str(d / "tok.json"))
    lmforge.prepare(str(corpus), tok, d / "data", val_fraction=0.1, show_progress=False)
    return d / "data"


@pytest.fixture(scope="module", params=["span", "denoise"])
def pretrained(request, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / request.param
    torch.manual_seed(0)
    result = lmforge.pretrain(
        data=str(corpus), out=str(out), objective=request.param, **{**TINY, "train.max_steps": 40}
    )
    return request.param, out, result


def test_loss_falls_and_the_run_loads_as_an_encoder_decoder(pretrained):
    objective, out, _ = pretrained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if "loss" in r]
    assert train[-1] < train[0] - 1.0
    assert {"val_loss", "val_acc"} <= next(r for r in rows if "val_loss" in r).keys()
    lm = lmforge.load(str(out))
    assert lm.kind == "lm" and type(lm.model).__name__ == "EncoderDecoder"
    vocab, tokens = lm.model_config.vocab_size, lm.tokenizer.vocab_size
    assert vocab % 64 == 0
    if objective == "span":  # room for the 100 sentinels above the tokenizer's ids
        assert tokens + 100 <= vocab < tokens + 100 + 64
    else:
        assert tokens <= vocab < tokens + 64
    assert lmforge.info(str(out))["model"]["arch"] == "encoder-decoder"


def test_eval_and_generate_on_the_pretrained_run_say_to_fine_tune_it(pretrained, corpus):
    _, out, _ = pretrained
    with pytest.raises(LmforgeError, match=r"encoder-decoder, which gives no perplexity.*finetune seq2seq"):
        lmforge.evaluate(str(out), str(corpus / "doc00.txt"))
    with pytest.raises(LmforgeError, match="lmforge translate / evaluate"):
        lmforge.generate(str(out), "The")
    with pytest.raises(LmforgeError, match="finetune seq2seq"):
        lmforge.generate_batch(str(out), ["The", "A"])


def test_finetune_seq2seq_starts_from_the_pretrained_weights(pretrained, tmp_path):
    from safetensors.torch import load_file

    _, out, _ = pretrained
    src, tgt = tmp_path / "train.src", tmp_path / "train.tgt"
    src.write_text("the model learns\na word is text\nreturn the value\n" * 8, encoding="utf-8")
    tgt.write_text("learns the model\ntext is a word\nvalue the return\n" * 8, encoding="utf-8")
    run = tmp_path / "mt"
    result = lmforge.finetune(
        task="seq2seq", model=str(out), train_file=f"{src},{tgt}", out=str(run),
        **{"train.max_steps": 2, "train.batch_size": 4, **QUIET},
    )  # fmt: skip
    assert result.steps == 2 and result.train_loss > 0
    before = load_file(out / "model.safetensors")
    after = load_file(run / "model.safetensors")
    name = "encoder.blocks.0.attn.qkv.weight"
    tuned = next(v for k, v in after.items() if k.endswith(name))
    # Two steps at the fine-tuning lr move a weight by about 1e-4; a fresh init differs by ~0.02.
    assert torch.allclose(tuned, before[name], atol=2e-3) and not torch.equal(tuned, before[name])


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"objective": "span", "model.arch": "encoder"}, "--objective span trains an encoder-decoder"),
        ({"objective": "denoise", "model.arch": "lstm"}, "use --model.arch encoder-decoder"),
        ({"objective": "mlm", "model.arch": "encoder-decoder"}, "trains an encoder, not an encoder-decoder"),
        (
            {"objective": "clm", "model.arch": "encoder-decoder"},
            r"encoder-decoder objective \(span, denoise\)",
        ),
        (
            {"objective": "span", "model.vocab_size": 320},
            r"vocab_size=320 is too small.*\d+ tokens.*=100.*need",
        ),
        ({"objective": "span", "span.noise_density": 1.5}, r"span\.noise_density=1\.5"),
        ({"objective": "span", "span.num_sentinels": 2}, r"makes \d+ spans, but span\.num_sentinels=2"),
        ({"objective": "denoise", "denoise.poisson_lambda": 0}, r"denoise\.poisson_lambda=0"),
    ],
)
def test_bad_configs_are_refused_before_training(overrides, says, shards, tmp_path):
    cfg = {**TINY, "train.max_steps": 1, **overrides}
    with pytest.raises(LmforgeError, match=says):
        lmforge.pretrain(data=str(shards), out=str(tmp_path / "x"), **cfg)
    assert not (tmp_path / "x" / "train_state").exists()
