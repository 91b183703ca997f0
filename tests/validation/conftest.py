"""Fixtures of the validation tests (helpers in ``validation_support``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from validation_support import FP8_CONFIG, checkpoint_tensors, reference_model

from kvcore.testing import write_checkpoint


@pytest.fixture
def model() -> torch.nn.Module:
    return reference_model()


@pytest.fixture
def ckpt(tmp_path: Path, model: torch.nn.Module) -> Path:
    """A valid two-shard fp8 checkpoint for ``model`` (AutoFP8 KV-scale names)."""
    return write_checkpoint(tmp_path / "ckpt", checkpoint_tensors(model), quantization_config=FP8_CONFIG, shards=2)


