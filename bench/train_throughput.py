"""Training throughput: our GPT vs transformers' GPT2LMHeadModel (or, with --arch encoder, our
BERT-style Encoder vs BertForPreTraining), same config, same process.

Both models run the identical step (forward, next-token cross-entropy, backward, clip, fused
AdamW; ours through the real Trainer.train_step), alternating in rounds so that machine noise
hits both alike (the order rotates each round); eager and compiled pairs are timed one pair at a
time. Tokens/s is the median over rounds, the ratio the median of the per-round ratios. Each
round also times a large matmul in the same precision: the share of peak is training FLOPs/s
(6N + 12*L*d*T per token) over the median of those matmul rates. Also reported: the data loader's time as a share of a step, and
peak memory (fp32, a fresh child process per model).

    python bench/train_throughput.py                       # fp32 and bf16
    python bench/train_throughput.py --precision fp32 --compile
    python bench/train_throughput.py --arch encoder --precision fp32
    python bench/train_throughput.py --precision fp32 --plain   # + a plain nanoGPT-style GPT

--plain adds a third model to the decoder rounds: the same GPT written the common plain way
(nn.GELU, full logits, F.cross_entropy), to tell what our kernels' choices are worth here and
how far HF is from the design most small-GPT code follows.

--arch encoder: ours is `lmforge.models.encoder.Encoder` (BERT layout: post-norm, erf GELU, learned
positions, segment embeddings) trained through Trainer.train_step with the MLM + NSP objective
(`mlm_loss`), against transformers' BertForPreTraining (sdpa attention) with its MLM + NSP losses.
Both see the same real masked-LM batches (`MaskedLMBatches`, mode "nsp", from the built-in corpus
with a WordPiece tokenizer trained on it), built once and cycled, so data loading stays out of the
comparison; `next_batch` (masking and pair building) is timed separately as a share of our step.
FLOPs per token: `Encoder.flops_per_token(seq_len, predicted_fraction=0.15)`, i.e. the MLM head
counted only on the 15% of tokens it runs on. Defaults there: T=128, batch 32.
Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.batches import CausalLMBatches
from lmforge.data.masking import MaskingConfig
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.models.layers import init_normal
from lmforge.objectives.clm import causal_lm
from lmforge.objectives.mlm import mlm_loss
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer, autocast


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="decoder", choices=["decoder", "encoder"],
                   help="decoder: GPT vs GPT2LMHeadModel; encoder: BERT (MLM + NSP) vs BertForPreTraining")  # fmt: skip
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--d_model", type=int, default=384)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--seq_len", type=int, help="default 256 (decoder), 128 (encoder)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, help="default 16 (decoder), 32 (encoder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="all", choices=["all", "fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="also torch.compile both models")
    p.add_argument(
        "--plain", action="store_true",
        help="decoder: also time a plain nanoGPT-style GPT (unfused loss, ATen GELU) in the same rounds",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per model")
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    p.add_argument(
        "--slow_rounds", type=int, default=2,
        help="rounds (of 1 step) for bf16 on a CPU without native bf16, where a step takes minutes",
    )  # fmt: skip
    p.add_argument("--peak_size", type=int, default=2048, help="side of the square matmul timed for the peak")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory_child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--batches_file", help=argparse.SUPPRESS)  # encoder memory child: the pre-built batches
    a = p.parse_args()
    seq_len, batch = {"decoder": (256, 16), "encoder": (128, 32)}[a.arch]
    a.seq_len = a.seq_len or seq_len
    a.batch = a.batch or batch
    return a


def model_config(a: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        vocab_size=a.vocab, n_layer=a.n_layer, n_head=a.n_head, d_model=a.d_model, max_len=a.seq_len,
        activation="gelu_tanh", dropout=0.0,
    )  # fmt: skip


def tokens(a: argparse.Namespace) -> np.ndarray:
    return np.random.default_rng(0).integers(0, a.vocab, 2_000_000).astype(np.uint16)


def ours(a: argparse.Namespace, precision: str, compile: bool, device: torch.device) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=a.batch, seq_len=a.seq_len, precision=precision, compile=compile, progress=False,
                      tensorboard=False, plot=False, device=str(device))  # fmt: skip
    batches = CausalLMBatches(tokens(a), a.seq_len, a.batch, device=device)
    return Trainer(
        build_model(model_config(a)), batches, cfg, "/nonexistent-run", objective=causal_lm(), device=device
    )


class ReferenceStep:
    """The reference side's step: loss -> backward -> clip -> fused AdamW, on the same data as ours.

    Subclasses build `model` (seeded) and say how it computes the loss of one batch."""

    def __init__(self, model: torch.nn.Module, a: argparse.Namespace, precision: str, compile: bool,
                 device: torch.device) -> None:  # fmt: skip
        self.model = model.to(device).train()
        self.step_model = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                     fused=True)  # fmt: skip
        self.batches = CausalLMBatches(tokens(a), a.seq_len, a.batch, device=device)
        self.device, self.precision = device, precision

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_step(self, lr: float):
        x, y = self.batches.next_batch()
        with autocast(self.device, self.precision):
            loss = self.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach(), None, None


class HFStep(ReferenceStep):
    """The same step for transformers' GPT-2: logits -> CE -> backward -> clip -> fused AdamW."""

    def __init__(self, a: argparse.Namespace, precision: str, compile: bool, device: torch.device) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        conf = GPT2Config(
            vocab_size=a.vocab, n_positions=a.seq_len, n_embd=a.d_model, n_layer=a.n_layer, n_head=a.n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
            bos_token_id=a.vocab - 1, eos_token_id=a.vocab - 1,
        )  # fmt: skip
        super().__init__(GPT2LMHeadModel(conf), a, precision, compile, device)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.step_model(input_ids=x).logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))


