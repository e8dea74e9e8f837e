"""Peak FLOP/s of the device, the denominator of MFU (model FLOPs utilisation).

GPUs: the vendor's dense peak for the precision. CPUs have no reliable table, so the peak is
measured: the rate of a large matmul in the training precision on the threads PyTorch uses. MFU on
CPU therefore reads as "share of what this machine's matmul achieves", which is what one can
actually improve on.
"""

from __future__ import annotations

import functools
import os
import platform
import time

import torch

# Dense datasheet peaks (FLOP/s): tensor cores for bf16/fp16; plain FP32 for fp32, because PyTorch
# leaves TF32 off for float32 matmuls unless asked.
_GPU_PEAKS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
    "4090": {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12},
}


@functools.lru_cache(maxsize=8)
def measured_matmul_flops(
    device: str = "cpu", precision: str = "fp32", size: int | None = None, seconds: float = 0.5
) -> float:
    """Best FLOP/s of (size x size) @ (size x size).T matmuls in `precision` on `device`.

    The right operand is transposed, the layout of nn.Linear (weight stored (out, in)): float32
    BLAS runs every layout at about the same speed, but on CPUs without native bf16 PyTorch's bf16
    matmul of two row-major operands is ~20x slower than with one transposed, and the peak must be
    what the model's own matmuls can reach. `size` defaults to 2048 on CPU (at 1024 the per-call
    overheads of packing and threading show: an averaged timing read ~10% low) and 8192 elsewhere.
    After a warm-up call, windows of ~20 ms of calls are timed for `seconds` (at least 3 windows)
    and the best is kept, not the median: contention from other processes can only slow a window
    down, never speed it up, and a peak read low would inflate MFU.
    """
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    dev = torch.device(device)
    size = size or (2048 if dev.type == "cpu" else 8192)
    # A private generator: measuring must not move the global RNG that dropout (and exact resume) rely on.
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(size, size, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=dev, dtype=dtype, generator=gen).t()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a @ b  # warm-up: kernel selection, first touch of the output
    sync()
    deadline, start = time.perf_counter() + seconds, time.perf_counter()
    a @ b
    sync()
    elapsed = time.perf_counter() - start  # the first window: one call, which sizes the others
    best, windows = 2 * size**3 / elapsed, 1
    # Enough calls per window (~20 ms) that the synchronisation and the timer do not count.
    per_window = max(1, int(0.02 / max(elapsed, 1e-6)))
    while windows < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(per_window):
            a @ b
        sync()
        best = max(best, 2 * size**3 * per_window / (time.perf_counter() - start))
        windows += 1
    return best


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512_BF16, AMX-BF16, or Arm's BF16 extension).

    Without it PyTorch emulates bf16 (converting through float32), and bf16 autocast is slower
    than plain float32, up to ~20x. PyTorch's own cpuinfo-based checks answer on x86 (any OS);
    /proc/cpuinfo flags cover the rest (Linux on Arm). Where neither can tell, True: no warning.
    """
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, check, None)
        if fn is not None and fn():
            return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.lower().startswith(("flags", "features")) for w in line.split()}
    except OSError:
        return platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def peak_flops(device: torch.device, precision: str) -> float:
    """Peak FLOP/s for MFU; $LMFORGE_PEAK_FLOPS overrides (useful to compare machines)."""
    if os.environ.get("LMFORGE_PEAK_FLOPS"):
        return float(os.environ["LMFORGE_PEAK_FLOPS"])
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in _GPU_PEAKS.items():
            if key in name:
                return peaks.get(precision, peaks["fp32"])
        return measured_matmul_flops(str(device), precision)
    return measured_matmul_flops("cpu", precision if precision != "fp16" else "fp32")
