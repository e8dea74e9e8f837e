"""Fine-tuning throughput, sequence classification: our Encoder + SequenceClassifier vs transformers'
BertForSequenceClassification (sdpa attention), same config, same batches, same process.

Both are BERT's layout (post-norm, erf GELU, learned positions, LayerNorm eps 1e-12, 2 segment
types, [CLS] pooler + tanh + classifier) with dropout 0.1 everywhere: ours `model.dropout` (hidden
and attention) and `head_dropout`; HF's hidden, attention and classifier dropout. The data is real:
SST-2 train sentences (shared/data/sst2, found by `lmforge.utils.shared_data`; generated sentences
of SST-2-like lengths when it is absent, as the output then says), a WordPiece tokenizer trained on
them, `encode_classification` and `TaskBatches`, so every batch is padded to its longest sentence.
A fixed list of batches is built once; both models cycle through the very same padded batches
(HF: input_ids, token_type_ids, a 0/1 attention_mask and labels; ours: the collate dict, whose
encoder path runs everything but the attention on the real tokens only).

The step is the same for both: forward, cross-entropy, backward, clip to 1.0, fused AdamW with the
fine-tuning defaults (lr 5e-5, wd 0.01 on matrices, betas 0.9/0.999); ours through the real
Trainer.train_step, HF's through a copy of it with an optimizer from the same `make_optimizer`.
A round is one pass over all batches per model, alternating; examples/s is the median over rounds,
the ratio the median of per-round ratios. Share of peak: the FLOPs of the real tokens
(`flops_per_token`, its attention term at the mean padded length) over the median of the
per-round peaks of a large matmul (`measured_matmul_flops`).

    python bench/finetune_throughput.py               # fp32, 2 threads
    python bench/finetune_throughput.py --compile     # also a torch.compile'd pair
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from lmforge.finetuning import task_objective
from lmforge.models import build_model
from lmforge.models.backbone import Backbone
from lmforge.models.config import ModelConfig
from lmforge.models.heads import SequenceClassifier
from lmforge.tasks.batches import TaskBatches
from lmforge.tasks.features import encode_classification
from lmforge.tasks.framing import specials_of
from lmforge.tasks.readers import ClassificationExample, LabelMap, read_classification
from lmforge.tasks.registry import task_spec
from lmforge.tokenizer import Tokenizer, TokenizerConfig
from lmforge.train.config import TrainConfig
from lmforge.train.flops import measured_matmul_flops
from lmforge.train.optim import make_optimizer
from lmforge.train.trainer import Trainer
from lmforge.utils.shared_data import shared_data_path


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--d_ff", type=int, default=1024)
    p.add_argument("--max_len", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192, help="WordPiece vocabulary trained on the sentences")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--n_batches", type=int, default=16, help="pre-built batches, cycled by both models")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also torch.compile both models")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds, one pass over the batches")
    return p.parse_args()


def sentences(rng: np.random.Generator) -> tuple[list[ClassificationExample], str]:
    """SST-2 train, or (no shared data) generated sentences with SST-2-like lengths (1..52 words)."""
    path = shared_data_path("sst2", "train.tsv")
    if path is not None:
        return read_classification(path, text_column="sentence", label_column="label"), f"SST-2 ({path})"
    words = ["".join(rng.choice(list("etaoinshrdlucmfwyp"), rng.integers(2, 9))) for _ in range(5000)]
    zipf = 1 / np.arange(1, len(words) + 1)
    lengths = np.clip(np.rint(rng.lognormal(np.log(7), 0.85, 20_000)), 1, 52).astype(int)
    texts = [" ".join(rng.choice(words, n, p=zipf / zipf.sum())) for n in lengths]
    examples = [ClassificationExample(text=t, label=str(i % 2), line=i) for i, t in enumerate(texts)]
    return examples, "generated sentences (shared/data/sst2 not found)"


def build_batches(a: argparse.Namespace) -> tuple[list[dict], dict]:
    """The fixed padded batches (collate dicts) and what they are made of; sets a.vocab."""
    examples, source = sentences(np.random.default_rng(0))
    tok = Tokenizer.train([e.text for e in examples], TokenizerConfig(kind="wordpiece", vocab_size=a.vocab))
    a.vocab = tok.vocab_size
    specials = specials_of(tok, "encoder")
    enc = encode_classification(examples, tok, specials, LabelMap.from_examples(examples), a.max_len)
    loader = TaskBatches(enc.features, a.batch, specials.pad, seed=0)
    batches = [loader.next_batch() for _ in range(a.n_batches)]
    real = sum(int(b["lengths"].sum()) for b in batches)
    slots = sum(b["input_ids"].numel() for b in batches)
    info = {"data": source, "sentences": len(examples), "vocab": a.vocab, "real_tokens": real,
            "padded_tokens": slots, "padding_share": 1 - real / slots,
            "mean_real_len": real / (a.batch * len(batches)), "mean_padded_len": slots / (a.batch * len(batches)),
            "padded_len_min_max": [min(b["input_ids"].size(1) for b in batches),
                                   max(b["input_ids"].size(1) for b in batches)]}  # fmt: skip
    return batches, info


class Cycle:
    """The pre-built batches, round and round (the Trainer's batch-source protocol)."""

    def __init__(self, batches: list, batch_size: int, seq_len: int) -> None:
        self.batches, self.batch_size, self.seq_len, self.i = batches, batch_size, seq_len, 0

    def next_batch(self):
        self.i += 1
        return self.batches[(self.i - 1) % len(self.batches)]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.i}