class PlainGPT(torch.nn.Module):
    """A nanoGPT-style GPT-2 (--plain): the same weights' shapes and the same math as ours, written
    the plain way: nn.GELU(tanh), full (B*T, vocab) logits, then F.cross_entropy. It shows what
    the fused loss and the GELU change are worth on this machine, and calibrates the ratio to HF
    against the design most small-GPT code follows."""

    def __init__(self, a: argparse.Namespace) -> None:
        super().__init__()
        nn = torch.nn
        d = a.d_model
        self.n_head = a.n_head
        self.wte, self.wpe = nn.Embedding(a.vocab, d), nn.Embedding(a.seq_len, d)
        self.layers = nn.ModuleList(
            nn.ModuleDict(dict(ln1=nn.LayerNorm(d), qkv=nn.Linear(d, 3 * d), proj=nn.Linear(d, d), ln2=nn.LayerNorm(d),
                               fc=nn.Linear(d, 4 * d), act=nn.GELU(approximate="tanh"), out=nn.Linear(4 * d, d)))
            for _ in range(a.n_layer)
        )  # fmt: skip
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, a.vocab, bias=False)
        self.head.weight = self.wte.weight
        self.apply(lambda m: init_normal(m, 0.02))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for layer in self.layers:
            q, k, v = layer["qkv"](layer["ln1"](x)).split(x.size(-1), dim=2)
            q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
            x = x + layer["proj"](y)
            x = x + layer["out"](layer["act"](layer["fc"](layer["ln2"](x))))
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


class PlainStep(ReferenceStep):
    """The reference step (same optimizer, clip and data) around `PlainGPT`."""

    def __init__(self, a: argparse.Namespace, precision: str, compile: bool, device: torch.device) -> None:
        torch.manual_seed(0)
        super().__init__(PlainGPT(a), a, precision, compile, device)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.step_model(x, y)


# ------------------------------------------------------------------ encoder (--arch encoder)

MLM_RATE = MaskingConfig().rate  # 0.15: the share of tokens the MLM head runs on, for the FLOP count
N_PREBUILT = 8  # masked-LM batches built once and cycled by both models


def encoder_config(a: argparse.Namespace) -> ModelConfig:
    """BERT's layout (as in bert-base, scaled down): post-norm, erf GELU, learned positions, segments."""
    return ModelConfig(
        arch="encoder", vocab_size=a.vocab, n_layer=a.n_layer, n_head=a.n_head, d_model=a.d_model,
        d_ff=4 * a.d_model, max_len=a.seq_len, norm_position="post", activation="gelu", position="learned",
        norm_eps=1e-12, bias=True, tie_embeddings=True, type_vocab_size=2, dropout=0.0,
    )  # fmt: skip


@dataclass
class MLMData:
    batches: list[dict[str, torch.Tensor | None]]  # the pre-built batches, on the device
    source: Any = None  # the MaskedLMBatches they came from (None in a memory child)

    @property
    def predicted_fraction(self) -> float:
        """Tokens the MLM head actually predicts over all B*T slots (padding and specials included)."""
        n = sum(b["mlm_positions"].numel() for b in self.batches)  # type: ignore[union-attr]
        return n / sum(b["input_ids"].numel() for b in self.batches)  # type: ignore[union-attr]


