"""Compiled decoding: fixed-shape steps under torch.compile give what the eager sessions give.

The graphs are captured whole (fullgraph) by TorchDynamo with its `eager` backend, which checks
the tracing and the fixed-shape cache logic without paying for code generation; the bench runs
the real (inductor) backend.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.infer import decoding
from lmforge.infer.beam import BeamConfig, beam_generate, beam_search
from lmforge.infer.decoding import (
    CompiledSeq2SeqSession,
    CompiledTransformerSession,
    Seq2SeqSession,
    TransformerSession,
    left_pad,
    open_session,
)
from lmforge.infer.generate import GenerationConfig, generate_ids
from lmforge.models import ModelConfig, build_model

pytestmark = pytest.mark.xdist_group("compile")  # one worker: dynamo's caches are per process


@pytest.fixture(autouse=True)
def compiled_steps(monkeypatch):
    """Dynamo only, and a count of the compiled steps taken (so a test cannot pass eagerly)."""
    monkeypatch.setattr(decoding, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    decoding._compiled.cache_clear()
    calls = []
    compiled = decoding._compiled

    def counting(step, backend):
        fn = compiled(step, backend)

        def run(*args):
            calls.append(step.__name__)
            return fn(*args)

        return run

    monkeypatch.setattr(decoding, "_compiled", counting)
    yield calls
    torch._dynamo.reset()
    compiled.cache_clear()


def decoder(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=128, n_layer=2, n_head=2, d_model=32, max_len=24)
    return build_model(ModelConfig(**{**base, **kw})).eval()


def seq2seq(**kw):
    torch.manual_seed(0)
    cfg = {"arch": "encoder-decoder", "vocab_size": 61, "n_layer": 2, "n_dec_layer": 2, "n_head": 4,
           "d_model": 32, "max_len": 40, "position": "sinusoidal", "init_std": 0.2, **kw}  # fmt: skip
    return build_model(ModelConfig(**cfg)).eval()


def decode(model, ids, mask, **gen):
    cfg = GenerationConfig(temperature=0, **gen)
    return torch.stack(list(generate_ids(model, ids, cfg, attention_mask=mask)), 1)


@pytest.mark.parametrize(
    "layout",
    [{}, dict(norm="rmsnorm", position="rope", activation="swiglu", n_kv_head=1, bias=False),
     dict(position="sinusoidal")],
)  # fmt: skip
def test_compiled_greedy_equals_eager_with_padding_and_a_sliding_window(layout, compiled_steps):
    model = decoder(**layout)
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], pad_id=0)
    # 30 new tokens outgrow the 24 positions: the window slides (an eager prefill, then steps again).
    eager = decode(model, ids, mask, max_new_tokens=30)
    assert not compiled_steps
    compiled = decode(model, ids, mask, max_new_tokens=30, compile=True)
    assert compiled.tolist() == eager.tolist()
    assert 0 < len(compiled_steps) < 29  # steps compiled, the slides' prefills eager


def test_compiled_sampling_equals_eager_with_the_same_seed(compiled_steps):
    model = decoder()
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    gen = dict(temperature=0.9, top_p=0.9, seed=7, max_new_tokens=12)
    eager = torch.stack(list(generate_ids(model, ids, GenerationConfig(**gen))), 1)
    compiled = torch.stack(list(generate_ids(model, ids, GenerationConfig(**gen, compile=True))), 1)
    assert compiled.tolist() == eager.tolist() and len(compiled_steps) == 11


def test_compiled_steps_under_autocast_cast_into_the_cache_as_eager_ones_do(compiled_steps):
    model = decoder()
    ids = torch.tensor([[3, 4, 5]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = decode(model, ids, None, max_new_tokens=6)
        compiled = decode(model, ids, None, max_new_tokens=6, compile=True)
    assert compiled.tolist() == eager.tolist() and compiled_steps


def test_past_the_recompile_limit_steps_run_eagerly(monkeypatch):
    """Many models or shapes in one process exhaust Dynamo's graphs: decoding goes on, eagerly."""

    def exhausted(step, backend):
        def run(*args):
            raise torch._dynamo.exc.FailOnRecompileLimitHit("recompile limit reached")

        return run

    monkeypatch.setattr(decoding, "_compiled", exhausted)
    model = decoder()
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    compiled = decode(model, ids, mask, max_new_tokens=8, compile=True)
    assert compiled.tolist() == decode(model, ids, mask, max_new_tokens=8).tolist()


