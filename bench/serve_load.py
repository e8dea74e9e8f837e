"""A load test of `lmforge serve` on loopback: continuous batching vs one request at a time.

Two servers of the same model in this process, one after the other: the engine with `--max_batch`
slots (continuous batching), and the same engine with one slot (each request waits for the one
before it, as a server without batching serves). For each concurrency in `--concurrency`, that
many streaming clients (httpx, one request each) ask for `--new_tokens` tokens of a completion at
once; every request must complete with no error. Reported per server and concurrency: aggregate
tokens/s (all generated tokens over the wall time of the whole wave), p50 / p99 time to first
token, and the ratio of the two servers' tokens/s. The model is a random GPT (`--d_model`,
`--layers`, vocabulary `--vocab`) whose end-of-text logit is pushed down, so every request runs to
`--new_tokens` and both servers do the same work; prompts are 16-48 random token ids.

    python bench/serve_load.py                          # d 512, 8 layers, 2 threads
    python bench/serve_load.py --concurrency 8,32 --new_tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import threading
import time

import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d_model", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--max_len", type=int, default=256)
    p.add_argument("--concurrency", default="8,32")
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--max_batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def build(args: argparse.Namespace):
    from lmforge.models import build_model
    from lmforge.models.config import ModelConfig
    from lmforge.tokenizer import Tokenizer, TokenizerConfig

    words = [f"w{i}" for i in range(3000)]
    rng = random.Random(0)
    text = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(2000)]
    tokenizer = Tokenizer.train(text, TokenizerConfig(kind="bpe", vocab_size=min(args.vocab, 4000)))
    torch.manual_seed(0)
    cfg = ModelConfig(arch="decoder", vocab_size=args.vocab, n_layer=args.layers, n_head=args.d_model // 64,
                      d_model=args.d_model, max_len=args.max_len)  # fmt: skip
    model = build_model(cfg).eval()
    # No end-of-text, so every request runs to --new_tokens and both servers do the same work.
    model.lm_head.register_forward_hook(
        lambda m, i, out: out.index_fill(-1, torch.tensor([tokenizer.eos_id]), -1e4)
    )
    return model, tokenizer


class Server:
    def __init__(self, model, tokenizer, max_batch: int, max_tokens: int):
        import uvicorn

        from lmforge.infer.engine import Engine
        from lmforge.infer.server import Metrics, ServedModel, create_app

        self.engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=256, metrics=Metrics())
        served = ServedModel("bench", self.engine, tokenizer, None, max_tokens, 0)
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(served), host="127.0.0.1", port=0, log_level="error")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not (self.server.started and self.server.servers):
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.close(drain=False, timeout=5)


async def wave(url: str, prompts: list[list[int]], new_tokens: int) -> dict:
    import httpx

    async def one(client: httpx.AsyncClient, prompt: list[int]) -> tuple[float, int]:
        body = {"model": "bench", "prompt": prompt, "max_tokens": new_tokens, "stream": True, "temperature": 1.0,
                "top_p": 0.95, "seed": len(prompt), "stream_options": {"include_usage": True}}  # fmt: skip
        start, first, tokens = time.perf_counter(), None, 0
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {await r.aread()}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first is None:
                    first = time.perf_counter() - start
        return first or 0.0, tokens

    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*[one(client, p) for p in prompts])
        wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"requests": len(prompts), "completed": sum(r[1] == new_tokens for r in results), "tokens": tokens,
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "ttft_p50_s": round(statistics.median(ttft), 3), "ttft_p99_s": round(ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 3)}  # fmt: skip


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    model, tokenizer = build(args)
    rng = random.Random(1)
    levels = [int(c) for c in args.concurrency.split(",")]
    prompts = {
        c: [[rng.randrange(10, 3000) for _ in range(rng.randint(16, 48))] for _ in range(c)] for c in levels
    }
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads; "
          f"GPT d {args.d_model} x {args.layers}, vocab {args.vocab}; {args.new_tokens} new tokens per request")  # fmt: skip
    results: dict[str, dict] = {}
    for name, slots in (("continuous", args.max_batch), ("one_at_a_time", 1)):
        server = Server(model, tokenizer, slots, args.new_tokens)
        try:
            asyncio.run(wave(server.url, prompts[levels[0]][:2], 4))  # warm-up
            for c in levels:
                r = asyncio.run(wave(server.url, prompts[c], args.new_tokens))
                results.setdefault(str(c), {})[name] = r
                print(f"{name:14s} {c:3d} concurrent: {r['tokens_per_s']:8.1f} tok/s  ttft p50 {r['ttft_p50_s']:.3f} s  "
                      f"p99 {r['ttft_p99_s']:.3f} s  ({r['completed']}/{r['requests']} complete, {r['wall_s']} s)", flush=True)  # fmt: skip
        finally:
            server.close()
    ratios = {
        c: round(r["continuous"]["tokens_per_s"] / r["one_at_a_time"]["tokens_per_s"], 2)
        for c, r in results.items()
    }
    print(json.dumps({"bench": "serve_load", "speedup_tokens_per_s": ratios, "results": results}))


if __name__ == "__main__":
    main()
