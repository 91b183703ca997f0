"""kvcore-fp8: config validation for its three producers, the hook, the mapping table, mapper properties."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from formats_support import FIXTURES, mapper_property_tests

import kvcore
import kvcore_fp8
from kvcore_fp8 import get_cache_scale_mapper
from kvcore_fp8.config import parse_config

GENUINE: dict[str, Any] = json.loads((FIXTURES / "autofp8/head_k_v_scale/config.json").read_text())[
    "quantization_config"
]
SOURCE = "/ckpt/config.json:quantization_config"
Raw = dict[str, Any]

AUTOFP8 = GENUINE
AUTOFP8_DYNAMIC = {**GENUINE, "activation_scheme": "dynamic"}
QUARK_FP8_EXPORT = {
    "quant_method": "fp8",
    "activation_scheme": "static",
    "kv_cache_scheme": "static",
    "ignored_layers": ["lm_head"],
    "export": {"kv_cache_group": ["*k_proj", "*v_proj"], "pack_method": "reorder"},
}
HF_BLOCK_FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
DEEPSEEK_BLOCK_FP8 = {**HF_BLOCK_FP8, "fmt": "e4m3"}
KV_VARIANTS = {"AutoFP8": AUTOFP8, "AutoFP8 dynamic": AUTOFP8_DYNAMIC, "Quark fp8 export": QUARK_FP8_EXPORT}
BLOCK_VARIANTS = {"HF FineGrainedFP8": HF_BLOCK_FP8, "DeepSeek": DEEPSEEK_BLOCK_FP8}


@pytest.mark.parametrize("raw", KV_VARIANTS.values(), ids=KV_VARIANTS.keys())
def test_producers_with_kv_scales_get_the_kv_mapper(raw: Raw) -> None:
    mapper = get_cache_scale_mapper(kvcore.QuantConfig("fp8", raw, SOURCE))
    assert mapper is not None
    assert mapper.map_name("a.self_attn.k_scale") == "a.self_attn.attn.k_scale"
    assert not parse_config(raw).is_block_fp8


@pytest.mark.parametrize("raw", BLOCK_VARIANTS.values(), ids=BLOCK_VARIANTS.keys())
def test_block_fp8_gets_an_empty_mapper_so_the_format_counts_as_handled(raw: Raw) -> None:
    mapper = get_cache_scale_mapper(kvcore.QuantConfig("fp8", raw, SOURCE))
    assert mapper == kvcore.WeightsMapper()
    assert mapper is not None and mapper.map_name("a.self_attn.k_scale") == "a.self_attn.k_scale"
    assert parse_config(raw).is_block_fp8


def test_block_fp8_that_declares_static_kv_scales_gets_the_kv_mapper() -> None:
    raw = {**HF_BLOCK_FP8, "kv_cache_scheme": "static"}
    mapper = get_cache_scale_mapper(kvcore.QuantConfig("fp8", raw))
    assert mapper is not None and mapper.map_name("a.v_scale") == "a.attn.v_scale"


BAD = {
    "kv_cache_scheme dynamic": ({**AUTOFP8, "kv_cache_scheme": "dynamic"}, "kv_cache_scheme"),
    "kv_cache_scheme dict": ({**AUTOFP8, "kv_cache_scheme": {"num_bits": 8}}, "kv_cache_scheme"),
    "activation_scheme unknown": ({**AUTOFP8, "activation_scheme": "sometimes"}, "activation_scheme"),
    "ignored_layers a string": ({**AUTOFP8, "ignored_layers": "lm_head"}, "ignored_layers"),
    "block size of one int": ({**HF_BLOCK_FP8, "weight_block_size": [128]}, "weight_block_size"),
    "block size with zero": ({**HF_BLOCK_FP8, "weight_block_size": [0, 128]}, "weight_block_size"),
    "export a list": ({**QUARK_FP8_EXPORT, "export": ["kv"]}, "export"),
}


@pytest.mark.parametrize(("raw", "field"), BAD.values(), ids=BAD.keys())
def test_bad_config_is_refused_naming_file_and_field(raw: Raw, field: str) -> None:
    with pytest.raises(kvcore.QuantConfigError, match=re.escape(f"quantization_config.{field}")) as info:
        get_cache_scale_mapper(kvcore.QuantConfig("fp8", raw, SOURCE))
    assert SOURCE in str(info.value)


@pytest.mark.parametrize("method", ["quark", "compressed-tensors", "modelopt", "fbgemm_fp8", "FP8"])
def test_other_methods_get_none_even_with_a_config_fp8_would_refuse(method: str) -> None:
    raw = {**AUTOFP8, "kv_cache_scheme": "dynamic", "quant_method": method}
    assert get_cache_scale_mapper(kvcore.QuantConfig(method, raw)) is None


def test_plugin_is_found_through_its_entry_point() -> None:
    pm = kvcore.get_plugin_manager()
    assert pm.get_plugin("fp8") is kvcore_fp8
    results = pm.hook.get_cache_scale_mapper(quant_config=kvcore.QuantConfig("fp8", AUTOFP8))
    assert len(results) == 1 and results[0].map_name("a.v_scale") == "a.attn.v_scale"


MAPPER = get_cache_scale_mapper(kvcore.QuantConfig("fp8", AUTOFP8))
assert MAPPER is not None
L0 = "model.layers.0.self_attn"
TABLE = {
    # AutoFP8 and Quark's deprecated fp8 export
    f"{L0}.k_scale": f"{L0}.attn.k_scale",
    f"{L0}.v_scale": f"{L0}.attn.v_scale",
    # AutoFP8 mid 2024: one value for both (the core copies k into v)
    f"{L0}.kv_scale": f"{L0}.attn.k_scale",
    "model.decoder.layers.3.self_attn.k_scale": "model.decoder.layers.3.self_attn.attn.k_scale",
    # not fp8 KV scales, or already mapped: left alone
    f"{L0}.q_scale": f"{L0}.q_scale",
    f"{L0}.k_proj.weight_scale": f"{L0}.k_proj.weight_scale",
    f"{L0}.k_proj.input_scale": f"{L0}.k_proj.input_scale",
    f"{L0}.k_proj.weight_scale_inv": f"{L0}.k_proj.weight_scale_inv",
    f"{L0}.attn.k_scale": f"{L0}.attn.k_scale",
    f"{L0}.k_proj.output_scale": f"{L0}.k_proj.output_scale",
}


(
    test_mapping_table,
    test_mapper_is_idempotent,
    test_mapper_leaves_weights_and_mapped_scales_alone,
    test_mapper_only_ever_produces_attention_targets,
) = mapper_property_tests(MAPPER, TABLE, r"\.attn\.[kv]_scale$")
