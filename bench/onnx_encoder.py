"""Encoder latency: onnxruntime (fp32 and dynamic int8) vs our eager PyTorch, same weights, one process.

A BERT-base-sized encoder (12 layers, d 768, 12 heads, FFN 3072, vocabulary 30522, post-norm,
GELU) with random weights is exported by `lmforge.interop.onnx.export_onnx`; onnxruntime runs the
file as it is, and as quantised by `onnxruntime.quantization.quantize_dynamic` (int8 weights of the
MatMuls, activations quantised on the fly). Input: batch `--batch` of `--length` random token ids,
no padding. Latency is the median of `--repeats` calls after warm-up, each system in turn per
round; the ratios are the medians of per-round ratios (onnxruntime time / our eager time: below 1
is faster than ours). Outputs are compared too (max |difference| of the hidden states).

    python bench/onnx_encoder.py                       # batch 1, length 128, 2 threads
    python bench/onnx_encoder.py --batch 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d_model", type=int, default=768)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args()


def main() -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lmforge.interop.onnx import export_onnx
    from lmforge.models import build_model
    from lmforge.models.config import ModelConfig

    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="encoder", vocab_size=30522, n_layer=args.layers, n_head=args.d_model // 64,
                      d_model=args.d_model, d_ff=4 * args.d_model, max_len=512, norm_position="post",
                      position="learned", activation="gelu")  # fmt: skip
    model = build_model(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.length))
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()),
             "token_type_ids": np.zeros_like(ids.numpy())}  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_onnx(model, Path(tmp) / "fp32")
        export_s = time.perf_counter() - t0
        fp32 = str(Path(tmp) / "fp32" / "model.onnx")
        int8 = str(Path(tmp) / "int8.onnx")
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        sessions = {name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                    for name, path in (("onnxruntime_fp32", fp32), ("onnxruntime_int8", int8))}  # fmt: skip
        sizes = {"fp32_mb": Path(fp32).stat().st_size / 1e6, "int8_mb": Path(int8).stat().st_size / 1e6}

        def ours() -> np.ndarray:
            with torch.inference_mode():
                return model(ids).numpy()

        systems = {"ours_eager": ours}
        for name, session in sessions.items():
            systems[name] = lambda s=session: s.run(["last_hidden_state"], feeds)[0]
        reference = ours()
        diffs = {
            name: float(np.abs(fn() - reference).max())
            for name, fn in systems.items()
            if name != "ours_eager"
        }

        def latency(fn) -> float:
            for _ in range(3):
                fn()
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        rounds = []
        for _ in range(args.rounds):
            rounds.append({name: latency(fn) for name, fn in systems.items()})
    ms = {name: round(1000 * statistics.median(r[name] for r in rounds), 2) for name in systems}
    ratios = {name: round(statistics.median(r[name] / r["ours_eager"] for r in rounds), 3)
              for name in systems if name != "ours_eager"}  # fmt: skip
    print(f"# torch {torch.__version__}, onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads; encoder {args.layers} x {args.d_model}, batch {args.batch}, length {args.length}; "
          f"export {export_s:.0f} s; model.onnx {sizes['fp32_mb']:.0f} MB, int8 {sizes['int8_mb']:.0f} MB")  # fmt: skip
    for name, value in ms.items():
        extra = f"  ({ratios[name]:.2f}x our time, max |diff| {diffs[name]:.1e})" if name in ratios else ""
        print(f"{name:18s} {value:8.2f} ms{extra}")
    print(json.dumps({"bench": "onnx_encoder", "latency_ms": ms, "time_vs_ours": ratios, "max_abs_diff": diffs,
                      "batch": args.batch, "length": args.length, "threads": args.threads}))  # fmt: skip


if __name__ == "__main__":
    main()
