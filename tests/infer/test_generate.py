"""Generation: cached decoding equals full recomputation, sampling filters, seeding, streaming text."""

from __future__ import annotations

import pytest
import torch

import lmforge.infer.generate as genmod
from lmforge.errors import LmforgeError
from lmforge.infer.generate import (
    GenerationConfig,
    apply_repetition_penalty,
    descending,
    generate,
    generate_ids,
    generate_text,
    sample_categorical,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from lmforge.models import ModelConfig, build_model
from lmforge.tokenizer import Tokenizer, TokenizerConfig

NEG = float("-inf")


def tiny_model(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=40, n_layer=2, n_head=2, d_model=32, max_len=32)
    return build_model(ModelConfig(**{**base, **kw})).eval()


def record_logits(model, monkeypatch) -> list[torch.Tensor]:
    """Capture the last-position logits of every forward call the generator makes."""
    seen: list[torch.Tensor] = []
    forward = model.forward

    def spy(idx, **kw):
        out = forward(idx, **kw)
        seen.append(out[:, -1].clone())
        return out

    monkeypatch.setattr(model, "forward", spy)
    return seen


@pytest.mark.parametrize("layout", ["learned", "rope"])
def test_cached_greedy_equals_full_recompute(layout, monkeypatch):
    kw = (
        {} if layout == "learned" else dict(norm="rmsnorm", position="rope", activation="swiglu", n_kv_head=1)
    )
    model = tiny_model(**kw)
    prompt = torch.randint(0, 40, (2, 5))
    ids, reference_logits = prompt.clone(), []
    with torch.no_grad():
        for _ in range(12):
            logits = model(ids)[:, -1]
            reference_logits.append(logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)

    cached_logits = record_logits(model, monkeypatch)
    out = torch.stack(
        list(generate_ids(model, prompt, GenerationConfig(max_new_tokens=12, temperature=0))), 1
    )
    assert torch.equal(out, ids[:, 5:])
    assert len(cached_logits) == 12  # one prefill, then one single-token step per new token
    for ours, ref in zip(cached_logits, reference_logits):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_window_slides_instead_of_overflowing():
    model = tiny_model(max_len=8)
    prompt = torch.randint(0, 40, (1, 6))
    out = [int(t) for t in generate_ids(model, prompt, GenerationConfig(max_new_tokens=15, temperature=0))]
    assert len(out) == 15
    # Reference: the model sees the window the cache holds; when the window is full it restarts
    # from the last max_len-1 tokens.
    ids, window = prompt[0].tolist(), 6
    with torch.no_grad():
        for expected in out:
            logits = model(torch.tensor([ids[-window:]]))[0, -1]
            assert int(logits.argmax()) == expected
            ids.append(expected)
            window = window + 1 if window < 8 else 7
    # Prompts longer than max_len are cut to the window too.
    assert (
        len(list(generate_ids(model, torch.randint(0, 40, (1, 20)), GenerationConfig(max_new_tokens=3)))) == 3
    )


def test_eos_stops_each_row_on_its_own():
    model = tiny_model()
    prompt = torch.randint(0, 40, (1, 4))
    first = int(next(generate_ids(model, prompt, GenerationConfig(max_new_tokens=5, temperature=0))))
    steps = list(generate_ids(model, prompt, GenerationConfig(max_new_tokens=5, temperature=0), eos_id=first))
    assert [int(t) for t in steps] == [first]
    # Every row of the batch reaches eos at the first step: the run ends there for all of them.
    batch = list(
        generate_ids(
            model, prompt.repeat(2, 1), GenerationConfig(max_new_tokens=5, temperature=0), eos_id=first
        )
    )
    assert len(batch) == 1 and batch[0].tolist() == [first, first]
    # One row finishes, the other goes on; the finished row yields padding (eos) from then on.
    other = torch.randint(0, 40, (1, 4))
    alone = [int(t) for t in generate_ids(model, other, GenerationConfig(max_new_tokens=5, temperature=0))]
    assert first not in alone  # (with these weights) so only the first row can finish early
    mixed = torch.stack(
        list(
            generate_ids(
                model,
                torch.cat([prompt, other]),
                GenerationConfig(max_new_tokens=5, temperature=0),
                eos_id=first,
            )
        ),
        1,
    )
    assert mixed.shape == (2, 5)
    assert mixed[0].tolist() == [first] * 5 and mixed[1].tolist() == alone


def test_seeded_sampling_is_reproducible_and_private():
    model = tiny_model()
    prompt = torch.randint(0, 40, (1, 3))
    gen = GenerationConfig(max_new_tokens=20, temperature=1.5, seed=7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = [int(t) for t in generate_ids(model, prompt, gen)]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert a == [int(t) for t in generate_ids(model, prompt, gen)]
    b = [
        int(t)
        for t in generate_ids(model, prompt, GenerationConfig(max_new_tokens=20, temperature=1.5, seed=8))
    ]
    assert a != b


def test_training_mode_is_restored():
    model = tiny_model().train()
    list(generate_ids(model, torch.zeros(1, 2, dtype=torch.long), GenerationConfig(max_new_tokens=2)))
    assert model.training


def test_top_k_filter():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert top_k_filter(logits, 2).tolist() == [[NEG, 5.0, NEG, 4.0, NEG]]
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, 9), logits)