def mlm_data(a: argparse.Namespace, device: torch.device, root: Path) -> MLMData:
    """Real masked-LM batches: a WordPiece tokenizer trained on the built-in corpus, the corpus
    prepared into shards under `root`, and MaskedLMBatches (NSP pairs) over its train split.
    Sets a.vocab to the tokenizer's vocabulary size (both models use it)."""
    from lmforge.data.builtin import builtin_corpus_path
    from lmforge.data.mlm_batches import MaskedLMBatches
    from lmforge.data.shards import Shards, prepare
    from lmforge.tokenizer import Tokenizer, TokenizerConfig

    corpus = builtin_corpus_path()
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tok = Tokenizer.train(texts, TokenizerConfig(kind="wordpiece", vocab_size=a.vocab))
    prepare(str(corpus), tok, root / "shards", show_progress=False)
    shards = Shards.open(root / "shards")
    a.vocab = shards.tokenizer().vocab_size
    source = MaskedLMBatches(
        shards.tokens("train"), shards.doc_offsets("train"), shards.tokenizer(), a.seq_len, a.batch,
        mode="nsp", eos_id=shards.eos_id, seed=0, device=device,
    )  # fmt: skip
    return MLMData([source.next_batch() for _ in range(N_PREBUILT)], source)


def save_batches(data: MLMData, path: Path) -> None:
    cpu = [{k: None if v is None else v.cpu() for k, v in b.items()} for b in data.batches]
    torch.save(cpu, path)


def load_batches(path: str, device: torch.device) -> MLMData:
    cpu = torch.load(path, weights_only=True)
    return MLMData([{k: None if v is None else v.to(device) for k, v in b.items()} for b in cpu])


class Cycle:
    """A batch source for the Trainer that serves the same pre-built batches round and round."""

    def __init__(self, batches: list, batch_size: int, seq_len: int) -> None:
        self.batches, self.batch_size, self.seq_len, self.i = batches, batch_size, seq_len, 0

    def next_batch(self) -> Any:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self) -> dict[str, int]:
        return {"epoch": 0, "position": self.i}


def ours_encoder(
    a: argparse.Namespace, precision: str, compile: bool, device: torch.device, data: MLMData
) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=a.batch, seq_len=a.seq_len, precision=precision, compile=compile, progress=False,
                      tensorboard=False, plot=False, device=str(device))  # fmt: skip
    return Trainer(build_model(encoder_config(a)), Cycle(data.batches, a.batch, a.seq_len), cfg,
                   "/nonexistent-run", objective=mlm_loss, device=device)  # fmt: skip


def hf_bert_inputs(batch: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """One of our masked-LM batches as BertForPreTraining's inputs: labels (B, T) hold the original
    token at the masked positions and -100 elsewhere; next_sentence_label is the NSP label."""
    ids = batch["input_ids"]
    assert ids is not None and batch["mlm_positions"] is not None
    labels = torch.full_like(ids, -100)
    labels.view(-1)[batch["mlm_positions"]] = batch["mlm_targets"]
    mask = batch["attention_mask"]
    return {
        "input_ids": ids,
        "token_type_ids": batch["token_type_ids"],
        "attention_mask": None if mask is None else mask.long(),
        "labels": labels,
        "next_sentence_label": batch["pair_labels"],
    }


class HFBertStep:
    """The same step for transformers' BertForPreTraining: MLM + NSP loss -> backward -> clip -> fused AdamW."""

    def __init__(
        self, a: argparse.Namespace, precision: str, compile: bool, device: torch.device, data: MLMData
    ) -> None:
        from transformers import BertConfig, BertForPreTraining

        torch.manual_seed(0)
        conf = BertConfig(
            vocab_size=a.vocab, hidden_size=a.d_model, num_hidden_layers=a.n_layer, num_attention_heads=a.n_head,
            intermediate_size=4 * a.d_model, hidden_act="gelu", max_position_embeddings=a.seq_len,
            type_vocab_size=2, layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            attn_implementation="sdpa",
        )  # fmt: skip
        self.model = BertForPreTraining(conf).to(device).train()
        self.step_model = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                     fused=True)  # fmt: skip
        self.batches = Cycle([hf_bert_inputs(b) for b in data.batches], a.batch, a.seq_len)
        self.device, self.precision = device, precision

    def train_step(self, lr: float):
        inputs = self.batches.next_batch()
        with autocast(self.device, self.precision):
            loss = self.step_model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach(), None, None


