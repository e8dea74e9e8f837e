"""Fine-tuning end to end on tiny models: classification, NER (softmax and CRF), predict/evaluate,
decoder and imported Hugging Face backbones, resume, recipes (freezing, layer decay, class weights)
and bad input."""

from __future__ import annotations

import json
import random

import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.finetuning import (
    FinetuneConfig,
    apply_freezing,
    build_task_model,
    compute_class_weights,
    finetune,
    layer_lr_scale,
    load_backbone,
    load_task,
)

POS = ["good", "great", "fine", "excellent", "lovely", "nice", "superb"]
NEG = ["bad", "awful", "poor", "terrible", "ugly", "nasty", "boring"]
FILLER = ["the", "movie", "was", "a", "story", "plot", "and", "acting", "with", "some", "scenes"]
NAMES, CITIES = ["john", "mary", "paul", "anna"], ["paris", "rome", "oslo", "lima"]
QUIET = {"train.plot": False, "train.tensorboard": False, "train.progress": False}


def _sentiment(path, n, seed):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for _ in range(n):
            y = rng.randint(0, 1)
            words = rng.sample(FILLER, 5)
            words.insert(rng.randint(0, 5), rng.choice(POS if y else NEG))
            f.write(f"{' '.join(words)}\t{'pos' if y else 'neg'}\n")
    return path


def _conll(path, n, seed):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write("-DOCSTART- O\n\n")
        for _ in range(n):
            words = [(w, "O") for w in rng.sample(FILLER, 4)]
            words.insert(rng.randint(0, 4), (rng.choice(NAMES), "B-PER"))
            i = rng.randint(0, 5)
            words[i:i] = [(rng.choice(CITIES), "B-LOC"), ("city", "I-LOC")]
            f.writelines(f"{w} {t}\n" for w, t in words)
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    files = {
        "train": _sentiment(d / "train.tsv", 400, 0),
        "dev": _sentiment(d / "dev.tsv", 80, 1),
        "ner_train": _conll(d / "ner_train.txt", 300, 2),
        "ner_dev": _conll(d / "ner_dev.txt", 60, 3),
    }
    corpus = d / "corpus.txt"
    lines = [ln.split("\t")[0] for ln in files["train"].read_text().splitlines()[1:]]
    lines += [
        " ".join(ln.split()[0] for ln in block.splitlines())
        for block in files["ner_train"].read_text().split("\n\n")[1:]
    ]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    files["corpus"] = corpus
    return files


@pytest.fixture(scope="module")
def bert(data, tmp_path_factory):
    """A tiny encoder pretrained for a few MLM steps on the task texts."""
    run = tmp_path_factory.mktemp("bert") / "run"
    lmforge.pretrain(data=str(data["corpus"]), out=str(run), objective="mlm", **{
        "model.norm_position": "post", "model.position": "learned", "model.bias": True, "model.n_layer": 2, "model.d_model": 64, "model.n_head": 2, "model.max_len": 32,
        "tokenizer.vocab_size": 300, "tokenizer.min_frequency": 1, "prep.txt_unit": "line",
        "train.max_steps": 10, "train.batch_size": 8, **QUIET,
    })  # fmt: skip
    return run


