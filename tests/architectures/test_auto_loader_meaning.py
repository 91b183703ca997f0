"""AutoWeightsLoader + mapper_for finalises MLA attentions by what the checkpoint's scales mean, as load does."""

from __future__ import annotations

import contextlib
import warnings

import arch_models as am
import arch_support as su
import kvcore_modelopt
import pytest

import kvcore
from kvcore.testing import registered_plugin


def auto_load(fixture: str, use_mla: bool) -> tuple[kvcore.Attention, list[str], dict]:
    case = su.case(fixture)
    built = am.build(case.path, packed=True, use_mla=use_mla)
    registered = kvcore.get_plugin_manager().get_plugin("modelopt") is not None  # found on sys.path
    plugin = contextlib.nullcontext() if registered else registered_plugin(
        kvcore_modelopt, "modelopt", distribution="kvcore-modelopt", version="0.1.0")
    with plugin, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapper = kvcore.mapper_for(case.path)
        kvcore.AutoWeightsLoader(built.model).load_weights(su.read_all(case.path).items(), mapper=mapper)
        read = kvcore.read_kv_scales(case.path, use_mla=use_mla)["model.layers.0.self_attn.attn"]
    return built.model.get_submodule(built.attention[0]), [str(w.message) for w in caught], read


def test_latent_scales_into_an_mla_cache_give_one_scale() -> None:
    attn, _, read = auto_load("llmcompressor/deepseek_v3_fp8_kv_tensor", use_mla=True)
    assert float(attn.k_scale) == float(attn.v_scale) == read["k_scale"]  # max(latent, rope key)


def test_latent_scales_are_not_used_for_expanded_keys_and_values() -> None:
    attn, warned, read = auto_load("llmcompressor/deepseek_v3_fp8_kv_tensor", use_mla=False)
    assert (float(attn.k_scale), float(attn.v_scale)) == (read["k_scale"], read["v_scale"]) == (1.0, 1.0)
    assert any("use_mla=False" in m for m in warned)


@pytest.mark.parametrize("fixture", ["modelopt/deepseek_v3_fp8_kv_fp8", "quark/deepseek_v3_fp8_kv_fp8"])
def test_per_head_scales_are_not_used_for_an_mla_cache(fixture: str) -> None:
    attn, warned, read = auto_load(fixture, use_mla=True)
    assert (float(attn.k_scale), float(attn.v_scale)) == (read["k_scale"], read["v_scale"]) == (1.0, 1.0)
    assert any("use_mla=True" in m for m in warned)


def test_process_weights_after_loading_gives_an_mla_cache_one_scale() -> None:
    # The same gap at its smallest: API.md says an MLA attention's v_scale equals its k_scale.
    import torch

    attn = kvcore.Attention(4, 40, 1, kv_cache_dtype="fp8", use_mla=True)
    attn.k_scale.weight_loader(attn.k_scale, torch.tensor(0.006))
    attn.v_scale.weight_loader(attn.v_scale, torch.tensor(0.001))
    attn.process_weights_after_loading()
    assert float(attn.v_scale) == float(attn.k_scale)
