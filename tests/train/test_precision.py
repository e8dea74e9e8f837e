"""Precision resolution: bf16 on a CPU that only emulates it gets a warning that says what to do."""

import warnings

import pytest
import torch

from lmforge.train import trainer
from lmforge.train.flops import cpu_has_native_bf16
from lmforge.train.trainer import resolve_precision

CPU = torch.device("cpu")


def test_bf16_on_cpu_without_native_bf16_warns(monkeypatch):
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match=r"--train\.precision fp32"):
        assert resolve_precision("bf16", CPU) == "bf16"


@pytest.mark.parametrize(("precision", "native"), [("fp32", False), ("auto", False), ("bf16", True)])
def test_no_warning_otherwise(monkeypatch, precision, native):
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_precision(precision, CPU)


def test_detection_answers_a_bool():
    assert isinstance(cpu_has_native_bf16(), bool)