def test_compiled_session_reorders_rows_like_the_eager_one():
    model = decoder(position="rope", norm="rmsnorm", bias=False)
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10], [11, 12, 13]], pad_id=0)
    index = torch.tensor([2, 0, 2, 1])
    with torch.inference_mode():
        got = open_session(model, 3, 16, compiled=True)
        want = open_session(model, 3, 16)
        assert isinstance(got, CompiledTransformerSession) and type(want) is TransformerSession
        for s in (got, want):
            s.prefill(ids, mask)
            s.step(torch.tensor([20, 21, 22]))
            s.reorder(index)
        torch.testing.assert_close(
            got.step(torch.tensor([30, 31, 32, 33])), want.step(torch.tensor([30, 31, 32, 33])),
            atol=1e-5, rtol=0,
        )  # fmt: skip


def test_compiled_decoder_beam_search_equals_eager(compiled_steps):
    model = decoder()
    ids, mask = left_pad([[5, 6, 7], [8, 9]], pad_id=0)
    cfg = dict(num_beams=3, max_new_tokens=8, no_repeat_ngram_size=2, num_return=2)
    eager = beam_generate(model, ids, BeamConfig(**cfg), eos_id=1, pad_id=0, attention_mask=mask)
    compiled = beam_generate(
        model, ids, BeamConfig(**cfg, compile=True), eos_id=1, pad_id=0, attention_mask=mask
    )
    assert compiled.tokens.tolist() == eager.tokens.tolist() and compiled_steps
    torch.testing.assert_close(compiled.scores, eager.scores)


@pytest.mark.parametrize(
    ("layout", "eos"), [({}, 12), ({"position": "rope", "norm": "rmsnorm", "n_kv_head": 2}, 28)]
)  # eos: a token these random models emit after different lengths for the three inputs
def test_compiled_seq2seq_beam_search_equals_eager(layout, eos):
    """Inputs finishing at different steps leave the batch, so the compiled step sees the rows
    (and the cross entries) shrink; the results still equal the eager session's."""
    model = seq2seq(**layout)
    src = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0], [14, 15, 0, 0, 0, 0]])
    src_mask = src != 0
    results = []
    for compiled in (False, True):
        with torch.inference_mode():
            session = open_session(model, 3, 13, source=(src, src_mask), compiled=compiled)
            assert type(session) is (CompiledSeq2SeqSession if compiled else Seq2SeqSession)
            start = torch.full((3, 1), 2, dtype=torch.long)
            cfg = BeamConfig(num_beams=4, max_new_tokens=12, early_stopping=True)
            results.append(
                beam_search(session, session.prefill(start), cfg, eos_id=eos, pad_id=0, history=start)
            )
    eager, compiled = results
    assert compiled.tokens.tolist() == eager.tokens.tolist()
    assert compiled.lengths.tolist() == eager.lengths.tolist()
    assert len(set(eager.lengths[:, 0].tolist())) > 1  # the inputs did finish at different steps


def test_t5_positions_decode_eagerly():
    """T5's relative bias depends on the cached length, which a fixed-shape step does not know."""
    model = seq2seq(position="t5", relative_buckets=8, relative_max_distance=12, norm="rmsnorm", bias=False)
    src = torch.tensor([[5, 6, 7]])
    session = open_session(model, 1, 8, source=(src, None), compiled=True)
    assert type(session) is Seq2SeqSession


def test_a_full_compiled_cache_says_so():
    model = decoder()
    with torch.inference_mode():
        session = open_session(model, 1, 4, compiled=True)
        session.prefill(torch.tensor([[5, 6, 7]]))
        session.step(torch.tensor([8]))
        with pytest.raises(Exception, match="all are used"):
            session.step(torch.tensor([9]))
