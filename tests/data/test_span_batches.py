"""Encoder-decoder pretraining batches: T5 span corruption and BART denoising over document windows.

The token stream is made of unique ids (id = position), so every window can be told apart and put
back where it came from: reassembling an input with its target must give a run of consecutive ids
from one document.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.data.denoise_batches import DenoisingBatches, infill, permute_sentences
from lmforge.data.span_batches import (
    SpanCorruptionBatches,
    compute_input_and_target_lengths,
    corrupt_spans,
    random_spans_noise_mask,
    span_counts,
)
from lmforge.errors import LmforgeError

EOS, PAD = 1, 0  # ids below the stream's first id (2)
SENTINELS = 100


def _stream(n_docs: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Documents of 5..400 unique ids, each closed by EOS; (tokens, doc offsets, model vocab_size)."""
    rng = np.random.default_rng(seed)
    pieces, offsets, nxt = [], [0], 2
    for length in rng.integers(5, 400, size=n_docs):
        pieces += [np.arange(nxt, nxt + length), [EOS]]
        nxt += length
        offsets.append(offsets[-1] + length + 1)
    return np.concatenate(pieces).astype(np.int64), np.asarray(offsets), nxt + SENTINELS


def _span_batches(seq_len=64, batch_size=8, **kw) -> SpanCorruptionBatches:
    tokens, offsets, vocab = _stream()
    kw = {"eos_id": EOS, "pad_id": PAD, "vocab_size": vocab, "num_sentinels": SENTINELS, **kw}
    return SpanCorruptionBatches(tokens, offsets, seq_len, batch_size, **kw)


def _reassemble(inputs: torch.Tensor, targets: torch.Tensor, sentinel_min: int) -> list[list[int]]:
    """Each row's window: the input with each sentinel replaced by what follows it in the target."""
    rows = []
    for inp, tgt in zip(inputs.tolist(), targets.tolist()):
        tgt = [t for t in tgt if t != -100]
        assert tgt[-1] == EOS
        spans, current = {}, None
        for t in tgt[:-1]:
            if t >= sentinel_min:
                current = spans.setdefault(t, [])
            else:
                current.append(t)
        out = []
        for t in inp:
            if t == EOS:
                break
            out += spans.pop(t) if t >= sentinel_min else [t]
        assert not spans, "every sentinel of the target is in the input"
        rows.append(out)
    return rows


def _pair(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["input_ids"], batch["target_ids"]


def _is_window(row: list[int]) -> bool:
    """Consecutive ids of one document."""
    tokens, offsets, _ = _stream()
    doc = np.searchsorted(offsets, np.flatnonzero(np.isin(tokens, [row[0], row[-1]])), side="right")
    return row == list(range(row[0], row[0] + len(row))) and doc[0] == doc[-1]


def test_t5_lengths_fit_inputs_to_seq_len():
    # T5's published numbers: 568 raw tokens give inputs of 512 and targets of 114.
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)
    for seq_len in (8, 16, 64, 100, 128, 256, 1024):
        for density, mean in ((0.15, 3.0), (0.3, 5.0), (0.5, 3.0)):
            window, target = compute_input_and_target_lengths(seq_len, density, mean)
            noise, spans = span_counts(window, density, mean)
            assert window - noise + spans + 1 <= seq_len
            assert target == noise + spans + 1
            if density != 0.5:  # the longest window that fits
                n1, s1 = span_counts(window + 1, density, mean)
                assert window + 1 - n1 + s1 + 1 > seq_len