def train_config(a: argparse.Namespace, compile: bool) -> TrainConfig:
    return TrainConfig(batch_size=a.batch, seq_len=a.max_len, lr=5e-5, weight_decay=0.01, beta2=0.999,
                       grad_clip=1.0, precision="fp32", compile=compile, device="cpu", progress=False,
                       tensorboard=False, plot=False)  # fmt: skip


def ours(a: argparse.Namespace, batches: list[dict], compile: bool) -> Trainer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="encoder", vocab_size=a.vocab, n_layer=a.n_layer, n_head=a.n_head, d_model=a.d_model,
        d_ff=a.d_ff, max_len=a.max_len, norm_position="post", activation="gelu", position="learned",
        norm_eps=1e-12, bias=True, tie_embeddings=True, type_vocab_size=2, dropout=a.dropout,
    )  # fmt: skip
    model = SequenceClassifier(Backbone(build_model(cfg).train()), 2, pooling="cls", head_dropout=a.dropout)
    return Trainer(model, Cycle(batches, a.batch, a.max_len), train_config(a, compile), "/nonexistent-run",
                   objective=task_objective("classify", task_spec("classify"), "loss"), device=torch.device("cpu"))  # fmt: skip


class HFStep:
    """BertForSequenceClassification through a copy of Trainer.train_step (fp32, one micro-batch)."""

    def __init__(self, a: argparse.Namespace, batches: list[dict], compile: bool) -> None:
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        conf = BertConfig(
            vocab_size=a.vocab, hidden_size=a.d_model, num_hidden_layers=a.n_layer, num_attention_heads=a.n_head,
            intermediate_size=a.d_ff, hidden_act="gelu", max_position_embeddings=a.max_len, type_vocab_size=2,
            layer_norm_eps=1e-12, hidden_dropout_prob=a.dropout, attention_probs_dropout_prob=a.dropout,
            classifier_dropout=a.dropout, num_labels=2, attn_implementation="sdpa",
        )  # fmt: skip
        self.model = BertForSequenceClassification(conf).train()
        self.step_model = torch.compile(self.model) if compile else self.model
        self.optimizer = make_optimizer(self.model, train_config(a, compile), torch.device("cpu"))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.batches = Cycle([hf_inputs(b) for b in batches], a.batch, a.max_len)

    def train_step(self, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.step_model(**self.batches.next_batch()).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
        self.optimizer.found_inf = (~(torch.isfinite(grad_norm) & torch.isfinite(loss))).float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def hf_inputs(batch: dict) -> dict:
    mask = batch["attention_mask"]
    return {"input_ids": batch["input_ids"], "token_type_ids": batch["token_type_ids"],
            "attention_mask": None if mask is None else mask.long(), "labels": batch["label"]}  # fmt: skip


def timed(stepper, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        stepper.train_step(5e-5)
    return time.perf_counter() - t


def compare(a: argparse.Namespace, batches: list[dict], info: dict, compiled: bool) -> dict:
    """Ours vs HF, alternating; a round is one full pass over the batches for each model."""
    runners = {"ours": ours(a, batches, compiled), "hf": HFStep(a, batches, compiled)}
    flops_example = (
        runners["ours"].model.flops_per_token(round(info["mean_padded_len"])) * info["mean_real_len"]
    )
    n = len(batches)
    for r in runners.values():  # warm-up (and compilation for every padded length)
        timed(r, 2 * n if compiled else n)
    eps: dict[str, list[float]] = {name: [] for name in runners}
    peaks = []
    for _ in range(a.rounds):
        for name, r in runners.items():
            eps[name].append(n * a.batch / timed(r, n))
        peaks.append(measured_matmul_flops.__wrapped__("cpu", "fp32", 2048, 0.25))  # uncached
    peak = statistics.median(peaks)
    out: dict = {"compiled": compiled, "rounds": a.rounds, "steps_per_round": n, "flops_per_example": flops_example,
                 "peak_matmul_flops": peak}  # fmt: skip
    for name, per_round in eps.items():
        out[f"{name}_examples_per_s"] = statistics.median(per_round)
        out[f"{name}_examples_per_s_per_round"] = [round(x, 1) for x in per_round]
        out[f"{name}_share_of_peak"] = out[f"{name}_examples_per_s"] * flops_example / peak
    out["trainable_params"] = {k: sum(p.numel() for p in r.params) for k, r in runners.items()}
    out["ratio"] = statistics.median(o / h for o, h in zip(eps["ours"], eps["hf"]))
    return out


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy (/proc/stat) over `seconds`, before the bench does anything."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:8]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    (t0, i0), _, (t1, i1) = sample(), time.sleep(seconds), sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def machine(threads: int) -> dict:
    with open("/proc/cpuinfo") as f:
        names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    return {"cpu": names[0] if names else platform.processor(), "logical_cpus": os.cpu_count(), "threads": threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}  # fmt: skip


def main() -> None:
    import transformers

    a = parse()
    torch.set_num_threads(a.threads)
    busy = cpu_busy()
    t = time.perf_counter()
    batches, info = build_batches(a)
    print(f"data: {info['data']}; WordPiece {a.vocab}; {len(batches)} batches of {a.batch} built in "
          f"{time.perf_counter() - t:.1f} s; mean length {info['mean_real_len']:.1f} real / "
          f"{info['mean_padded_len']:.1f} padded (T {info['padded_len_min_max'][0]}..{info['padded_len_min_max'][1]}), "
          f"padding {info['padding_share']:.1%} of slots", flush=True)  # fmt: skip
    results: dict = {"bench": "finetune_throughput", "machine": machine(a.threads),
                     "transformers": transformers.__version__, "batches": info,
                     "config": {k: getattr(a, k) for k in ("n_layer", "d_model", "n_head", "d_ff", "max_len",
                                                           "vocab", "batch", "dropout")},
                     "precision": "fp32", "load_before": os.getloadavg(), "cpu_busy_before": busy}  # fmt: skip
    print(json.dumps(results["machine"]), flush=True)
    if busy > 0.1:  # other jobs' threads make OpenMP's barriers wait: steps up to 20x slower
        print(f"warning: the CPUs were {busy:.0%} busy before the bench; timings are unreliable")
    for compiled in (False, True) if a.compile else (False,):
        r = results["compiled" if compiled else "eager"] = compare(a, batches, info, compiled)
        print(f"fp32{' compiled' if compiled else ''}: ours {r['ours_examples_per_s']:,.0f} ex/s "
              f"({r['ours_share_of_peak']:.0%} of peak)  HF {r['hf_examples_per_s']:,.0f} ex/s "
              f"({r['hf_share_of_peak']:.0%})  ratio {r['ratio']:.2f}x  [matmul peak "
              f"{r['peak_matmul_flops'] / 1e9:.0f} GFLOP/s, {r['rounds']} rounds]", flush=True)  # fmt: skip
    results["load_after"] = os.getloadavg()
    print(f"load average (1, 5, 15 min): before {results['load_before']}  after {results['load_after']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
