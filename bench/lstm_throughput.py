"""LSTM language model training throughput: ours through the Trainer vs a plain PyTorch loop.

Ours: `lmforge.models.rnn.RecurrentLM` (arch lstm) trained by `Trainer.train_step` with the
carried-state loss of `lmforge.objectives.rnn` (fused output layer + loss, state detached between
batches, gradient clipping, fused AdamW) on `StreamBatches`.
The reference is the training loop of PyTorch's word_language_model example: nn.Embedding ->
dropout -> nn.LSTM (seq-first) -> dropout -> nn.Linear, nn.CrossEntropyLoss on the logits,
`repackage_hidden` (detach) between batches, clip_grad_norm_, and the same optimizer (fused AdamW,
same hyper-parameters). Same sizes, same initial weights, same batches (each side reads its own
StreamBatches over the same tokens), one process, CPU. The two sides alternate step by step (ours
then plain, then plain then ours, ...) and each step is timed on its own, so that the two steps of
a pair run under the same machine load (on a shared machine the load swings several-fold within
seconds). Tokens/s is batch x seq_len over the median step time; the ratio is the median over
pairs of plain's step time over ours (> 1: ours faster).

Data: WikiText-2 train, word level with a closed vocabulary (whitespace-split words plus <eos>
per line, as in the example's `data.py`: 33,278 types), when the shared data folder has it;
otherwise uniform random ids with --vocab.

    python bench/lstm_throughput.py                      # lstm-small sizes, WikiText-2 words
    python bench/lstm_throughput.py --random --vocab 10000

Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.data.stream_batches import StreamBatches
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.objectives.rnn import CarriedStateLoss
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer
from lmforge.utils.shared_data import shared_data_path


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--d_model", type=int, default=256, help="embedding size = hidden size (configs/lstm-small)"
    )
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--seq_len", type=int, default=35)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument(
        "--tied", action=argparse.BooleanOptionalAction, default=True, help="tie embedding and output"
    )
    p.add_argument("--random", action="store_true", help="random ids instead of WikiText-2 words")
    p.add_argument("--vocab", type=int, default=10000, help="vocabulary of --random data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=60, help="timed steps per side, alternating")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per side first")
    return p.parse_args()


def wikitext2_words() -> tuple[np.ndarray, int] | None:
    """WikiText-2 train as word ids (closed vocabulary, <eos> at each line end), or None."""
    path = shared_data_path("wikitext2", "wiki.train.tokens")
    if path is None:
        return None
    vocab: dict[str, int] = {}
    ids: list[int] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        for w in [*line.split(), "<eos>"]:
            ids.append(vocab.setdefault(w, len(vocab)))
    return np.asarray(ids, dtype=np.int32), len(vocab)


class PlainLSTM(nn.Module):
    """word_language_model's RNNModel (LSTM): seq-first, logits out, the loss taken outside."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float, tied: bool) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tied:
            self.decoder.weight = self.encoder.weight

    def forward(
        self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        emb = self.drop(self.encoder(x))  # (T, B, ninp)
        output, hidden = self.rnn(emb, hidden)  # (T, B, nhid)
        return self.decoder(self.drop(output)), hidden  # (T, B, ntoken)


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    data = None if a.random else wikitext2_words()
    if data is None:
        tokens = np.random.default_rng(0).integers(0, a.vocab, 2_000_000).astype(np.int32)
        vocab, source = a.vocab, f"random ids, vocab {a.vocab}"
    else:
        tokens, vocab = data
        source = f"WikiText-2 train, word level, vocab {vocab}"
    print(f"data: {source}, {len(tokens):,} tokens", flush=True)

    cfg = ModelConfig(
        arch="lstm", vocab_size=vocab, d_model=a.d_model, n_layer=a.n_layer, max_len=a.seq_len,
        dropout=a.dropout, tie_embeddings=a.tied,
    )  # fmt: skip
    tcfg = TrainConfig(
        max_steps=10**9, batch_size=a.batch, seq_len=a.seq_len, lr=1e-3, warmup_steps=0, weight_decay=0.1,
        grad_clip=0.25, precision="fp32", device="cpu", progress=False, tensorboard=False, plot=False,
    )  # fmt: skip
    torch.manual_seed(0)
    ours = build_model(cfg)
    plain = PlainLSTM(vocab, a.d_model, a.d_model, a.n_layer, a.dropout, a.tied)
    with torch.no_grad():  # the same initial weights on both sides
        plain.encoder.weight.copy_(ours.tok_emb.weight)
        plain.rnn.load_state_dict(ours.rnn.state_dict())
        plain.decoder.weight.copy_(ours.lm_head.weight)
        plain.decoder.bias.copy_(ours.lm_head.bias)

    ours_batches = StreamBatches(tokens, a.seq_len, a.batch)
    loss_fn = CarriedStateLoss(ours_batches)
    tmp = tempfile.TemporaryDirectory()
    trainer = Trainer(ours, ours_batches, tcfg, Path(tmp.name), objective=loss_fn)
    trainer.model.train()

    plain_batches = StreamBatches(tokens, a.seq_len, a.batch)
    opt = torch.optim.AdamW(
        plain.parameters(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps,
        weight_decay=tcfg.weight_decay, fused=True,
    )  # fmt: skip
    criterion = nn.CrossEntropyLoss()
    zeros = torch.zeros(a.n_layer, a.batch, a.d_model)
    hidden = (zeros, zeros.clone())
    plain.train()

    def ours_step() -> None:
        trainer.train_step(tcfg.lr)

    def plain_step() -> None:
        nonlocal hidden
        x, y = plain_batches.next_batch()
        x, y = x.t(), y.t()  # (T, B): the example's layout
        hidden = tuple(h.detach() for h in hidden)  # repackage_hidden
        opt.zero_grad(set_to_none=True)
        output, hidden = plain(x, hidden)
        loss = criterion(output.view(-1, vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), tcfg.grad_clip)
        opt.step()

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()  # CPU ops are synchronous: the step is done when this returns
        return time.perf_counter() - t0

    load_start = os.getloadavg()[0]
    for _ in range(a.warmup):
        ours_step()
        plain_step()
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for i in range(a.pairs):
        order = [("ours", ours_step), ("plain", plain_step)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(fn))
        if (i + 1) % 10 == 0:
            recent = [p / o for o, p in zip(times["ours"][-10:], times["plain"][-10:])]
            print(f"pairs {i - 8}-{i + 1}: ours {statistics.median(times['ours'][-10:]) * 1e3:,.0f} ms/step  "
                  f"plain {statistics.median(times['plain'][-10:]) * 1e3:,.0f} ms/step  "
                  f"ratio {statistics.median(recent):.3f}", flush=True)  # fmt: skip
    tokens_per_step = a.batch * a.seq_len
    ours_tps = tokens_per_step / statistics.median(times["ours"])
    plain_tps = tokens_per_step / statistics.median(times["plain"])
    ratios = sorted(p / o for o, p in zip(times["ours"], times["plain"]))
    ratio = statistics.median(ratios)
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    total_ratio = sum(times["plain"]) / sum(times["ours"])
    print(f"ours {ours_tps:,.0f} tok/s, plain PyTorch {plain_tps:,.0f} tok/s, ratio {ratio:.3f} "
          f"(quartiles {q1:.3f}-{q3:.3f}; total time {total_ratio:.3f}) (target >= 1.0)")  # fmt: skip
    result = {
        "bench": "lstm_throughput", "data": source, "vocab": vocab, "d_model": a.d_model, "hidden": a.d_model,
        "n_layer": a.n_layer, "seq_len": a.seq_len, "batch": a.batch, "dropout": a.dropout, "tied": a.tied,
        "threads": a.threads, "pairs": a.pairs,
        "params": ours.num_params(), "flops_per_token": ours.flops_per_token(a.seq_len),
        "ours_tokens_per_s": round(ours_tps), "plain_tokens_per_s": round(plain_tps),
        "ratio": round(ratio, 3), "ratio_q1": round(q1, 3), "ratio_q3": round(q3, 3),
        "ratio_total_time": round(total_ratio, 3), "meets_target": ratio >= 1.0, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_avg_start": round(load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