def runner(
    a: argparse.Namespace,
    which: str,
    precision: str,
    compile: bool,
    device: torch.device,
    data: MLMData | None,
):
    """Ours or HF's stepper for the chosen architecture."""
    if a.arch == "encoder":
        assert data is not None
        make = ours_encoder if which == "ours" else HFBertStep
        return make(a, precision, compile, device, data)
    return {"ours": ours, "hf": HFStep, "plain": PlainStep}[which](a, precision, compile, device)


def flops_per_token(a: argparse.Namespace) -> float:
    if a.arch == "encoder":
        return build_model(encoder_config(a)).flops_per_token(a.seq_len, predicted_fraction=MLM_RATE)
    return build_model(model_config(a)).flops_per_token(a.seq_len)


# ------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(stepper, steps: int, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        stepper.train_step(1e-4)
    sync(device)
    return time.perf_counter() - t


def matmul_peak(
    precision: str, device: torch.device, size: int, windows: int = 4, window_s: float = 0.25
) -> float:
    """Best FLOP/s of (size x size) @ (size x size).T matmuls over a few short timing windows.

    The right operand is transposed as in nn.Linear's forward: float32 BLAS runs every layout at
    the same speed, but on CPUs without native bf16 PyTorch's bf16 matmul is only fast with one
    operand transposed (20x slower otherwise), and a peak must be the fastest this machine does.
    The best window, not the average, is kept so that a moment of contention from other processes
    cannot lower the peak (and so inflate the share of it). Threads are the ones the models use.
    """
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    gen = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG alone
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen).t()
    a @ b  # warm-up: kernel selection, first touch of the output
    sync(device)
    best = 0.0
    for _ in range(windows):
        n, start = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - start < window_s:
            a @ b
            n += 1
            sync(device)
        best = max(best, 2 * size**3 * n / (time.perf_counter() - start))
    return best


def slow_precision(precision: str, device: torch.device) -> bool:
    """bf16 on a CPU that emulates it: a training step takes minutes, so fewer are timed."""
    return precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16()


def compare(
    a: argparse.Namespace, precision: str, compiled: bool, device: torch.device, data: MLMData | None = None
) -> dict:
    """Ours vs HF in one precision, both eager or both compiled, alternating round by round.

    Only these two models live in the process while they are timed: a third and fourth (the
    compiled pair) would change how the allocator serves them, and HF's large logits tensors are
    sensitive to that.
    """
    flops_tok = flops_per_token(a)
    tok_per_step = a.batch * a.seq_len
    names = ("ours", "hf", "plain") if a.plain and a.arch == "decoder" else ("ours", "hf")
    runners = {name: runner(a, name, precision, compiled, device, data) for name in names}
    slow = slow_precision(precision, device)
    rounds, steps, warmup = (a.slow_rounds, 1, 1) if slow else (a.rounds, a.steps, 2)
    if compiled and data is not None:  # every pre-built batch once: the number of masked tokens and
        warmup = max(warmup, len(data.batches))  # padding differ, which compile may specialise on
    for r in runners.values():  # warm-up (and compilation)
        timed(r, warmup, device)
    tps: dict[str, list[float]] = {name: [] for name in runners}
    peaks: list[float] = []
    for i in range(rounds):
        # The order rotates from round to round, so that whatever follows the matmul timing or the
        # other model's allocations (page faults, cache and clock state) falls on each model alike.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            tps[name].append(steps * tok_per_step / timed(runners[name], steps, device))
        peaks.append(matmul_peak(precision, device, a.peak_size))
    out: dict = {"precision": precision, "compiled": compiled, "rounds": rounds, "steps_per_round": steps,
                 "flops_per_token": flops_tok, "peak_matmul_flops_per_round": peaks}  # fmt: skip
    for name, per_round in tps.items():
        out[f"{name}_tokens_per_s"] = statistics.median(per_round)
        out[f"{name}_tokens_per_s_per_round"] = per_round
    out["ratio_per_round"] = [o / h for o, h in zip(tps["ours"], tps["hf"])]
    out["ratio"] = statistics.median(out["ratio_per_round"])
    # Each round's share against that round's own matmul timing: how far the machine moved
    # within the run shows in the spread of these (the headline share uses the medians).
    out["ours_share_per_round"] = [t * flops_tok / p for t, p in zip(tps["ours"], peaks)]
    if "plain" in tps:
        out["plain_to_hf"] = statistics.median(o / h for o, h in zip(tps["plain"], tps["hf"]))
        out["ours_to_plain"] = statistics.median(o / h for o, h in zip(tps["ours"], tps["plain"]))
    return out


