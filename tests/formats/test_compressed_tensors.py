"""kvcore-compressed-tensors: config validation, the hook, the mapping table, and mapper properties."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from formats_support import FIXTURES, mapper_property_tests

import kvcore
import kvcore_compressed_tensors
from kvcore_compressed_tensors import get_cache_scale_mapper
from kvcore_compressed_tensors.config import parse_config

GENUINE: dict[str, Any] = json.loads((FIXTURES / "llmcompressor/fp8_kv_tensor/config.json").read_text())[
    "quantization_config"
]
SOURCE = "/ckpt/config.json:quantization_config"
METHOD = "compressed-tensors"
Raw = dict[str, Any]


def genuine(**scheme: Any) -> Raw:
    """The genuine llm-compressor 0.14 config, with ``kv_cache_scheme`` fields overridden."""
    raw = copy.deepcopy(GENUINE)
    raw["kv_cache_scheme"].update(scheme)
    return raw


def attention_quantized() -> Raw:
    """llm-compressor's attention quantization: a config group targeting the attention class."""
    raw = genuine()
    raw["config_groups"]["attention"] = {
        "targets": ["LlamaAttention"],
        "input_activations": dict(raw["kv_cache_scheme"]),
        "weights": None,
    }
    return raw


def without_kv_scheme() -> Raw:
    raw = attention_quantized()
    del raw["kv_cache_scheme"]
    return raw


GOOD = {
    "genuine, per tensor": genuine(),
    "per head (attn_head)": genuine(strategy="attn_head"),
    "strategy omitted": genuine(strategy=None),
    "attention quantized": attention_quantized(),
    "no kv_cache_scheme": without_kv_scheme(),
    "kv_cache_scheme null": {**genuine(), "kv_cache_scheme": None},
    "minimal": {"quant_method": METHOD},
}


@pytest.mark.parametrize("raw", GOOD.values(), ids=GOOD.keys())
def test_every_variant_is_accepted_and_gets_the_mapper(raw: Raw) -> None:
    parse_config(raw, SOURCE)
    mapper = get_cache_scale_mapper(kvcore.QuantConfig(METHOD, raw, SOURCE))
    assert mapper is not None
    assert mapper.map_name("a.q_scale") == "a.attn.q_scale"
    assert mapper.map_name("a.v_proj.output_scale") == "a.attn.v_scale"


def test_per_head_strategy_is_reported() -> None:
    assert parse_config(genuine(strategy="attn_head")).per_head
    assert not parse_config(genuine()).per_head
    assert not parse_config(without_kv_scheme()).per_head


REFUSED = {
    "int8 asymmetric": ({"type": "int", "symmetric": False}, ["kv_cache_scheme.type", "kv_cache_scheme.symmetric"]),
    "int8 symmetric": ({"type": "int"}, ["kv_cache_scheme.type"]),
    "fp8 asymmetric": ({"symmetric": False}, ["kv_cache_scheme.symmetric"]),
    "4 bits": ({"num_bits": 4}, ["kv_cache_scheme.num_bits"]),
    "per channel": ({"strategy": "channel"}, ["kv_cache_scheme.strategy"]),
    "per token": ({"strategy": "token"}, ["kv_cache_scheme.strategy"]),
    "dynamic": ({"dynamic": True}, ["kv_cache_scheme.dynamic"]),
    "dynamic local": ({"dynamic": "local"}, ["kv_cache_scheme.dynamic"]),
}


@pytest.mark.parametrize(("scheme", "fields"), REFUSED.values(), ids=REFUSED.keys())
def test_unsupported_kv_cache_scheme_is_refused_naming_the_field(scheme: Raw, fields: list[str]) -> None:
    with pytest.raises(kvcore.QuantConfigError) as info:
        get_cache_scale_mapper(kvcore.QuantConfig(METHOD, genuine(**scheme), SOURCE))
    message = str(info.value)
    for field in fields:
        assert f"quantization_config.{field}" in message
    assert SOURCE in message
    assert "kvcore supports a static, symmetric fp8 KV cache" in message


def test_asymmetric_refusal_says_it_is_never_loaded_as_symmetric() -> None:
    with pytest.raises(kvcore.QuantConfigError, match="never loads it as if it were symmetric"):
        parse_config(genuine(type="int", symmetric=False))


def test_omitted_type_means_int_as_in_compressed_tensors() -> None:
    raw = genuine()
    del raw["kv_cache_scheme"]["type"]
    with pytest.raises(kvcore.QuantConfigError, match=r"kv_cache_scheme\.type"):
        parse_config(raw)


