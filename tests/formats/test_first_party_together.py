"""The three first-party mappers side by side: they OR without conflict and stay idempotent together."""

from __future__ import annotations

import functools
from types import ModuleType

import pytest
from formats_support import names
from hypothesis import given

import kvcore
import kvcore_compressed_tensors
import kvcore_fp8
import kvcore_quark
from kvcore_compressed_tensors import get_cache_scale_mapper as compressed_tensors
from kvcore_fp8 import get_cache_scale_mapper as fp8
from kvcore_quark import get_cache_scale_mapper as quark

CONFIGS = [(fp8, "fp8"), (quark, "quark"), (compressed_tensors, "compressed-tensors")]


def mappers() -> list[kvcore.WeightsMapper]:
    found = [hook(kvcore.QuantConfig(method, {"quant_method": method})) for hook, method in CONFIGS]
    assert all(m is not None for m in found)
    return [m for m in found if m is not None]


def test_first_party_mappers_or_without_conflict() -> None:
    union = functools.reduce(lambda a, b: a | b, mappers())
    assert union.map_name("a.v_proj.output_scale") == "a.attn.v_scale"
    assert union.map_name("a.kv_scale") == "a.attn.k_scale"
    assert union.map_name("a.q_scale") == "a.attn.q_scale"


@given(names())
def test_union_of_first_party_mappers_is_idempotent(name: str) -> None:
    union = functools.reduce(lambda a, b: a | b, mappers())
    once = union.map_name(name)
    assert once is not None and union.map_name(once) == once


@pytest.mark.parametrize("plugin", [kvcore_fp8, kvcore_quark, kvcore_compressed_tensors])
def test_each_plugin_documents_its_public_names(plugin: ModuleType) -> None:
    assert plugin.__doc__
    assert "get_cache_scale_mapper" in plugin.__all__ and "KV_SCALE_MAPPER" in plugin.__all__
    for name in plugin.__all__:
        value = getattr(plugin, name)
        assert isinstance(value, kvcore.WeightsMapper) or value.__doc__, name
