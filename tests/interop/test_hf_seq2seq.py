"""Hugging Face interop of the encoder-decoder: exports load in transformers with our logits and beam
search output, and BART, Marian, Pegasus and mBART checkpoints import with theirs."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.infer.beam import BeamConfig, beam_search
from lmforge.infer.decoding import open_session
from lmforge.interop.hf import export_hf, import_hf, import_run
from lmforge.interop.hf_seq2seq import source_tokenizer_of
from lmforge.models import EncoderDecoder, ModelConfig, build_model
from lmforge.models.backbone import Backbone
from lmforge.tokenizer import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="the Hugging Face interop tests need transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

VOCAB = 56  # larger than the tokenizer's 40 tokens: padded rows must survive
PAD, EOS, UNK, BOS = 0, 1, 2, 3
TOL = dict(atol=1e-4, rtol=0)
WORDS = (
    "the", "a", "dog", "cat", "runs", "sleeps", "on", "under", "mat", "roof", "big", "small", "red",
    "blue", "house", "tree", "sees", "eats", "fish", "bird", "and", "or", "not", "very", "quick",
    "slow", "day", "night", "sun", "moon", "river", "hill", "green", "old",
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A word-level tokenizer: <pad>, </s>, <unk>, <s>, then one token per word."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    backend = Backend(models.WordLevel({t: i for i, t in enumerate([*specials, *WORDS])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    backend.add_special_tokens(specials)
    tok = Tokenizer.from_backend(backend)
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (PAD, EOS, UNK, BOS)
    return tok


def ed_model(**kw) -> EncoderDecoder:
    cfg = dict(arch="encoder-decoder", vocab_size=VOCAB, n_layer=2, n_dec_layer=1, n_head=4, d_model=32,
               d_ff=48, max_len=40, activation="gelu", init_std=0.2)  # fmt: skip
    torch.manual_seed(0)
    return randomised(build_model(ModelConfig(**{**cfg, **kw})))


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter (norm weights and biases too), so no mapping mistake hides behind ones/zeros."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def boost_eos(weight: torch.Tensor, factor: float = 4.0) -> None:
    """Scale the output row of eos, so that it ranks first at some steps: hypotheses end at various lengths."""
    with torch.no_grad():
        weight[EOS] *= factor


def sources(rows: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded source ids (rows, S) of different lengths, each ending in eos, and their mask."""
    lengths = [9, 4, 6][:rows]
    g = torch.Generator().manual_seed(1)
    ids = torch.full((rows, max(lengths)), PAD)
    mask = torch.zeros(rows, max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = torch.randint(4, VOCAB, (n - 1,), generator=g)
        ids[i, n - 1] = EOS
        mask[i, :n] = True
    return ids, mask


def targets(start: int, rows: int = 3, length: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    tgt = torch.randint(4, VOCAB, (rows, length), generator=g)
    tgt[:, 0] = start
    return tgt


def assert_same_logits(ours: EncoderDecoder, hf, start: int) -> float:
    src, mask = sources()
    tgt = targets(start)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        mine = ours(src, tgt, src_mask=mask)
    torch.testing.assert_close(mine, theirs, **TOL)
    return float((mine - theirs).abs().max())


def hypotheses(tokens: torch.Tensor) -> list[list[int]]:
    """Rows of generated ids (B, L) cut after their eos: the fill after it differs (transformers fills
    with eos where the padding id is 0)."""
    rows = tokens.tolist()
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in rows]


def our_beam(model: EncoderDecoder, beam: BeamConfig, start: int) -> list[list[int]]:
    """Beam search through a decoding session over the sources: the best hypothesis of each."""
    src, mask = sources()
    B = src.size(0)
    with torch.no_grad():
        session = open_session(model, B, beam.max_new_tokens + 1, source=(src, mask))
        first = torch.full((B, 1), start, dtype=torch.long)
        result = beam_search(session, session.prefill(first), beam, eos_id=EOS, pad_id=PAD, history=first)
    return hypotheses(result.tokens[:, 0])


def hf_beam(hf, beam: BeamConfig | None = None, **ids) -> list[list[int]]:
    """transformers' beam search over the same sources (settings from generation_config.json when
    `beam` is None): the generated tokens after the start token."""
    src, mask = sources()
    kw = {}
    if beam is not None:
        kw = dict(num_beams=beam.num_beams, max_new_tokens=beam.max_new_tokens, length_penalty=beam.length_penalty,
                  early_stopping=beam.early_stopping, no_repeat_ngram_size=beam.no_repeat_ngram_size,
                  do_sample=False, forced_eos_token_id=None, forced_bos_token_id=None)  # fmt: skip
    with torch.no_grad():
        out = hf.generate(input_ids=src, attention_mask=mask.long(), **kw, **ids)
    return hypotheses(out[:, 1:])


def load_hf(path):
    return transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()


# ----------------------------------------------------------------------------------------------
# Export


EXPORTS = [
    ("BartForConditionalGeneration", dict(norm_position="post", position="learned")),
    ("BartForConditionalGeneration", dict(norm_position="post", position="sinusoidal", scale_embeddings=True,
                                          head_bias=True, share_embeddings=False, activation="relu")),
    ("PegasusForConditionalGeneration", dict(norm_position="pre", position="sinusoidal", scale_embeddings=True)),
    ("PegasusForConditionalGeneration", dict(norm_position="pre", position="learned", tie_embeddings=False,
                                             share_embeddings=False, activation="gelu_tanh", fused_qkv=False)),
    ("MBartForConditionalGeneration", dict(norm_position="pre", emb_norm=True, tie_embeddings=False)),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "kw"), EXPORTS)
