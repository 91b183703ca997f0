"""The baseline every refusal test relies on: the valid checkpoint loads and changes everything.

Without it, "the model is bit-identical after the error" could hold because the checkpoint
would never have changed the model in the first place.
"""

from __future__ import annotations

from pathlib import Path

import torch
from validation_support import changed, snapshot

import kvcore


def test_the_valid_checkpoint_changes_every_parameter_and_buffer(model: torch.nn.Module, ckpt: Path) -> None:
    before = snapshot(model)
    report = kvcore.load(model, ckpt)
    assert changed(model, before) == set(before)
    assert "model.rope_freqs" in report.loaded
    assert report.kv_scale_sources["model.layers.1.self_attn.attn"]["k_scale"] == "model.layers.1.self_attn.k_scale"
