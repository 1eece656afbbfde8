"""bf16 autocast by default only where the hardware computes bf16 natively."""

import torch

from hybridlab.core import hardware
from hybridlab.training import trainer


def _flags(monkeypatch, flags):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: tuple(flags))


def test_cpu_bf16_is_native_only_with_its_flags(monkeypatch):
    _flags(monkeypatch, ["avx2", "fma"])
    assert not hardware.native_bf16("cpu")
    _flags(monkeypatch, ["avx2", "avx512_bf16"])
    assert hardware.native_bf16("cpu")
    _flags(monkeypatch, ["amx_bf16"])
    assert hardware.native_bf16("cpu")
    assert not hardware.native_bf16("meta")


def test_unset_autocast_follows_the_hardware_and_explicit_settings_win(monkeypatch):
    model = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)

    def dtype_under(setting):
        with trainer._autocast(trainer.TrainerSettings(total_steps=1, bf16_autocast=setting), model):
            return model(x).dtype

    monkeypatch.setattr(trainer, "native_bf16", lambda device: False)
    assert dtype_under(None) == torch.float32
    assert dtype_under(True) == torch.bfloat16
    monkeypatch.setattr(trainer, "native_bf16", lambda device: True)
    assert dtype_under(None) == torch.bfloat16
    assert dtype_under(False) == torch.float32
