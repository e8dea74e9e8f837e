"""The task registry: every spec complete, the per-task CLI options, and unknown task names."""

from __future__ import annotations

import dataclasses

import pytest

from lmforge.errors import LmforgeError
from lmforge.finetuning import FinetuneConfig, build_config
from lmforge.tasks.registry import TASKS, options_of_other_tasks, task_spec
from lmforge.tasks.spec import TaskSpec

QA_ONLY = {"doc_stride", "max_query_len", "max_answer_len", "n_best"}
NER_ONLY = {"token_column", "tag_column", "scheme", "crf", "label_all_pieces"}
CLASSIFY_ONLY = {"text_column", "text_pair_column", "label_column", "pooling"}
SEQ2SEQ_ONLY = {"src_field", "tgt_field", "ref_field", "label_smoothing", "beam", "length_penalty", "max_new_tokens",
                "no_repeat_ngram", "architecture", "tokenizer", "bleu_tokenize", "decoder_start", "src_tokenizer"}  # fmt: skip
CHAT_ONLY = {"chat_template", "pack"}
FROM_SCRATCH = {"architecture", "tokenizer"}  # seq2seq and chat models built from nothing


def test_every_spec_has_every_member_of_the_protocol():
    members = {name for name in dir(TaskSpec) if not name.startswith("_")} | set(TaskSpec.__annotations__)
    for name, spec in TASKS.items():
        missing = sorted(m for m in members if not hasattr(spec, m))
        assert not missing, f"{name}: {missing}"
        assert spec.summary and spec.default_metric


def test_options_are_config_fields_and_each_task_is_offered_only_its_own():
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    for spec in TASKS.values():
        assert set(spec.options) <= fields
    assert set(options_of_other_tasks("classify")) == QA_ONLY | NER_ONLY | SEQ2SEQ_ONLY | CHAT_ONLY
    assert set(options_of_other_tasks("ner")) == QA_ONLY | CLASSIFY_ONLY | SEQ2SEQ_ONLY | CHAT_ONLY
    assert set(options_of_other_tasks("qa")) == NER_ONLY | CLASSIFY_ONLY | SEQ2SEQ_ONLY | CHAT_ONLY | {
        "class_weights"
    }
    assert set(options_of_other_tasks("seq2seq")) == QA_ONLY | NER_ONLY | CLASSIFY_ONLY | CHAT_ONLY | {
        "class_weights"
    }
    assert set(options_of_other_tasks("chat")) == (
        QA_ONLY
        | NER_ONLY
        | CLASSIFY_ONLY
        | (SEQ2SEQ_ONLY - FROM_SCRATCH - {"max_new_tokens"})
        | {"class_weights"}
    )


def test_default_metrics():
    assert {name: spec.default_metric for name, spec in TASKS.items()} == {
        "classify": "accuracy",
        "ner": "f1",
        "qa": "f1",
        "seq2seq": "bleu",
        "chat": "ppl",
    }


def test_an_unknown_task_is_a_config_error_listing_the_known_ones():
    with pytest.raises(
        LmforgeError,
        match=r"config key 'task' is 'summarize'; choose one of classify, ner, qa, seq2seq, chat",
    ):
        task_spec("summarize")
    with pytest.raises(LmforgeError, match="config key 'task' is 'summarize'"):
        build_config({"task": "summarize"}, {}, resume_from=None)
