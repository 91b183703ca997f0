"""Phi-3's fused ``qkv_proj``: Quark writes one ``qkv_proj.output_scale``, which serves k and v;
llm-compressor still writes split ``k_scale`` / ``v_scale``. Neither is ever packed into ``qkv_proj``."""

from __future__ import annotations

import arch_models as am
import arch_support as su
import pytest


@pytest.mark.parametrize("packed", [False, True], ids=["generic", "packed"])
def test_quarks_one_fused_scale_serves_k_and_v(packed: bool) -> None:
    case = su.case("quark/phi3_fp8_kv_fp8")
    built = am.build(case.path, packed=packed)
    report, warned = su.load(built.model, case.path)
    tensors = su.read_all(case.path)
    assert warned == []
    for layer, attention in built.attention.items():
        source = f"model.layers.{layer}.self_attn.qkv_proj.output_scale"
        scales, sources = report.kv_scales[attention], report.kv_scale_sources[attention]
        assert scales["k_scale"] == scales["v_scale"] == su.value(tensors, source)
        assert sources["k_scale"] == sources["v_scale"] == source
    assert not any(".qkv_proj.output_scale" in name for name in report.loaded)


@pytest.mark.parametrize("packed", [False, True], ids=["generic", "packed"])
def test_llm_compressor_phi3_keeps_k_and_v_apart(packed: bool) -> None:
    case = su.case("llmcompressor/phi3_fp8_kv_tensor")
    built = am.build(case.path, packed=packed)
    report, _ = su.load(built.model, case.path)
    tensors = su.read_all(case.path)
    for layer, attention in built.attention.items():
        p = f"model.layers.{layer}.self_attn"
        assert report.kv_scale_sources[attention]["k_scale"] == f"{p}.k_scale"
        assert report.kv_scale_sources[attention]["v_scale"] == f"{p}.v_scale"
        k, v = su.value(tensors, f"{p}.k_scale"), su.value(tensors, f"{p}.v_scale")
        assert (report.kv_scales[attention]["k_scale"], report.kv_scales[attention]["v_scale"]) == (k, v)
    assert report.kv_scales[built.attention[0]]["k_scale"] != report.kv_scales[built.attention[0]]["v_scale"]
