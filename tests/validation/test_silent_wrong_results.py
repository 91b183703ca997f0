"""Loads that used to succeed with the wrong values: now right, or refused naming the culprit.

- a regex rule spelled with a numeric escape (``\\x2e``, ``\\056``, ``\\u002e``) applies (the
  literal-tail shortcut misread it, and with ``strict=False`` k_scale took v_scale's value);
- a ``WeightsMapper`` subclass passed as ``mapper=`` keeps its own ``map_name`` when plugins
  contribute;
- ``config.json`` and ``hf_quant_config.json`` that contradict each other are a
  ``QuantConfigError`` naming both files (config.json no longer wins silently).

(A dangling or looping ``config.json`` / ``hf_quant_config.json``: test_checkpoint_paths.py.)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from validation_support import FP8_CONFIG, checkpoint_tensors, expect_refusal, reference_model

import kvcore
from kvcore import QuantConfigError, WeightsMapper
from kvcore._mapper import _literal_tail
from kvcore.testing import write_checkpoint

K = "model.layers.0.self_attn.k_scale"


@pytest.mark.parametrize("dot", [r"\x2e", r"\056", r"\u002e", r"\U0000002e", r"\N{FULL STOP}", r"\."])
def test_a_rule_with_an_escaped_dot_applies(dot: str) -> None:
    mapper = WeightsMapper(orig_to_new_regex={
        rf"self_attn{dot}k_scale$": "self_attn.attn.k_scale",
        r"self_attn\.v_scale$": "self_attn.attn.v_scale",
    })
    assert mapper.map_name(K) == "model.layers.0.self_attn.attn.k_scale"
    assert mapper.map_name(K.replace("k_", "v_")) == "model.layers.0.self_attn.attn.v_scale"
    assert mapper.map_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize("pattern", [r"\x2ek_scale$", r"\056k_scale$", r"\u002ek_scale$", r"\dk_scale$", r"\n$"])
def test_the_literal_tail_of_a_pattern_with_an_escaped_letter_or_digit_is_unknown(pattern: str) -> None:
    import re

    assert _literal_tail(re.compile(pattern)) == ""


def test_k_scale_does_not_silently_take_v_scales_value(tmp_path: Path) -> None:
    model = reference_model()
    tensors = checkpoint_tensors(model)  # k 0.0125, v 0.025 in layer 0: unquantized, no plugin renames them
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors)
    mapper = WeightsMapper(orig_to_new_regex={
        r"self_attn\x2ek_scale$": "self_attn.attn.k_scale",
        r"self_attn\.v_scale$": "self_attn.attn.v_scale",
    })
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be skipped
        report = kvcore.load(model, ckpt, mapper=mapper, strict=False)
    layer = report.kv_scales["model.layers.0.self_attn.attn"]
    assert layer["k_scale"] == pytest.approx(0.0125) and layer["v_scale"] == pytest.approx(0.025)
    assert report.unexpected == []


class Prefixed(WeightsMapper):
    """An engine's mapper with its own map_name: the checkpoint's names live under ``inner.``."""

    def map_name(self, name: str) -> str | None:
        mapped = super().map_name(name)
        return None if mapped is None else f"inner.{mapped}"


def test_a_mapper_subclass_keeps_its_map_name_when_plugins_contribute(tmp_path: Path) -> None:
    inner = reference_model()
    tensors = checkpoint_tensors(inner)
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, quantization_config=FP8_CONFIG)  # the fp8 plugin contributes
    outer = torch.nn.Module()
    outer.inner = inner
    report = kvcore.load(outer, ckpt, mapper=Prefixed())
    assert report.plugins == ["fp8"] and report.unexpected == [] and report.missing == []
    assert report.kv_scales["inner.model.layers.1.self_attn.attn"]["v_scale"] == pytest.approx(0.05)
    assert torch.equal(inner.model.norm.weight, tensors["model.norm.weight"])


def test_a_mapper_subclass_dropping_a_name_drops_it(tmp_path: Path) -> None:
    class DropNorm(Prefixed):
        def map_name(self, name: str) -> str | None:
            return None if name == "model.norm.weight" else super().map_name(name)

    inner = reference_model()
    ckpt = write_checkpoint(tmp_path / "ckpt", checkpoint_tensors(inner), quantization_config=FP8_CONFIG)
    outer = torch.nn.Module()
    outer.inner = inner
    with pytest.warns(UserWarning, match="inner.model.norm.weight"):
        report = kvcore.load(outer, ckpt, mapper=DropNorm(), strict=False)
    assert "model.norm.weight" in report.dropped and report.missing == ["inner.model.norm.weight"]


MODELOPT_CONFIG = {"quant_method": "modelopt", "quant_algo": "FP8",
                   "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"}}


def _hf_quant_config(ckpt: Path, kv: str | None, algo: str | None = "FP8") -> None:
    (ckpt / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": algo, "kv_cache_quant_algo": kv}}
    ))


@pytest.mark.parametrize(
    ("config", "kv", "words"),
    [
        (FP8_CONFIG, "FP8", "declares quant_method 'fp8'"),
        ({**MODELOPT_CONFIG, "kv_cache_scheme": "NVFP4"}, "FP8", "declares KV cache algorithm 'NVFP4'"),
        (MODELOPT_CONFIG, "NVFP4", "declares KV cache algorithm 'FP8'"),
        ({**MODELOPT_CONFIG, "quant_algo": "NVFP4"}, "FP8", "declares quant_algo 'NVFP4'"),
    ],
    ids=["other-method", "kv-nvfp4-vs-fp8", "kv-fp8-vs-nvfp4", "weights"],
)
def test_config_json_and_hf_quant_config_json_disagreeing(
    tmp_path: Path, config: dict, kv: str, words: str
) -> None:
    model = reference_model()
    ckpt = write_checkpoint(tmp_path / "ckpt", checkpoint_tensors(model), quantization_config=config)
    _hf_quant_config(ckpt, kv)
    for strict in (True, False):
        expect_refusal(model, ckpt, QuantConfigError, str(ckpt / "config.json"), "hf_quant_config.json", words,
                       "disagree", strict=strict)


@pytest.mark.parametrize(
    ("config", "kv", "algo"),
    [(MODELOPT_CONFIG, "FP8", "FP8"), ({**MODELOPT_CONFIG, "kv_cache_scheme": "nvfp4"}, "NVFP4", "FP8"),
     (FP8_CONFIG, None, None)],
    ids=["modelopt-agreeing", "case-insensitive", "hf-quant-config-without-quantization"],
)
def test_config_json_and_hf_quant_config_json_agreeing(
    tmp_path: Path, config: dict, kv: str | None, algo: str | None
) -> None:
    from kvcore._checkpoint.reader import read_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt", checkpoint_tensors(reference_model()), quantization_config=config)
    _hf_quant_config(ckpt, kv, algo)
    assert read_checkpoint(ckpt).quant_config.quant_method == config["quant_method"]  # type: ignore[union-attr]
