"""Run directories: the one artifact every command after training reads.

    runs/gpt/
      run.json            what the folder is: {"schema_version", "kind", "lmforge_version",
                          "tokenizer_sha256"} (the hash of the tokenizer the run was trained with;
                          "source_tokenizer_sha256" too with a separate source tokenizer)
      config.yaml         the full config that made the run (model, train, tokenizer, data, task ...)
      tokenizer.json      the tokenizer (Hugging Face `tokenizers` format); a seq2seq run with two
                          vocabularies: the target side's, and source_tokenizer.json the source's
      model.safetensors   the weights to use: best validation figure, else the latest
      train_state/        checkpoints for exact resume (see lmforge.train.checkpoint)
      metrics.jsonl  events/  plots/loss.png  summary.json     (labels.json, dev_report.* for tasks)

One writer (`write_run_config`, used by pretraining, fine-tuning and import), one reader
(`read_run`), and one lifecycle for the commands that train (`start_training_run`). The `kind`
says which loader rebuilds the run: "lm" (a causal language model: decoder or recurrent
baseline), "encoder" (a masked-LM encoder, ELECTRA's and XLNet's included) and "task" (a
fine-tuned task head); the coming kinds (seq2seq, chat, adapter, quantized) are new names here and
a loader each. A folder written before run.json existed is read by inferring its kind from its
config. A run written by a newer lmforge (a higher schema version) is refused with a clear error
rather than misread. Everything is JSON/YAML/safetensors: loading a run never executes code from it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lmforge.chat_template import TEMPLATE_FILE as CHAT_TEMPLATE_FILE
from lmforge.config import from_dict, load_yaml, to_dict
from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.utils.io import atomic_write_json, atomic_write_text, read_json

SCHEMA_VERSION = 1
RUN_KINDS = ("lm", "encoder", "task")
TOKENIZER_FILE = "tokenizer.json"
SOURCE_TOKENIZER_FILE = "source_tokenizer.json"  # a seq2seq run's source side, with two vocabularies
LOCK_FILE = "lock.json"  # the owner of a run being trained: {"pid", "host", "job", "since"}
# What a start that failed before its first checkpoint leaves behind: a fresh start may write over it.
STARTED_ENTRIES = frozenset(
    {
        "data",
        "run.json",
        "config.yaml",
        "tokenizer.json",
        SOURCE_TOKENIZER_FILE,
        CHAT_TEMPLATE_FILE,
        "labels.json",
        LOCK_FILE,
        "metrics.jsonl",
        "events",
        "plots",
    }
)


# ----------------------------------------------------------------------------------------------
# The schema: one writer, one reader


@dataclass(frozen=True)
class RunInfo:
    """What `read_run` finds: the folder, its kind, the schema it was written with, its config."""

    path: Path
    kind: str
    schema_version: int
    config: dict[str, Any]
    tokenizer_sha256: str | None = None  # None for runs written before runs recorded it
    source_tokenizer_sha256: str | None = None  # a separate source tokenizer's (seq2seq), else None
    chat_template_sha256: str | None = None  # the chat template's, where the tokenizer has one


def _lmforge_version() -> str:
    from lmforge.version import __version__

    return __version__


def model_kind(model_config: ModelConfig) -> str:
    """The run kind of a pretrained model: "encoder" for bidirectional encoders, "lm" otherwise."""
    return "encoder" if model_config.arch == "encoder" else "lm"


def write_run_config(
    run_dir: str | Path,
    kind: str,
    config: dict[str, Any],
    *,
    tokenizer: Any = None,
    tokenizer_sha256: str | None = None,
    source_tokenizer: Any = None,
    source_tokenizer_sha256: str | None = None,
) -> None:
    """Write run.json and config.yaml (each atomically): the only place a run's identity is written.

    With `tokenizer`, its tokenizer.json is written too and its hash recorded in run.json, so that a
    different tokenizer of the same size (which the vocabulary check cannot tell apart) is caught
    when the run is loaded or resumed. `tokenizer_sha256` records a hash without writing the file
    (a config rebuilt from a checkpoint). `source_tokenizer` (a seq2seq run with two vocabularies)
    goes to source_tokenizer.json, its hash beside the other. A tokenizer's `chat_template` goes
    to chat_template.jinja, hashed too."""
    if kind not in RUN_KINDS:
        raise ValueError(f"unknown run kind {kind!r}; known: {', '.join(RUN_KINDS)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    header = {"schema_version": SCHEMA_VERSION, "kind": kind, "lmforge_version": _lmforge_version()}
    if tokenizer is not None:
        tokenizer.save(run_dir / TOKENIZER_FILE)
        tokenizer_sha256 = tokenizer.sha256
        template = getattr(tokenizer, "chat_template", None)
        if template:
            atomic_write_text(run_dir / CHAT_TEMPLATE_FILE, template)
            header["chat_template_sha256"] = _text_sha256(template)
        else:  # a template left by an earlier run in this folder is not this tokenizer's
            (run_dir / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
    elif (run_dir / CHAT_TEMPLATE_FILE).is_file():  # a config rebuilt from a checkpoint keeps its template
        header["chat_template_sha256"] = _text_sha256(
            (run_dir / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        )
    if tokenizer_sha256:
        header["tokenizer_sha256"] = tokenizer_sha256
    if source_tokenizer is not None:
        source_tokenizer.save(run_dir / SOURCE_TOKENIZER_FILE)
        source_tokenizer_sha256 = source_tokenizer.sha256
    if source_tokenizer_sha256:
        header["source_tokenizer_sha256"] = source_tokenizer_sha256
    else:  # one joint vocabulary: a source tokenizer left by an earlier run in this folder must go
        (run_dir / SOURCE_TOKENIZER_FILE).unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    atomic_write_json(run_dir / "run.json", header)


def _text_sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _legacy_kind(config: dict[str, Any]) -> str:
    """The kind of a folder written before run.json: a task section, else the model's arch."""
    if "task" in config:
        return "task"
    arch = (config.get("model") or {}).get("arch", "decoder")
    return "encoder" if arch == "encoder" else "lm"


