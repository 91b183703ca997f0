"""``kvcore.load`` into a packed engine model: fused blocks, per-shard scales and KV scales exact."""

from __future__ import annotations

import engine_models as em
import engine_support as es
import pytest

import kvcore


@pytest.mark.parametrize("name", es.LLAMA_LIKE)
def test_load_fills_every_fused_block_and_scale(name: str) -> None:
    ckpt = es.fixture(name)
    model = em.build(ckpt)
    report = kvcore.load(model, ckpt)
    tensors = es.read_all(ckpt)
    params, fused = es.check_weights(model, tensors, em.packed_mapping(ckpt))
    kv = es.check_kv(model, tensors, es.num_layers(ckpt))
    assert fused and fused <= report.loaded
    assert params | kv <= report.loaded <= set(model.state_dict())
    assert report.unexpected == [] and report.missing == []
    expected = es.expected_kv(tensors, es.num_layers(ckpt))
    assert report.kv_scale_sources == {m: {s: src for s, (_, src) in sc.items()} for m, sc in expected.items()}
    assert report.kv_scales == {m: {s: value for s, (value, _) in sc.items()} for m, sc in expected.items()}


def test_up_proj_does_not_match_inside_gate_up_proj() -> None:
    # Quark's Mixtral stores its experts as 3-D `mlp.experts.gate_up_proj`: a whole-component
    # key `up_proj` must leave it to the plain parameter of that name.
    ckpt = es.fixture("real2/quark/mixtral_fp8_kv_fp8")
    model = em.build(ckpt)
    report = kvcore.load(model, ckpt)
    tensors = es.read_all(ckpt)
    for i in range(es.num_layers(ckpt)):
        name = f"model.layers.{i}.mlp.experts.gate_up_proj"
        assert name in report.loaded and es.same(model.get_parameter(name), tensors[name])