def test_export_loads_in_transformers_with_our_logits(tmp_path, tokenizer, cls, kw):
    ours = ed_model(**kw)
    export_hf(ours, tokenizer, tmp_path)
    hf = load_hf(tmp_path)
    assert type(hf).__name__ == cls
    assert hf.config.decoder_start_token_id == PAD and hf.config.eos_token_id == EOS
    assert_same_logits(ours, hf, start=PAD)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "the big dog sees a red fish"
    assert hf_tok.encode(text, add_special_tokens=False) == tokenizer.encode(text)


def word_tokenizer(words) -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    backend = Backend(models.WordLevel({t: i for i, t in enumerate([*specials, *words])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens(specials)
    return Tokenizer.from_backend(backend)


def test_two_vocabularies_export_as_marian_with_both_tokenizers(tmp_path, tokenizer):
    """A source vocabulary of its own (src_vocab_size) is Marian's decoder_vocab_size layout: the folder's
    tokenizer encodes sources, target_tokenizer/ decodes outputs; the other layouts refuse it by name."""
    source_tok = word_tokenizer([*reversed(WORDS), "extra", "words"])
    kw = dict(norm_position="post", emb_norm=False, position="sinusoidal_halves", share_embeddings=False,
              src_vocab_size=VOCAB + 16, scale_embeddings=True)  # fmt: skip
    ours = ed_model(**kw)
    assert ours.encoder.tok_emb.weight.shape[0] == VOCAB + 16 and ours.lm_head.weight.shape[0] == VOCAB
    export_hf(ours, tokenizer, tmp_path, source_tokenizer=source_tok)
    hf = load_hf(tmp_path)
    assert type(hf).__name__ == "MarianMTModel"
    assert (hf.config.vocab_size, hf.config.decoder_vocab_size) == (VOCAB + 16, VOCAB)
    assert_same_logits(ours, hf, start=PAD)
    text = "the big dog sees extra words"
    src_hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    tgt_hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "target_tokenizer")
    assert src_hf.encode(text, add_special_tokens=False) == source_tok.encode(text) != tokenizer.encode(text)
    assert tgt_hf.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    # Imported back, the model has both vocabularies and the run both tokenizers.
    back, target_tok = import_hf(tmp_path)
    assert back.config.src_vocab_size == VOCAB + 16 and target_tok.sha256 == tokenizer.sha256
    assert source_tokenizer_of(tmp_path).sha256 == source_tok.sha256
    assert_same_logits(back, hf, start=PAD)
    import lmforge

    lmforge.import_hf(tmp_path, tmp_path / "run")
    assert lmforge.load(str(tmp_path / "run")).source_tokenizer.sha256 == source_tok.sha256
    with pytest.raises(LmforgeError, match="no source tokenizer"):
        export_hf(ours, tokenizer, tmp_path / "again")
    # Exported again with one tokenizer, the folder loses its target_tokenizer/.
    export_hf(
        ed_model(norm_position="post", emb_norm=False, position="sinusoidal_halves"), tokenizer, tmp_path
    )
    assert not (tmp_path / "target_tokenizer").exists() and source_tokenizer_of(tmp_path) is None
    with pytest.raises(LmforgeError, match=r"src_vocab_size=72 .*PegasusForConditionalGeneration"):
        export_hf(
            ed_model(**{**kw, "norm_position": "pre"}), tokenizer, tmp_path / "x", source_tokenizer=source_tok
        )
    with pytest.raises(ValueError, match="share_embeddings=false"):
        ModelConfig(arch="encoder-decoder", vocab_size=64, src_vocab_size=128, n_head=4, d_model=32)


@pytest.mark.parametrize(
    ("kw", "eos_scale", "beam"),
    [
        (dict(norm_position="post", init_std=0.1), 5.0, BeamConfig(num_beams=4, max_new_tokens=12)),
        (dict(norm_position="pre", position="sinusoidal"), 3.0,
         BeamConfig(num_beams=4, max_new_tokens=12, length_penalty=0.6, early_stopping=False, no_repeat_ngram_size=2)),
        (dict(norm_position="post", position="sinusoidal", share_embeddings=False, head_bias=True), 3.0,
         BeamConfig(num_beams=3, max_new_tokens=9, length_penalty=1.5, early_stopping=False, no_repeat_ngram_size=3)),
    ],
)  # fmt: skip
def test_exported_beam_search_equals_ours(tmp_path, tokenizer, kw, eos_scale, beam):
    """transformers' generate (settings from the exported generation_config.json) and ours agree token for
    token, for a fine-tuned seq2seq model (whose weights sit under backbone.model.) and the bare model alike."""
    from lmforge.tasks.seq2seq import Seq2SeqModel, seq2seq_tokens

    ours = ed_model(tie_embeddings=False, **kw)  # an untied head varies its output more than a tied one
    boost_eos(ours.lm_head.weight, eos_scale)
    task = Seq2SeqModel(Backbone(ours), seq2seq_tokens(tokenizer), label_smoothing=0.0, beam=beam,
                        max_new_tokens=beam.max_new_tokens).eval()  # fmt: skip
    export_hf(task, tokenizer, tmp_path)
    hf = load_hf(tmp_path)
    assert hf.generation_config.num_beams == beam.num_beams
    expected = our_beam(ours, beam, start=PAD)
    lengths = {len(h) if h[-1] == EOS else None for h in expected}
    assert len(lengths) > 1 and lengths != {None}, f"hypotheses should end, at different lengths: {expected}"
    assert hf_beam(hf) == expected
    src, mask = sources()
    assert hypotheses(task.generate(src, mask).tokens[:, 0]) == expected
    assert hf_beam(hf, beam) == expected


# ----------------------------------------------------------------------------------------------
# Import


def hf_checkpoint(kind: str, **kw):
    """A tiny random transformers model of `kind`, every parameter perturbed."""
    common = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=40,
                  pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, forced_eos_token_id=None,
                  dropout=0.0, attention_dropout=0.0, init_std=0.2)  # fmt: skip
    config_cls, model_cls = {
        "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration),
        "marian": (transformers.MarianConfig, transformers.MarianMTModel),
        "pegasus": (transformers.PegasusConfig, transformers.PegasusForConditionalGeneration),
        "mbart": (transformers.MBartConfig, transformers.MBartForConditionalGeneration),
    }[kind]
    torch.manual_seed(0)
    hf = model_cls(config_cls(**{**common, **kw}))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "embed_positions" not in name:  # the fixed sin|cos tables stay theirs
                p.add_(torch.randn_like(p) * 0.05)
    return hf.eval()


IMPORTS = [  # the eos bonus in final_logits_bias (None: zeros, eos's output row scaled instead)
    ("bart", dict(decoder_start_token_id=EOS, activation_function="gelu", scale_embedding=True), 0.0),
    ("marian", dict(decoder_start_token_id=PAD, activation_function="relu", scale_embedding=True), 1.5),
    ("marian", dict(decoder_start_token_id=PAD, share_encoder_decoder_embeddings=False, tie_word_embeddings=True,
                    activation_function="gelu"), None),
    ("marian", dict(decoder_start_token_id=PAD, share_encoder_decoder_embeddings=False, vocab_size=VOCAB + 8,
                    decoder_vocab_size=VOCAB, activation_function="relu"), 1.0),  # two vocabularies
    ("pegasus", dict(decoder_start_token_id=PAD, activation_function="gelu_new"), 3.0),
    ("mbart", dict(decoder_start_token_id=EOS, tie_word_embeddings=False), 0.0),
]  # fmt: skip
# Where each class puts its norms, in our two switches: (norm_position, emb_norm).
LAYOUT = {"bart": ("post", None), "marian": ("post", False), "pegasus": ("pre", None), "mbart": ("pre", True)}


@pytest.mark.parametrize(("kind", "kw", "eos_bias"), IMPORTS)
def test_import_matches_transformers(tmp_path, tokenizer, kind, kw, eos_bias):
    hf = hf_checkpoint(kind, **kw)
    if eos_bias is not None:  # Marian's converted models carry a real output bias
        hf.final_logits_bias.normal_(0, 0.5)[0, EOS] += eos_bias
    else:
        boost_eos(hf.get_output_embeddings().weight, 2.0)
    hf.save_pretrained(tmp_path)
    tokenizer.save(tmp_path / "tokenizer.json")
    if kw.get("decoder_vocab_size"):  # two vocabularies need two tokenizers
        with pytest.raises(LmforgeError, match=r"two vocabularies .* target_tokenizer/"):
            import_hf(tmp_path)
        (tmp_path / "target_tokenizer").mkdir()
        tokenizer.save(tmp_path / "target_tokenizer" / "tokenizer.json")

    ours, tok = import_hf(tmp_path)
    assert isinstance(ours, EncoderDecoder) and not ours.training
    cfg = ours.config
    # Marian's and Pegasus's fixed sin|cos tables are our sinusoidal_halves; BART's and mBART's are learned.
    position = "sinusoidal_halves" if kind in ("marian", "pegasus") else "learned"
    assert (cfg.norm_position, cfg.emb_norm) == LAYOUT[kind] and cfg.position == position
    assert cfg.head_bias is (eos_bias is not None) and (cfg.n_layer, cfg.dec_layers) == (2, 1)
    if kind == "marian" and not kw.get("share_encoder_decoder_embeddings", True):
        assert (cfg.share_embeddings, cfg.tie_embeddings) == (False, True)
    assert tok.encode("the dog runs") == tokenizer.encode("the dog runs") and tok.eos_id == EOS
    start = hf.config.decoder_start_token_id
    assert_same_logits(ours, hf, start)
    src, mask = sources()
    with torch.no_grad():  # the fused loss sees the head's bias too
        h = ours(src, targets(start), src_mask=mask, features=True)
        torch.testing.assert_close(ours.output_layer().logits(h), ours.lm_head(h))
    beam = BeamConfig(
        num_beams=4, max_new_tokens=10, length_penalty=0.8, early_stopping=False, no_repeat_ngram_size=2
    )
    expected = our_beam(ours, beam, start)
    assert len({len(h) for h in expected}) > 1 and any(h[-1] == EOS for h in expected), expected
    ids = dict(decoder_start_token_id=start, eos_token_id=EOS, pad_token_id=PAD)
    assert hf_beam(hf, beam, **ids) == expected


def test_import_run_writes_an_encoder_decoder_run(tmp_path, tokenizer):
    import lmforge
    from lmforge.run import read_run

    hf = hf_checkpoint("bart", decoder_start_token_id=EOS)
    hf.generation_config.num_beams = 3
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save(tmp_path / "hf" / "tokenizer.json")
    model, run = import_run(tmp_path / "hf", tmp_path / "run")
    info = read_run(run)
    assert info.kind == "lm" and info.config["model"]["arch"] == "encoder-decoder"
    assert info.config["objective"] == "seq2seq" and info.config["decoder_start_token_id"] == EOS
    assert info.config["generation"]["num_beams"] == 3
    lm = lmforge.load(run)
    for (name, a), b in zip(model.state_dict().items(), lm.model.state_dict().values()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------
# Round trips and refusals


@pytest.mark.parametrize(
    "kw",
    [
        dict(norm_position="post", position="learned", head_bias=True),
        dict(norm_position="post", position="sinusoidal", share_embeddings=False, tie_embeddings=False),
        dict(norm_position="pre", position="learned", tie_embeddings=False, n_dec_layer=None),
        dict(norm_position="pre", position="sinusoidal", emb_norm=True, share_embeddings=False),
    ],
)
def test_export_import_round_trip_is_exact(tmp_path, tokenizer, kw):
    ours = ed_model(**kw)
    back, tok = import_hf(export_hf(ours, tokenizer, tmp_path))
    assert back.config == ours.config
    assert ours.state_dict().keys() == back.state_dict().keys()
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    assert tok.special_tokens == tokenizer.special_tokens


def test_imported_marian_exports_as_marian(tmp_path, tokenizer):
    hf = hf_checkpoint("marian", decoder_start_token_id=PAD, scale_embedding=True)
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save(tmp_path / "hf" / "tokenizer.json")
    ours, _ = import_hf(tmp_path / "hf")
    again = load_hf(export_hf(ours, tokenizer, tmp_path / "out"))
    assert type(again).__name__ == "MarianMTModel"
    assert_same_logits(ours, again, PAD)
    back, _ = import_hf(tmp_path / "out")
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(position="rope"), "model.position='rope'"),
        (dict(position="t5"), "model.position='t5'"),
        (dict(norm="rmsnorm"), "model.norm='rmsnorm'"),
        (dict(activation="swiglu", bias=False), "model.activation='swiglu'"),
        (dict(bias=False), "model.bias=False"),
        (dict(n_kv_head=2), "model.n_kv_head=2"),
        (dict(norm_eps=1e-6), "model.norm_eps=1e-06"),
        (dict(norm_position="post", emb_norm=False, position="sinusoidal"), "Marian, which computes its own"),
    ],
)
def test_export_names_the_blocking_field(tmp_path, tokenizer, change, field):
    cfg = ModelConfig(
        arch="encoder-decoder", vocab_size=VOCAB, n_layer=1, n_head=4, d_model=16, max_len=16, **change
    )
    with pytest.raises(LmforgeError, match=field):
        export_hf(build_model(cfg), tokenizer, tmp_path)


