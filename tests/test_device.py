"""Choosing where and in which arithmetic PyTorch runs."""

import pytest
import torch

from calmdown import device as device_module
from calmdown.device import training_dtype
from calmdown.errors import InputError

CPU = torch.device("cpu")


def test_float32_never_autocasts():
    assert training_dtype(CPU, "float32") is None


@pytest.mark.parametrize("native", [True, False])
def test_auto_takes_bfloat16_only_where_the_device_has_it_natively(monkeypatch, native):
    monkeypatch.setattr(device_module, "native_bfloat16", lambda device: native)
    assert training_dtype(CPU, "auto") == (torch.bfloat16 if native else None)
    if native:
        assert training_dtype(CPU, "bfloat16") == torch.bfloat16


def test_bfloat16_is_refused_where_it_would_be_emulated(monkeypatch):
    monkeypatch.setattr(device_module, "native_bfloat16", lambda device: False)
    with pytest.raises(InputError, match=r"no native bfloat16.*--precision auto or float32"):
        training_dtype(CPU, "bfloat16")


def test_an_unknown_device_has_no_native_bfloat16():
    assert not device_module.native_bfloat16(torch.device("meta"))
