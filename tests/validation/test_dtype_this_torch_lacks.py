"""A header dtype the installed torch has no dtype for (``F8_E8M0`` before torch 2.7): refused
with a ``CheckpointError`` naming the tensor and the fix, never a ``KeyError``. Simulated here by
hiding ``F8_E8M0`` from kvcore's dtype table, as torch < 2.7 would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import kvcore
from kvcore._checkpoint import safetensors
from kvcore._loading import plan
from kvcore.testing import write_checkpoint

E8M0 = torch.float8_e8m0fnu


@pytest.fixture(autouse=True)
def old_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {name: dtype for name, dtype in safetensors.torch_dtypes().items() if name != "F8_E8M0"}
    monkeypatch.setattr(safetensors, "torch_dtypes", lambda: table)
    monkeypatch.setattr(plan, "DTYPES", table)


def test_a_load_names_the_tensor_and_the_fix(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path, {"w": torch.ones(4, dtype=E8M0), "b": torch.ones(3)})
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(4, dtype=torch.uint8), requires_grad=False)
    model.b = nn.Parameter(torch.zeros(3), requires_grad=False)
    with pytest.raises(kvcore.CheckpointError, match=r"tensor 'w' in .*model\.safetensors is F8_E8M0, .*upgrade torch"):
        kvcore.load(model, ckpt)
    assert not model.b.any() and not model.w.any()  # nothing written


def test_read_kv_scales_names_the_scale(tmp_path: Path) -> None:
    config = {"quant_method": "fp8", "activation_scheme": "static", "kv_cache_scheme": "static"}
    scale = torch.full((), 0.5).to(E8M0)
    ckpt = write_checkpoint(tmp_path, {"model.layers.0.self_attn.k_scale": scale}, quantization_config=config)
    with pytest.raises(kvcore.CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_scale' .* is F8_E8M0"):
        kvcore.read_kv_scales(ckpt)
