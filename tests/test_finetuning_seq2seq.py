"""`lmforge finetune seq2seq` end to end on a tiny word-for-word translation task: it learns, its
dev BLEU is the `sacrebleu` command's, translate/evaluate/predict agree, a killed run resumes bit
for bit, and bad input is refused with a reason."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.finetuning import finetune
from lmforge.infer.generate import Generation, GenerationConfig

pytest.importorskip("sacrebleu")

SRC = [
    "the",
    "a",
    "dog",
    "cat",
    "man",
    "woman",
    "runs",
    "sits",
    "eats",
    "sleeps",
    "red",
    "big",
    "small",
    "in",
    "park",
    "house",
]
# Word-for-word "German", with an article that depends on the noun: enough structure to learn.
LEX = dict(
    zip(
        SRC,
        [
            "der",
            "ein",
            "hund",
            "katze",
            "mann",
            "frau",
            "rennt",
            "sitzt",
            "isst",
            "schläft",
            "rot",
            "groß",
            "klein",
            "im",
            "park",
            "haus",
        ],
    )
)
QUIET = {"train.plot": False, "train.tensorboard": False, "train.progress": False}


def _pairs(n, seed):
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = [
            rng.choice(SRC[:2]),
            rng.choice([*SRC[6:9], ""]),
            rng.choice(SRC[2:6]),
            rng.choice(SRC[6:10]),
        ]
        words = [w for w in words if w]
        if rng.random() < 0.5:
            words += ["in", rng.choice(["park", "house"])]
        src.append(" ".join(words))
        tgt.append(" ".join(LEX[w] for w in words).capitalize() + ".")
    return src, tgt


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("mt")
    files = {}
    for split, n, seed in (("train", 600, 0), ("val", 40, 1)):
        src, tgt = _pairs(n, seed)
        (d / f"{split}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
        (d / f"{split}.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
        files[split] = f"{d / split}.en,{d / split}.de"
        files[f"{split}_src"], files[f"{split}_ref"] = d / f"{split}.en", d / f"{split}.de"
    tok = d / "tok.json"
    lmforge.train_tokenizer(files["train"], kind="word", vocab_size=200, out=str(tok), min_frequency=1)
    files["tok"] = tok
    return files


ARCH = {"architecture.n_layer": 2, "architecture.n_dec_layer": 2, "architecture.d_model": 64,
        "architecture.n_head": 4, "architecture.d_ff": 128, "architecture.max_len": 32,
        "architecture.dropout": 0.0, "architecture.scale_embeddings": True, "architecture.init_std": 0.125}  # fmt: skip


def _train(corpus, out, **kw):
    opts = {"from_scratch": True, "tokenizer": str(corpus["tok"]), "train_file": corpus["train"],
            "dev_file": corpus["val"], "out": str(out), "max_tokens": 160, "beam": 2, "epochs": 10,
            "train.lr": 3e-3, "train.warmup_steps": 30, "train.schedule": "inverse_sqrt",
            "label_smoothing": 0.1, **ARCH, **QUIET, **kw}  # fmt: skip
    return finetune(task="seq2seq", **opts)


@pytest.fixture(scope="module")
def mt(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "mt"
    result = _train(corpus, run)
    return run, result


def test_a_model_from_scratch_learns_to_translate(mt):
    run, result = mt
    assert result.select_metric == "bleu" and result.best_score > 60
    report = json.loads((run / "dev_report.json").read_text())
    assert report["bleu"] == pytest.approx(result.best_score)
    assert "tok:13a" in report["report"]["bleu_signature"]
    assert report["report"]["bleu_lowercase"] >= report["bleu"]
    assert lmforge.info(str(run))["parameters"] > 0


def test_translate_writes_what_the_sacrebleu_command_scores_as_evaluate_does(mt, corpus, tmp_path):
    run, _ = mt
    hyp = tmp_path / "hyp.de"
    assert main(["translate", str(run), "--input", str(corpus["val_src"]), "--output", str(hyp)]) == 0
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == 40
    cmd = [sys.executable, "-m", "sacrebleu", str(corpus["val_ref"]), "-i", str(hyp), "-m", "bleu", "chrf",
           "-b", "-w", "4"]  # fmt: skip
    bleu, chrf = (
        float(x) for x in json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    )
    scores = lmforge.evaluate(str(run), f"{corpus['val_src']},{corpus['val_ref']}")
    assert scores["bleu"] == pytest.approx(bleu, abs=1e-4) and scores["chrf"] == pytest.approx(chrf, abs=1e-4)
    # The hypotheses are the user's file now: a second translate into it needs --overwrite.
    hyp.write_text("kept\n", encoding="utf-8")
    assert main(["translate", str(run), "--input", str(corpus["val_src"]), "--output", str(hyp)]) == 2
    assert hyp.read_text(encoding="utf-8") == "kept\n"
    args = ["translate", str(run), "--input", str(corpus["val_src"]), "--output", str(hyp), "--overwrite"]
    assert main(args) == 0 and len(hyp.read_text(encoding="utf-8").splitlines()) == 40


def test_translate_keeps_blank_lines_and_beam_one_is_greedy(mt):
    run, _ = mt
    texts = ["the dog runs", "", "a small cat sleeps in house"]
    out = lmforge.translate(str(run), texts, beam=1)
    assert out[1] == "" and out[0].lower().startswith("der hund")
    task = lmforge.load(str(run))
    src = torch.tensor([[*task.tokenizer.encode("the dog runs"), task.tokenizer.eos_id]])
    gen = Generation(
        task.model.model, torch.tensor([[task.model.tokens.start]]), GenerationConfig(max_new_tokens=16, temperature=0),
        eos_id=task.tokenizer.eos_id, source=(src, None),
    )  # fmt: skip
    ids = [int(t) for t in torch.cat(list(gen)) if int(t) != task.tokenizer.eos_id]
    assert task.tokenizer.decode(ids) == out[0]


def test_evaluate_takes_src_and_ref_and_predict_writes_hypotheses(mt, corpus, tmp_path, capsys):
    run, _ = mt
    rc = main(
        ["evaluate", str(run), "--src", str(corpus["val_src"]), "--ref", str(corpus["val_ref"]), "--json"]
    )
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"bleu", "chrf", "rouge1", "rougeL"} <= set(last)
    res = lmforge.predict(str(run), corpus["val"], tmp_path / "p.txt")
    assert res["metrics"]["bleu"] == pytest.approx(last["bleu"])
    with pytest.raises(LmforgeError, match=r"already exists.*--overwrite"):
        lmforge.predict(str(run), corpus["val"], tmp_path / "p.txt")
    assert main(["evaluate", str(run), "--src", str(corpus["val_src"])]) == 2
    # A JSONL test set whose fields are named otherwise than the training file's.
    src = corpus["val_src"].read_text(encoding="utf-8").splitlines()
    ref = corpus["val_ref"].read_text(encoding="utf-8").splitlines()
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("".join(json.dumps({"en": s, "de": r, "refs": [r]}) + "\n" for s, r in zip(src, ref)))
    flags = ["--src_field", "en", "--tgt_field", "de", "--ref_field", "refs"]
    assert main(["evaluate", str(run), "--data", str(jsonl), *flags, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bleu"] == pytest.approx(last["bleu"])
    assert (
        main(["predict", str(run), "--input", str(jsonl), "--output", str(tmp_path / "q.txt"), *flags]) == 0
    )
    assert (tmp_path / "q.txt").read_text() == (tmp_path / "p.txt").read_text()
    with pytest.raises(LmforgeError, match="unknown field option 'text_field'"):
        lmforge.evaluate(str(run), jsonl, fields={"text_field": "en"})


class Killed(Exception):
    pass


def test_a_killed_seq2seq_run_resumes_to_the_same_weights(corpus, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from lmforge.tasks.seq2seq import Seq2SeqModel

    common = {"train.max_steps": 10, "train.save_every": 5, "train.eval_every": 5, "epochs": 1,
              "architecture.dropout": 0.1, "dev_file": None}  # fmt: skip
    _train(corpus, tmp_path / "a", **common)
    original, calls = Seq2SeqModel.forward, {"n": 0}

    def dies_in_step_8(self, batch):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 8:
                raise Killed
        return original(self, batch)

    monkeypatch.setattr(Seq2SeqModel, "forward", dies_in_step_8)
    with pytest.raises(Killed):
        _train(corpus, tmp_path / "b", **common)
    monkeypatch.setattr(Seq2SeqModel, "forward", original)
    finetune(out=str(tmp_path / "b"), resume=True)
    last = "train_state/step_00000010/model.safetensors"
    a, b = load_file(tmp_path / "a" / last), load_file(tmp_path / "b" / last)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_tokenizers_give_the_sources_a_vocabulary_of_their_own(corpus, tmp_path):
    """--src_tokenizer: English through its own vocabulary into the encoder, German through the
    target one; both files travel with the run (and its average), hashed in run.json."""
    from lmforge.run import check_run_tokenizer
    from lmforge.tokenizer import Tokenizer

    src_tok, tgt_tok = tmp_path / "en.json", tmp_path / "de.json"
    for side, path in (("train_src", src_tok), ("train_ref", tgt_tok)):
        lmforge.train_tokenizer(
            str(corpus[side]), kind="word", vocab_size=200, out=str(path), min_frequency=1
        )
    en, de = Tokenizer.load(src_tok), Tokenizer.load(tgt_tok)
    assert en.encode("dog") != de.encode("dog")  # "dog" is an English word only
    run = tmp_path / "mt2"
    with pytest.raises(LmforgeError, match="share_embeddings false"):
        _train(corpus, run, tokenizer=str(tgt_tok), src_tokenizer=str(src_tok))
    result = _train(
        corpus,
        run,
        tokenizer=str(tgt_tok),
        src_tokenizer=str(src_tok),
        **{"architecture.share_embeddings": False},
    )
    assert result.best_score > 60
    assert json.loads((run / "run.json").read_text())["source_tokenizer_sha256"] == en.sha256
    task = lmforge.load(str(run))
    assert task.source_tokenizer.sha256 == en.sha256 and task.tokenizer.sha256 == de.sha256
    encoder_rows = task.model.model.encoder.tok_emb.weight.shape[0]
    assert encoder_rows == task.model.config.src_vocab_size == 64 * -(-en.vocab_size // 64)
    assert lmforge.info(str(run))["source_tokenizer_vocab"] == en.vocab_size
    out = lmforge.translate(task, ["the dog runs", "a cat sleeps in park"], beam=2)
    assert out[0].lower().startswith("der hund") and "katze" in out[1].lower()
    assert lmforge.generate(str(run), "the dog runs", beam=2) == out[0]
    scores = lmforge.evaluate(str(run), corpus["val"])
    assert scores["bleu"] == pytest.approx(result.best_score)
    assert lmforge.predict(str(run), corpus["val"])["metrics"]["bleu"] == pytest.approx(scores["bleu"])
    lmforge.average(str(run), tmp_path / "avg", last=1)
    assert (
        lmforge.translate(str(tmp_path / "avg"), ["the dog runs"], beam=2)[0].lower().startswith("der hund")
    )
    with pytest.raises(LmforgeError, match="source tokenizer differs"):
        check_run_tokenizer(run, de, "x", source_tokenizer=de)
    with pytest.raises(LmforgeError, match="source tokenizer differs"):
        check_run_tokenizer(run, de, "x")
    # A joint-vocabulary run written into the folder removes the stale source tokenizer ...
    from lmforge.run import load_run_source_tokenizer, read_run, write_run_config

    joint = tmp_path / "joint"
    shutil.copytree(run, joint)
    write_run_config(joint, "task", read_run(joint).config, tokenizer=de)
    assert not (joint / "source_tokenizer.json").exists() and load_run_source_tokenizer(joint) is None
    # ... and one that run.json does not record is refused, not used.
    shutil.copy(src_tok, joint / "source_tokenizer.json")
    with pytest.raises(LmforgeError, match="records no source tokenizer"):
        lmforge.load(str(joint))
    (run / "source_tokenizer.json").write_text(
        (tmp_path / "de.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    with pytest.raises(LmforgeError, match=r"source_tokenizer\.json: not the source tokenizer"):
        lmforge.load(str(run))
    with pytest.raises(LmforgeError, match="--src_tokenizer applies to finetune seq2seq only"):
        finetune(
            task="classify",
            model=str(run),
            src_tokenizer=str(src_tok),
            train_file="x.tsv",
            out=str(tmp_path / "c"),
        )


def test_bad_requests_say_what_to_do(corpus, tmp_path):
    with pytest.raises(LmforgeError, match="--from_scratch true with --tokenizer"):
        finetune(task="seq2seq", train_file=corpus["train"], out=str(tmp_path / "x"))
    with pytest.raises(LmforgeError, match="needs --tokenizer"):
        finetune(task="seq2seq", from_scratch=True, train_file=corpus["train"], out=str(tmp_path / "y"))
    short = tmp_path / "short.de"
    short.write_text("Der hund.\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"short\.de.*1"):
        _train(corpus, tmp_path / "z", train_file=f"{corpus['train_src']},{short}")
    with pytest.raises(LmforgeError, match="max_tokens=4 is less than the longest example"):
        _train(corpus, tmp_path / "w", max_tokens=4)


def test_translate_on_a_run_that_does_not_generate_says_what_to_use(tmp_path):
    from lmforge.finetuning import TaskRun, translate

    class Cfg:
        task = "classify"

    fake = TaskRun(model=None, tokenizer=None, labels=None, config=Cfg(), run_dir=tmp_path, device=None)
    with pytest.raises(LmforgeError, match="lmforge predict"):
        translate(fake, ["x"])


def test_the_python_twins_generate_on_a_seq2seq_run(mt):
    run, _ = mt
    task = lmforge.load(str(run))
    one = task.generate("the dog runs", beam=2)
    assert one == lmforge.translate(task, ["the dog runs"], beam=2)[0]
    assert task.generate(["the dog runs", "a cat sits"], beam=2)[0] == one
    assert lmforge.generate(str(run), "the dog runs", beam=2) == one
    assert lmforge.generate_batch(str(run), ["the dog runs"], beam=2) == [one]
    with pytest.raises(LmforgeError, match="option 'temperature' does not apply to a seq2seq run"):
        lmforge.generate(str(run), "the dog runs", temperature=0.5)


def test_a_seq2seq_run_exports_to_transformers_with_the_same_beam_output(mt, tmp_path):
    transformers = pytest.importorskip("transformers")
    run, _ = mt
    res = lmforge.export_hf(str(run), tmp_path / "hf")
    assert res["load_with"] == "AutoModelForSeq2SeqLM"
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    task = lmforge.load(str(run))
    texts = ["the dog runs", "a small cat sleeps in house"]
    ids = [[*task.tokenizer.encode(t), task.tokenizer.eos_id] for t in texts]
    width = max(len(i) for i in ids)
    src = torch.tensor([i + [task.pad_id] * (width - len(i)) for i in ids])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(i) for i in ids])[:, None]).long()
    with torch.no_grad():
        out = hf.generate(input_ids=src, attention_mask=mask, num_beams=2, max_new_tokens=16)
    hyps = [
        task.tokenizer.decode([t for t in row.tolist() if t not in (task.pad_id,)]).strip() for row in out
    ]
    assert hyps == lmforge.translate(task, texts, beam=2, max_new_tokens=16)
    # Imported back, it is a pretrained encoder-decoder run that fine-tuning starts from.
    lmforge.import_hf(tmp_path / "hf", tmp_path / "imported")
    assert lmforge.info(str(tmp_path / "imported"))["model"]["arch"] == "encoder-decoder"


def test_translate_with_compiled_steps_gives_the_same_outputs(mt, monkeypatch):
    """`--compile` changes how the decoder's steps run, not what they give (Dynamo's capture only:
    the tests skip code generation). `lmforge generate` on a seq2seq run passes its flags on as
    strings: "false" must not compile."""
    from lmforge.infer import decoding

    monkeypatch.setattr(decoding, "COMPILE_BACKEND", "eager")
    steps = []
    run_step = decoding._run_step
    monkeypatch.setattr(decoding, "_run_step", lambda *a: steps.append(1) or run_step(*a))
    run, _ = mt
    texts = ["the dog runs", "a small cat sleeps in house", "two men play in the park"]
    try:
        eager = lmforge.translate(str(run), texts, beam=3)
        assert lmforge.generate_batch(str(run), texts, beam="3", compile="false") == eager and not steps
        assert lmforge.translate(str(run), texts, beam=3, compile=True) == eager and steps
    finally:
        torch._dynamo.reset()
        decoding._compiled.cache_clear()
