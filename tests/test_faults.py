"""Faults a user meets, each a one-line error from the CLI that loses nothing.

The catalogue of what can go wrong with a run directory and where each case is tested:

- two commands training into one folder: `test_run.py::test_a_run_has_one_owner_at_a_time`
- divergence (non-finite or exploding weights are never saved): `train/test_trainer.py`
- a user's files, `import hf` into a run, `export hf RUN RUN`: `test_run.py` (`never_writes_over`,
  `refuse_folders_that_hold_something`)
- killed before the first checkpoint, lost config.yaml: `test_run.py` (`starts_afresh`, `rebuilt`)
- silent corruption: a flipped bit in model.safetensors (`models/test_weights.py`), an edited
  state.json (`train/test_checkpoint.py`), out-of-range shard ids (`data/test_shards.py`), a swapped
  tokenizer (`test_run.py::test_a_swapped_tokenizer...`, `...another_tokenizer_is_refused`)
- SIGTERM: `test_run.py::test_sigterm_saves_a_checkpoint_and_exits_143`
- bad values at the boundary: `test_config.py`, `train/test_trainer.py`
- here: a full disk during a checkpoint and during `prepare`, an unwritable folder, `--out` that
  is a folder where a file is wanted; the HF import's index and truncated files are in
  `interop/test_hf.py::test_import_reads_only_sound_files_inside_the_model_folder`.
"""

from __future__ import annotations

import errno

import pytest

from lmforge.cli import main
from lmforge.train import checkpoint

TINY = [
    "--model.n_layer=1", "--model.n_head=2", "--model.d_model=32", "--model.max_len=32",
    "--tokenizer.vocab_size=300", "--train.batch_size=4", "--train.eval_every=2", "--train.eval_batches=1",
    "--train.save_every=2", "--train.warmup_steps=1", "--train.progress=false", "--train.tensorboard=false",
    "--train.plot=false", "--train.device=cpu", "--train.threads=1",
]  # fmt: skip


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def _full_disk_after(calls: int, real):
    """A stand-in for a write that succeeds `calls` times, then finds the disk full."""
    count = {"n": 0}

    def write(tensors, path, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, *args, **kwargs)

    return write


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(tmp_path, tiny_corpus, monkeypatch, capsys):
    run = tmp_path / "run"
    files_per_checkpoint = 3  # rng, model, optimizer
    full = _full_disk_after(files_per_checkpoint, checkpoint.write_safetensors)
    monkeypatch.setattr(checkpoint, "write_safetensors", full)
    code = main(["pretrain", "--data", str(tiny_corpus), "--out", str(run), "--train.max_steps=6", *TINY])
    line = _one_line(capsys)
    assert code == 1 and "no space left on the device" in line and "--resume" in line
    state = run / "train_state"
    assert [p.name for p in state.iterdir() if p.name.startswith(("step_", ".tmp"))] == ["step_00000002"]
    assert not (run / "lock.json").exists()
    monkeypatch.undo()  # space is freed: the run continues from its last checkpoint
    assert (
        main(["pretrain", "--out", str(run), "--resume", "--train.max_steps=6", "--train.progress=false"])
        == 0
    )
    assert (state / "step_00000006").is_dir()


def test_a_full_disk_during_prepare_leaves_no_temporary_folder(tmp_path, tiny_corpus, monkeypatch, capsys):
    import lmforge
    from lmforge.data import shards

    tok = tmp_path / "tok.json"
    lmforge.train_tokenizer(str(tiny_corpus), kind="bpe", vocab_size=300, out=tok)

    def full(self, tokens, starts, doc_bytes):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.root / f"{self.name}.bin"))

    monkeypatch.setattr(shards._SplitWriter, "write", full)
    out = tmp_path / "out" / "shards"
    code = main(["prepare", "--data", str(tiny_corpus), "--tokenizer", str(tok), "--out", str(out)])
    line = _one_line(capsys)
    assert code == 1 and "train.bin: no space left on the device" in line
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []


def test_an_unwritable_folder_is_one_line(tmp_path, tiny_corpus, monkeypatch, capsys):
    """A read-only or forbidden folder (simulated: as root the permission bits do not refuse)."""
    import lmforge.utils.io as io

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(kwargs.get("dir")))

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    out = tmp_path / "t.json"
    code = main(["tokenizer", "train", "--data", str(tiny_corpus), "--vocab_size=300", "--out", str(out)])
    line = _one_line(capsys)
    assert code == 1 and f"{out}: the file system is read-only; choose a writable folder" in line
    assert not out.exists()


def test_tokenizer_out_that_is_a_folder_is_refused_before_training(tmp_path, tiny_corpus, capsys):
    code = main(["tokenizer", "train", "--data", str(tiny_corpus), "--out", str(tmp_path)])
    line = _one_line(capsys)
    assert code == 2 and f"{tmp_path}: is a folder" in line and "tokenizer.json" in line
    assert list(tmp_path.iterdir()) == [tiny_corpus]
