"""Training throughput: our GPT vs transformers' GPT2LMHeadModel, same config, same process.

Both models run the identical step (forward, next-token cross-entropy, backward, clip, fused
AdamW; ours through the real Trainer.train_step), alternating in rounds so that machine noise
hits both alike; eager and compiled pairs are timed one pair at a time. Tokens/s is the median
over rounds, the ratio the median of the per-round ratios. Each round also times a large matmul
in the same precision: the share of peak is training FLOPs/s (6N + 12*L*d*T per token) over the
median of those matmul rates. Also reported: the data loader's time as a share of a step, and
peak memory (fp32, a fresh child process per model).

    python bench/train_throughput.py                       # fp32 and bf16
    python bench/train_throughput.py --precision fp32 --compile
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
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.batches import CausalLMBatches
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer, autocast


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--d_model", type=int, default=384)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="all", choices=["all", "fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="also torch.compile both models")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per model")
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    p.add_argument(
        "--slow_rounds", type=int, default=2,
        help="rounds (of 1 step) for bf16 on a CPU without native bf16, where a step takes minutes",
    )  # fmt: skip
    p.add_argument("--peak_size", type=int, default=2048, help="side of the square matmul timed for the peak")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory_child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    return p.parse_args()


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
    return Trainer(build_model(model_config(a)), batches, cfg, "/nonexistent-run", device=device)


class HFStep:
    """The same step for transformers' GPT-2: logits -> CE -> backward -> clip -> fused AdamW."""

    def __init__(self, a: argparse.Namespace, precision: str, compile: bool, device: torch.device) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        conf = GPT2Config(
            vocab_size=a.vocab, n_positions=a.seq_len, n_embd=a.d_model, n_layer=a.n_layer, n_head=a.n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
            bos_token_id=a.vocab - 1, eos_token_id=a.vocab - 1,
        )  # fmt: skip
        self.model = GPT2LMHeadModel(conf).to(device).train()
        self.step_model = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                     fused=True)  # fmt: skip
        self.batches = CausalLMBatches(tokens(a), a.seq_len, a.batch, device=device)
        self.device, self.precision = device, precision

    def train_step(self, lr: float):
        x, y = self.batches.next_batch()
        with autocast(self.device, self.precision):
            logits = self.step_model(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach(), None, None


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


def compare(a: argparse.Namespace, precision: str, compiled: bool, device: torch.device) -> dict:
    """Ours vs HF in one precision, both eager or both compiled, alternating round by round.

    Only these two models live in the process while they are timed: a third and fourth (the
    compiled pair) would change how the allocator serves them, and HF's large logits tensors are
    sensitive to that.
    """
    flops_tok = build_model(model_config(a)).flops_per_token(a.seq_len)
    tok_per_step = a.batch * a.seq_len
    runners = {"ours": ours(a, precision, compiled, device), "hf": HFStep(a, precision, compiled, device)}
    slow = slow_precision(precision, device)
    rounds, steps, warmup = (a.slow_rounds, 1, 1) if slow else (a.rounds, a.steps, 2)
    for r in runners.values():  # warm-up (and compilation)
        timed(r, warmup, device)
    tps: dict[str, list[float]] = {name: [] for name in runners}
    peaks: list[float] = []
    for _ in range(rounds):
        for name, r in runners.items():
            tps[name].append(steps * tok_per_step / timed(r, steps, device))
        peaks.append(matmul_peak(precision, device, a.peak_size))
    out: dict = {"precision": precision, "compiled": compiled, "rounds": rounds, "steps_per_round": steps,
                 "flops_per_token": flops_tok, "peak_matmul_flops_per_round": peaks}  # fmt: skip
    for name, per_round in tps.items():
        out[f"{name}_tokens_per_s"] = statistics.median(per_round)
        out[f"{name}_tokens_per_s_per_round"] = per_round
    out["ratio"] = statistics.median(o / h for o, h in zip(tps["ours"], tps["hf"]))
    return out


def add_shares(pairs: list[dict]) -> None:
    """Share of peak for every pair of one precision, over the median of all their matmul timings
    (one peak per precision, so eager and compiled shares compare)."""
    peak = statistics.median(p for pair in pairs for p in pair["peak_matmul_flops_per_round"])
    for pair in pairs:
        pair["peak_matmul_flops"] = peak
        for name in ("ours", "hf"):
            pair[f"{name}_share_of_peak"] = pair[f"{name}_tokens_per_s"] * pair["flops_per_token"] / peak


def loader_share(a: argparse.Namespace, step_s: float, device: torch.device, calls: int = 200) -> dict:
    """CausalLMBatches.next_batch alone (median of `calls`) against one training step."""
    batches = CausalLMBatches(tokens(a), a.seq_len, a.batch, device=device)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        batches.next_batch()
        sync(device)
        times.append(time.perf_counter() - t)
    batch_s = statistics.median(times)
    return {"next_batch_ms": batch_s * 1e3, "step_ms": step_s * 1e3, "share_of_step": batch_s / step_s}


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
    base = rss_bytes("VmRSS")
    r = ours(a, "fp32", False, device) if a.memory_child == "ours" else HFStep(a, "fp32", False, device)
    timed(r, 3, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (rss_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    print(json.dumps({"peak_bytes": peak}))


def peak_memory(a: argparse.Namespace, which: str) -> float:
    args = [sys.executable, __file__, "--memory_child", which, "--device", a.device]
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
    return (
        f"{label}: ours {one('ours')}  HF {one('hf')}  ratio {r['ratio']:.2f}x"
        f"  [matmul peak {r['peak_matmul_flops'] / 1e9:.0f} GFLOP/s, {r['rounds']} rounds]"
    )


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    if a.memory_child:
        memory_child(a)
        return
    device = torch.device(a.device)
    precisions = ["fp32", "bf16"] if a.precision == "all" else [a.precision]
    results: dict = {"bench": "train_throughput", "device": str(device), "machine": machine(device, a.threads),
                     "config": {k: getattr(a, k) for k in ("n_layer", "d_model", "n_head", "seq_len", "vocab", "batch")},
                     "load_before": os.getloadavg()}  # fmt: skip
    print(json.dumps(results["machine"]), flush=True)
    for prec in precisions:
        if slow_precision(prec, device):
            print(
                f"{prec}: this CPU has no native bf16; a step takes minutes, timing {a.slow_rounds} rounds of 1 step"
            )
        pairs = []
        for compiled in (False, True) if a.compile else (False,):
            pairs.append(compare(a, prec, compiled, device))
            results[prec + ("_compiled" if compiled else "")] = pairs[-1]
            gc.collect()  # the pair just timed is gone before the next pair is built
        add_shares(pairs)
        for pair in pairs:
            print(report(pair), flush=True)
    first = results[precisions[0]]
    results["data_loader"] = loader_share(a, a.batch * a.seq_len / first["ours_tokens_per_s"], device)
    dl = results["data_loader"]
    print(
        f"data loader: next_batch {dl['next_batch_ms']:.2f} ms = {dl['share_of_step']:.2%} of a "
        f"{precisions[0]} step ({dl['step_ms']:.0f} ms)"
    )
    results["peak_memory_mib"] = {"ours": peak_memory(a, "ours"), "hf": peak_memory(a, "hf")}
    mem = results["peak_memory_mib"]
    print(f"peak memory (fp32, MiB): ours {mem['ours']:.0f}  HF {mem['hf']:.0f}")
    results["load_after"] = os.getloadavg()
    print(f"load average (1, 5, 15 min): before {results['load_before']}  after {results['load_after']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
