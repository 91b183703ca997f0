"""``strict=True``: a fused parameter missing a shard is refused, naming it and the shard, before any write."""

from __future__ import annotations

import re

import engine_models as em
import engine_support as es
import pytest

import kvcore


@pytest.mark.parametrize("name", es.LLAMA_LIKE)
def test_missing_v_shard_is_refused_untouched(tmp_path, name: str) -> None:
    ckpt = es.without(es.fixture(name), tmp_path / "ckpt", "v_proj.weight")
    model = em.build(ckpt)
    before = es.snapshot(model)
    with pytest.raises(kvcore.WeightLoadError) as info:
        kvcore.load(model, ckpt)
    message = str(info.value)
    for i in range(es.num_layers(ckpt)):
        assert f"model.layers.{i}.self_attn.qkv_proj.weight" in message
    assert "'v'" in message
    assert not re.search(r"'[qk]'", message)
    es.assert_unchanged(model, before)


@pytest.mark.parametrize(("name", "drop", "param"), [
    ("real/llmcompressor/fp8_kv_tensor", "layers.1.mlp.up_proj.weight", "model.layers.1.mlp.gate_up_proj.weight"),
    ("real2/llmcompressor/qwen3_moe_fp8_kv_tensor", "layers.0.mlp.experts.2.up_proj.input_scale",
     "model.layers.0.mlp.experts.2.gate_up_proj.input_scale"),
    ("real2/modelopt/mixtral_fp8_kv_fp8", "layers.1.block_sparse_moe.experts.3.w3.weight",
     "model.layers.1.block_sparse_moe.experts.3.w13.weight"),
])  # fmt: skip
def test_missing_integer_shard_is_refused_untouched(tmp_path, name: str, drop: str, param: str) -> None:
    ckpt = es.without(es.fixture(name), tmp_path / "ckpt", drop)
    model = em.build(ckpt)
    before = es.snapshot(model)
    with pytest.raises(kvcore.WeightLoadError, match=re.escape(param)):
        kvcore.load(model, ckpt)
    es.assert_unchanged(model, before)