def add_shares(pairs: list[dict]) -> None:
    """Share of peak for every pair of one precision, over the median of all their matmul timings
    (one peak per precision, so eager and compiled shares compare)."""
    peak = statistics.median(p for pair in pairs for p in pair["peak_matmul_flops_per_round"])
    for pair in pairs:
        pair["peak_matmul_flops"] = peak
        for name in ("ours", "hf", "plain") if "plain_tokens_per_s" in pair else ("ours", "hf"):
            pair[f"{name}_share_of_peak"] = pair[f"{name}_tokens_per_s"] * pair["flops_per_token"] / peak


def loader_share(
    a: argparse.Namespace, step_s: float, device: torch.device, calls: int = 200, data: MLMData | None = None
) -> dict:
    """next_batch alone (median of `calls`) against one training step: CausalLMBatches, or for the
    encoder MaskedLMBatches (masking and pair building; the mean also carries the per-epoch
    re-planning of pairs, amortised over the calls)."""
    batches = (
        data.source if data is not None else CausalLMBatches(tokens(a), a.seq_len, a.batch, device=device)
    )
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        batches.next_batch()
        sync(device)
        times.append(time.perf_counter() - t)
    batch_s = statistics.median(times)
    out = {"next_batch_ms": batch_s * 1e3, "step_ms": step_s * 1e3, "share_of_step": batch_s / step_s}
    if data is not None:
        mean_s = statistics.fmean(times)
        out |= {"next_batch_mean_ms": mean_s * 1e3, "share_of_step_mean": mean_s / step_s, "calls": calls}
    return out


def rss_bytes(field: str) -> int:
    """A memory figure of this process from /proc (VmRSS: now, VmHWM: peak), 0 where absent.

    VmHWM is the high-water mark of this program image only. getrusage's ru_maxrss is not: on
    Linux it carries over the parent's resident size through fork + exec, which is why a child
    started late in the bench used to report the parent's gigabytes.
    """
    status = Path("/proc/self/status")
    if not status.exists():
        return 0
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    return 0


