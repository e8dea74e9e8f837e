"""Training throughput: our GPT vs transformers' GPT2LMHeadModel, same config, same process.

Both models run the identical step (forward, next-token cross-entropy, backward, clip, fused
AdamW; ours through the real Trainer.train_step), alternating in rounds so that machine noise
hits both alike. Reported: tokens/s of each, the ratio, and the share of this machine's peak:
training FLOPs/s (6N + 12*L*d*T per token) over the FLOP/s of a large matmul measured in the
same run and precision. Peak memory is measured in a fresh child process per model.

    python bench/train_throughput.py                       # fp32 and bf16 (where the CPU has it)
    python bench/train_throughput.py --precision fp32 --compile
Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from lmforge.train.flops import measured_matmul_flops
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
    p.add_argument("--compile", action="store_true", help="also torch.compile our model")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per model")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
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

    def __init__(self, a: argparse.Namespace, precision: str, device: torch.device) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        conf = GPT2Config(
            vocab_size=a.vocab, n_positions=a.seq_len, n_embd=a.d_model, n_layer=a.n_layer, n_head=a.n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
        )  # fmt: skip
        self.model = GPT2LMHeadModel(conf).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                     fused=True)  # fmt: skip
        self.batches = CausalLMBatches(tokens(a), a.seq_len, a.batch, device=device)
        self.device, self.precision = device, precision

    def train_step(self, lr: float):
        x, y = self.batches.next_batch()
        with autocast(self.device, self.precision):
            logits = self.model(input_ids=x).logits
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


def compare(a: argparse.Namespace, precision: str, device: torch.device) -> dict:
    flops_tok = build_model(model_config(a)).flops_per_token(a.seq_len)
    tok_per_step = a.batch * a.seq_len
    runners = {"hf": HFStep(a, precision, device), "ours": ours(a, precision, False, device)}
    if a.compile:
        runners["ours_compiled"] = ours(a, precision, True, device)
    for r in runners.values():  # warm-up (and compilation)
        timed(r, 2, device)
    elapsed = dict.fromkeys(runners, 0.0)
    for _ in range(a.rounds):
        for name, r in runners.items():
            elapsed[name] += timed(r, a.steps, device)
    peak = measured_matmul_flops(
        str(device), precision, size=2048 if device.type == "cpu" else 8192, seconds=1.0
    )
    out = {"precision": precision, "peak_matmul_flops": peak}
    for name, secs in elapsed.items():
        tps = a.rounds * a.steps * tok_per_step / secs
        out[f"{name}_tokens_per_s"] = tps
        out[f"{name}_share_of_peak"] = tps * flops_tok / peak
    out["ratio_vs_hf"] = out["ours_tokens_per_s"] / out["hf_tokens_per_s"]
    if a.compile:
        out["ratio_compiled_vs_hf"] = out["ours_compiled_tokens_per_s"] / out["hf_tokens_per_s"]
    return out


def current_rss() -> int:
    statm = Path("/proc/self/statm")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") if statm.exists() else 0


def memory_child(a: argparse.Namespace) -> None:
    """Peak memory of building the model and training 3 steps, over the process after imports."""
    device = torch.device(a.device)
    if a.memory_child == "hf":
        import transformers  # noqa: F401  (imported before the baseline: library code is not the model's memory)
    base = current_rss()
    r = ours(a, "fp32", False, device) if a.memory_child == "ours" else HFStep(a, "fp32", device)
    timed(r, 3, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
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


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    if a.memory_child:
        memory_child(a)
        return
    device = torch.device(a.device)
    precisions = ["fp32", "bf16"] if a.precision == "all" else [a.precision]
    results: dict = {"bench": "train_throughput", "device": str(device), "threads": a.threads,
                     "config": {k: getattr(a, k) for k in ("n_layer", "d_model", "n_head", "seq_len", "vocab", "batch")}}  # fmt: skip
    if device.type == "cpu":
        results["cpu_native_bf16"] = cpu_has_native_bf16()
    for prec in precisions:
        r = compare(a, prec, device)
        results[prec] = r
        line = f"{prec}: ours {r['ours_tokens_per_s']:,.0f} tok/s ({r['ours_share_of_peak']:.0%} of matmul peak)  " \
               f"HF {r['hf_tokens_per_s']:,.0f} tok/s ({r['hf_share_of_peak']:.0%})  ratio {r['ratio_vs_hf']:.2f}x"  # fmt: skip
        if a.compile:
            line += (
                f"  compiled {r['ours_compiled_tokens_per_s']:,.0f} tok/s ({r['ratio_compiled_vs_hf']:.2f}x)"
            )
        print(line, flush=True)
    if "fp32" in results and "bf16" in results:
        results["ours_bf16_vs_hf_fp32"] = (
            results["bf16"]["ours_tokens_per_s"] / results["fp32"]["hf_tokens_per_s"]
        )
        print(f"ours bf16 vs HF fp32: {results['ours_bf16_vs_hf_fp32']:.2f}x", flush=True)
    results["peak_memory_mib"] = {"ours": peak_memory(a, "ours"), "hf": peak_memory(a, "hf")}
    print(
        f"peak memory (fp32, MiB): ours {results['peak_memory_mib']['ours']:.0f}  HF {results['peak_memory_mib']['hf']:.0f}"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
