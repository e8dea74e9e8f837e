"""Peak FLOP/s of the device, the denominator of MFU (model FLOPs utilisation).

GPUs: the vendor's dense peak for the precision. CPUs have no reliable table, so the peak is
measured: the rate of a large matmul in the training precision on the threads PyTorch uses. MFU on
CPU therefore reads as "share of what this machine's matmul achieves", which is what one can
actually improve on.
"""

from __future__ import annotations

import functools
import os
import time

import torch

# Dense tensor-core peaks (FLOP/s) for bf16/fp16; fp32 entries are TF32 where applicable.
_GPU_PEAKS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 62e12},
    "4090": {"bf16": 165e12, "fp16": 165e12, "fp32": 82e12},
}


@functools.lru_cache(maxsize=8)
def measured_matmul_flops(
    device: str = "cpu", precision: str = "fp32", size: int = 1024, seconds: float = 0.5
) -> float:
    """FLOP/s of repeated (size x size) @ (size x size) matmuls in `precision` on `device`."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    dev = torch.device(device)
    # A private generator: measuring must not move the global RNG that dropout (and exact resume) rely on.
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(size, size, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=dev, dtype=dtype, generator=gen)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(3):  # warm up kernels and caches
        a @ b
    sync()
    n, start = 0, time.perf_counter()
    while True:
        a @ b
        n += 1
        if n % 4 == 0:
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2 * size**3 * n / elapsed


def peak_flops(device: torch.device, precision: str) -> float:
    """Peak FLOP/s for MFU; $LMFORGE_PEAK_FLOPS overrides (useful to compare machines)."""
    if os.environ.get("LMFORGE_PEAK_FLOPS"):
        return float(os.environ["LMFORGE_PEAK_FLOPS"])
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in _GPU_PEAKS.items():
            if key in name:
                return peaks.get(precision, peaks["fp32"])
        return measured_matmul_flops(str(device), precision, size=8192)
    return measured_matmul_flops("cpu", precision if precision != "fp16" else "fp32")
