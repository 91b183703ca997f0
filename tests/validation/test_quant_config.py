"""Quantization configs that a plugin rejects, or that no installed plugin handles."""

from __future__ import annotations

from pathlib import Path

import torch
from validation_support import FP8_CONFIG, checkpoint_tensors, expect_refusal

from kvcore import QuantConfigError
from kvcore.testing import write_checkpoint


def test_config_failing_the_plugins_pydantic_model(model: torch.nn.Module, tmp_path: Path) -> None:
    # The real kvcore-fp8 plugin: kv_cache_scheme is the string "static", not a dict.
    config = {**FP8_CONFIG, "kv_cache_scheme": {"num_bits": 8, "type": "float"}}
    ckpt = write_checkpoint(tmp_path, checkpoint_tensors(model), quantization_config=config)
    expect_refusal(
        model, ckpt, QuantConfigError, str(tmp_path / "config.json"), "quantization_config.kv_cache_scheme",
        "'fp8' (kvcore-fp8", "Correct the config in", "re-export the checkpoint",
    )


def test_unknown_quantization_method(model: torch.nn.Module, tmp_path: Path) -> None:
    config = {"quant_method": "awq-kv", "bits": 4}
    ckpt = write_checkpoint(tmp_path, checkpoint_tensors(model), quantization_config=config)
    expect_refusal(
        model, ckpt, QuantConfigError, str(tmp_path / "config.json"), "'awq-kv'", "no installed kvcore plugin",
        "'fp8' (kvcore-fp8", "'quark' (kvcore-quark", "'compressed-tensors' (kvcore-compressed-tensors",
        "pip install kvcore-awq-kv", "strict=False",
    )
