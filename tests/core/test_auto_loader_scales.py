"""AutoWeightsLoader writes KV-cache scales as kvcore.load does: per-head too, errors naming the tensor."""

from __future__ import annotations

import pytest
import torch

import kvcore


def block() -> tuple[torch.nn.Module, kvcore.Attention]:
    attn = kvcore.Attention(4, 16, 2, kv_cache_dtype="fp8")
    return torch.nn.ModuleDict({"attn": attn}), attn


def test_a_per_head_scale_loads_as_one_value_per_kv_head() -> None:
    model, attn = block()
    per_head = torch.tensor([0.5, 0.25], dtype=torch.bfloat16).reshape(2, 1, 1)  # compressed-tensors attn_head
    kvcore.AutoWeightsLoader(model).load_weights([("attn.k_scale", per_head)])
    assert attn.k_scale.dtype == torch.float32 and attn.k_scale.tolist() == [0.5, 0.25]
    assert attn.v_scale.tolist() == [0.5, 0.25]  # k serves for v


def test_a_scale_of_another_size_is_refused_naming_tensor_and_heads() -> None:
    model, _ = block()
    with pytest.raises(kvcore.WeightLoadError, match=r"'attn\.k_scale'.*shape \[3\].*num_kv_heads=2"):
        kvcore.AutoWeightsLoader(model).load_weights([("attn.k_scale", torch.ones(3))])


def test_a_bad_value_names_the_checkpoint_tensor_and_the_parameter() -> None:
    model, attn = block()
    mapper = kvcore.WeightsMapper(orig_to_new_suffix={".k_scale_ckpt": ".k_scale"})
    with pytest.raises(kvcore.WeightLoadError) as info:
        kvcore.AutoWeightsLoader(model).load_weights([("attn.k_scale_ckpt", torch.tensor([0.0]))], mapper=mapper)
    assert "'attn.k_scale_ckpt'" in str(info.value) and "'attn.k_scale'" in str(info.value)
    assert float(attn.k_scale) == -1.0  # nothing written


def test_the_scale_parameter_loader_alone_stays_scalar_only() -> None:
    _, attn = block()
    with pytest.raises(kvcore.WeightLoadError, match="exactly one element"):
        kvcore.KVCacheScaleParameter.weight_loader(attn.k_scale, torch.ones(2, 1, 1))