@pytest.mark.parametrize("density, mean", [(0.15, 3.0), (0.3, 5.0)])
def test_noise_density_and_span_length_follow_the_settings(density, mean):
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 600, size=400)
    mask = random_spans_noise_mask(lengths, density, mean, rng)
    assert not mask[np.arange(mask.shape[1])[None, :] >= lengths[:, None]].any()
    noise, spans = span_counts(lengths, density, mean)
    assert (mask.sum(1) == noise).all()  # exactly round(L * density) noise tokens per window
    opens = mask & ~np.pad(mask[:, :-1], ((0, 0), (1, 0)))
    assert (opens.sum(1) == spans).all()  # in exactly round(noise / mean) spans
    assert not mask[:, 0].any() and mask[np.arange(len(lengths)), lengths - 1].all()  # keep first, noise last
    assert mask.sum() / lengths.sum() == pytest.approx(density, abs=0.005)
    assert mask.sum() / opens.sum() == pytest.approx(mean, rel=0.05)


def test_span_lengths_are_a_uniformly_random_segmentation():
    """T5 cuts the n noise tokens into s spans at s - 1 of the n - 1 gaps, chosen uniformly: a
    span is one token long with probability (s - 1) / (n - 1)."""
    rng = np.random.default_rng(1)
    mask = random_spans_noise_mask(np.full(400, 568), 0.15, 3.0, rng)  # 85 noise tokens, 28 spans
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    lengths = np.nonzero(edges == -1)[1] - np.nonzero(edges == 1)[1]
    assert len(lengths) == 400 * 28 and lengths.sum() == 400 * 85
    assert (lengths == 1).mean() == pytest.approx(27 / 84, abs=0.02)
    assert lengths.max() >= 10


def test_sentinels_count_down_from_the_top_of_the_vocabulary_and_round_trip():
    tokens = np.arange(10, 30)[None, :]
    noise = np.zeros((1, 20), bool)
    noise[0, [3, 4, 10, 18, 19]] = True
    inputs, lengths, targets = corrupt_spans(
        tokens, np.array([20]), noise, sentinel_top=999, eos_id=EOS, pad_id=PAD
    )
    assert inputs[0].tolist() == [10, 11, 12, 999, *range(15, 20), 998, *range(21, 28), 997, EOS]
    assert targets[0].tolist() == [999, 13, 14, 998, 20, 997, 28, 29, EOS]
    assert lengths.tolist() == [len(inputs[0])]


def test_batches_round_trip_to_windows_of_one_document_within_seq_len():
    b = _span_batches(seq_len=64, batch_size=16)
    sentinel_min = b.sentinel_top + 1 - SENTINELS
    for _ in range(6):
        batch = b.next_batch()
        inputs, targets = batch["input_ids"], batch["target_ids"]
        assert inputs.size(1) <= 64 and targets.size(1) <= b.target_len
        real = (inputs != PAD) if batch["attention_mask"] is None else batch["attention_mask"]
        assert (inputs[real] != PAD).all() and (inputs[~real] == PAD).all()
        if batch["token_index"] is not None:
            assert torch.equal(batch["token_index"], torch.nonzero(real.flatten()).flatten())
        for row in _reassemble(inputs, targets, sentinel_min):
            assert _is_window(row) and 2 <= len(row) <= b.window


def test_resume_is_bit_exact_across_epochs_and_ranks_are_disjoint():
    a = _span_batches(batch_size=16)
    per_epoch = len(a._plan(0)[0]) // 16
    for _ in range(per_epoch - 1):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(3)]  # crosses into epoch 1
    assert a.state.epoch == 1
    b = _span_batches(batch_size=16)
    b.load_state_dict(state)
    for want in expected:
        got = b.next_batch()
        for k in want:
            assert (want[k] is None and got[k] is None) or torch.equal(want[k], got[k]), k

    # Two ranks of 8 see the windows one process of 16 sees, split in two, and never the same one.
    whole, ranks = (
        _span_batches(batch_size=16),
        [_span_batches(batch_size=8, rank=r, world_size=2) for r in (0, 1)],
    )
    sentinel_min = whole.sentinel_top + 1 - SENTINELS
    for _ in range(3):
        w = _reassemble(*_pair(whole.next_batch()), sentinel_min)
        parts = [_reassemble(*_pair(r.next_batch()), sentinel_min) for r in ranks]
        starts = [[row[0] for row in p] for p in parts]
        assert not set(starts[0]) & set(starts[1])
        assert starts[0] + starts[1] == [row[0] for row in w]