def t5_checkpoint(**kw):
    """A tiny random T5ForConditionalGeneration, every parameter perturbed."""
    cfg = dict(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=1,
               relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
               pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, **kw)  # fmt: skip
    torch.manual_seed(0)
    return randomised(transformers.T5ForConditionalGeneration(transformers.T5Config(**cfg))).eval()


@pytest.mark.parametrize(
    "kw",
    [
        dict(feed_forward_proj="relu"),
        dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        dict(feed_forward_proj="gated-silu"),
    ],
)
def test_t5_import_matches_transformers(tmp_path, tokenizer, kw):
    hf = t5_checkpoint(**kw)
    boost_eos(hf.get_output_embeddings().weight, 2.0)
    hf.save_pretrained(tmp_path)
    tokenizer.save(tmp_path / "tokenizer.json")
    ours, _ = import_hf(tmp_path)
    cfg = ours.config
    assert (cfg.position, cfg.attn_scale, cfg.norm, cfg.bias) == ("t5", 1.0, "rmsnorm", False)
    assert cfg.head_scale == (1.0 if kw.get("tie_word_embeddings") is False else 32**-0.5)
    assert_same_logits(ours, hf, PAD)
    beam = BeamConfig(
        num_beams=4, max_new_tokens=10, length_penalty=0.8, early_stopping=False, no_repeat_ngram_size=2
    )
    expected = our_beam(ours, beam, PAD)
    if kw["feed_forward_proj"] == "relu":  # (the gated random models never rank eos first)
        assert len({len(h) for h in expected}) > 1, expected
    assert hf_beam(hf, beam, decoder_start_token_id=PAD, eos_token_id=EOS, pad_token_id=PAD) == expected


