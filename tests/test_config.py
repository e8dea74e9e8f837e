import argparse
import re

import pytest

from lmforge.config import (
    add_dataclass_flags,
    all_field_help,
    from_dict,
    load_yaml,
    namespace_overrides,
    unknown_option_error,
)
from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.train.config import TrainConfig


def test_from_dict_converts_strings_and_nests():
    cfg = from_dict(TrainConfig, {"max_steps": "20", "lr": "3e-4", "compile": "true", "precision": "bf16"})
    assert (
        cfg.max_steps == 20
        and cfg.lr == pytest.approx(3e-4)
        and cfg.compile is True
        and cfg.precision == "bf16"
    )


def test_unknown_key_suggests_nearest():
    with pytest.raises(LmforgeError, match=r"unknown config key 'train.max_step'; did you mean 'max_steps'"):
        from_dict(TrainConfig, {"max_step": 3}, prefix="train.")


def test_bad_type_and_literal_name_the_key():
    with pytest.raises(LmforgeError, match=r"'model\.n_layer' expects int"):
        from_dict(ModelConfig, {"n_layer": "four"}, prefix="model.")
    with pytest.raises(LmforgeError, match=r"'model\.norm' is 'batchnorm'; choose one of layernorm, rmsnorm"):
        from_dict(ModelConfig, {"norm": "batchnorm"}, prefix="model.")


def test_invalid_values_are_one_line_errors():
    with pytest.raises(LmforgeError, match="divisible by n_head"):
        from_dict(ModelConfig, {"d_model": 100, "n_head": 3})


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(LmforgeError, match=r"bad\.yaml: not valid YAML"):
        load_yaml(bad)
    with pytest.raises(LmforgeError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_flags_from_dataclass_only_return_typed_values():
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, TrainConfig)
    ns = parser.parse_args(["--max_steps", "7", "--compile"])
    assert namespace_overrides(ns, TrainConfig) == {"max_steps": "7", "compile": "true"}
    assert from_dict(TrainConfig, namespace_overrides(ns, TrainConfig)).max_steps == 7


def test_unknown_flag_suggestion():
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, TrainConfig)
    err = unknown_option_error(parser, ["--max_step", "3"])
    assert "did you mean '--max_steps'" in str(err)


def test_help_comes_from_source_comments():
    helps = all_field_help(TrainConfig)
    assert "optimizer steps" in helps["max_steps"]
    assert "grouped-query" in all_field_help(ModelConfig)["n_kv_head"]


def test_a_section_given_in_part_keeps_its_parents_defaults():
    from lmforge.pretraining import build_config

    # PretrainConfig's tokenizer defaults to kind=auto (TokenizerConfig's own default is bpe).
    cfg = build_config(None, {"tokenizer": {"vocab_size": 300}})
    assert cfg.tokenizer.kind == "auto" and cfg.tokenizer.vocab_size == 300


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("beta1", 1.5, "train.beta1 must be in [0, 1)"),
        ("beta2", -0.1, "train.beta2 must be in [0, 1)"),
        ("eps", -1.0, "train.eps must be positive"),
        ("weight_decay", -0.1, "train.weight_decay must be >= 0"),
        ("warmup_steps", -5, "train.warmup_steps must be >= 0"),
        ("grad_clip", -1.0, "train.grad_clip must be >= 0"),
        ("seq_len", -3, "train.seq_len must be positive (or 0 for model.max_len)"),
        ("eval_batches", 0, "train.eval_batches must be at least 1"),
        ("threads", -2, "train.threads must be >= 0"),
    ],
)
def test_training_options_are_checked_at_the_boundary(key, value, says):
    """Values the optimizer or the loop would choke on (or silently misuse) are refused when read."""
    with pytest.raises(LmforgeError, match=re.escape(says)):
        from_dict(TrainConfig, {key: value}, prefix="train.")
