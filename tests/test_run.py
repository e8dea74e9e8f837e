"""The run directory schema: one writer, one reader, the kind, the schema version, the lifecycle."""

from __future__ import annotations

import json
import os

import pytest
import torch

import lmforge
from lmforge.errors import LmforgeError
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.run import (
    SCHEMA_VERSION,
    load,
    read_run,
    saved_config,
    start_training_run,
    write_run,
    write_run_config,
)
from lmforge.tokenizer import train_tokenizer

TINY = {
    "model.n_layer": 1, "model.n_head": 2, "model.d_model": 32, "model.max_len": 32, "tokenizer.vocab_size": 300,
    "train.batch_size": 4, "train.max_steps": 4, "train.eval_every": 2, "train.eval_batches": 1,
    "train.save_every": 2, "train.warmup_steps": 1, "train.progress": False, "train.tensorboard": False,
    "train.plot": False, "train.device": "cpu", "train.threads": 1,
}  # fmt: skip


@pytest.fixture
def lm_run(tmp_path, tiny_corpus):
    tok = train_tokenizer(str(tiny_corpus), kind="bpe", vocab_size=300)
    cfg = ModelConfig(vocab_size=320, n_layer=1, n_head=2, d_model=32, max_len=32)
    torch.manual_seed(0)
    return write_run(tmp_path / "run", model=build_model(cfg), model_config=cfg, tokenizer=tok)


def test_a_written_run_says_what_it_is(lm_run):
    header = json.loads((lm_run / "run.json").read_text())
    assert header["schema_version"] == SCHEMA_VERSION and header["kind"] == "lm"
    assert header["lmforge_version"] == lmforge.__version__
    info = read_run(lm_run)
    assert (info.kind, info.schema_version) == ("lm", SCHEMA_VERSION) and "model" in info.config
    assert load(lm_run).kind == "lm"


def test_a_folder_from_before_the_schema_is_read_by_inferring_its_kind(lm_run):
    (lm_run / "run.json").unlink()
    info = read_run(lm_run)
    assert (info.kind, info.schema_version) == ("lm", 0)
    lm = lmforge.load(lm_run)
    assert lm.model_config.vocab_size == 320


