"""Encoder-decoder training throughput: our EncoderDecoder (through the real Trainer step of
`lmforge finetune seq2seq`) vs transformers' `MarianMTModel`, same config, same batches, one process.

The config is Marian's layout on both sides: post-norm blocks, ReLU, sinusoidal positions,
embeddings scaled by sqrt(d_model), one shared embedding tied to the output layer, dropout 0.1
(ours also has the embedding LayerNorm post-norm stacks carry, a few thousand FLOPs a token).
The data is real: Multi30k en-de training pairs (shared/data/multi30k, found by
`lmforge.utils.shared_data`), a joint unigram tokenizer trained on them, and token-budget batches
(`TaskBatches(max_tokens=...)`), so both models see the very same padded batches: ours the collate
dict (its encoder skips padding outside attention), HF's input_ids, attention_mask,
decoder_input_ids (the targets shifted right behind the pad token) and the same labels.

The step is the same for both: forward, label-smoothed (0.1) cross-entropy over real target
tokens, backward, clip to 1.0, fused AdamW (betas 0.9/0.98); ours through Trainer.train_step (the
loss fused with the output layer), HF's with `F.cross_entropy(label_smoothing=0.1)` on its logits
and an optimizer from the same `make_optimizer`. A round is one pass over the batches per model,
alternating; tokens/s (source + target real tokens) is the median over rounds, the ratio the
median of per-round ratios.

    python bench/seq2seq_train_throughput.py                 # 3 + 3 layers, d 256, 2 threads
    python bench/seq2seq_train_throughput.py --layers 6 --d_model 512 --n_head 8 --d_ff 2048
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--d_ff", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--pairs", type=int, default=4000, help="training pairs tokenised for the batches")
    p.add_argument("--max_tokens", type=int, default=2048)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def data(args: argparse.Namespace, d: Path):
    from lmforge.finetuning import FinetuneConfig
    from lmforge.tasks.batches import TaskBatches
    from lmforge.tasks.parallel import read_parallel
    from lmforge.tasks.registry import task_spec
    from lmforge.tokenizer import train_tokenizer
    from lmforge.utils.shared_data import shared_data_path

    root = shared_data_path("multi30k")
    pairs = read_parallel(f"{root / 'train.en'},{root / 'train.de'}").pairs[: args.pairs]
    (d / "text.txt").write_text("\n".join(p.src + "\n" + p.tgt for p in pairs) + "\n", encoding="utf-8")
    tok = train_tokenizer(str(d / "text.txt"), kind="unigram", vocab_size=args.vocab, out=str(d / "tok.json"))
    cfg = FinetuneConfig(task="seq2seq", max_tokens=args.max_tokens)
    feats = task_spec("seq2seq").featurize(cfg, d, pairs, tok, None, None, 256).features
    source = TaskBatches(feats, 1, tok.pad_id, seed=0, max_tokens=args.max_tokens)
    return tok, [source.next_batch() for _ in range(args.batches)]


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    import transformers

    from lmforge.finetuning import task_objective
    from lmforge.infer.beam import BeamConfig
    from lmforge.models import build_model
    from lmforge.models.backbone import Backbone
    from lmforge.models.config import ModelConfig
    from lmforge.tasks.registry import task_spec
    from lmforge.tasks.seq2seq import Seq2SeqModel, seq2seq_tokens, shift_right
    from lmforge.train.config import TrainConfig
    from lmforge.train.optim import make_optimizer
    from lmforge.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tok, batches = data(args, d)
        V = 64 * -(-tok.vocab_size // 64)
        tcfg = TrainConfig(lr=5e-4, beta2=0.98, weight_decay=0.0, grad_clip=1.0, warmup_steps=0, max_steps=10**6,
                           precision="fp32", device="cpu", progress=False, tensorboard=False, plot=False)  # fmt: skip
        torch.manual_seed(0)
        cfg = ModelConfig(arch="encoder-decoder", vocab_size=V, n_layer=args.layers, n_head=args.n_head,
                          d_model=args.d_model, d_ff=args.d_ff, max_len=256, norm_position="post",
                          position="sinusoidal", scale_embeddings=True, activation="relu", dropout=0.1,
                          init_std=args.d_model**-0.5)  # fmt: skip
        ours = Seq2SeqModel(
            Backbone(build_model(cfg)), seq2seq_tokens(tok), label_smoothing=0.1, beam=BeamConfig()
        )
        trainer = Trainer(ours, _Cycle(batches), tcfg, d / "run", objective=task_objective("seq2seq", task_spec("seq2seq"), "loss", scored=False))  # fmt: skip
        hf_cfg = transformers.MarianConfig(
            vocab_size=V, d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
            encoder_attention_heads=args.n_head, decoder_attention_heads=args.n_head,
            encoder_ffn_dim=args.d_ff, decoder_ffn_dim=args.d_ff, activation_function="relu", dropout=0.1,
            attention_dropout=0.0, activation_dropout=0.0, max_position_embeddings=256, scale_embedding=True,
            pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.pad_id,
            share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        )  # fmt: skip
        hf = transformers.MarianMTModel(hf_cfg).train()
        hf_opt = make_optimizer(hf, tcfg, torch.device("cpu"))
        hf_params = [p for p in hf.parameters() if p.requires_grad]
        pad = tok.pad_id

        def hf_step(batch) -> None:
            labels = batch["target_ids"]
            mask = batch["attention_mask"]
            out = hf(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"]) if mask is None
                     else mask.long(), decoder_input_ids=shift_right(labels, pad, pad))  # fmt: skip
            loss = F.cross_entropy(
                out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.1
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf_params, 1.0, foreach=True)
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)

        tokens = sum(int((b["input_ids"] != pad).sum() + (b["target_ids"] != -100).sum()) for b in batches)

        def run_ours() -> None:
            for _ in batches:
                trainer.train_step(5e-4)

        def run_hf() -> None:
            for b in batches:
                hf_step(b)

        run_ours(), run_hf()  # warm-up
        ours_t, hf_t, ratios = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            run_ours()
            t1 = time.perf_counter()
            run_hf()
            t2 = time.perf_counter()
            ours_t.append(t1 - t0)
            hf_t.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
    result = {
        "bench": "seq2seq_train_throughput", "config": vars(args), "torch": torch.__version__,
        "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine(),
        "params_ours": ours.model.num_params(), "params_hf": sum(p.numel() for p in hf.parameters()),
        "tokens_per_round": tokens, "ours_tok_s": tokens / statistics.median(ours_t),
        "hf_tok_s": tokens / statistics.median(hf_t), "ratio": statistics.median(ratios),
        "ratio_min": min(ratios), "ratio_max": max(ratios),
    }  # fmt: skip
    print(
        f"ours {result['ours_tok_s']:.0f} tok/s, MarianMTModel {result['hf_tok_s']:.0f} tok/s: x{result['ratio']:.2f}"
    )
    print(json.dumps(result))


class _Cycle:
    """The fixed batches, round and round, as the Trainer's batch source."""

    def __init__(self, batches: list) -> None:
        self.batches, self.i = batches, 0
        self.batch_size, self.seq_len = batches[0]["input_ids"].size(0), batches[0]["input_ids"].size(1)

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


if __name__ == "__main__":
    main()
