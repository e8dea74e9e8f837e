"""Shared test setup: offline hub, one thread per worker, small corpora made on the fly."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an offline hub lookup otherwise hangs for ~50 s
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # pytest-xdist runs one worker per core

WORDS = """
the of and to in a is that for it as was with be by on not he this are or his from at which but have an they
you were her she there been one all we their has would when if so no what can more out up about into some time
model language token train data word text learn value return function object string number list file
""".split()  # noqa: SIM905 - a word list reads better as prose


def make_text(n_words: int, seed: int = 0) -> str:
    """Deterministic pseudo-English with sentences and newlines (a learnable toy corpus)."""
    rng = random.Random(seed)
    out, line = [], []
    for i in range(n_words):
        line.append(rng.choice(WORDS))
        if i % 12 == 11:
            out.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(out) + "\n"


def make_tokens(vocab: int, n: int = 6000, seed: int = 0) -> np.ndarray:
    """A learnable token stream: 0..vocab-1 repeated, with 10% of positions replaced at random."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(vocab, dtype=np.uint16), n // vocab + 1)[:n]
    noise = rng.random(n) < 0.1
    base[noise] = rng.integers(0, vocab, noise.sum())
    return base


@pytest.fixture
def tiny_corpus(tmp_path):
    """A directory of 40 small .txt documents."""
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(40):
        (d / f"doc{i:02d}.txt").write_text(make_text(300, seed=i), encoding="utf-8")
    return d