def read_run(run_dir: str | Path) -> RunInfo:
    """The one reader of a run directory's identity and config; errors name the file and the fix."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LmforgeError(f"{run_dir}: no such run directory")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file() and not _restore_config(run_dir):
        raise LmforgeError(
            f"{run_dir}: not a run directory (no config.yaml); give the --out folder of a training run"
        )
    config = load_yaml(cfg_path)
    header_path = run_dir / "run.json"
    if not header_path.is_file():
        return RunInfo(run_dir, _legacy_kind(config), 0, config)
    header = read_json(header_path)
    version = header.get("schema_version") if isinstance(header, dict) else None
    if not isinstance(version, int) or version < 1:
        raise LmforgeError(f"{header_path}: no valid schema_version; the file is damaged or not from lmforge")
    if version > SCHEMA_VERSION:
        raise LmforgeError(
            f"{run_dir} was written by a newer lmforge ({header.get('lmforge_version', '?')}, run schema "
            f"{version}; this one reads up to {SCHEMA_VERSION}); upgrade lmforge to use it"
        )
    kind = header.get("kind")
    if kind not in RUN_KINDS:
        raise LmforgeError(f"{header_path}: unknown run kind {kind!r}; upgrade lmforge to use this run")
    hashes = [header.get(k) for k in ("tokenizer_sha256", "source_tokenizer_sha256", "chat_template_sha256")]
    return RunInfo(run_dir, kind, version, config, *(h if isinstance(h, str) else None for h in hashes))


def load_run_tokenizer(run_dir: str | Path) -> Any:
    """The run's tokenizer.json, checked against the hash in run.json: the one way commands read it."""
    from lmforge.tokenizer import Tokenizer

    info = read_run(run_dir)
    tokenizer = Tokenizer.load(info.path / TOKENIZER_FILE)
    if info.tokenizer_sha256 and tokenizer.sha256 != info.tokenizer_sha256:
        raise LmforgeError(
            f"{info.path / TOKENIZER_FILE}: not the tokenizer this run was trained with (its sha256 differs "
            "from the one in run.json); put the run's own tokenizer.json back"
        )
    tokenizer.chat_template = _run_chat_template(info)
    return tokenizer


