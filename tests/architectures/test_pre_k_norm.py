"""Quark's default (``kv_cache_post_rope: false``) measures K at ``k_proj``'s output. On a model with
``k_norm`` (Qwen3) that is before the norm the cache sees: the load warns, naming each layer and the
reason. On a model without ``k_norm`` (Mixtral) pre-RoPE alone is no reason to warn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import arch_models as am
import arch_support as su
import pytest

PRE = su.case("quark/qwen3_fp8_kv_fp8")


@pytest.mark.parametrize("packed", [False, True], ids=["generic", "packed"])
def test_pre_k_norm_scales_load_with_a_warning_naming_each_layer_and_k_norm(packed: bool) -> None:
    built = am.build(PRE.path, packed=packed)
    report, warned = su.load(built.model, PRE.path)
    assert len(warned) == 1
    assert "k_norm" in warned[0] and "kv_cache_post_rope" in warned[0]
    assert all(name in warned[0] for name in built.attention.values())
    tensors = su.read_all(PRE.path)
    for layer, attention in built.attention.items():  # loaded as written: the warning says, kvcore does not guess
        k, _ = su.kv_sources(tensors, layer)
        assert report.kv_scales[attention]["k_scale"] == su.value(tensors, k) == report.kv_scales[attention]["v_scale"]


@pytest.mark.parametrize("fixture", ["quark/qwen3_fp8_kv_fp8_post_rope", "quark/mixtral_fp8_kv_fp8"])
def test_post_rope_or_no_k_norm_loads_silently(fixture: str) -> None:
    case = su.case(fixture)
    built = am.build(case.path, packed=True)
    report, warned = su.load(built.model, case.path)
    assert warned == []
    su.check_kv(case, built, report, su.read_all(case.path))


def test_the_warning_follows_the_models_config(tmp_path: Path) -> None:
    # Same tensors and Quark config, but config.json says Llama (no k_norm): nothing to warn about.
    copy = Path(shutil.copytree(PRE.path, tmp_path / "ckpt"))
    cfg = json.loads((copy / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (copy / "config.json").write_text(json.dumps(cfg))
    built = am.build(PRE.path)
    _, warned = su.load(built.model, copy)
    assert warned == []
