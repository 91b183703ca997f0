"""MoE experts of the genuine Qwen3-MoE, Mixtral and DeepSeek-V3 checkpoints into fused expert parameters.

Checkpoints store routed experts one by one (``mlp.experts.N.gate_proj``, ModelOpt's Mixtral
``block_sparse_moe.experts.N.w1``); the engine holds ``experts.w13_weight [E, 2I, H]`` and
``experts.w2_weight [E, H, I]`` and loads each through ``weight_loader(param, loaded_weight,
shard_id, expert_id)``. Quark keeps HF's fused 3-D experts, which load whole.
"""

from __future__ import annotations

from pathlib import Path

import arch_models as am
import arch_support as su
import pytest
import torch

import kvcore
from kvcore.testing import write_checkpoint

PER_EXPERT = [c for c in su.MOE_CASES if "quark" not in c.fixture]


def fused_experts(built: am.Built) -> dict[str, am.FusedExperts]:
    return {name: m for name, m in built.model.named_modules() if isinstance(m, am.FusedExperts)}


@pytest.mark.parametrize("case", PER_EXPERT, ids=str)
def test_each_expert_shard_goes_through_the_loader_once_with_its_expert_id(case: su.Case) -> None:
    built = am.build(case.path, packed=True)
    su.load(built.model, case.path)
    experts = fused_experts(built)
    cfg = su.config(case)
    count = cfg.get("n_routed_experts") or cfg["num_local_experts"]
    moe_layers = range(cfg.get("first_k_dense_replace", 0), cfg["num_hidden_layers"])  # DeepSeek: layer 0 dense
    assert [name.split(".")[2] for name in experts] == [str(i) for i in moe_layers]
    leaves = {"w13_weight": ("w1", "w3"), "w2_weight": ("w2",), "w13_weight_scale": ("w1", "w3"),
              "w2_weight_scale": ("w2",), "w13_input_scale": ("w1", "w3"), "w2_input_scale": ("w2",)}
    for module in experts.values():
        want = [(leaf, shard, e) for leaf, shards in leaves.items() for shard in shards for e in range(count)]
        assert sorted(module.calls) == sorted(want)


@pytest.mark.parametrize("case", PER_EXPERT, ids=str)
def test_gate_then_up_rows_of_every_expert(case: su.Case) -> None:
    # Stated without the builder's views: w13[e] = gate ‖ up of expert e, w2[e] = down.
    built = am.build(case.path, packed=True)
    su.load(built.model, case.path)
    tensors = su.read_all(case.path)
    gate, up, down = ("w1", "w3", "w2") if "mixtral" in case.fixture else ("gate_proj", "up_proj", "down_proj")
    for name, module in fused_experts(built).items():
        for e in range(module.w13_weight.shape[0]):
            stacked = torch.cat([tensors[f"{name}.{e}.{gate}.weight"], tensors[f"{name}.{e}.{up}.weight"]])
            assert torch.equal(module.w13_weight[e].view(torch.uint8), stacked.view(torch.uint8))
            down_rows = tensors[f"{name}.{e}.{down}.weight"]
            assert torch.equal(module.w2_weight[e].view(torch.uint8), down_rows.view(torch.uint8))
            scales = [tensors[f"{name}.{e}.{key}.weight_scale"].float().reshape(()) for key in (gate, up)]
            assert torch.equal(module.w13_weight_scale[e], torch.stack(scales))


def test_modelopt_mixtral_maps_w1_w3_w2() -> None:
    case = su.case("modelopt/mixtral_fp8_kv_fp8")
    built = am.build(case.path, packed=True)
    assert built.model.packed_experts_mapping == {"w1": ("w13", "w1"), "w3": ("w13", "w3"), "w2": ("w2", "w2")}
    report, warned = su.load(built.model, case.path)
    assert warned == []
    leaves = [f"{w}_{leaf}" for w in ("w13", "w2") for leaf in ("weight", "weight_scale", "input_scale")]
    assert {n for n in report.loaded if ".experts." in n} == {
        f"model.layers.{i}.block_sparse_moe.experts.{leaf}" for i in range(2) for leaf in leaves
    }


@pytest.mark.parametrize("fixture", ["quark/mixtral_fp8_kv_fp8", "quark/deepseek_v3_fp8_kv_fp8"])
def test_quarks_fused_3d_experts_load_whole(fixture: str) -> None:
    # HF's fused experts are already [E, 2I, H] / [E, H, I]: a model holding those shapes takes them
    # as they are, and the per-expert rule (experts.<N>.gate_proj) does not touch them.
    case = su.case(fixture)
    built = am.build(case.path, packed=True)
    assert not fused_experts(built)
    report, _ = su.load(built.model, case.path)
    tensors = su.read_all(case.path)
    names = [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert names and set(names) <= report.loaded
    for name in names:
        assert torch.equal(built.model.get_parameter(name), tensors[name])


def test_deepseek_shared_experts_are_a_gated_mlp_not_experts() -> None:
    case = su.case("llmcompressor/deepseek_v3_fp8_kv_tensor")
    built = am.build(case.path, packed=True)
    report, _ = su.load(built.model, case.path)
    shared = "model.layers.1.mlp.shared_experts.gate_up_proj.weight"
    assert shared in report.loaded and "model.layers.1.mlp.experts.w13_weight" in report.loaded
    assert "model.layers.0.mlp.gate_up_proj.weight" in report.loaded  # first_k_dense_replace: layer 0 is dense


def test_an_expert_missing_a_shard_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    case = su.case("llmcompressor/qwen3_moe_fp8_kv_tensor")
    gone = "model.layers.1.mlp.experts.2.up_proj."
    tensors = {n: t for n, t in su.read_all(case.path).items() if not n.startswith(gone)}
    broken = write_checkpoint(tmp_path, tensors, config=su.config(case))
    built = am.build(case.path, packed=True)
    named = r"model\.layers\.1\.mlp\.experts\.w13_weight \(packed: shard\(s\) 'w3' of expert 2 absent\)"
    with pytest.raises(kvcore.WeightLoadError, match=named):
        kvcore.load(built.model, broken)
    assert all(module.calls == [] for module in fused_experts(built).values())
    assert (built.model.model.norm.weight == am.FILL).all()


@pytest.mark.parametrize("case", [c for c in PER_EXPERT if not c.mla], ids=str)
def test_auto_weights_loader_fills_fused_experts(case: su.Case) -> None:
    built = am.build(case.path, packed=True)
    tensors = su.read_all(case.path)
    loaded = kvcore.AutoWeightsLoader(built.model).load_weights(tensors.items(), mapper=kvcore.mapper_for(case.path))
    su.check_weights(built, tensors)
    assert {n for n in loaded if ".experts." in n} == {
        f"{name}.{leaf}" for name, module in fused_experts(built).items()
        for leaf, _ in module.named_parameters(recurse=False)
    }


def test_a_loader_without_expert_id_is_refused_naming_the_parameter() -> None:
    case = su.case("modelopt/mixtral_fp8_kv_fp8")
    built = am.build(case.path, packed=True)
    experts = built.model.model.layers[0].block_sparse_moe.experts
    experts.w2_weight.weight_loader = lambda _param, _loaded_weight, _shard_id: None
    named = r"'model\.layers\.0\.block_sparse_moe\.experts\.w2_weight'.*expert_id"
    with pytest.raises(kvcore.WeightLoadError, match=named):
        kvcore.load(built.model, case.path)

