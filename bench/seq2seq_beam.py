"""Beam-5 translation speed: our encoder-decoder beam search vs transformers' `MarianMTModel.generate`
and CTranslate2 (fp32 and int8), same Marian model and weights, same sources, one process.

A Marian-layout model (post-norm, no embedding norm, sinusoidal positions, ReLU, shared tied
embeddings) of `--d_model`/`--layers` with random weights is saved by transformers, imported into
ours with `lmforge.interop.hf.import_hf` and converted by `ctranslate2.converters.
TransformersConverter`, so the three decode the very same numbers. The padding embedding is zero
(as in real Marian models, where the decoder starts from it) and the end-of-text logit is pushed
down with `final_logits_bias`, so every hypothesis runs to `--new_tokens`: the three do the same
amount of work whatever the random weights prefer. Sources are `--sentences` random word-id
sequences of Multi30k-like lengths (8 to 20 tokens plus the end token), decoded in batches of
`--batch` sorted by length.

Sentences/s is the median over rounds (each round decodes every source with each system, in
turn), the ratios the medians of per-round ratios. Peak memory is measured in a fresh process per
system (`--only NAME`): the largest resident size sampled every 2 ms while the model loads and
decodes, minus the resident size once the libraries are loaded (the model, its cache and the
decoder's work; the process's own high-water mark is no use, import sets it).

    python bench/seq2seq_beam.py                 # d 256, 3 + 3 layers, vocab 8000, 2 threads
    python bench/seq2seq_beam.py --d_model 512 --layers 6 --n_head 8 --d_ff 2048
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--d_ff", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--sentences", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--only", choices=["ours", "hf", "ct2", "ct2-int8"], help="one system, for its peak memory"
    )
    p.add_argument("--dir", help="the saved model (made when absent)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time ours with compiled decoder steps (BeamConfig.compile)",
    )
    return p.parse_args()


PAD, EOS, UNK = None, 0, 1  # the padding id is the last one, as Marian's converted models have it


def build(args: argparse.Namespace, d: Path) -> None:
    """Save a random Marian model, its tokenizer and its CTranslate2 conversions under d."""
    import tokenizers
    import transformers
    from ctranslate2.converters import TransformersConverter

    pad = args.vocab - 1
    words = {f"w{i}": i for i in range(args.vocab)}
    words.update({"</s>": EOS, "<unk>": UNK, "<pad>": pad})
    words = {w: i for w, i in words.items() if not (w.startswith("w") and int(w[1:]) in (EOS, UNK, pad))}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    cfg = transformers.MarianConfig(
        vocab_size=args.vocab, d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=args.n_head, decoder_attention_heads=args.n_head, encoder_ffn_dim=args.d_ff,
        decoder_ffn_dim=args.d_ff, activation_function="relu", max_position_embeddings=256, scale_embedding=True,
        pad_token_id=pad, eos_token_id=EOS, decoder_start_token_id=pad, forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MarianMTModel(cfg).eval()
    with torch.no_grad():
        model.model.shared.weight[pad].zero_()
        model.final_logits_bias[:, EOS] = -1e4
    model.generation_config.update(num_beams=args.beam, max_length=None, bad_words_ids=None)
    model.save_pretrained(d / "hf")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")  # fmt: skip
    fast.save_pretrained(d / "hf")
    TransformersConverter(str(d / "hf")).convert(str(d / "ct2"), force=True)
    TransformersConverter(str(d / "hf")).convert(str(d / "ct2-int8"), quantization="int8", force=True)


def sources(args: argparse.Namespace) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(8, 21, (args.sentences,), generator=g).tolist()
    rows = [[*torch.randint(2, args.vocab - 1, (n,), generator=g).tolist(), EOS] for n in lengths]
    return sorted(rows, key=len, reverse=True)


def systems(args: argparse.Namespace, d: Path, names: list[str]) -> dict:
    """name -> a function decoding every source (returns the number of sentences)."""
    rows = sources(args)
    batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]
    pad = args.vocab - 1
    out = {}

    def padded(batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in batch)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch])
        return ids, (torch.arange(width)[None, :] < torch.tensor([len(r) for r in batch])[:, None])

    if "ours" in names:
        from lmforge.infer.beam import BeamConfig, beam_search
        from lmforge.infer.decoding import open_session
        from lmforge.interop.hf import import_hf

        ours, _ = import_hf(d / "hf")
        ours = ours.eval()
        cfg = BeamConfig(num_beams=args.beam, max_new_tokens=args.new_tokens)

        def run_ours(compiled: bool = False) -> int:
            with torch.inference_mode():
                for batch in batches:
                    src, mask = padded(batch)
                    session = open_session(
                        ours, len(batch), args.new_tokens + 1, source=(src, mask), compiled=compiled
                    )
                    start = torch.full((len(batch), 1), pad)
                    beam_search(session, session.prefill(start), cfg, eos_id=EOS, pad_id=pad, history=start)
            return len(rows)

        out["ours"] = run_ours
        out["ours-compiled"] = lambda: run_ours(compiled=True)
    if "hf" in names:
        import transformers

        hf = transformers.MarianMTModel.from_pretrained(d / "hf").eval()

        def run_hf() -> int:
            with torch.inference_mode():
                for batch in batches:
                    src, mask = padded(batch)
                    hf.generate(input_ids=src, attention_mask=mask.long(), num_beams=args.beam,
                                max_new_tokens=args.new_tokens, early_stopping=True, do_sample=False)  # fmt: skip
            return len(rows)

        out["hf"] = run_hf
    for name in ("ct2", "ct2-int8"):
        if name in names:
            import ctranslate2

            tr = ctranslate2.Translator(
                str(d / name), device="cpu", inter_threads=1, intra_threads=args.threads
            )
            vocab = {
                i: w
                for w, i in json.loads((d / "hf" / "tokenizer.json").read_text())["model"]["vocab"].items()
            }
            tokens = [[[vocab[i] for i in r] for r in batch] for batch in batches]

            def run_ct2(tr=tr, tokens=tokens) -> int:
                for batch in tokens:
                    tr.translate_batch(batch, beam_size=args.beam, max_decoding_length=args.new_tokens,
                                       max_batch_size=args.batch)  # fmt: skip
                return len(rows)

            out[name] = run_ct2
    return out


def _rss_mb() -> float:
    """The process's current resident size, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_memory(args: argparse.Namespace, d: Path, name: str) -> float:
    cmd = [sys.executable, __file__, "--only", name, "--dir", str(d)]
    for key in (
        "d_model",
        "layers",
        "n_head",
        "d_ff",
        "vocab",
        "sentences",
        "batch",
        "beam",
        "new_tokens",
        "threads",
    ):
        cmd += [f"--{key}", str(getattr(args, key))]
    return float(
        subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    )


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    if args.only:
        import gc
        import threading

        import ctranslate2
        import transformers

        import lmforge.interop.hf  # noqa: F401

        gc.collect()
        base, peak, done = _rss_mb(), [0.0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_mb())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        systems(args, Path(args.dir), [args.only])[args.only]()
        done.set()
        sampler.join()
        print(max(peak[0], _rss_mb()) - base)
        return
    import ctranslate2
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        build(args, d)
        names = ["ours", "hf", "ct2", "ct2-int8"] + (["ours-compiled"] if args.compile else [])
        run = systems(args, d, names)
        for f in run.values():  # warm-up
            f()
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for n in names:
                t = time.perf_counter()
                run[n]()
                times[n].append(time.perf_counter() - t)
        memory = {n: peak_memory(args, d, n) for n in names if n != "ours-compiled"}
    speed = {n: args.sentences / statistics.median(t) for n, t in times.items()}
    ratio = {f"{o}_vs_{n}": statistics.median(times[n][i] / times[o][i] for i in range(args.rounds))
             for o in names if o.startswith("ours") for n in names if not n.startswith("ours")}  # fmt: skip
    for n in names:
        mem = f"  peak +{memory[n]:.0f} MB" if n in memory else ""
        print(f"{n:13s} {speed[n]:7.1f} sentences/s{mem}")
    print(json.dumps({
        "bench": "seq2seq_beam", "config": vars(args), "torch": torch.__version__,
        "transformers": transformers.__version__, "ctranslate2": ctranslate2.__version__,
        "cpu": platform.processor() or platform.machine(), "sentences_per_s": speed, "peak_mb": memory, **ratio,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