def memory_child(a: argparse.Namespace) -> None:
    """Peak memory of building the model and training 3 steps, over the process after imports."""
    device = torch.device(a.device)
    if a.memory_child == "hf":
        import transformers  # noqa: F401  (imported before the baseline: library code is not the model's memory)
    data = load_batches(a.batches_file, device) if a.arch == "encoder" else None  # nor are the batches
    base = rss_bytes("VmRSS")
    r = runner(a, a.memory_child, "fp32", False, device, data)
    timed(r, 3, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (rss_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    print(json.dumps({"peak_bytes": peak}))


def peak_memory(a: argparse.Namespace, which: str) -> float:
    args = [sys.executable, __file__, "--memory_child", which, "--device", a.device, "--arch", a.arch]
    if a.batches_file:
        args += ["--batches_file", a.batches_file]
    for k in ("n_layer", "d_model", "n_head", "seq_len", "vocab", "batch", "threads"):
        args += [f"--{k}", str(getattr(a, k))]
    out = subprocess.run(
        args, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20


def cpu_has_native_bf16() -> bool:
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    info = Path("/proc/cpuinfo")
    flags = info.read_text() if info.exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags or "AMX" in cap


def machine(device: torch.device, threads: int) -> dict:
    info = Path("/proc/cpuinfo")
    names = [
        ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")
    ]
    out = {
        "cpu": names[0] if names else platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def report(r: dict) -> str:
    def one(name: str) -> str:
        return f"{r[f'{name}_tokens_per_s']:,.0f} tok/s ({r[f'{name}_share_of_peak']:.0%} of peak)"

    label = r["precision"] + (" compiled" if r["compiled"] else "")
    line = (
        f"{label}: ours {one('ours')}  HF {one('hf')}  ratio {r['ratio']:.2f}x"
        f"  [matmul peak {r['peak_matmul_flops'] / 1e9:.0f} GFLOP/s, {r['rounds']} rounds]"
    )
    if r["rounds"] > 2:
        ratios, shares = sorted(r["ratio_per_round"]), sorted(r["ours_share_per_round"])
        line += (
            f"\n{label}: spread over rounds: ratio {ratios[0]:.2f}-{ratios[-1]:.2f}x, ours' share of that"
            f" round's peak {shares[0]:.0%}-{shares[-1]:.0%} (median {statistics.median(shares):.0%})"
        )
    if "plain_to_hf" in r:
        line += (
            f"\n{label}: plain nanoGPT-style {one('plain')}  plain / HF {r['plain_to_hf']:.2f}x"
            f"  ours / plain {r['ours_to_plain']:.2f}x"
        )
    return line


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    if a.memory_child:
        memory_child(a)
        return
    if a.arch == "encoder":
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
            run(a, Path(tmp))
    else:
        run(a, None)


def run(a: argparse.Namespace, tmp: Path | None) -> None:
    device = torch.device(a.device)
    precisions = ["fp32", "bf16"] if a.precision == "all" else [a.precision]
    data = None
    if tmp is not None:  # encoder: masked-LM batches from real data, built once for both models
        t = time.perf_counter()
        data = mlm_data(a, device, tmp)
        a.batches_file = str(tmp / "batches.pt")
        save_batches(data, Path(a.batches_file))
        print(
            f"data: WordPiece {a.vocab} on the built-in corpus, {len(data.batches)} MLM+NSP batches of "
            f"{a.batch} x {a.seq_len} pre-built in {time.perf_counter() - t:.1f} s, cycled by both models",
            flush=True,
        )
    config_keys = ("arch", "n_layer", "d_model", "n_head", "seq_len", "vocab", "batch")
    results: dict = {"bench": "train_throughput", "device": str(device), "machine": machine(device, a.threads),
                     "config": {k: getattr(a, k) for k in config_keys},
                     "load_before": os.getloadavg()}  # fmt: skip
    print(json.dumps(results["machine"]), flush=True)
    if data is not None:
        frac = data.predicted_fraction
        results["flops_count"] = (
            f"Encoder.flops_per_token(seq_len={a.seq_len}, predicted_fraction={MLM_RATE}): backbone 6N + "
            f"12*L*d*T, the MLM head (dense + vocab projection) on {MLM_RATE:.0%} of tokens"
        )
        results["predicted_fraction_measured"] = frac
        print(
            f"FLOPs per token: {flops_per_token(a) / 1e6:.1f} MFLOP ({results['flops_count']}; the batches "
            f"predict {frac:.1%} of all B*T slots, padding included); the same count is used for HF",
            flush=True,
        )
    for prec in precisions:
        if slow_precision(prec, device):
            print(
                f"{prec}: this CPU has no native bf16; a step takes minutes, timing {a.slow_rounds} rounds of 1 step"
            )
        pairs = []
        for compiled in (False, True) if a.compile else (False,):
            pairs.append(compare(a, prec, compiled, device, data))
            results[prec + ("_compiled" if compiled else "")] = pairs[-1]
            gc.collect()  # the pair just timed is gone before the next pair is built
        add_shares(pairs)
        for pair in pairs:
            print(report(pair), flush=True)
    first = results[precisions[0]]
    results["data_loader"] = loader_share(
        a, a.batch * a.seq_len / first["ours_tokens_per_s"], device, data=data
    )
    dl = results["data_loader"]
    if data is None:
        print(
            f"data loader: next_batch {dl['next_batch_ms']:.2f} ms = {dl['share_of_step']:.2%} of a "
            f"{precisions[0]} step ({dl['step_ms']:.0f} ms)"
        )
    else:
        print(
            f"masking + pair building (MaskedLMBatches.next_batch): median {dl['next_batch_ms']:.2f} ms = "
            f"{dl['share_of_step']:.2%}, mean {dl['next_batch_mean_ms']:.2f} ms = {dl['share_of_step_mean']:.2%} "
            f"of our {precisions[0]} step ({dl['step_ms']:.0f} ms)"
        )
    results["peak_memory_mib"] = {"ours": peak_memory(a, "ours"), "hf": peak_memory(a, "hf")}
    mem = results["peak_memory_mib"]
    print(f"peak memory (fp32, MiB): ours {mem['ours']:.0f}  HF {mem['hf']:.0f}")
    results["load_after"] = os.getloadavg()
    print(f"load average (1, 5, 15 min): before {results['load_before']}  after {results['load_after']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
