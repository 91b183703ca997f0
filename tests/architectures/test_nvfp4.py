"""ModelOpt's NVFP4 KV cache: the same names and amax/448 scales as its FP8 export. They load into an
``nvfp4`` attention and into an fp8 one, and the report says what they were calibrated for."""

from __future__ import annotations

import arch_models as am
import arch_support as su
import pytest

NVFP4 = su.case("modelopt/qwen3_fp8_kv_nvfp4")
FP8 = su.case("modelopt/qwen3_fp8_kv_fp8")


@pytest.mark.parametrize("kv_cache_dtype", ["nvfp4", "fp8"])
@pytest.mark.parametrize("packed", [False, True], ids=["generic", "packed"])
def test_nvfp4_scales_load_and_say_what_they_were_calibrated_for(kv_cache_dtype: str, packed: bool) -> None:
    built = am.build(NVFP4.path, packed=packed, kv_cache_dtype=kv_cache_dtype)
    report, warned = su.load(built.model, NVFP4.path)
    assert warned == [] and report.calibrated_for == "nvfp4"
    su.check_kv(NVFP4, built, report, su.read_all(NVFP4.path))
    assert all(built.model.get_submodule(a).kv_cache_dtype == kv_cache_dtype for a in built.attention.values())


def test_the_same_values_as_the_fp8_export() -> None:
    nvfp4, fp8 = am.build(NVFP4.path, kv_cache_dtype="nvfp4"), am.build(FP8.path)
    nvfp4_report, fp8_report = su.load(nvfp4.model, NVFP4.path)[0], su.load(fp8.model, FP8.path)[0]
    assert nvfp4_report.kv_scales == fp8_report.kv_scales
    assert fp8_report.calibrated_for == "fp8"