def _run_chat_template(info: RunInfo) -> str | None:
    """The run's chat_template.jinja (checked against run.json), or None where it has none."""
    path = info.path / CHAT_TEMPLATE_FILE
    if info.chat_template_sha256 is None:
        return None
    if not path.is_file():
        raise LmforgeError(
            f"{path}: missing, but run.json records a chat template; put the run's own {CHAT_TEMPLATE_FILE} back"
        )
    text = path.read_text(encoding="utf-8")
    if _text_sha256(text) != info.chat_template_sha256:
        raise LmforgeError(
            f"{path}: not the chat template this run was trained with (its sha256 differs from the one in "
            f"run.json); put the run's own {CHAT_TEMPLATE_FILE} back"
        )
    return text


def load_run_source_tokenizer(run_dir: str | Path, model_config: ModelConfig | None = None) -> Any:
    """A seq2seq run's separate source tokenizer (source_tokenizer.json, checked against run.json
    and, given the `model_config`, against the encoder's rows), or None where the run has one joint
    vocabulary."""
    from lmforge.tokenizer import Tokenizer

    info = read_run(run_dir)
    path = info.path / SOURCE_TOKENIZER_FILE
    if info.source_tokenizer_sha256 is None:
        if path.is_file():
            raise LmforgeError(
                f"{path}: run.json records no source tokenizer, so this file is not the run's (left by an "
                "earlier run in the folder?); delete it"
            )
        return None
    if not path.is_file():
        raise LmforgeError(
            f"{path}: missing, but run.json records a source tokenizer; put the run's own "
            f"{SOURCE_TOKENIZER_FILE} back"
        )
    tokenizer = Tokenizer.load(path)
    if info.source_tokenizer_sha256 and tokenizer.sha256 != info.source_tokenizer_sha256:
        raise LmforgeError(
            f"{path}: not the source tokenizer this run was trained with (its sha256 differs from the "
            f"one in run.json); put the run's own {SOURCE_TOKENIZER_FILE} back"
        )
    if model_config is not None and tokenizer.vocab_size > model_config.source_vocab:
        raise LmforgeError(
            f"{path}: {tokenizer.vocab_size} tokens but the encoder has {model_config.source_vocab} rows; "
            f"put the run's own {SOURCE_TOKENIZER_FILE} back"
        )
    return tokenizer


def check_run_tokenizer(
    run_dir: str | Path, tokenizer: Any, source: str, *, source_tokenizer: Any = None
) -> None:
    """On resume: the data's tokenizer (and a seq2seq run's source tokenizer) must be the one the
    run was trained with, not just as large."""
    info = read_run(run_dir)
    recorded = info.source_tokenizer_sha256
    given = source_tokenizer.sha256 if source_tokenizer is not None else None
    if recorded != given and (recorded or given):
        raise LmforgeError(
            f"{source}: its source tokenizer differs from the one the run in {run_dir} was trained with "
            f"({SOURCE_TOKENIZER_FILE}, hashed in run.json); resume with the --src_tokenizer or --model the "
            "run started from"
        )
    recorded = info.tokenizer_sha256
    if recorded and tokenizer.sha256 != recorded:
        raise LmforgeError(
            f"{source}: made with a different tokenizer than the run in {run_dir} (sha256 differs from "
            "run.json), so its ids mean other words; resume with the data the run was trained on"
        )


