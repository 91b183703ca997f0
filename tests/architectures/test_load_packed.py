"""Every real2 fixture into a vLLM-shaped model: fused ``qkv_proj`` / ``gate_up_proj`` / DeepSeek's
``fused_qkv_a_proj`` with shard-id loaders, routed experts in ``experts.w13_weight`` / ``w2_weight``
(``packed_experts_mapping``), MLA attention at ``self_attn.mla_attn.mla_attn``. Every shard in its
block, KV scales as in the generic model."""

from __future__ import annotations

import arch_models as am
import arch_support as su
import pytest

import kvcore


@pytest.mark.parametrize(("case", "use_mla"), su.LOADS)
def test_every_shard_lands_in_its_block_and_scales_are_the_generic_ones(case: su.Case, use_mla: bool) -> None:
    built = am.build(case.path, packed=True, use_mla=use_mla)
    report, warned = su.load(built.model, case.path)
    tensors = su.read_all(case.path)
    su.check_weights(built, tensors)
    su.check_kv(case, built, report, tensors, use_mla)
    su.check_warnings(case, built, warned, use_mla)
    assert report.unexpected == [] and report.missing == []
    generic = am.build(case.path, use_mla=use_mla)
    assert su.as_read(report, built) == su.as_read(su.load(generic.model, case.path)[0], generic)


@pytest.mark.parametrize("case", [c for c in su.CASES if not c.mla], ids=str)
def test_auto_weights_loader_fills_the_same_model(case: su.Case) -> None:
    # An engine's own weight iterator with the plugins' mapper: same blocks, same scales.
    built = am.build(case.path, packed=True)
    tensors = su.read_all(case.path)
    loaded = kvcore.AutoWeightsLoader(built.model).load_weights(tensors.items(), mapper=kvcore.mapper_for(case.path))
    su.check_weights(built, tensors)
    k, v = su.kv_sources(tensors, 0)
    unwritten = {"q_scale", "prob_scale"} | ({"v_scale"} if k == v else set())  # one fused scale: k's only
    assert loaded == {name for name, _ in built.model.named_parameters() if name.rpartition(".")[2] not in unwritten}
    want = su.expected(case, tensors)
    for layer, attention in built.attention.items():
        module = built.model.get_submodule(attention)
        assert {s: float(getattr(module, s)) for s in su.ATTN_SCALES} == {s: v for s, (v, _) in want[layer].items()}


def test_phi3_keeps_the_checkpoints_fused_linears_whole() -> None:
    # Phi-3 stores qkv_proj and gate_up_proj fused: their loaders get the whole tensor, and the
    # packing rules for q/k/v and gate/up never touch them (no shard ids, nothing missing).
    case = su.case("llmcompressor/phi3_fp8_kv_tensor")
    built = am.build(case.path, packed=True)
    calls: list[str] = []
    for name, param in built.model.named_parameters():
        if name.endswith(("qkv_proj.weight", "gate_up_proj.weight")):
            param.weight_loader = lambda p, w, name=name: (calls.append(name), am.whole_loader(p, w))
    report, _ = su.load(built.model, case.path)
    assert sorted(calls) == sorted(n for n in report.loaded if n.endswith(("qkv_proj.weight", "gate_up_proj.weight")))
    assert len(calls) == 4
    su.check_weights(built, su.read_all(case.path))
