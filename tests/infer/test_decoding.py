"""The prefill/step protocol: batched, left-padded decoding equals decoding each prompt alone."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.infer.decoding import left_pad, open_session
from lmforge.infer.generate import GenerationConfig, generate, generate_batch, generate_ids
from lmforge.models import ModelConfig, build_model

LAYOUTS = {
    "gpt": {},
    "llama": dict(norm="rmsnorm", position="rope", activation="swiglu", n_kv_head=1, bias=False),
    "sinusoidal": dict(position="sinusoidal"),
    "lstm": dict(arch="lstm"),
    "nnlm": dict(arch="nnlm"),
}


def tiny_model(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=128, n_layer=2, n_head=2, d_model=32, max_len=64)
    return build_model(ModelConfig(**{**base, **kw})).eval()


class CharTokenizer:
    """One token per character (ids = code points); id 0 is eos."""

    eos_id = 0

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == 0))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batched_prompts_of_different_lengths_decode_as_alone(layout):
    model = tiny_model(**LAYOUTS[layout])
    torch.manual_seed(1)
    prompts = [torch.randint(1, 128, (n,)).tolist() for n in (7, 2, 5)]
    gen = GenerationConfig(max_new_tokens=10, temperature=0)
    ids, mask = left_pad(prompts, pad_id=0)
    batch = torch.stack(list(generate_ids(model, ids, gen, attention_mask=mask)), 1)  # (3, 10)
    for row, p in zip(batch, prompts):
        alone = torch.stack(list(generate_ids(model, torch.tensor([p]), gen)), 1)[0]
        assert row.tolist() == alone.tolist()


@pytest.mark.parametrize("layout", ["gpt", "llama", "lstm"])
def test_reorder_selects_and_duplicates_rows(layout):
    model = tiny_model(**LAYOUTS[layout])
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    ids, mask = left_pad(prompts, pad_id=0)
    index = torch.tensor([2, 0, 2, 1])
    with torch.no_grad():
        session = open_session(model, 3, 16)
        session.prefill(ids, mask)
        session.step(torch.tensor([20, 21, 22]))
        session.reorder(index)
        got = session.step(torch.tensor([30, 31, 32, 33]))  # (4, V)
        ref = open_session(model, 4, 16)
        ref.prefill(ids[index], mask[index])
        ref.step(torch.tensor([20, 21, 22])[index])
        want = ref.step(torch.tensor([30, 31, 32, 33]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_generate_batch_matches_generate_per_row_with_eos_and_stops():
    tok, model = CharTokenizer(), tiny_model()
    prompts = ["hello", "a", "The cat"]
    gen = GenerationConfig(max_new_tokens=12, temperature=0)
    alone = [generate(model, tok, p, gen) for p in prompts]
    assert generate_batch(model, tok, prompts, gen) == alone
    # A stop string per row: the first row's text is cut at a string from the middle of its own
    # completion, the others at strings they never produce.
    stop = alone[0][3:5]
    gen_stop = GenerationConfig(max_new_tokens=12, temperature=0, stop=[stop])
    want = [generate(model, tok, p, gen_stop) for p in prompts]
    assert want[0] == alone[0][: alone[0].find(stop)]
    assert generate_batch(model, tok, prompts, gen_stop) == want


def test_rows_end_at_eos_independently():
    model = tiny_model()
    prompts = [[5, 6, 7], [40, 41, 42, 43, 44]]
    gen = GenerationConfig(max_new_tokens=8, temperature=0)
    ids, mask = left_pad(prompts, pad_id=0)
    free = torch.stack(list(generate_ids(model, ids, gen, attention_mask=mask)), 1)
    eos = int(free[0, 2])  # row 0 produces it at step 3
    run = torch.stack(list(generate_ids(model, ids, gen, eos_id=eos, attention_mask=mask)), 1)
    first = free[0].tolist().index(eos)
    assert run[0, : first + 1].tolist() == free[0, : first + 1].tolist()
    assert (run[0, first + 1 :] == eos).all()  # finished: padding from then on
    assert eos not in free[1].tolist()  # (with these weights) row 1 never finishes: the run goes on
    assert run.size(1) == 8 and run[1].tolist() == free[1].tolist()


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_slot_rows_join_and_leave_and_each_decodes_as_alone(position):
    """SlotSession (continuous batching): prompts admitted together and later, rows retired in the
    middle; every live row's logits are the model's on that row's tokens alone."""
    from lmforge.infer.decoding import SlotSession

    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="decoder", vocab_size=100, n_layer=2, n_head=2, d_model=32, max_len=64, position=position
    )
    model = build_model(cfg).eval()
    slots = SlotSession(model, 4, 64)
    texts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11]]
    logits = slots.admit(texts)

    def check(logits):
        with torch.no_grad():
            for row, text in enumerate(texts):
                torch.testing.assert_close(logits[row], model(torch.tensor([text]))[0, -1], atol=1e-5, rtol=0)

    check(logits)
    for step in range(6):
        nxt = logits.argmax(-1)
        for text, token in zip(texts, nxt.tolist()):
            text.append(token)
        if step == 2:  # the first sequence leaves, the last row takes its place, a new one joins
            assert slots.retire(0) == 2
            texts = [texts[2], texts[1]]
            nxt = torch.tensor([texts[0][-1], texts[1][-1]])
            logits = slots.step(nxt)
            texts.append([20, 21, 22, 23])
            logits = torch.cat([logits, slots.admit([texts[-1]])])
        else:
            logits = slots.step(nxt)
        assert slots.lengths == [len(t) for t in texts]
        check(logits)
    with pytest.raises(LmforgeError, match="free slots"):
        slots.admit([[1]] * 2)