def test_a_run_from_a_newer_lmforge_is_refused_with_the_fix(lm_run):
    (lm_run / "run.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "kind": "lm"}))
    with pytest.raises(LmforgeError, match=r"newer lmforge.*upgrade lmforge"):
        lmforge.load(lm_run)


@pytest.mark.parametrize(
    "header, match",
    [
        ({"schema_version": "one", "kind": "lm"}, "schema_version"),
        ({"schema_version": 1, "kind": "x"}, "kind"),
    ],
)
def test_a_damaged_header_names_the_file(lm_run, header, match):
    (lm_run / "run.json").write_text(json.dumps(header))
    with pytest.raises(LmforgeError, match=rf"run\.json.*{match}"):
        read_run(lm_run)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(LmforgeError, match="no such run directory"):
        read_run(tmp_path / "missing")
    with pytest.raises(LmforgeError, match="not a run directory"):
        read_run(tmp_path)
    with pytest.raises(LmforgeError, match="nothing to resume"):
        saved_config(tmp_path)


def test_the_writer_refuses_an_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown run kind"):
        write_run_config(tmp_path, "spaceship", {})


def test_the_lifecycle_refuses_to_overwrite_or_to_resume_nothing(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(LmforgeError, match="no checkpoint in train_state/ to resume from"):
        start_training_run(run, resume=True, is_main=True, barrier=lambda: None)
    start_training_run(run, resume=False, is_main=True, barrier=lambda: None)
    assert run.is_dir()
    (run / "train_state" / "step_00000001").mkdir(parents=True)  # a checkpoint (as the trainer writes it)
    (run / "train_state" / "step_00000001" / "state.json").write_text("{}")
    with pytest.raises(LmforgeError, match="already holds a run; add --resume"):
        start_training_run(run, resume=False, is_main=True, barrier=lambda: None)
    start_training_run(run, resume=True, is_main=True, barrier=lambda: None)


@pytest.mark.slow
@pytest.mark.parametrize("objective, kind", [("clm", "lm"), ("mlm", "encoder")])
def test_pretraining_writes_the_kind_its_objective_trains(tmp_path, tiny_corpus, objective, kind):
    run = tmp_path / objective
    lmforge.pretrain(data=str(tiny_corpus), out=str(run), objective=objective, **TINY)
    assert read_run(run).kind == kind
    assert lmforge.load(run).kind == kind
    # The saved config is itself a valid config: resuming reads it back through the one reader.
    result = lmforge.pretrain(out=str(run), resume=True, **{"train.max_steps": 6, "train.progress": False})
    assert result.steps == 6


def test_a_corrupt_header_is_a_one_line_error_from_the_cli(lm_run, capsys):
    from lmforge.cli import main

    (lm_run / "run.json").write_bytes(b"\x00\xffnot json")
    assert main(["info", str(lm_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json" in err[0] and "corrupt JSON" in err[0]


def test_several_prompts_decode_as_one_batch_from_the_cli_and_the_api(lm_run, capsys):
    from lmforge.cli import main

    prompts = ["the quick", "a"]
    options = {"max_new_tokens": 6, "temperature": 0}
    alone = [lmforge.generate(lm_run, p, **options) for p in prompts]
    assert lmforge.generate_batch(lm_run, prompts, **options) == alone
    assert lmforge.load(lm_run).generate_batch(prompts, **options) == alone
    code = main(["generate", str(lm_run), "--prompt", prompts[0], "--prompt", prompts[1],
                 "--max_new_tokens", "6", "--temperature", "0", "--device", "cpu", "--json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["completions"] == alone


def _lock(run, pid: int) -> None:
    import socket

    run.mkdir(parents=True, exist_ok=True)
    (run / "lock.json").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "job": "other job"}))


@pytest.mark.slow
def test_a_run_has_one_owner_at_a_time(tmp_path, tiny_corpus):
    import subprocess
    import sys

    run = tmp_path / "run"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(run, owner.pid)
        with pytest.raises(
            LmforgeError, match=rf"being trained by another process \(pid {owner.pid}.*lock\.json"
        ):
            lmforge.pretrain(data=str(tiny_corpus), out=str(run), **TINY)
        assert not (run / "train_state").exists()  # nothing of the other run's folder was touched
    finally:
        owner.kill()
        owner.wait()
    # Its owner is gone: the lock is stale, and the next run takes it over, then lets it go.
    with pytest.warns(UserWarning, match=rf"taking over the lock of pid {owner.pid}"):
        lmforge.pretrain(data=str(tiny_corpus), out=str(run), **TINY)
    assert not (run / "lock.json").exists() and (run / "model.safetensors").is_file()


def test_a_new_run_never_writes_over_a_users_files(tmp_path, tiny_corpus):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my: settings\n")
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(LmforgeError, match=r"--out .*mine already holds files .*config\.yaml.*--overwrite"):
        lmforge.pretrain(data=str(tiny_corpus), out=str(folder), **TINY)
    assert (folder / "config.yaml").read_text() == "my: settings\n" and sorted(os.listdir(folder)) == [
        "config.yaml", "notes.txt"
    ]  # fmt: skip
    lmforge.pretrain(data=str(tiny_corpus), out=str(folder), overwrite=True, **TINY)
    assert read_run(folder).kind == "lm" and (folder / "notes.txt").read_text() == "keep me"
    # A finished run is only continued or, when asked, started over (its old checkpoints gone).
    with pytest.raises(LmforgeError, match="already holds a run; add --resume to continue it, --overwrite"):
        lmforge.pretrain(data=str(tiny_corpus), out=str(folder), **TINY)
    lmforge.pretrain(data=str(tiny_corpus), out=str(folder), overwrite=True, **{**TINY, "train.max_steps": 2})
    assert sorted(p for p in os.listdir(folder / "train_state") if p.startswith("step_")) == ["step_00000002"]


def test_a_file_as_out_is_a_one_line_error(tmp_path, tiny_corpus):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LmforgeError, match="is a file; give a folder"):
        lmforge.pretrain(data=str(tiny_corpus), out=str(tmp_path / "f"), **TINY)


def test_export_and_import_refuse_folders_that_hold_something(lm_run, tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(LmforgeError, match="that is the run being exported"):
        lmforge.export_hf(lm_run, lm_run, overwrite=True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    with pytest.raises(LmforgeError, match=r"export hf .*busy is not empty.*--overwrite"):
        lmforge.export_hf(lm_run, busy)
    hf = lmforge.export_hf(lm_run, tmp_path / "hf")["out"]
    lmforge.export_hf(lm_run, busy, overwrite=True)
    before = (lm_run / "model.safetensors").read_bytes()
    with pytest.raises(LmforgeError, match=r"import hf .*run is not empty.*--overwrite"):
        lmforge.import_hf(hf, lm_run)
    assert (lm_run / "model.safetensors").read_bytes() == before
    (lm_run / "train_state").mkdir()
    lmforge.import_hf(hf, lm_run, overwrite=True)
    assert not (lm_run / "train_state").exists() and read_run(lm_run).config["imported_from"] == str(hf)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, tiny_corpus):
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    flags = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY.items()]
    cmd = [sys.executable, "-m", "lmforge.cli", "pretrain", "--data", str(tiny_corpus), "--out", str(run), *flags,
           "--train.max_steps=100000", "--train.log_every=1", "--train.save_every=0", "--train.eval_every=0",
           "--train.progress=true"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stderr:  # wait until it trains
        if line.startswith("step"):
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 143, rest
    assert "stopped by SIGTERM at step" in rest and "Traceback" not in rest
    step = int(rest.split("stopped by SIGTERM at step ")[1].split(",")[0])
    assert (run / "train_state" / f"step_{step:08d}").is_dir() and not (run / "lock.json").exists()
    result = lmforge.pretrain(
        out=str(run), resume=True, **{"train.max_steps": step + 2, "train.progress": False}
    )
    assert result.steps == step + 2


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path, tiny_corpus):
    import shutil

    run = tmp_path / "run"
    lmforge.pretrain(data=str(tiny_corpus), out=str(run), **TINY)
    # What a kill while writing the first checkpoint leaves: a temporary folder, no step_* one.
    for step in (run / "train_state").glob("step_*"):
        step.rename(run / "train_state" / f".tmp-{step.name}")
    (run / "model.safetensors").unlink()
    (run / "summary.json").unlink()
    with pytest.raises(LmforgeError, match=r"no checkpoint in train_state/ to resume from"):
        lmforge.pretrain(out=str(run), resume=True, **{"train.progress": False})
    result = lmforge.pretrain(data=str(tiny_corpus), out=str(run), **TINY)
    assert result.steps == TINY["train.max_steps"] and not list((run / "train_state").glob(".tmp-*"))
    shutil.rmtree(run / "train_state")


@pytest.mark.slow
def test_a_lost_config_is_rebuilt_from_the_checkpoint(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    lmforge.pretrain(data=str(tiny_corpus), out=str(run), objective="mlm", **TINY)
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").unlink()
    (run / "run.json").unlink()
    with pytest.warns(UserWarning, match="config.yaml was missing; rebuilt it from step_00000004"):
        result = lmforge.pretrain(
            out=str(run), resume=True, **{"train.max_steps": 6, "train.progress": False}
        )
    assert result.steps == 6 and read_run(run).kind == "encoder"
    assert saved.splitlines()[:3] == (run / "config.yaml").read_text().splitlines()[:3]


def _other_tokenizer(tmp_path, size: int):
    """A tokenizer of the same size as the run's, trained on other text: the vocabulary check passes."""
    text = tmp_path / "other.txt"
    text.write_text("".join(f"zebra{i} quokka{i * 7} axolotl{i % 13}\n" for i in range(400)))
    return train_tokenizer(str(text), kind="bpe", vocab_size=size)


def test_a_swapped_tokenizer_of_the_same_size_is_refused(lm_run, tmp_path):
    run_tok = load(lm_run).tokenizer
    other = _other_tokenizer(tmp_path, run_tok.vocab_size)
    assert other.vocab_size == run_tok.vocab_size and other.sha256 != run_tok.sha256
    assert read_run(lm_run).tokenizer_sha256 == run_tok.sha256
    other.save(lm_run / "tokenizer.json")
    with pytest.raises(LmforgeError, match=r"tokenizer\.json: not the tokenizer this run was trained with"):
        load(lm_run)


def test_resuming_on_data_of_another_tokenizer_is_refused(tmp_path, tiny_corpus):
    from lmforge.data.shards import prepare

    run = tmp_path / "run"
    lmforge.pretrain(data=str(tiny_corpus), out=str(run), **TINY)
    size = load(run).tokenizer.vocab_size
    other = prepare(
        str(tiny_corpus), _other_tokenizer(tmp_path, size), tmp_path / "shards", show_progress=False
    )
    assert other["vocab_size"] == size
    with pytest.raises(LmforgeError, match=r"shards: made with a different tokenizer than the run"):
        lmforge.pretrain(
            resume=True, out=str(run), data=str(tmp_path / "shards"), **{**TINY, "train.max_steps": 6}
        )
