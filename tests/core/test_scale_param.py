"""KVCacheScaleParameter and Attention."""

from __future__ import annotations

import copy

import pytest
import torch

import kvcore
from kvcore import Attention, KVCacheScaleParameter, WeightLoadError


def test_starts_as_the_not_loaded_sentinel() -> None:
    param = KVCacheScaleParameter()
    assert isinstance(param, torch.nn.Parameter)
    assert param.shape == () and param.dtype == torch.float32
    assert float(param) == -1.0 and not param.requires_grad


@pytest.mark.parametrize("shape", [(), (1,), (1, 1), (1, 1, 1)])
def test_weight_loader_takes_any_one_element_shape_as_0_dim_float32(shape: tuple[int, ...]) -> None:
    param = KVCacheScaleParameter()
    value = torch.full(shape, 0.0123, dtype=torch.bfloat16)
    KVCacheScaleParameter.weight_loader(param, value)
    assert param.shape == () and param.dtype == torch.float32
    assert float(param) == float(value.float().reshape(()))


def test_weight_loader_is_reachable_from_the_parameter_like_vllm_calls_it() -> None:
    param = KVCacheScaleParameter()
    param.weight_loader(param, torch.tensor([2.5]))
    assert float(param) == 2.5


def test_weight_loader_copies_instead_of_aliasing() -> None:
    param, value = KVCacheScaleParameter(), torch.tensor([3.0])
    param.weight_loader(param, value)
    value.fill_(7.0)
    assert float(param) == 3.0


def test_weight_loader_refuses_more_than_one_element_naming_the_shape() -> None:
    with pytest.raises(WeightLoadError, match=r"\[2, 1, 1\]|\(2, 1, 1\)") as info:
        KVCacheScaleParameter.weight_loader(KVCacheScaleParameter(), torch.ones(2, 1, 1))
    assert isinstance(info.value, ValueError) and isinstance(info.value, kvcore.KvcoreError)


def test_survives_deepcopy_and_module_dtype_casts() -> None:
    attn = Attention(4, 16, 2)
    clone = copy.deepcopy(attn)
    assert isinstance(clone.k_scale, KVCacheScaleParameter)
    attn.to(torch.bfloat16)
    assert isinstance(attn.k_scale, KVCacheScaleParameter)


def test_attention_owns_four_unloaded_scales() -> None:
    attn = Attention(8, 64, 2, kv_cache_dtype="fp8")
    names = {n for n, _ in attn.named_parameters()}
    assert names == {"k_scale", "v_scale", "q_scale", "prob_scale"}
    assert all(float(p) == -1.0 and p.dtype == torch.float32 for p in attn.parameters())
    assert (attn.num_heads, attn.head_size, attn.num_kv_heads) == (8, 64, 2)
    assert Attention(8, 64).num_kv_heads == 8


@pytest.mark.parametrize("dtype", ["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])
def test_attention_accepts_known_kv_cache_dtypes(dtype: str) -> None:
    assert Attention(1, 1, kv_cache_dtype=dtype).kv_cache_dtype == dtype


def test_attention_refuses_unknown_kv_cache_dtype() -> None:
    with pytest.raises(ValueError, match="int4"):
        Attention(1, 1, kv_cache_dtype="int4")
