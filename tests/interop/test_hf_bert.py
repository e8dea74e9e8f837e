"""BERT interop: our encoder exported as BertForPreTraining / BertForMaskedLM agrees with transformers."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.interop.hf import export_hf, import_hf, import_run
from lmforge.models import ModelConfig, build_model
from lmforge.models.weights import weights_for_save
from lmforge.tokenizer import Tokenizer, TokenizerConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
TOL = dict(atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    corpus = ["The quick brown fox jumps over the lazy dog. 中国的首都是北京。"] * 30
    return Tokenizer.train(corpus, TokenizerConfig(kind="wordpiece", vocab_size=200, min_frequency=1))


def _model(activation: str = "gelu", tie: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        arch="encoder", vocab_size=128, n_layer=2, n_head=4, d_model=32, d_ff=64, max_len=40,
        norm_position="post", norm_eps=1e-12, activation=activation, tie_embeddings=tie,
    )  # fmt: skip
    m = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so every tensor's mapping is exercised
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(5, 128, (2, 16), generator=g)
    types = torch.zeros_like(x)
    types[:, 9:] = 1
    mask = torch.ones_like(x)
    mask[1, 12:] = 0
    return x, types, mask


@pytest.mark.parametrize(("activation", "tie"), [("gelu", True), ("gelu_tanh", False)])
def test_pretraining_export_matches_transformers(tmp_path, tokenizer, activation, tie):
    m = _model(activation, tie)
    out = export_hf(m, tokenizer, tmp_path / "hf", pair_head=True)
    hf = transformers.BertForPreTraining.from_pretrained(out, attn_implementation="eager").eval()
    x, types, mask = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=x, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
        h = m(x, token_type_ids=types, attention_mask=mask)
        real = mask.bool()
        torch.testing.assert_close(h[real], ref.hidden_states[-1][real], **TOL)
        torch.testing.assert_close(m.mlm_logits(h)[real], ref.prediction_logits[real], **TOL)
        torch.testing.assert_close(m.pair_logits(h), ref.seq_relationship_logits, **TOL)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.mask_token == "[MASK]" and tok("the fox")["input_ids"][0] == tokenizer.cls_id


def test_masked_lm_export(tmp_path, tokenizer):
    m = _model()
    out = export_hf(m, tokenizer, tmp_path / "hf", pair_head=False)
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "BertForMaskedLM"
    x, types, mask = _inputs()
    with torch.no_grad():
        logits = hf(input_ids=x, token_type_ids=types, attention_mask=mask).logits
        ours = m.mlm_logits(m(x, token_type_ids=types, attention_mask=mask))
    torch.testing.assert_close(ours[mask.bool()], logits[mask.bool()], **TOL)


def test_round_trip_is_exact(tmp_path, tokenizer):
    m = _model(tie=False)
    out = export_hf(m, tokenizer, tmp_path / "hf", pair_head=True)
    back, tok = import_hf(out)
    assert back.config == m.config
    a, b = weights_for_save(m), weights_for_save(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tok.mask_id == tokenizer.mask_id


def test_import_transformers_bert(tmp_path, tokenizer):
    """A checkpoint made by transformers itself (no pooler/NSP head: BertForMaskedLM)."""
    conf = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(conf).eval()
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save(tmp_path / "hf" / "tokenizer.json")
    model, run = import_run(tmp_path / "hf", tmp_path / "run")
    x, types, mask = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=x, token_type_ids=types, attention_mask=mask).logits
        ours = model.mlm_logits(model(x, token_type_ids=types, attention_mask=mask))
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)
    import lmforge

    assert lmforge.load(run).config["objective"] == "mlm"


def test_pre_norm_encoder_is_not_bert(tmp_path, tokenizer):
    m = build_model(ModelConfig(arch="encoder", vocab_size=128, n_layer=1, n_head=2, d_model=16, max_len=8))
    with pytest.raises(LmforgeError, match="norm_position"):
        export_hf(m, tokenizer, tmp_path / "hf")
