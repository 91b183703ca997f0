"""DeepSeek-V3 (MLA) from every tool into ``kvcore.Attention(use_mla=True)`` and ``use_mla=False``.

llm-compressor's ``k_scale`` / ``v_scale`` are the latent and the rope key: an MLA cache holds both
under one scale, ``max(k, v)``; an attention that expands MLA into per-head K/V cannot use them.
ModelOpt's phantom ``k_proj.k_scale`` / ``v_proj.v_scale`` and Quark's ``kv_b_proj.output_scale``
are the expanded per-head K and V: the reverse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import arch_models as am
import arch_support as su
import pytest
import torch

import kvcore
from kvcore.testing import write_checkpoint

LLMC = su.case("llmcompressor/deepseek_v3_fp8_kv_tensor")
PER_HEAD = [su.case("modelopt/deepseek_v3_fp8_kv_fp8"), su.case("quark/deepseek_v3_fp8_kv_fp8")]


def kernel_scales(built: am.Built) -> list[tuple[float, float]]:
    return [(float(a.k_scale), float(a.v_scale)) for a in map(built.model.get_submodule, built.attention.values())]


@pytest.mark.parametrize("packed", [False, True], ids=["generic", "packed"])
def test_latent_scales_give_an_mla_cache_the_larger_of_latent_and_rope_key(packed: bool) -> None:
    built = am.build(LLMC.path, packed=packed, use_mla=True)
    report, warned = su.load(built.model, LLMC.path)
    tensors = su.read_all(LLMC.path)
    assert warned == []
    for layer, (k, v) in enumerate(kernel_scales(built)):
        latent = su.value(tensors, f"model.layers.{layer}.self_attn.k_scale")
        rope_key = su.value(tensors, f"model.layers.{layer}.self_attn.v_scale")
        assert k == v == max(latent, rope_key)
    if packed:  # vLLM's place for it, found without a mapper
        assert set(report.kv_scales) == {f"model.layers.{i}.self_attn.mla_attn.mla_attn" for i in range(2)}


def test_the_rope_key_wins_when_it_is_larger(tmp_path: Path) -> None:
    # In the genuine checkpoint the latent is the larger one; swap layer 1's values to see max at work.
    tensors = su.read_all(LLMC.path)
    p = "model.layers.1.self_attn"
    tensors[f"{p}.k_scale"], tensors[f"{p}.v_scale"] = tensors[f"{p}.v_scale"], tensors[f"{p}.k_scale"]
    swapped = write_checkpoint(tmp_path, tensors, config=su.config(LLMC))
    built = am.build(swapped, use_mla=True)
    report = kvcore.load(built.model, swapped)
    sources = report.kv_scale_sources[f"{p}.attn"]
    assert sources["k_scale"] == sources["v_scale"] == f"{p}.v_scale"
    assert kernel_scales(built)[1] == (su.value(tensors, f"{p}.v_scale"),) * 2


@pytest.mark.parametrize("packed", [False, True], ids=["generic", "packed"])
def test_latent_scales_are_not_used_for_expanded_keys_and_values(packed: bool) -> None:
    built = am.build(LLMC.path, packed=packed, use_mla=False)
    report, warned = su.load(built.model, LLMC.path)
    assert kernel_scales(built) == [(1.0, 1.0)] * 2
    assert len(warned) == 1
    assert "MLA latent and rope key" in warned[0] and "use_mla=False" in warned[0]
    assert all(name in warned[0] for name in built.attention.values())
    assert all(src == {"k_scale": "default", "v_scale": "default", "q_scale": "default", "prob_scale": "default"}
               for src in report.kv_scale_sources.values())


@pytest.mark.parametrize("case", PER_HEAD, ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["generic", "packed"])
def test_per_head_scales_load_into_expanded_attention_only(case: su.Case, packed: bool) -> None:
    tensors = su.read_all(case.path)
    expanded = am.build(case.path, packed=packed, use_mla=False)
    _, warned = su.load(expanded.model, case.path)
    assert warned == []
    assert kernel_scales(expanded) == [tuple(su.value(tensors, n) for n in su.kv_sources(tensors, i)) for i in range(2)]
    mla = am.build(case.path, packed=packed, use_mla=True)
    _, warned = su.load(mla.model, case.path)
    assert kernel_scales(mla) == [(1.0, 1.0)] * 2
    assert len(warned) == 1 and "per-head keys and values" in warned[0] and "use_mla=True" in warned[0]
    assert all(name in warned[0] for name in mla.attention.values())


def test_quark_kv_b_proj_scale_serves_k_and_v() -> None:
    case = su.case("quark/deepseek_v3_fp8_kv_fp8")
    built = am.build(case.path, use_mla=False)
    report = kvcore.load(built.model, case.path)
    tensors = su.read_all(case.path)
    for layer in range(2):
        source = f"model.layers.{layer}.self_attn.kv_b_proj.output_scale"
        assert kernel_scales(built)[layer] == (su.value(tensors, source),) * 2
        assert report.kv_scale_sources[built.attention[layer]]["v_scale"] == source
    assert not any(name.endswith("output_scale") for name in report.loaded)


@pytest.mark.parametrize("case", su.MLA_CASES, ids=str)
def test_mla_projections_built_from_config_match_the_checkpoint(case: su.Case) -> None:
    # The builder reads config.json only for shapes; the checkpoint's header has the same ones.
    built = am.build(case.path, use_mla=True)
    headers = am.read_headers(case.path)
    for layer in range(2):
        p = f"model.layers.{layer}.self_attn"
        for module in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "kv_a_layernorm"):
            assert tuple(built.model.get_parameter(f"{p}.{module}.weight").shape) == headers[f"{p}.{module}.weight"][0]
    cfg = su.config(case)
    mla = built.model.get_submodule(built.attention[0])
    assert (mla.num_heads, mla.head_size, mla.num_kv_heads) == (4, cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"], 1)
    expanded = am.build(case.path).model.get_submodule("model.layers.0.self_attn.attn")
    assert (expanded.head_size, expanded.num_kv_heads, expanded.use_mla) == (24, 4, False)


@pytest.mark.parametrize("packed", [False, True], ids=["generic", "packed"])
def test_an_mla_model_without_q_lora_has_q_proj(tmp_path: Path, packed: bool) -> None:
    # DeepSeek-V2-Lite's shape (q_lora_rank: null): q_proj instead of q_a_proj/q_a_layernorm/q_b_proj.
    cfg = {**su.config(LLMC), "q_lora_rank": None}
    tensors = {n: t for n, t in su.read_all(LLMC.path).items() if ".q_a_" not in n and ".q_b_" not in n}
    heads, qk = cfg["num_attention_heads"], cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    for layer in range(2):
        q = f"model.layers.{layer}.self_attn.q_proj"
        tensors[f"{q}.weight"] = torch.randn(heads * qk, cfg["hidden_size"]).to(torch.float8_e4m3fn)
        tensors[f"{q}.weight_scale"] = torch.tensor([0.01], dtype=torch.bfloat16)
        tensors[f"{q}.input_scale"] = torch.tensor([0.02], dtype=torch.bfloat16)
    path = write_checkpoint(tmp_path, tensors, config=cfg)
    built = am.build(path, packed=packed, use_mla=True)
    report, warned = su.load(built.model, path)
    su.check_weights(built, tensors)
    assert warned == [] and "model.layers.1.self_attn.q_proj.weight" in report.loaded
    assert kernel_scales(built) == [(su.value(tensors, f"model.layers.{i}.self_attn.k_scale"),) * 2 for i in range(2)]


def test_the_meaning_comes_from_config_json(tmp_path: Path) -> None:
    # The same tensors with a config.json that describes no MLA model (no kv_lora_rank): plain K and V.
    copy = Path(shutil.copytree(LLMC.path, tmp_path / "ckpt"))
    cfg = json.loads((copy / "config.json").read_text())
    del cfg["kv_lora_rank"]
    (copy / "config.json").write_text(json.dumps(cfg))
    tensors = su.read_all(LLMC.path)
    k, v = (su.value(tensors, f"model.layers.0.self_attn.{s}") for s in ("k_scale", "v_scale"))
    assert kvcore.read_kv_scales(copy, use_mla=False)["model.layers.0.self_attn.attn"]["v_scale"] == v
    assert kvcore.read_kv_scales(LLMC.path, use_mla=False)["model.layers.0.self_attn.attn"]["v_scale"] == 1.0
    assert kvcore.read_kv_scales(LLMC.path, use_mla=True)["model.layers.0.self_attn.attn"]["v_scale"] == max(k, v)