def _restore_config(run_dir: Path) -> bool:
    """Rebuild a lost config.yaml (and run.json) from the newest checkpoint that carries them."""
    for state in sorted((run_dir / "train_state").glob("step_*/state.json"), reverse=True):
        try:
            record = json.loads(state.read_text(encoding="utf-8")).get("run")
        except (OSError, ValueError, AttributeError):
            continue
        if (
            isinstance(record, dict)
            and record.get("kind") in RUN_KINDS
            and isinstance(record.get("config"), dict)
        ):
            warnings.warn(
                f"{run_dir}: config.yaml was missing; rebuilt it from {state.parent.name}", stacklevel=3
            )
            write_run_config(
                run_dir, record["kind"], record["config"], tokenizer_sha256=record.get("tokenizer_sha256"),
                source_tokenizer_sha256=record.get("source_tokenizer_sha256"),
            )  # fmt: skip
            return True
    return False


def saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The config a run was started with, for --resume."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() and not _restore_config(run_dir):
        raise LmforgeError(f"{run_dir}: nothing to resume (no config.yaml); drop --resume to start a new run")
    return read_run(run_dir).config


# ----------------------------------------------------------------------------------------------
# The lifecycle of a run being trained


def start_training_run(
    run_dir: Path, *, resume: bool, is_main: bool, barrier: Any, overwrite: bool = False
) -> None:
    """Check that `run_dir` can be started (or resumed), create it and take ownership of it: every
    training command's first step (`finish_training_run` is its last).

    A folder that already holds a run is only continued with --resume (or started over with
    `overwrite`); --resume needs a run to continue. A fresh start never writes over files that are
    not the leftovers of a start that failed early (STARTED_ENTRIES) unless `overwrite`. A run has one owner at a time: the main process writes `lock.json` (pid, host, the
    job's id), and a second command training into the same folder is refused while the owner
    lives; a lock left by a dead process on this host is taken over with a warning. The other
    processes of a distributed job wait at `barrier`, then all check that the lock is their job's,
    so that they stop together when it is not.
    """
    # A checkpoint is a train_state/step_* folder (written under a temporary name, then renamed):
    # a run killed while writing its first one holds none, and starts afresh.
    has_state = any((run_dir / "train_state").glob("step_*/state.json"))
    if resume and not has_state:
        raise LmforgeError(
            f"{run_dir}: no checkpoint in train_state/ to resume from; drop --resume to start a new run"
        )
    if not resume and has_state and not overwrite:
        raise LmforgeError(
            f"{run_dir} already holds a run; add --resume to continue it, --overwrite to start it over, "
            "or choose another --out"
        )
    if not resume:
        _check_fresh_start(run_dir, overwrite=overwrite)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _take_lock(run_dir)
    barrier()
    owner = _read_lock(run_dir)
    if owner.get("job") != _job_id():
        raise LmforgeError(
            f"{run_dir} is being trained by another process (pid {owner.get('pid')} on {owner.get('host')}, "
            f"since {owner.get('since')}); wait for it to finish or choose another --out (if that process "
            f"is gone, delete {run_dir / LOCK_FILE})"
        )