def test_windows_move_between_epochs_and_validation_is_fixed():
    b = _span_batches()
    s0, s1 = (set(b._plan(e)[0].tolist()) for e in (0, 1))
    assert s0 != s1
    v = _span_batches(drop_last=False, name="val")
    first, second = list(v.eval_batches(3)), list(v.eval_batches(3))
    assert len(first) == 3
    for x, y in zip(first, second):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["target_ids"], y["target_ids"])


def test_too_few_sentinels_or_windows_are_refused():
    with pytest.raises(LmforgeError, match=r"makes 28 spans, but span\.num_sentinels=10"):
        _span_batches(seq_len=512, num_sentinels=10)
    with pytest.raises(LmforgeError, match="fewer than one batch"):
        _span_batches(batch_size=10_000)


# ------------------------------------------------------------------------------------------------
# BART denoising


def _denoise_batches(**kw) -> DenoisingBatches:
    tokens, offsets, vocab = _stream()
    ends = np.zeros(vocab, bool)
    ends[np.arange(vocab) % 9 == 8] = True  # every ninth id ends a "sentence"
    kw = {"eos_id": EOS, "pad_id": PAD, "mask_id": vocab - 1, "sentence_ends": ends, **kw}
    return DenoisingBatches(tokens, offsets, 64, 8, **kw)


def test_infilling_masks_the_share_asked_one_mask_per_span():
    rng = np.random.default_rng(0)
    masks, spans_expected = 0, 0
    for _ in range(300):
        L = int(rng.integers(20, 300))
        x = np.arange(100, 100 + L)
        y = infill(x, 7, 0.3, 3.0, rng)
        kept = y[y != 7]
        assert np.all(np.diff(kept) > 0) and np.isin(kept, x).all()  # the rest in order
        assert L - len(kept) == math.ceil(0.3 * L)  # exactly that many masked
        masks += int((y == 7).sum())
        spans_expected += math.ceil(0.3 * L) / 3.0
    assert masks / spans_expected == pytest.approx(1.0, abs=0.15)  # Poisson(3) spans, one mask each


def test_sentence_permutation_shuffles_whole_sentences():
    ends = np.zeros(200, bool)
    ends[[104, 110, 111, 130]] = True
    x = np.arange(100, 140)
    rng = np.random.default_rng(1)
    outs = {tuple(permute_sentences(x, ends, rng).tolist()) for _ in range(30)}
    sentences = [
        tuple(range(100, 105)),
        tuple(range(105, 111)),
        (111,),
        tuple(range(112, 131)),
        tuple(range(131, 140)),
    ]
    assert len(outs) > 5
    for out in outs:
        assert sorted(out) == x.tolist()
        cuts, i = [], 0
        while i < len(out):
            s = next(s for s in sentences if out[i : i + len(s)] == s)
            cuts.append(s)
            i += len(s)
        assert sorted(cuts) == sorted(sentences)


def test_denoising_targets_are_the_windows_and_inputs_fit():
    b = _denoise_batches()
    for _ in range(4):
        batch = b.next_batch()
        assert batch["input_ids"].size(1) <= 64 and batch["target_ids"].size(1) <= 64
        for inp, tgt in zip(batch["input_ids"].tolist(), batch["target_ids"].tolist()):
            tgt = [t for t in tgt if t != -100]
            assert tgt[-1] == EOS and _is_window(tgt[:-1])
            inp = inp[: inp.index(EOS)]
            kept = [t for t in inp if t != b.mask_id]
            assert set(kept) <= set(tgt) and len(tgt) - 1 - len(kept) == math.ceil(0.3 * (len(tgt) - 1))
    state = b.state_dict()
    want = b.next_batch()
    c = _denoise_batches()
    c.load_state_dict(state)
    got = c.next_batch()
    assert torch.equal(want["input_ids"], got["input_ids"]) and torch.equal(
        want["target_ids"], got["target_ids"]
    )
