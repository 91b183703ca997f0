"""kvcore-quark: config validation, the hook, the mapping table, and mapper properties."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from formats_support import FIXTURES, mapper_property_tests

import kvcore
import kvcore_quark
from kvcore_quark import get_cache_scale_mapper
from kvcore_quark.config import parse_config

GENUINE: dict[str, Any] = json.loads((FIXTURES / "quark/fp8_kv_attn_fp8_eager/config.json").read_text())[
    "quantization_config"
]
SOURCE = "/ckpt/config.json:quantization_config"
Raw = dict[str, Any]


def genuine() -> Raw:
    return copy.deepcopy(GENUINE)


def kv_and_weights_only() -> Raw:
    """No attention quantization: no q output spec, no softmax spec."""
    raw = genuine()
    del raw["softmax_quant_spec"]
    raw["layer_quant_config"]["*q_proj"]["output_tensors"] = None
    return raw


def post_rope() -> Raw:
    raw = kv_and_weights_only()
    raw["kv_cache_post_rope"] = True
    return raw


def kv_spec_only_in_layer_config() -> Raw:
    """Older Quark exports (and what vLLM reads): the KV spec lives in ``layer_quant_config``."""
    raw = kv_and_weights_only()
    del raw["kv_cache_quant_config"]
    return raw


def kv_not_quantized() -> Raw:
    raw = kv_and_weights_only()
    raw["export"]["kv_cache_group"] = []
    del raw["kv_cache_quant_config"], raw["kv_cache_post_rope"]
    for group in ("*k_proj", "*v_proj"):
        raw["layer_quant_config"][group]["output_tensors"] = None
    return raw


GOOD: dict[str, Callable[[], Raw]] = {
    "genuine Quark 0.13, kv + attention, eager": genuine,
    "kv and weights only": kv_and_weights_only,
    "kv_cache_post_rope true": post_rope,
    "kv spec only in layer_quant_config": kv_spec_only_in_layer_config,
    "kv cache not quantized": kv_not_quantized,
    "minimal": lambda: {"quant_method": "quark"},
}


@pytest.mark.parametrize("make", GOOD.values(), ids=GOOD.keys())
def test_every_quark_variant_is_accepted_and_gets_the_mapper(make: Callable[[], Raw]) -> None:
    raw = make()
    config = parse_config(raw, SOURCE)
    assert config.quant_method == "quark"
    mapper = get_cache_scale_mapper(kvcore.QuantConfig("quark", raw, SOURCE))
    assert mapper is not None
    assert mapper.map_name("a.k_proj.output_scale") == "a.attn.k_scale"


def test_config_exposes_what_the_genuine_export_says() -> None:
    config = parse_config(genuine())
    assert config.kv_cache_group == ["*k_proj", "*v_proj"]
    assert config.kv_cache_post_rope is False
    assert config.softmax_quant_spec is not None and config.softmax_quant_spec.dtype == "fp8_e4m3"
    assert parse_config(post_rope()).kv_cache_post_rope is True


def _set(path: str, value: Any) -> Callable[[], Raw]:
    """A genuine config with the dotted ``path`` set to ``value`` (keys may contain '*')."""

    def make() -> Raw:
        raw = genuine()
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
        return raw

    return make


def _layer_only(dtype: str) -> Callable[[], Raw]:
    def make() -> Raw:
        raw = kv_spec_only_in_layer_config()
        raw["layer_quant_config"]["*k_proj"]["output_tensors"]["dtype"] = dtype
        return raw

    return make


def _without(path: str) -> Callable[[], Raw]:
    def make() -> Raw:
        raw = genuine()
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        del node[last]
        return raw

    return make


KV_V = "kv_cache_quant_config.*v_proj.output_tensors"
UNSUPPORTED = {
    "int8 kv": (_set(f"{KV_V}.dtype", "int8"), f"{KV_V}.dtype is 'int8'"),
    "uint8 kv": (_set(f"{KV_V}.dtype", "uint8"), f"{KV_V}.dtype is 'uint8'"),
    "fp8_e5m2 kv": (_set(f"{KV_V}.dtype", "fp8_e5m2"), f"{KV_V}.dtype is 'fp8_e5m2'"),
    "per-channel kv": (_set(f"{KV_V}.qscheme", "per_channel"), f"{KV_V}.qscheme is 'per_channel'"),
    "dynamic kv": (_set(f"{KV_V}.is_dynamic", True), f"{KV_V}.is_dynamic is true"),
    "asymmetric kv": (_set(f"{KV_V}.symmetric", False), f"{KV_V}.symmetric is false"),
    "int8 kv in layer_quant_config": (
        _layer_only("int8"),
        "layer_quant_config.*k_proj.output_tensors.dtype is 'int8'",
    ),
    "int8 softmax": (_set("softmax_quant_spec.dtype", "int8"), "softmax_quant_spec.dtype is 'int8'"),
    "per-group softmax": (_set("softmax_quant_spec.qscheme", "per_group"), "softmax_quant_spec.qscheme"),
}


@pytest.mark.parametrize(("make", "field"), UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_kv_or_softmax_spec_other_than_per_tensor_fp8_e4m3_is_refused(make: Callable[[], Raw], field: str) -> None:
    with pytest.raises(kvcore.QuantConfigError) as info:
        get_cache_scale_mapper(kvcore.QuantConfig("quark", make(), SOURCE))
    message = str(info.value)
    assert f"quantization_config.{field}" in message
    assert SOURCE in message
    assert "supports only a static, symmetric, per-tensor fp8_e4m3" in message


MALFORMED = {
    "group without spec": (
        _set("export.kv_cache_group", ["*k_proj", "*v_proj", "*o_proj"]),
        "export.kv_cache_group names '*o_proj'",
    ),
    "group not a list": (_set("export.kv_cache_group", "*k_proj"), "export.kv_cache_group"),
    "post_rope not a bool": (_set("kv_cache_post_rope", "yes"), "kv_cache_post_rope"),
    "spec without dtype": (
        _without("kv_cache_quant_config.*k_proj.output_tensors.dtype"),
        "kv_cache_quant_config.*k_proj.output_tensors.dtype",
    ),
    "softmax not an object": (_set("softmax_quant_spec", "fp8"), "softmax_quant_spec"),
    "kv config not an object": (_set("kv_cache_quant_config", ["*k_proj"]), "kv_cache_quant_config"),
}


@pytest.mark.parametrize(("make", "field"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_config_names_the_field(make: Callable[[], Raw], field: str) -> None:
    with pytest.raises(kvcore.QuantConfigError, match=re.escape(f"quantization_config.{field}")) as info:
        parse_config(make(), SOURCE)
    assert SOURCE in str(info.value)
    assert "kvcore supports" not in str(info.value)  # said where a spec is refused, not for a malformed field


def test_field_paths_follow_the_key_the_config_came_from() -> None:
    raw = _set(f"{KV_V}.dtype", "int8")()
    with pytest.raises(kvcore.QuantConfigError, match=re.escape(f"compression_config.{KV_V}.dtype")):
        parse_config(raw, "/ckpt/config.json:compression_config")


@pytest.mark.parametrize("method", ["fp8", "compressed-tensors", "modelopt", "awq", "Quark"])
def test_other_methods_get_none_even_with_a_config_quark_would_refuse(method: str) -> None:
    raw = {**_set(f"{KV_V}.dtype", "int8")(), "quant_method": method}
    assert get_cache_scale_mapper(kvcore.QuantConfig(method, raw)) is None


def test_plugin_is_found_through_its_entry_point() -> None:
    pm = kvcore.get_plugin_manager()
    assert pm.get_plugin("quark") is kvcore_quark
    results = pm.hook.get_cache_scale_mapper(quant_config=kvcore.QuantConfig("quark", genuine()))
    assert len(results) == 1 and results[0].map_name("a.q_proj.output_scale") == "a.attn.q_scale"


MAPPER = get_cache_scale_mapper(kvcore.QuantConfig("quark", genuine()))
assert MAPPER is not None
L0 = "model.layers.0.self_attn"
TABLE = {
    f"{L0}.k_proj.output_scale": f"{L0}.attn.k_scale",
    f"{L0}.v_proj.output_scale": f"{L0}.attn.v_scale",
    f"{L0}.q_proj.output_scale": f"{L0}.attn.q_scale",
    f"{L0}.prob_output_scale": f"{L0}.attn.prob_scale",
    "model.language_model.layers.17.self_attn.k_proj.output_scale": (
        "model.language_model.layers.17.self_attn.attn.k_scale"
    ),
    # Not Quark KV scales: left alone.
    f"{L0}.o_proj.output_scale": f"{L0}.o_proj.output_scale",
    f"{L0}.k_proj.weight_scale": f"{L0}.k_proj.weight_scale",
    f"{L0}.k_proj.input_scale": f"{L0}.k_proj.input_scale",
    f"{L0}.attn.k_scale": f"{L0}.attn.k_scale",
    f"{L0}.k_scale": f"{L0}.k_scale",
    "model.layers.0.mlp.gate_proj.output_scale": "model.layers.0.mlp.gate_proj.output_scale",
}


(
    test_mapping_table,
    test_mapper_is_idempotent,
    test_mapper_leaves_weights_and_mapped_scales_alone,
    test_mapper_only_ever_produces_attention_targets,
) = mapper_property_tests(MAPPER, TABLE, r"\.attn\.(k|v|q|prob)_scale$")
