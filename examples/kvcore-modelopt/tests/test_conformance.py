"""kvcore's conformance check, as a plugin author runs it in CI."""

from __future__ import annotations

import kvcore_modelopt
import pytest

import kvcore
from kvcore.testing import REAL_LOOKING_NAMES, assert_maps, check_plugin

OWN = [
    {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_scheme": {"num_bits": 8, "type": "float"}},
    {"quant_method": "modelopt", "quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"},
    {"quant_method": "modelopt", "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}},
    {"quant_method": "modelopt", "quant_algo": "FP8"},  # weights only, no KV quantization
    kvcore.QuantConfig("modelopt", {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}),  # hf_quant_config only
    {"quant_method": "modelopt", "kv_cache_scheme": "NVFP4"},  # NVFP4 KV: same names, amax/448
    {"quant_method": "modelopt", "kv_cache_quant_algo": "NVFP4"},
]
BAD = [
    {"quant_method": "modelopt", "kv_cache_quant_algo": "NVFP4_AFFINE"},
    {"quant_method": "modelopt", "kv_cache_scheme": {"num_bits": 8, "type": "float", "symmetric": False}},
    {"quant_method": "modelopt", "kv_cache_quant_algo": "INT8"},
    {"quant_method": "modelopt", "kv_cache_quant_algo": "FP8", "kv_cache_scheme": "NVFP4"},
    {"quant_method": "modelopt", "kv_cache_scheme": 8},
]


def test_plugin_conforms() -> None:
    check_plugin(kvcore_modelopt, own_configs=OWN, bad_configs=BAD)


def test_name_table() -> None:
    p = "model.layers.3.self_attn"
    assert_maps(
        kvcore_modelopt.KV_SCALE_MAPPER,
        {
            f"{p}.k_proj.k_scale": f"{p}.attn.k_scale",
            f"{p}.v_proj.v_scale": f"{p}.attn.v_scale",
            f"{p}.k_proj.k_bias": f"{p}.attn.k_zero_point",
            f"{p}.v_proj.v_bias": f"{p}.attn.v_zero_point",
            f"{p}.attn.k_scale": f"{p}.attn.k_scale",
            f"{p}.k_proj.weight_scale": f"{p}.k_proj.weight_scale",
            f"{p}.k_proj.input_scale": f"{p}.k_proj.input_scale",
            f"{p}.k_scale": f"{p}.k_scale",  # compressed-tensors' name: not ModelOpt's, left alone
        },
    )


def test_only_kv_names_change() -> None:
    changed = {n for n in REAL_LOOKING_NAMES if kvcore_modelopt.KV_SCALE_MAPPER.map_name(n) != n}
    assert changed and all(n.endswith(("k_proj.k_scale", "v_proj.v_scale", "k_proj.k_bias", "v_proj.v_bias"))
                           for n in changed)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"kv_cache_quant_algo": "NVFP4_AFFINE"}, "affine"),
        ({"kv_cache_quant_algo": "FP8_AFFINE"}, "affine"),
        ({"kv_cache_scheme": {"num_bits": 8, "type": "float", "symmetric": False}}, "affine"),
        ({"kv_cache_quant_algo": "INT8"}, "fp8 KV caches only"),
        ({"kv_cache_quant_algo": "FP8", "kv_cache_scheme": "NVFP4"}, "two KV-cache algorithms"),
        ({"kv_cache_scheme": {"num_bits": "eight"}}, "kv_cache_scheme"),
    ],
)
def test_refusals_say_why_and_what_to_do(raw: dict[str, object], words: str) -> None:
    with pytest.raises(kvcore.QuantConfigError, match=words) as caught:
        kvcore_modelopt.get_cache_scale_mapper(kvcore.QuantConfig("modelopt", raw))
    if "affine" in words:
        assert "Supported: FP8" in str(caught.value) and "kv_cache_qformat='fp8'" in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "model", "expected"),
    [
        ({"kv_cache_quant_algo": "FP8"}, {"model_type": "qwen3"}, kvcore.ScaleMeaning("kv", "fp8", rope="post")),
        ({"kv_cache_scheme": "NVFP4"}, {"model_type": "qwen3"}, kvcore.ScaleMeaning("kv", "nvfp4", rope="post")),
        (
            {"kv_cache_quant_algo": "FP8"},
            {"kv_lora_rank": 512},
            kvcore.ScaleMeaning("mla_per_head", "fp8", rope="post"),
        ),
    ],
    ids=["fp8", "nvfp4", "mla"],
)
def test_meaning(raw: dict[str, object], model: dict[str, object], expected: kvcore.ScaleMeaning) -> None:
    config = kvcore.QuantConfig("modelopt", raw, model_config=model)
    assert kvcore_modelopt.get_cache_scale_meaning(config) == expected