def _check_fresh_start(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse to start a run in a folder holding other files (a user's, a model's), unless told to."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise LmforgeError(f"--out {run_dir} is a file; give a folder for the run")
    # A run's own leftovers are recognised by its run.json; without one, only prepared shards are.
    ours = STARTED_ENTRIES if (run_dir / "run.json").is_file() else {"data", LOCK_FILE}
    others = sorted(p.name for p in run_dir.iterdir() if p.name not in ours and p.name != "train_state")
    if (run_dir / "data").exists() and not (run_dir / "data" / "manifest.json").is_file():
        others.append("data")  # a folder of the user's, not the shards of an earlier start
    if others and not overwrite:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise LmforgeError(
            f"--out {run_dir} already holds files a new run would overwrite ({shown}); choose another --out, "
            "or add --overwrite to write the run into it"
        )
    # Starting over (or after a start killed before its first checkpoint): no old checkpoint may
    # be resumed by mistake later.
    shutil.rmtree(run_dir / "train_state", ignore_errors=True)


def claim_output_folder(path: str | Path, *, overwrite: bool, what: str) -> Path:
    """The folder an export or an import writes, refused when it already holds anything (unless
    `overwrite`) or is a file; `what` names the command's argument in the message."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LmforgeError(f"{what} {path} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise LmforgeError(
            f"{what} {path} is not empty; choose an empty or new folder, or add --overwrite to write into it"
        )
    return path


def claim_output_file(path: str | Path, *, overwrite: bool, what: str) -> Path:
    """A file a command writes (predictions, translations), refused when it exists (unless
    `overwrite`) or is a folder, before any work is done; `what` names the command's argument."""
    path = Path(path)
    if path.is_dir():
        raise LmforgeError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise LmforgeError(
            f"{what} {path} already exists; choose another name, or add --overwrite to replace it"
        )
    return path


def finish_training_run(run_dir: Path, *, is_main: bool) -> None:
    """Give up ownership of `run_dir` (when this job holds it), however training ended."""
    if is_main and _read_lock(run_dir).get("job") == _job_id():
        (run_dir / LOCK_FILE).unlink(missing_ok=True)


def _job_id() -> str:
    """The same string in every process of one job: torchrun's run id, else the rendezvous address
    every launcher gives its ranks, else (a single process) this process."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return os.environ["TORCHELASTIC_RUN_ID"]
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        return f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    return f"{socket.gethostname()}:{os.getpid()}"


def _read_lock(run_dir: Path) -> dict[str, Any]:
    try:
        owner = json.loads((run_dir / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _alive(pid: Any) -> bool:
    """Whether process `pid` runs on this host."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _take_lock(run_dir: Path) -> None:
    """Create lock.json atomically (O_EXCL), or take over a stale one. A live owner keeps it, and
    `start_training_run` then refuses on every process of this job."""
    path = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "job": _job_id(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(run_dir)
            if owner.get("job") == me["job"]:
                return
            if owner and (owner.get("host") != me["host"] or _alive(owner.get("pid"))):
                return  # in use: refused after the barrier
            warnings.warn(
                f"{path}: taking over the lock of pid {owner.get('pid')}, which no longer runs", stacklevel=3
            )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return


def check_unchanged_model(run_dir: Path, model_config: ModelConfig) -> None:
    """On resume, the model must be the one the run was started with."""
    saved = to_dict(model_config_of(run_dir)[0])
    changed = [k for k, v in to_dict(model_config).items() if saved.get(k) != v]
    if changed:
        raise LmforgeError(
            f"--model.{changed[0]} differs from the run being resumed ({run_dir}/config.yaml); "
            "a run's model cannot change on resume: start a new --out instead"
        )


# ----------------------------------------------------------------------------------------------
# Language-model runs (kinds "lm" and "encoder")


@dataclass
class LM:
    """A loaded run: `lm.model(ids)` -> logits (B, T, vocab); `lm.tokenizer.encode/decode`."""

    model: nn.Module
    tokenizer: Any  # lmforge.tokenizer.Tokenizer
    config: dict[str, Any]
    model_config: ModelConfig
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    kind: str = "lm"
    source_tokenizer: Any = None  # an encoder-decoder's separate source tokenizer (None: tokenizer's)

    def generate(self, prompt: str, **options: Any) -> str:
        """Completion of `prompt` (see lmforge.infer.generate.GenerationConfig for options)."""
        from lmforge.infer.generate import GenerationConfig, generate

        return generate(self.model, self.tokenizer, prompt, from_dict(GenerationConfig, options))

    def generate_batch(self, prompts: list[str], **options: Any) -> list[str]:
        """Completions of several prompts decoded as one batch (each row stops on its own)."""
        from lmforge.infer.generate import GenerationConfig, generate_batch

        return generate_batch(self.model, self.tokenizer, list(prompts), from_dict(GenerationConfig, options))


def model_config_of(run_dir: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config of a run (its `model` section) and the whole config."""
    data = read_run(run_dir).config
    if "model" not in data:
        raise LmforgeError(
            f"{run_dir / 'config.yaml'}: no 'model' section; the file is damaged or not from lmforge"
        )
    return from_dict(ModelConfig, data["model"], prefix="model."), data


def check_vocab(model_cfg: ModelConfig, tokenizer: Any, where: str) -> None:
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise LmforgeError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model only {model_cfg.vocab_size}; "
            "use the tokenizer the model was trained with (or retrain with --model.vocab_size 0)"
        )


def build_run_model(model_cfg: ModelConfig, config: dict[str, Any]) -> nn.Module:
    """The module a pretraining run trained: `build_model`, or ELECTRA's generator + discriminator."""
    from lmforge.models import build_model

    if config.get("objective") == "electra":  # `.discriminator` is the encoder
        from lmforge.models.electra import ElectraModel

        return ElectraModel.from_run_config(model_cfg, config.get("electra"))
    return build_model(model_cfg)


def load(run_dir: str | Path, *, device: str | torch.device = "cpu", weights: str | None = None) -> LM:
    """Load a language-model run (or any folder with config.yaml + tokenizer.json + model.safetensors)."""
    from lmforge.models.weights import load_weights

    info = read_run(run_dir)
    run_dir = info.path
    if info.kind == "task":
        task = info.config["task"].get("task", "task")
        raise LmforgeError(
            f"{run_dir} is a fine-tuned {task} run, not a language model; use lmforge predict / "
            "lmforge evaluate with it (in Python: lmforge.load gives its TaskRun)"
        )
    model_cfg, data = model_config_of(run_dir)
    tokenizer = load_run_tokenizer(run_dir)
    check_vocab(model_cfg, tokenizer, str(run_dir / TOKENIZER_FILE))
    source_tokenizer = load_run_source_tokenizer(run_dir, model_cfg)
    model = build_run_model(model_cfg, data)
    weights_path = Path(weights) if weights else run_dir / "model.safetensors"
    if not weights_path.is_file():
        raise LmforgeError(
            f"{weights_path}: no weights yet; train the run first (lmforge pretrain --out {run_dir})"
        )
    load_weights(model, weights_path)
    dev = torch.device(device)
    model.to(dev).eval()
    return LM(model, tokenizer, data, model_cfg, run_dir, dev, info.kind, source_tokenizer)


def write_run(
    run_dir: str | Path,
    *,
    model: nn.Module,
    model_config: ModelConfig,
    tokenizer: Any,
    config: dict[str, Any] | None = None,
    source_tokenizer: Any = None,
) -> Path:
    """Write a self-contained language-model run directory (config, tokenizer, weights), as import
    does (with an encoder-decoder's separate source tokenizer where it has one)."""
    from lmforge.models.weights import save_weights

    run_dir = Path(run_dir)
    config = {**(config or {}), "model": to_dict(model_config)}
    kind = model_kind(model_config)
    write_run_config(run_dir, kind, config, tokenizer=tokenizer, source_tokenizer=source_tokenizer)
    save_weights(model, run_dir / "model.safetensors")
    return run_dir


__all__ = [
    "LM",
    "RUN_KINDS",
    "SCHEMA_VERSION",
    "RunInfo",
    "build_run_model",
    "check_run_tokenizer",
    "check_unchanged_model",
    "check_vocab",
    "claim_output_file",
    "claim_output_folder",
    "finish_training_run",
    "load",
    "load_run_source_tokenizer",
    "load_run_tokenizer",
    "model_config_of",
    "model_kind",
    "read_run",
    "saved_config",
    "start_training_run",
    "write_run",
    "write_run_config",
]