MALFORMED = {
    "scheme as a string": ({**genuine(), "kv_cache_scheme": "static"}, "kv_cache_scheme"),
    "symmetric as a string": (genuine(symmetric="no"), "kv_cache_scheme.symmetric"),
    "num_bits as a word": (genuine(num_bits="eight"), "kv_cache_scheme.num_bits"),
    "config_groups as a list": ({**genuine(), "config_groups": ["group_0"]}, "config_groups"),
    "targets as a string": (
        {**genuine(), "config_groups": {"group_0": {"targets": "Linear"}}},
        "config_groups.group_0.targets",
    ),
    "ignore as a string": ({**genuine(), "ignore": "lm_head"}, "ignore"),
}


@pytest.mark.parametrize(("raw", "field"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_config_names_the_field(raw: Raw, field: str) -> None:
    with pytest.raises(kvcore.QuantConfigError, match=re.escape(f"quantization_config.{field}")) as info:
        parse_config(raw, SOURCE)
    assert SOURCE in str(info.value)
    # What kvcore supports answers a bad KV-cache scheme, not a bad ignore list.
    assert ("kvcore supports" in str(info.value)) == field.startswith("kv_cache_scheme")


def test_old_compression_config_key_is_named_in_field_paths() -> None:
    with pytest.raises(kvcore.QuantConfigError, match=r"compression_config\.kv_cache_scheme\.symmetric"):
        parse_config(genuine(symmetric=False), "/ckpt/config.json:compression_config")


@pytest.mark.parametrize("method", ["fp8", "quark", "modelopt", "compressed_tensors", "sparseml"])
def test_other_methods_get_none_even_with_a_scheme_this_plugin_would_refuse(method: str) -> None:
    raw = {**genuine(type="int", symmetric=False), "quant_method": method}
    assert get_cache_scale_mapper(kvcore.QuantConfig(method, raw)) is None


def test_plugin_is_found_through_its_entry_point() -> None:
    pm = kvcore.get_plugin_manager()
    assert pm.get_plugin(METHOD) is kvcore_compressed_tensors
    results = pm.hook.get_cache_scale_mapper(quant_config=kvcore.QuantConfig(METHOD, genuine()))
    assert len(results) == 1 and results[0].map_name("a.v_scale") == "a.attn.v_scale"


MAPPER = get_cache_scale_mapper(kvcore.QuantConfig(METHOD, genuine()))
assert MAPPER is not None
L0 = "model.layers.0.self_attn"
TABLE = {
    # current names (tensor and attn_head strategies alike)
    f"{L0}.k_scale": f"{L0}.attn.k_scale",
    f"{L0}.v_scale": f"{L0}.attn.v_scale",
    f"{L0}.q_scale": f"{L0}.attn.q_scale",
    # zero points, which the core drops when all zero and refuses otherwise
    f"{L0}.k_zero_point": f"{L0}.attn.k_zero_point",
    f"{L0}.v_zero_point": f"{L0}.attn.v_zero_point",
    f"{L0}.q_zero_point": f"{L0}.attn.q_zero_point",
    # legacy (before Aug 2024)
    f"{L0}.k_proj.output_scale": f"{L0}.attn.k_scale",
    f"{L0}.v_proj.output_scale": f"{L0}.attn.v_scale",
    f"{L0}.q_proj.output_scale": f"{L0}.attn.q_scale",
    "model.language_model.layers.9.self_attn.k_scale": "model.language_model.layers.9.self_attn.attn.k_scale",
    # not KV scales, or already mapped: left alone
    f"{L0}.k_proj.weight_scale": f"{L0}.k_proj.weight_scale",
    f"{L0}.k_proj.input_scale": f"{L0}.k_proj.input_scale",
    f"{L0}.k_proj.weight_zero_point": f"{L0}.k_proj.weight_zero_point",
    f"{L0}.attn.k_scale": f"{L0}.attn.k_scale",
    f"{L0}.attn.q_zero_point": f"{L0}.attn.q_zero_point",
    f"{L0}.o_proj.output_scale": f"{L0}.o_proj.output_scale",
    f"{L0}.prob_scale": f"{L0}.prob_scale",
}


(
    test_mapping_table,
    test_mapper_is_idempotent,
    test_mapper_leaves_weights_and_mapped_scales_alone,
    test_mapper_only_ever_produces_attention_targets,
) = mapper_property_tests(MAPPER, TABLE, r"\.attn\.[kvq]_(scale|zero_point)$")