def test_top_p_filter():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    logits = probs.log()
    # 0.5 + 0.3 = 0.8 >= 0.75: the two most likely tokens make the nucleus.
    kept = top_p_filter(logits, 0.75).isfinite().tolist()
    assert kept == [[False, True, True, False]]
    assert top_p_filter(logits, 0.81).isfinite().tolist() == [[False, True, True, True]]
    assert top_p_filter(logits, 0.01).isfinite().tolist() == [[False, True, False, False]]  # top token stays
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_filter_equals_the_sorted_definition_and_descending_equals_torch_sort():
    """The threshold form keeps exactly the tokens the sort-and-scatter definition keeps (no ties in
    random rows), at many p; `descending` (NumPy's sort on the CPU) equals torch.sort's values."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 500, generator=g) * torch.tensor([0.1, 1.0, 3.0, 6.0, 10.0, 30.0])[:, None]
    logits[2, :100] = float("-inf")  # a top-k filter ran before
    for p in (0.01, 0.3, 0.9, 0.999):
        ranked, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ranked, dim=-1)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= p
        expected = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        assert torch.equal(top_p_filter(logits, p), expected), p
    x = torch.randn(3, 4, 257, generator=g, dtype=torch.float64)
    assert torch.equal(descending(x), torch.sort(x, dim=-1, descending=True).values)
    for y in (x.half(), x.float().requires_grad_()):  # torch.sort's path, and a tensor with a graph
        assert torch.equal(descending(y), torch.sort(y.detach(), dim=-1, descending=True).values)
    tied = torch.tensor([[0.4, 0.2, 0.2, 0.2]]).log()  # the nucleus of 0.5 ends in a three-way tie
    assert top_p_filter(tied, 0.5).isfinite().tolist() == [[True, True, True, True]]
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(tied, 0.0)


def test_sample_categorical_follows_the_probabilities_and_never_draws_zero_mass():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(4000, 1)
    rng = torch.Generator().manual_seed(0)
    draws = sample_categorical(probs * 3.0, rng)  # unnormalised rows are fine
    counts = torch.bincount(draws, minlength=6).float() / len(draws)
    assert counts[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(counts[[1, 3, 4]], torch.tensor([0.5, 0.3, 0.2]), atol=0.03, rtol=0)
    again = sample_categorical(probs * 3.0, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # the private generator alone decides
    one_hot = torch.zeros(2, 5)
    one_hot[0, 4] = one_hot[1, 0] = 1.0
    assert sample_categorical(one_hot, rng).tolist() == [4, 0]


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    history = torch.tensor([[0, 1, 1]])
    assert apply_repetition_penalty(logits, history, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_sampling_respects_filters_and_greedy():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    history = torch.tensor([[1]])
    assert int(sample_next(logits, history, GenerationConfig(temperature=0), None)) == 1
    # The penalty makes token 1 lose to token 2 under greedy decoding.
    assert (
        int(sample_next(logits, history, GenerationConfig(temperature=0, repetition_penalty=1.5), None)) == 2
    )
    rng = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, history, GenerationConfig(top_k=2), rng)) for _ in range(50)}
    assert draws == {1, 2}


def test_generation_config_validation():
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=-1)


# ---------------------------------------------------------------------------------- text


class CharTokenizer:
    """One token per character (ids = code points); id 0 is eos."""

    eos_id = 0

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == 0))


def script(monkeypatch, ids: list[int]) -> None:
    """Make generate_text receive exactly `ids` from the model, one per step."""

    def fake_generate_ids(model, prompt_ids, gen, *, eos_id=None):
        for i in ids[: gen.max_new_tokens]:
            yield torch.tensor([i])
            if i == eos_id:
                return

    monkeypatch.setattr(genmod, "generate_ids", fake_generate_ids)


def test_stop_strings_across_pieces(monkeypatch):
    tok = CharTokenizer()
    script(monkeypatch, tok.encode("ab STX cd STOP ef"))
    pieces = list(generate_text(None, tok, "x", GenerationConfig(stop=["STOP", "zz"])))
    assert "".join(pieces) == "ab STX cd "
    # "S", "T" were held back until "X" showed they were not the start of "STOP"; "STO" never left.
    assert pieces[:4] == ["a", "b", " ", "STX"]
    assert not any("S" in p for p in pieces[4:])
    script(monkeypatch, [*tok.encode("hello"), 0, *tok.encode("never")])
    assert list(generate_text(None, tok, "x", GenerationConfig(stop=["lo!"]))) == ["h", "e", "l", "lo"]


def test_utf8_streaming_with_byte_level_bpe(monkeypatch):
    tok = Tokenizer.train(
        ["plain English text only, nothing else."] * 20, TokenizerConfig(kind="bpe", vocab_size=300)
    )
    text = "你好，世界！🌍🚀 naïve café 日本語"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # characters span several byte tokens
    script(monkeypatch, ids)
    pieces = list(generate_text(None, tok, "Say:", GenerationConfig(max_new_tokens=len(ids))))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 5  # streamed, not emitted at the end
    # Cut mid-character by max_new_tokens: the incomplete tail is flushed as U+FFFD, not dropped silently.
    script(monkeypatch, ids)
    partial = "".join(generate_text(None, tok, "Say:", GenerationConfig(max_new_tokens=2)))
    assert partial == tok.decode(ids[:2])


def test_generate_end_to_end_with_a_real_model():
    tok = CharTokenizer()
    model = tiny_model(vocab_size=128)
    out = generate(model, tok, "hi", max_new_tokens=10, temperature=0)
    assert out == generate(model, tok, "hi", GenerationConfig(max_new_tokens=10, temperature=0))
    assert 0 < len(out) <= 10
    assert generate(model, tok, "", max_new_tokens=3, seed=1) == generate(
        model, tok, "", max_new_tokens=3, seed=1
    )
    with pytest.raises(LmforgeError, match="unknown generation option 'temprature'"):
        generate(model, tok, "hi", temprature=0)
    with pytest.raises(LmforgeError, match="top_k"):
        generate(model, tok, "hi", top_k=-1)
