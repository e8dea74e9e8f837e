"""ONNX export: onnxruntime gives our outputs, over a greedy decode with past keys/values, padded
encoder batches and the task heads, at batch sizes and lengths other than the traced ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.interop.onnx import DecoderWithPast, OnnxDecoder, check_onnx, export_onnx  # noqa: E402
from lmforge.models import build_model  # noqa: E402
from lmforge.models.backbone import Backbone  # noqa: E402
from lmforge.models.config import ModelConfig  # noqa: E402
from lmforge.models.heads import SequenceClassifier, SpanExtractor, TokenClassifier  # noqa: E402

pytestmark = pytest.mark.xdist_group("onnx")  # exports are a few seconds of CPU each
TOL = 1e-4


def decoder(**kw):
    torch.manual_seed(0)
    cfg = dict(arch="decoder", vocab_size=320, n_layer=2, n_head=4, d_model=32, d_ff=64, max_len=64)
    return build_model(ModelConfig(**{**cfg, **kw})).eval()


def encoder():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="encoder", vocab_size=320, n_layer=2, n_head=4, d_model=32, d_ff=64, max_len=64,
                      norm_position="post", position="learned", activation="gelu")  # fmt: skip
    return build_model(cfg).eval()


@pytest.mark.parametrize(
    "config",
    [{"position": "learned"},
     {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "n_kv_head": 2, "bias": False}],
    ids=["gpt2", "llama"],
)  # fmt: skip
def test_greedy_decoding_in_onnxruntime_equals_ours(tmp_path, config):
    model = decoder(**config)
    export_onnx(model, tmp_path)
    meta = json.loads((tmp_path / "onnx_config.json").read_text())
    assert meta["kind"] == "decoder" and len(meta["past"]) == 2 * model.config.n_layer
    tokens, steps = OnnxDecoder(tmp_path).greedy([5, 17, 3, 99, 42], 32)
    ids = [5, 17, 3, 99, 42]
    with torch.no_grad():
        for token, theirs in zip(tokens, steps):
            ours = model(torch.tensor([ids]))[0, -1].numpy()
            assert np.abs(ours - theirs).max() < TOL
            assert token == int(ours.argmax())
            ids.append(token)


def test_a_left_padded_batch_with_past_equals_ours(tmp_path):
    model = decoder(position="learned")
    export_onnx(model, tmp_path)
    run = OnnxDecoder(tmp_path)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10]]
    T = max(map(len, prompts))
    ids = np.array([[0] * (T - len(p)) + p for p in prompts], np.int64)
    mask = (np.arange(T)[None] >= np.array([[T - len(p)] for p in prompts])).astype(np.int64)
    positions = np.clip(mask.cumsum(1) - 1, 0, None)
    logits, past = run.step(ids, mask, positions, run.empty_past(2))
    nxt = logits[:, -1].argmax(-1)
    mask2 = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
    logits2, _ = run.step(nxt[:, None], mask2, positions[:, -1:] + 1, past)
    with torch.no_grad():
        for r, p in enumerate(prompts):
            alone = model(torch.tensor([[*p, int(nxt[r])]]))[0]
            assert np.abs(alone[-2].numpy() - logits[r, -1]).max() < TOL
            assert np.abs(alone[-1].numpy() - logits2[r, -1]).max() < TOL


def test_encoder_and_heads(tmp_path):
    enc = encoder()
    export_onnx(enc, tmp_path / "enc", mlm_head=True)
    assert check_onnx(enc, tmp_path / "enc", length=20) < TOL
    session = ort.InferenceSession(str(tmp_path / "enc" / "model.onnx"))
    ids = torch.randint(0, 320, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[2, 6:] = 0
    hidden, logits = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                        "token_type_ids": np.zeros((3, 11), np.int64)})  # fmt: skip
    with torch.no_grad():
        ours = enc(ids, attention_mask=mask.bool())
    assert np.abs(ours.numpy() - hidden).max() < TOL and logits.shape == (3, 11, 320)
    with torch.no_grad():
        mlm = enc.mlm_logits(ours).numpy()
    assert np.abs(mlm - logits)[mask.bool().numpy()].max() < TOL
    export_onnx(enc, tmp_path / "bare")
    assert [o.name for o in ort.InferenceSession(str(tmp_path / "bare" / "model.onnx")).get_outputs()] == [
        "last_hidden_state"
    ]

    heads = {
        "classify": SequenceClassifier(Backbone(encoder()), 3, pooling="cls"),
        "ner": TokenClassifier(Backbone(encoder()), ["O", "B-PER", "I-PER"]),
        "qa": SpanExtractor(Backbone(encoder())),
    }
    for name, head in heads.items():
        head.eval()
        export_onnx(head, tmp_path / name)
        meta = json.loads((tmp_path / name / "onnx_config.json").read_text())
        assert meta["outputs"] == list(type(head).export_outputs)
        assert check_onnx(head, tmp_path / name) < TOL, name


def test_a_decoder_classifier(tmp_path):
    head = SequenceClassifier(Backbone(decoder()), 2, pooling="last").eval()
    export_onnx(head, tmp_path)
    assert check_onnx(head, tmp_path) < TOL


def test_what_cannot_be_exported(tmp_path):
    with pytest.raises(LmforgeError, match="T5 relative positions"):
        export_onnx(decoder(position="t5"), tmp_path / "t5")
    rnn = build_model(ModelConfig(arch="lstm", vocab_size=50, rnn_hidden=16, d_model=16, n_layer=1))
    with pytest.raises(LmforgeError, match="cannot be exported to ONNX"):
        export_onnx(rnn, tmp_path / "rnn")


def test_the_graph_wrapper_is_the_model(tmp_path):
    """DecoderWithPast in torch (before any export) equals the model, with and without a past."""
    model = decoder(position="learned")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        full = model(ids)[0]
        empty = [torch.zeros(1, 4, 0, 8) for _ in range(4)]
        first, *present = DecoderWithPast(model)(
            ids[:, :3], torch.ones(1, 3, dtype=torch.long), torch.arange(3)[None], *empty
        )
        step, *_ = DecoderWithPast(model)(
            ids[:, 3:], torch.ones(1, 4, dtype=torch.long), torch.tensor([[3]]), *present
        )
    torch.testing.assert_close(first[0], full[:3], atol=1e-5, rtol=0)
    torch.testing.assert_close(step[0, 0], full[3], atol=1e-5, rtol=0)


def test_lmforge_export_onnx_on_a_run(tmp_path):
    import lmforge
    from lmforge.run import write_run
    from lmforge.tokenizer import Tokenizer, TokenizerConfig

    tok = Tokenizer.train(
        ["the model of language and the data"] * 40, TokenizerConfig(kind="bpe", vocab_size=300)
    )
    model = decoder(position="learned")
    run = write_run(
        tmp_path / "gpt", model=model, model_config=model.config, tokenizer=tok, config={"objective": "clm"}
    )
    res = lmforge.export_onnx(run, tmp_path / "onnx")
    assert res["kind"] == "decoder" and res["max_abs_diff"] < TOL
    with pytest.raises(LmforgeError, match="that is the run being exported"):
        lmforge.export_onnx(run, run)
    with pytest.raises(LmforgeError, match="overwrite"):
        lmforge.export_onnx(run, tmp_path / "onnx")