@pytest.fixture(scope="module")
def gpt(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("gpt") / "run"
    lmforge.pretrain(data=str(data["corpus"]), out=str(run), **{
        "model.n_layer": 2, "model.d_model": 64, "model.n_head": 2, "model.max_len": 32,
        "tokenizer.vocab_size": 400, "tokenizer.min_frequency": 1, "prep.txt_unit": "line",
        "train.max_steps": 10, "train.batch_size": 8, **QUIET,
    })  # fmt: skip
    return run


def _classify(model, data, out, **kw):
    opts = {"train_file": str(data["train"]), "dev_file": str(data["dev"]), "out": str(out), "train.lr": 2e-3,
            "epochs": 4, "train.batch_size": 16, **QUIET, **kw}  # fmt: skip
    return finetune(task="classify", model=str(model), **opts)


def test_classification_learns_a_trivial_task_and_keeps_the_best_checkpoint(bert, data, tmp_path):
    result = _classify(bert, data, tmp_path / "sst")
    assert result.select_metric == "accuracy" and result.best_score >= 0.97
    run = tmp_path / "sst"
    for name in ("config.yaml", "tokenizer.json", "labels.json", "model.safetensors", "dev_report.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "labels.json").read_text())["labels"] == ["neg", "pos"]
    report = json.loads((run / "dev_report.json").read_text())
    assert report["accuracy"] == pytest.approx(result.best_score)  # the kept weights are the best ones
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r for r in rows) and not any("val_ppl" in r for r in rows)


def test_predict_and_evaluate_agree_with_the_written_predictions(bert, data, tmp_path, capsys):
    _classify(bert, data, tmp_path / "sst")
    out = tmp_path / "pred.jsonl"
    assert (
        main(["predict", str(tmp_path / "sst"), "--input", str(data["dev"]), "--output", str(out), "--json"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 80 and set(rows[0]) == {"text", "label", "probs", "gold"}
    accuracy = sum(r["label"] == r["gold"] for r in rows) / len(
        rows
    )  # what any scorer computes from the file
    assert printed["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert main(["evaluate", str(tmp_path / "sst"), "--data", str(data["dev"]), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == pytest.approx(accuracy)
    # Unlabelled input: plain text lines.
    texts = tmp_path / "new.txt"
    texts.write_text("the movie was great\nawful acting\n", encoding="utf-8")
    res = lmforge.predict(tmp_path / "sst", texts, tmp_path / "p2.jsonl")
    assert "metrics" not in res and len(res["predictions"]) == 2
    # Unlabelled input in the training format: a header with the text column only.
    bare = tmp_path / "new.tsv"
    bare.write_text("sentence\nthe movie was great\nawful acting\n", encoding="utf-8")
    res = lmforge.predict(tmp_path / "sst", bare, tmp_path / "p3.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "p3.jsonl").read_text().splitlines()]
    assert "metrics" not in res and len(rows) == 2 and set(rows[0]) == {"text", "label", "probs"}


@pytest.mark.parametrize("crf", [False, True])
def test_ner_learns_and_writes_conlleval_files(bert, data, tmp_path, crf):
    from lmforge.tasks.metrics import ner_metrics

    run = tmp_path / "ner"
    result = finetune(task="ner", model=str(bert), train_file=str(data["ner_train"]), dev_file=str(data["ner_dev"]),
                      out=str(run), crf=crf, epochs=4, **{"train.lr": 2e-3, "train.batch_size": 16, **QUIET})  # fmt: skip
    assert result.select_metric == "f1" and result.best_score >= 0.95
    out = tmp_path / "ner.conll"
    res = lmforge.predict(run, data["ner_dev"], out)
    # The written file (word gold predicted) scored independently gives the reported figures.
    gold, pred, g, p = [], [], [], []
    for line in [*out.read_text().splitlines(), ""]:
        if line:
            _, t_gold, t_pred = line.split(" ")
            g.append(t_gold)
            p.append(t_pred)
        elif g:
            gold.append(g)
            pred.append(p)
            g, p = [], []
    assert len(gold) == 60
    assert ner_metrics(gold, pred)["f1"] == pytest.approx(res["metrics"]["f1"])
    evaluated = lmforge.evaluate(run, data["ner_dev"])
    assert evaluated["f1"] == pytest.approx(res["metrics"]["f1"]) and set(evaluated["per_type"]) == {
        "LOC",
        "PER",
    }


def _squad(path, n, seed):
    rng = random.Random(seed)
    countries = ["france", "spain", "italy", "norway", "peru", "chile"]
    data = []
    for a in range(n):
        paragraphs = []
        for p in range(3):
            i = rng.randrange(len(countries))
            ctx = f"{' '.join(rng.sample(FILLER, 3))} the capital of {countries[i]} is {CITIES[i % 4]} . the end"
            start = ctx.index(" is ") + 4
            qa = {"id": f"q{seed}_{a}_{p}", "question": f"capital of {countries[i]} ?",
                  "answers": [{"text": CITIES[i % 4], "answer_start": start}]}  # fmt: skip
            paragraphs.append({"context": ctx, "qas": [qa]})
        data.append({"title": f"t{a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


def test_extractive_qa_learns_and_writes_squad_prediction_json(bert, tmp_path):
    from lmforge.tasks.metrics import squad_metrics
    from lmforge.tasks.readers import read_squad

    train, dev = _squad(tmp_path / "train.json", 120, 0), _squad(tmp_path / "dev.json", 10, 1)
    result = finetune(task="qa", model=str(bert), train_file=str(train), dev_file=str(dev), out=str(tmp_path / "qa"),
                      max_query_len=8, doc_stride=8, epochs=6, **{"train.lr": 2e-3, "train.batch_size": 16, **QUIET})  # fmt: skip
    assert result.select_metric == "f1" and result.best_score >= 90
    out = tmp_path / "pred.json"
    res = lmforge.predict(tmp_path / "qa", dev, out)
    answers = json.loads(out.read_text(encoding="utf-8"))
    assert set(answers) == {f"q1_{a}_{p}" for a in range(10) for p in range(3)}
    # The official scorer's definition applied to the written file gives the reported figures.
    assert squad_metrics(answers, read_squad(dev))["f1"] == pytest.approx(res["metrics"]["f1"])
    assert (tmp_path / "pred.nbest.json").is_file()


def test_decoder_backbone_classifies_from_its_last_token(gpt, data, tmp_path):
    result = _classify(gpt, data, tmp_path / "gpt_sst", epochs=6)
    assert result.best_score >= 0.9
    task = load_task(tmp_path / "gpt_sst")
    assert task.model.backbone.arch == "decoder" and task.model.pooling == "last"


def test_imported_hugging_face_backbone(bert, data, tmp_path):
    pytest.importorskip("transformers")
    hf_dir = tmp_path / "hf"
    lmforge.export_hf(bert, hf_dir)
    result = _classify(hf_dir, data, tmp_path / "from_hf", epochs=2)
    assert result.best_score >= 0.9


def test_from_scratch_keeps_the_architecture_but_not_the_weights(bert):
    pretrained, _, _, _ = load_backbone(bert)
    fresh, _, _, _ = load_backbone(bert, from_scratch=True)
    assert pretrained.config == fresh.config
    assert not torch.equal(pretrained.model.tok_emb.weight, fresh.model.tok_emb.weight)


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_weights(bert, data, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from lmforge.models.heads import SequenceClassifier

    common = {"train.max_steps": 12, "train.save_every": 6, "train.eval_every": 6, "train.lr": 1e-3}
    _classify(bert, data, tmp_path / "a", **common)
    original, calls = SequenceClassifier.forward, {"n": 0}

    def dies_in_step_9(self, batch):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 9:
                raise Killed
        return original(self, batch)

    monkeypatch.setattr(SequenceClassifier, "forward", dies_in_step_9)
    with pytest.raises(Killed):
        _classify(bert, data, tmp_path / "b", **common)
    monkeypatch.setattr(SequenceClassifier, "forward", original)
    finetune(out=str(tmp_path / "b"), resume=True)  # everything else comes from the run's config
    last = "train_state/step_00000012/model.safetensors"
    a, b = load_file(tmp_path / "a" / last), load_file(tmp_path / "b" / last)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()


def test_a_task_registered_under_a_new_name_trains_predicts_and_loads(bert, data, tmp_path, monkeypatch):
    from lmforge.tasks import registry
    from lmforge.tasks.classify import ClassifyTask

    monkeypatch.setitem(registry.TASKS, "sentiment", ClassifyTask())
    run = tmp_path / "sentiment"
    result = finetune(task="sentiment", model=str(bert), train_file=str(data["train"]), dev_file=str(data["dev"]),
                      out=str(run), **{"train.max_steps": 2, **QUIET})  # fmt: skip
    assert result.select_metric == "accuracy"
    task = load_task(run)
    assert task.config.task == "sentiment"
    assert len(lmforge.predict(task, data["dev"])["predictions"]) == 80


def test_freezing_and_layer_decay(bert):
    backbone, _, _, _ = load_backbone(bert)
    cfg = FinetuneConfig(task="classify")
    from lmforge.tasks.readers import LabelMap

    model = build_task_model(cfg, backbone, LabelMap(["a", "b"]), None, None)
    scale = layer_lr_scale(model, 0.5)
    assert scale("classifier.weight") == 1.0
    assert scale("backbone.model.blocks.1.attn.qkv.weight") == 0.5  # top block: one step below the head
    assert scale("backbone.model.blocks.0.attn.qkv.weight") == 0.25
    assert scale("backbone.model.tok_emb.weight") == 0.125
    n = apply_freezing(model, "bottom:1")
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert n > 0 and "backbone.model.tok_emb.weight" in frozen
    assert any(name.startswith("backbone.model.blocks.0.") for name in frozen)
    assert not any(name.startswith("backbone.model.blocks.1.") for name in frozen)
    apply_freezing(model, "backbone")
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        "classifier.weight",
        "classifier.bias",
    }
    with pytest.raises(LmforgeError, match="freeze="):
        apply_freezing(model, "top:3")


def test_layer_decay_sets_the_optimizer_groups(bert, data, tmp_path):
    result = _classify(
        bert, data, tmp_path / "lld", layer_decay=0.8, freeze="embeddings", **{"train.max_steps": 2}
    )
    assert result.steps == 2
    from lmforge.train.optim import make_optimizer

    task = load_task(tmp_path / "lld")
    apply_freezing(task.model, "embeddings")
    opt = make_optimizer(
        task.model, task.config.train, torch.device("cpu"), lr_scale=layer_lr_scale(task.model, 0.8)
    )
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert scales == pytest.approx(
        [0.8**2, 0.8, 1.0]
    )  # block 0, block 1, everything above (embeddings frozen)


def test_class_weights():
    feats = [{"label": torch.tensor(0).numpy()}] * 3 + [{"label": torch.tensor(1).numpy()}]
    w = compute_class_weights("balanced", feats, 2, "label")
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2]))
    assert torch.equal(compute_class_weights("1,3", feats, 2, "label"), torch.tensor([1.0, 3.0]))
    with pytest.raises(LmforgeError, match="2 labels"):
        compute_class_weights("1,2,3", feats, 2, "label")


# --- bad input ------------------------------------------------------------------------------------------


def test_dev_label_not_in_train_names_the_file_and_line(bert, data, tmp_path):
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\ngood movie\tpos\nodd one\tneutral\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"dev\.tsv:3: label 'neutral' is not in the label map"):
        _classify(bert, {**data, "dev": dev}, tmp_path / "x")


def test_missing_model_and_task_run_as_base(bert, data, tmp_path, capsys):
    assert main(["finetune", "classify", "--train", str(data["train"]), "--out", str(tmp_path / "x")]) == 2
    assert "--model is required" in capsys.readouterr().err
    _classify(bert, data, tmp_path / "task", **{"train.max_steps": 1})
    with pytest.raises(LmforgeError, match="fine-tuned task run"):
        _classify(tmp_path / "task", data, tmp_path / "y")


def test_unknown_flag_suggests_the_nearest(bert, data, tmp_path, capsys):
    argv = [
        "finetune",
        "classify",
        "--model",
        str(bert),
        "--train",
        str(data["train"]),
        "--layer_decy",
        "0.9",
    ]
    assert main(argv) == 2
    assert "did you mean '--layer_decay'" in capsys.readouterr().err


def test_predict_on_a_pretrained_run_says_what_to_do(bert, data, tmp_path):
    with pytest.raises(LmforgeError, match="not a fine-tuned task run"):
        lmforge.predict(bert, data["dev"], tmp_path / "p.jsonl")


def test_task_runs_in_the_other_commands(bert, data, tmp_path, capsys):
    _classify(bert, data, tmp_path / "sst", group_by_length=True, **{"train.max_steps": 2})
    run = str(tmp_path / "sst")
    assert main(["info", run, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["task"] == "classify" and info["labels"] == 2
    assert main(["generate", run, "--prompt", "x"]) == 2
    assert "fine-tuned classify run, not a language model; use lmforge predict" in capsys.readouterr().err
    assert isinstance(lmforge.load(run), lmforge.finetuning.TaskRun)


def test_decoder_backbone_tags_words(gpt, data, tmp_path):
    result = finetune(task="ner", model=str(gpt), train_file=str(data["ner_train"]), dev_file=str(data["ner_dev"]),
                      out=str(tmp_path / "gpt_ner"), epochs=4, **{"train.lr": 2e-3, "train.batch_size": 16, **QUIET})  # fmt: skip
    # A causal model sees only the words before each one; the tags here depend on the word itself.
    assert result.best_score >= 0.9


def test_a_run_that_ends_at_chance_is_told_so():
    """F1 0 after a run far too small to learn, or the majority label's accuracy: a warning with the fix."""
    import warnings
    from types import SimpleNamespace as NS

    from lmforge.finetuning import _warn_if_at_chance
    from lmforge.tasks.registry import task_spec

    dev = NS(examples=[NS(label=name) for name in ["pos", "pos", "pos", "neg"]])
    chance = task_spec("classify").chance(dev, NS(names=["neg", "pos"]))
    assert chance["accuracy"][0] == 0.75 and chance["macro_f1"][0] == pytest.approx((1.5 / 1.75) / 2)
    with pytest.warns(
        UserWarning,
        match=r"dev accuracy 0\.7500 is no better than chance \(0\.7500, always predicting 'pos'\).*--epochs",
    ):
        _warn_if_at_chance(chance, NS(select_metric="accuracy", best_score=0.75))
    with pytest.warns(
        UserWarning, match=r"dev f1 0\.0000 is no better than chance \(0\.0000, tagging every word O"
    ):
        _warn_if_at_chance(task_spec("ner").chance(dev, NS(names=[])), NS(select_metric="f1", best_score=0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_at_chance(chance, NS(select_metric="accuracy", best_score=0.9))
        _warn_if_at_chance(chance, NS(select_metric="loss", best_score=0.1))


def test_an_unknown_select_metric_is_refused_before_training(bert, data, tmp_path):
    with pytest.raises(
        LmforgeError,
        match=r"select_metric='f1' is not a figure the classify validation reports \(loss, accuracy, macro_f1\)",
    ):
        _classify(bert, data, tmp_path / "run", **{"train.select_metric": "f1"})
    assert not (tmp_path / "run" / "train_state").exists()
