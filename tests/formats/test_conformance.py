"""The first-party plugins pass the conformance check kvcore ships for plugin authors."""

from __future__ import annotations

import copy
from types import ModuleType
from typing import Any

import pytest
from formats_support import genuine_config, real_names

import kvcore_compressed_tensors
import kvcore_fp8
import kvcore_quark
from kvcore.testing import check_plugin

QUARK = genuine_config("quark/fp8_kv_attn_fp8_eager")["quantization_config"]
CT = genuine_config("llmcompressor/fp8_kv_tensor")["quantization_config"]
AUTOFP8 = genuine_config("autofp8/head_k_v_scale")["quantization_config"]


def quark_kv(dtype: str) -> dict[str, Any]:
    raw = copy.deepcopy(QUARK)
    raw["kv_cache_quant_config"]["*k_proj"]["output_tensors"]["dtype"] = dtype
    return raw


CASES: dict[str, tuple[ModuleType, list[dict[str, Any]], list[dict[str, Any]]]] = {
    "fp8": (
        kvcore_fp8,
        [AUTOFP8, {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}],
        [{**AUTOFP8, "kv_cache_scheme": "dynamic"}],
    ),
    "quark": (kvcore_quark, [QUARK, {"quant_method": "quark"}], [quark_kv("int8"), quark_kv("fp8_e5m2")]),
    "compressed-tensors": (
        kvcore_compressed_tensors,
        [CT, {**CT, "kv_cache_scheme": {**CT["kv_cache_scheme"], "strategy": "attn_head"}}],
        [
            {**CT, "kv_cache_scheme": {**CT["kv_cache_scheme"], "type": "int", "symmetric": False}},
            {**CT, "kv_cache_scheme": {**CT["kv_cache_scheme"], "dynamic": True}},
        ],
    ),
}


@pytest.mark.parametrize(("plugin", "own", "bad"), CASES.values(), ids=CASES.keys())
def test_first_party_plugin_conforms(plugin: ModuleType, own: list[dict[str, Any]], bad: list[dict[str, Any]]) -> None:
    check_plugin(plugin, own_configs=own, bad_configs=bad, names=real_names())
