"""The encoder-decoder: padding, cached decoding, ties, layouts and its checkpoints."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.infer.decoding import left_pad, open_session
from lmforge.infer.generate import Generation, GenerationConfig
from lmforge.models import EncoderDecoder, ModelConfig, build_model
from lmforge.models.backbone import Backbone
from lmforge.models.weights import load_weights, save_weights


def _model(**kw) -> EncoderDecoder:
    torch.manual_seed(0)
    cfg = {"arch": "encoder-decoder", "vocab_size": 61, "n_layer": 2, "n_dec_layer": 3, "n_head": 4,
           "d_model": 32, "max_len": 40, "position": "sinusoidal", "init_std": 0.2, **kw}  # fmt: skip
    return build_model(ModelConfig(**cfg)).eval()


def _right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), S, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), True
    return ids, mask


VARIANTS = [
    {},
    {"position": "learned", "norm_position": "post"},
    {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False},
    {"fused_qkv": False, "n_kv_head": 2, "scale_embeddings": True},
    {"share_embeddings": False, "tie_embeddings": False},
    {"share_embeddings": False, "src_vocab_size": 77, "position": "sinusoidal_halves"},  # two vocabularies
    {"position": "t5", "relative_buckets": 8, "relative_max_distance": 12, "norm": "rmsnorm", "bias": False},
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_source_padding_changes_nothing(kw):
    m = _model(**kw)
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14]]
    src, mask = _right_pad(rows, pad=0)
    tgt = torch.tensor([[1, 20, 21, 22]] * 3)
    with torch.no_grad():
        batched = m(src, tgt, src_mask=mask)
        for i, r in enumerate(rows):
            alone = m(torch.tensor([r]), tgt[i : i + 1])
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS)
def test_cached_decoding_equals_full_recompute(kw):
    m = _model(**kw)
    src, mask = _right_pad([[5, 6, 7, 8, 9], [11, 12]], pad=0)
    tgt = torch.tensor([[1, 30, 31, 32, 33, 34], [1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        full = m(src, tgt, src_mask=mask)  # (B, T, V)
        session = open_session(m, 2, 10, source=(src, mask))
        steps = [session.prefill(tgt[:, :1])]
        steps += [session.step(tgt[:, t]) for t in range(1, tgt.size(1))]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_cross_keys_are_computed_once_and_reordered_with_the_beams():
    m = _model()
    src, mask = _right_pad([[5, 6, 7, 8], [9, 10]], pad=0)
    session = open_session(m, 2, 8, source=(src, mask))
    with torch.no_grad():
        session.prefill(torch.ones(2, 1, dtype=torch.long))
        cross = session.cache.cross_k[0]
        session.step(torch.tensor([3, 4]))
        assert session.cache.cross_k[0] is cross  # not recomputed at a step
        session.reorder(torch.tensor([1, 1, 0]))
        got = session.step(torch.tensor([4, 4, 3]))
        # Row 0 and 1 now both continue input 1; row 2 continues input 0.
        ref = m(src[[1, 0]], torch.tensor([[1, 4, 4], [1, 3, 3]]), src_mask=mask[[1, 0]])[:, -1]
    torch.testing.assert_close(got[[0, 2]], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0], got[1])


def test_greedy_generation_from_a_source_equals_argmax_recompute():
    m = _model()
    src, mask = _right_pad([[5, 6, 7, 8, 9], [11, 12, 13]], pad=0)
    start = torch.ones(2, 1, dtype=torch.long)
    gen = GenerationConfig(max_new_tokens=8, temperature=0)
    out = torch.stack(list(Generation(m, start, gen, source=(src, mask))), 1)
    tgt = start
    with torch.no_grad():
        for _ in range(8):
            tgt = torch.cat([tgt, m(src, tgt, src_mask=mask)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, tgt[:, 1:])


def test_embeddings_are_shared_and_tied_three_ways():
    m = _model()
    assert m.encoder.tok_emb.weight is m.decoder.tok_emb.weight is m.lm_head.weight
    untied = _model(share_embeddings=False, tie_embeddings=False)
    weights = {untied.encoder.tok_emb.weight, untied.decoder.tok_emb.weight, untied.lm_head.weight}
    assert len({id(w) for w in weights}) == 3
    assert m.num_params() == untied.num_params() - 2 * 61 * 32
    assert len(m.decoder.blocks) == 3 and len(m.encoder.blocks) == 2
    assert m.decoder.blocks[0].cross_attn is not None and m.encoder.blocks[0].cross_attn is None
    two = _model(share_embeddings=False, src_vocab_size=77)
    assert two.encoder.tok_emb.weight.shape == (77, 32) and two.lm_head.weight.shape == (61, 32)
    assert two.num_params(non_embedding=True) == two.num_params() - 77 * 32  # the decoder's is the head


def test_relative_position_tables_are_not_counted_as_multiply_adds():
    m = _model(position="t5", relative_buckets=8, relative_max_distance=12)
    tables = 2 * 8 * 4  # one (buckets, heads) table per stack
    assert m.num_params(non_embedding=True) == m.num_params() - tables


def test_weights_round_trip_and_load_across_the_qkv_layouts(tmp_path):
    m = _model()
    save_weights(m, tmp_path / "m.safetensors")
    other = _model(fused_qkv=False)
    load_weights(other, tmp_path / "m.safetensors")
    src, tgt = torch.tensor([[5, 6, 7]]), torch.tensor([[1, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(other(src, tgt), m(src, tgt))
    with pytest.raises(LmforgeError, match="different model config"):
        load_weights(_model(n_dec_layer=2), tmp_path / "m.safetensors")


def test_layer_numbering_runs_through_encoder_then_decoder():
    b = Backbone(_model())
    assert b.n_layer == 5
    assert b.layer_of("encoder.tok_emb.weight") == 0
    assert b.layer_of("encoder.blocks.1.mlp.fc.weight") == 2
    assert b.layer_of("decoder.blocks.0.cross_attn.q.weight") == 3
    assert b.layer_of("decoder.norm_f.weight") == 5
    assert b.layer_of("lm_head.weight") == 6


def test_the_decoder_cache_refuses_more_positions_than_it_holds():
    m = _model()
    session = open_session(m, 1, 3, source=(torch.tensor([[5, 6]]), None))
    with torch.no_grad():
        session.prefill(torch.tensor([[1, 2, 3]]))
        with pytest.raises(LmforgeError, match="KV cache holds 3"):
            session.step(torch.tensor([4]))


def test_sessions_say_what_each_kind_reads():
    with pytest.raises(ValueError, match="decodes from a source"):
        open_session(_model(), 1, 4)
    gpt = build_model(ModelConfig(vocab_size=16, n_layer=1, n_head=2, d_model=8, max_len=8))
    ids, _ = left_pad([[1, 2]], 0)
    with pytest.raises(ValueError, match="reads no source"):
        open_session(gpt, 1, 4, source=(ids, None))
    with pytest.raises(LmforgeError, match="arch=encoder-decoder"):
        EncoderDecoder(ModelConfig(vocab_size=16, n_layer=1, n_head=2, d_model=8))
