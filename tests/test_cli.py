"""End to end through the CLI, as a user types it: tokenizer -> prepare -> pretrain -> resume ->
eval -> generate -> export/import; plus the one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lmforge.cli import main

TINY = [
    "--model.n_layer", "2", "--model.n_head", "2", "--model.d_model", "32", "--model.max_len", "32",
    "--train.batch_size", "4", "--train.log_every", "2", "--train.eval_every", "4", "--train.eval_batches", "2",
    "--train.save_every", "4", "--train.warmup_steps", "2", "--train.lr", "3e-3", "--train.progress", "false",
    "--train.tensorboard", "false", "--train.device", "cpu", "--train.threads", "1",
]  # fmt: skip


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path, tiny_corpus, capsys):
    tok, shards, run = tmp_path / "tok.json", tmp_path / "shards", tmp_path / "run"
    code, out, err = run_cli(
        capsys, "tokenizer", "train", "--data", str(tiny_corpus), "--kind", "bpe", "--vocab_size", "300",
        "--out", str(tok), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert last_json(out)["vocab_size"] <= 300 and tok.is_file()

    code, out, err = run_cli(capsys, "prepare", "--data", str(tiny_corpus), "--tokenizer", str(tok), "--out", str(shards),
                             "--val_fraction", "0.1", "--json")  # fmt: skip
    assert code == 0, err
    prep = last_json(out)
    assert prep["train_tokens"] > 0 and prep["val_tokens"] > 0
    assert prep["cleaning"]["docs_in"] >= prep["cleaning"]["docs_kept"] > 0

    # Without --json the same command prints the cleaning summary: kept, dropped and why.
    code, out, err = run_cli(capsys, "prepare", "--data", str(tiny_corpus), "--tokenizer", str(tok),
                             "--out", str(tmp_path / "shards2"))  # fmt: skip
    assert code == 0, err
    assert "documents in" in out and "kept" in out and "dropped" in out

    code, out, err = run_cli(capsys, "pretrain", "--data", str(shards), "--out", str(run), *TINY,
                             "--train.max_steps", "8", "--json")  # fmt: skip
    assert code == 0, err
    res = last_json(out)
    assert res["steps"] == 8 and res["val_ppl"] > 1
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name

    # Resume and train longer (the schedule follows the new max_steps).
    code, out, err = run_cli(
        capsys, "pretrain", "--out", str(run), "--resume", "--train.max_steps", "12", "--json"
    )
    assert code == 0, err
    assert last_json(out)["steps"] == 12

    code, out, err = run_cli(
        capsys, "eval", str(run), "--data", str(tiny_corpus / "doc00.txt"), "--device", "cpu", "--json"
    )
    assert code == 0, err
    ev = last_json(out)
    assert ev["perplexity"] > 1 and 0 < ev["bits_per_byte"] < 20 and ev["tokens"] > 100

    code, out, err = run_cli(capsys, "generate", str(run), "--prompt", "The model", "--max_new_tokens", "12",
                             "--seed", "1", "--device", "cpu", "--json")  # fmt: skip
    assert code == 0, err
    first = last_json(out)["completion"]
    code, out, _ = run_cli(capsys, "generate", str(run), "--prompt", "The model", "--max_new_tokens", "12",
                           "--seed", "1", "--device", "cpu", "--json")  # fmt: skip
    assert last_json(out)["completion"] == first  # seeded sampling is reproducible

    code, out, err = run_cli(capsys, "info", str(run), "--json")
    assert code == 0 and last_json(out)["parameters"] > 0


@pytest.mark.slow
def test_builtin_corpus_needs_no_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    code, out, err = run_cli(
        capsys, "pretrain", "--out", str(run), *TINY, "--train.max_steps", "4", "--tokenizer.vocab_size", "512",
        "--train.eval_every", "4",
    )  # fmt: skip
    assert code == 0, err
    assert "validation perplexity" in out and "sample> The" in out


def test_unknown_flag_names_the_nearest(capsys):
    code, _, err = run_cli(capsys, "pretrain", "--train.max_step", "3")
    assert code == 2
    assert (
        err.strip() == "lmforge: error: unknown option '--train.max_step'; did you mean '--train.max_steps'?"
    )


def test_unknown_yaml_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  n_layers: 2\n")
    code, _, err = run_cli(capsys, "pretrain", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown config key 'model.n_layers'; did you mean 'n_layer'?" in err


def test_missing_run_and_binary_data(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "nope"), "--data", "x.txt")
    assert code == 2 and "no such run directory" in err
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    code, _, err = run_cli(
        capsys, "tokenizer", "train", "--data", str(binary), "--out", str(tmp_path / "t.json")
    )
    assert code == 2 and "blob.txt" in err and len(err.strip().splitlines()) == 1


def test_resume_without_a_run_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "pretrain", "--out", str(tmp_path / "empty"), "--resume")
    assert code == 2 and "nothing to resume" in err


def test_help_reads_well():
    out = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "pretrain", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert (
        "--train.max_steps" in out.stdout
        and "optimizer steps" in out.stdout
        and "--model.n_layer" in out.stdout
    )


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, tiny_corpus):
    """A real kill -9 mid-run, then --resume: the final weights equal an uninterrupted run's."""
    import os
    import signal
    import time

    from safetensors.torch import load_file

    tok, shards = tmp_path / "tok.json", tmp_path / "shards"
    assert (
        main(["tokenizer", "train", "--data", str(tiny_corpus), "--vocab_size", "300", "--out", str(tok)])
        == 0
    )
    assert main(["prepare", "--data", str(tiny_corpus), "--tokenizer", str(tok), "--out", str(shards)]) == 0
    args = ["pretrain", "--data", str(shards), *TINY, "--train.max_steps", "150", "--train.save_every", "10",
            "--train.eval_every", "50", "--model.dropout", "0.1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lmforge.cli"]
    straight = subprocess.run(
        [*cmd, *args, "--out", str(tmp_path / "a")], env=env, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    proc = subprocess.Popen([*cmd, *args, "--out", str(tmp_path / "b")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    latest = tmp_path / "b" / "train_state" / "latest.json"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 150, "the run finished before it could be killed"

    resumed = subprocess.run([*cmd, "pretrain", "--out", str(tmp_path / "b"), "--resume"], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = "train_state/step_00000150/model.safetensors"
    a, b = load_file(str(tmp_path / "a" / final)), load_file(str(tmp_path / "b" / final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- one face: each command is its API twin


@pytest.fixture
def tiny_runs(tmp_path, tiny_corpus):
    """An untrained causal run and an untrained masked-LM run, written as run directories: enough to
    check that a command and its API twin give the same numbers."""
    from lmforge.models import build_model
    from lmforge.models.config import ModelConfig
    from lmforge.run import write_run
    from lmforge.tokenizer import Tokenizer, TokenizerConfig

    texts = [p.read_text(encoding="utf-8") for p in sorted(tiny_corpus.iterdir())]
    runs = {}
    for name, arch, kind in (("gpt", "decoder", "bpe"), ("bert", "encoder", "wordpiece")):
        tok = Tokenizer.train(texts, TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1))
        torch.manual_seed(0)
        cfg = ModelConfig(arch=arch, vocab_size=320, n_layer=1, n_head=2, d_model=16, max_len=32)
        objective = "clm" if arch == "decoder" else "mlm"
        runs[name] = write_run(tmp_path / name, model=build_model(cfg), model_config=cfg, tokenizer=tok,
                               config={"objective": objective})  # fmt: skip
    return runs, tiny_corpus / "doc00.txt"


def test_every_api_function_survives_importing_the_modules():
    """An API function named like a module of the package would be replaced by it once imported."""
    import importlib
    import pkgutil

    import lmforge

    for mod in pkgutil.iter_modules(lmforge.__path__):
        if mod.name != "__main__":
            importlib.import_module(f"lmforge.{mod.name}")
    for name in lmforge.__all__:
        assert name == "__version__" or callable(getattr(lmforge, name)), name


@pytest.mark.parametrize("flags, options", [
    ([], {}),
    (["--batch_size", "2", "--stride", "8", "--txt_unit", "paragraph"], {"batch_size": 2, "stride": 8, "txt_unit": "paragraph"}),
])  # fmt: skip
def test_eval_prints_what_evaluate_returns(tiny_runs, capsys, flags, options):
    import lmforge

    runs, held = tiny_runs
    code, out, err = run_cli(
        capsys, "eval", str(runs["gpt"]), "--data", str(held), "--device", "cpu", "--json", *flags
    )
    assert code == 0, err
    assert last_json(out) == lmforge.evaluate(runs["gpt"], held, device="cpu", **options).to_dict()


def test_eval_of_a_masked_lm_run_and_an_option_it_does_not_take(tiny_runs, capsys):
    import lmforge

    runs, held = tiny_runs
    code, out, err = run_cli(
        capsys, "eval", str(runs["bert"]), "--data", str(held), "--device", "cpu", "--json"
    )
    assert code == 0, err
    assert last_json(out) == lmforge.evaluate(runs["bert"], held).to_dict()
    code, _, err = run_cli(capsys, "eval", str(runs["bert"]), "--data", str(held), "--stride", "8")
    assert code == 2 and "option 'stride' does not apply to a masked-LM run" in err
    code, _, err = run_cli(capsys, "evaluate", str(runs["bert"]), "--data", str(held), "--src_field", "en")
    assert code == 2 and "--src_field/--tgt_field/--ref_field apply to seq2seq task runs" in err


def test_info_generate_fill_mask_and_export_print_what_the_api_returns(tiny_runs, tmp_path, capsys):
    import lmforge

    runs, _ = tiny_runs
    code, out, _ = run_cli(capsys, "info", str(runs["gpt"]), "--json")
    assert code == 0 and last_json(out) == json.loads(json.dumps(lmforge.info(runs["gpt"]), default=str))

    gen = {"max_new_tokens": 6, "temperature": 0.7, "seed": 3}
    code, out, _ = run_cli(capsys, "generate", str(runs["gpt"]), "--prompt", "The model", "--max_new_tokens", "6",
                           "--temperature", "0.7", "--seed", "3", "--device", "cpu", "--json")  # fmt: skip
    completion = last_json(out)["completion"]
    assert code == 0 and completion == lmforge.generate(runs["gpt"], "The model", **gen)
    assert "".join(lmforge.generate_stream(runs["gpt"], "The model", **gen)) == completion

    code, out, _ = run_cli(
        capsys, "fill-mask", str(runs["bert"]), "the [MASK] is a word", "--top_k", "3", "--json"
    )
    masks = [
        [p.to_dict() for p in preds]
        for preds in lmforge.fill_mask(runs["bert"], "the [MASK] is a word", top_k=3)
    ]
    assert code == 0 and last_json(out)["masks"] == masks

    code, out, _ = run_cli(capsys, "export", "hf", str(runs["gpt"]), str(tmp_path / "hf"), "--json")
    assert code == 0 and last_json(out) == lmforge.export_hf(runs["gpt"], tmp_path / "hf2") | {
        "out": str(tmp_path / "hf")
    }
    assert last_json(out)["load_with"] == "AutoModelForCausalLM"


def test_help_shows_the_defaults_that_really_apply(capsys):
    """A section's defaults are its parent's (fine-tuning trains at 5e-5, not pretraining's 6e-4),
    and what a command works out itself is described rather than shown as a number."""
    with pytest.raises(SystemExit):
        main(["finetune", "classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--train.lr FLOAT peak learning rate reached after warmup (default: 5e-05)" in text
    assert "(default: 0.01)" in text.rsplit("--train.weight_decay", 1)[1][:120]  # the option, not the usage
    assert "(default: epochs x optimizer steps per epoch)" in text and "(default: 2000)" not in text
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: auto)" in text.rsplit("--tokenizer.kind", 1)[1][:400]


def test_every_ner_option_has_its_own_help(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "ner", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--token_column INT NER: the CoNLL column holding the word" in text
    assert "--tag_column INT NER: the CoNLL column holding the tag" in text
    assert "NER: the training file's tag scheme" in text