def test_t5_and_mismatched_checkpoints_are_refused(tmp_path, tokenizer):
    (tmp_path / "config.json").write_text('{"model_type": "umt5", "d_model": 32}')
    with pytest.raises(LmforgeError, match="model_type='umt5' is not supported: lmforge imports T5 and mT5"):
        import_hf(tmp_path)
    transformers.T5Config(d_model=32, d_kv=4, num_heads=4).save_pretrained(tmp_path / "narrow")
    with pytest.raises(LmforgeError, match="num_heads=4 x d_kv=4 = 16 differs from d_model=32"):
        import_hf(tmp_path / "narrow")
    transformers.MarianConfig(d_model=32, activation_function="swish").save_pretrained(tmp_path / "swish")
    with pytest.raises(LmforgeError, match="activation_function='swish' is not supported"):
        import_hf(tmp_path / "swish")
    hf = hf_checkpoint("bart", decoder_start_token_id=EOS, normalize_before=True)
    hf.save_pretrained(tmp_path / "legacy")
    with pytest.raises(LmforgeError, match="normalize_before=True contradicts model_type='bart'"):
        import_hf(tmp_path / "legacy")
    # mBART's weights under a BART config: the final norms would go unused
    hf = hf_checkpoint("mbart", decoder_start_token_id=EOS)
    hf.save_pretrained(tmp_path / "mislabelled")
    config = (tmp_path / "mislabelled" / "config.json").read_text().replace('"mbart"', '"bart"')
    (tmp_path / "mislabelled" / "config.json").write_text(config)
    with pytest.raises(
        LmforgeError, match=r"tensor\(s\) a bart model does not use, such as 'model\.decoder\.layer_norm"
    ):
        import_hf(tmp_path / "mislabelled")
    with pytest.raises(ValueError, match="emb_norm=True applies to arch=encoder-decoder only"):
        ModelConfig(emb_norm=True)


@pytest.mark.parametrize("through_run", [False, True])
def test_fine_tuning_an_imported_bart_starts_the_decoder_where_bart_does(tmp_path, tokenizer, through_run):
    import lmforge

    hf = hf_checkpoint("bart", decoder_start_token_id=EOS)
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save(tmp_path / "hf" / "tokenizer.json")
    source = tmp_path / "hf"
    if through_run:
        import_run(source, tmp_path / "run")
        source = tmp_path / "run"
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{a} {b}\t{b} {a}\n" for a, b in itertools.pairwise(WORDS)), encoding="utf-8")
    lmforge.finetune(task="seq2seq", model=str(source), train_file=str(pairs), out=str(tmp_path / "ft"), **{
        "train.max_steps": 2, "train.batch_size": 4, "train.plot": False, "train.tensorboard": False,
        "train.progress": False})  # fmt: skip
    task = lmforge.load(str(tmp_path / "ft"))
    assert task.config.decoder_start == EOS and task.model.tokens.start == EOS
