"""Decoder-only generation speed: our KV-cached decode vs transformers' `GPT2LMHeadModel.generate`,
same config, same weights, same prompts, in one process.

A GPT-2-layout model with random weights is built in transformers, saved, and imported into ours
with `lmforge.interop.hf.import_hf`, so both decode with the very same numbers. Each setting
generates exactly `--new_tokens` tokens per row (no end-of-text token, HF with
`min_new_tokens` = `max_new_tokens`): greedy, and nucleus sampling (top-p 0.9, temperature 1, no
top-k) at batch 1 and 8, from prompts of `--prompt_len` tokens. Greedy outputs are checked equal.
A round times one call of each (alternating); tokens/s = batch x new tokens / seconds, the median
over rounds, and the ratio the median of per-round ratios. Peak memory is the process's resident
high-water mark around each side's calls (a rough figure: one process holds both).

    python bench/generate_decoder.py                      # 6 x 384, vocab 8192, 256 new tokens, 2 threads
    python bench/generate_decoder.py --n_layer 12 --d_model 768 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import tempfile
import time

import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--d_model", type=int, default=384)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time ours with compiled steps (compile=True)")
    return p.parse_args()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    import transformers

    from lmforge.infer.generate import Generation, GenerationConfig
    from lmforge.interop.hf import import_hf

    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=args.prompt_len + args.new_tokens, n_embd=args.d_model,
        n_layer=args.n_layer, n_head=args.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        _write_tokenizer(d, args.vocab)
        ours, _ = import_hf(d)
    ours = ours.eval()
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = torch.randint(
            1, args.vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(1)
        )
        for mode in ("greedy", "top_p"):
            sample = mode == "top_p"
            gen = GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0 if sample else 0.0,
                                   top_p=0.9 if sample else 1.0, seed=0)  # fmt: skip
            hf_kw = {"do_sample": sample, "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens,
                     "pad_token_id": 0, "attention_mask": torch.ones_like(prompts)}  # fmt: skip
            if sample:
                hf_kw.update(top_p=0.9, top_k=0, temperature=1.0)

            def run_ours(prompts=prompts, gen=gen) -> torch.Tensor:
                return torch.stack(list(Generation(ours, prompts, gen)), 1)

            compiled_gen = dataclasses.replace(gen, compile=True)

            def run_compiled(prompts=prompts, gen=compiled_gen) -> torch.Tensor:
                return torch.stack(list(Generation(ours, prompts, gen)), 1)

            def run_hf(prompts=prompts, hf_kw=hf_kw) -> torch.Tensor:
                with torch.inference_mode():
                    return hf.generate(prompts, **hf_kw)[:, args.prompt_len :]

            a, b = run_ours(), run_hf()  # warm-up, and the greedy check
            if not sample:
                assert torch.equal(a, b), "greedy outputs differ"
            if args.compile:
                c = run_compiled()  # compiles (once per batch size)
                assert sample or torch.equal(a, c), "compiled greedy outputs differ"
            ours_t, hf_t, ratios, comp_t = [], [], [], []
            mem = {}
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                run_ours()
                t1 = time.perf_counter()
                mem["ours"] = rss_mb()
                run_hf()
                t2 = time.perf_counter()
                mem["hf"] = rss_mb()
                ours_t.append(t1 - t0)
                hf_t.append(t2 - t1)
                ratios.append((t2 - t1) / (t1 - t0))
                if args.compile:
                    t3 = time.perf_counter()
                    run_compiled()
                    comp_t.append(time.perf_counter() - t3)
            n = batch * args.new_tokens
            row = {"batch": batch, "mode": mode, "ours_tok_s": n / statistics.median(ours_t),
                   "hf_tok_s": n / statistics.median(hf_t), "ratio": statistics.median(ratios),
                   "ratio_min": min(ratios), "ratio_max": max(ratios), "rss_mb": mem}  # fmt: skip
            if args.compile:
                row["compiled_tok_s"] = n / statistics.median(comp_t)
                row["compiled_ratio"] = statistics.median(h / c for h, c in zip(hf_t, comp_t))
            results.append(row)
            print(f"batch {batch} {mode:6s}: ours {row['ours_tok_s']:8.1f} tok/s  hf {row['hf_tok_s']:8.1f} tok/s  "
                  f"x{row['ratio']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
                  + (f"  compiled {row['compiled_tok_s']:8.1f} tok/s x{row['compiled_ratio']:.2f}"
                     if args.compile else ""), flush=True)  # fmt: skip
    summary = {
        "bench": "generate_decoder", "config": vars(args), "torch": torch.__version__,
        "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine(),
        "results": results, "ratio_min_over_settings": min(r["ratio"] for r in results),
    }  # fmt: skip
    print(json.dumps(summary))


def _write_tokenizer(d: str, vocab: int) -> None:
    """A word-level tokenizer of `vocab` entries, so the import has one (the ids are what matter)."""
    import tokenizers

    words = {f"w{i}": i for i in range(vocab)}
    words["<|endoftext|>"] = 0
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(f"{d}/tokenizer.json")


if __name__ == "__main__":
    main()
