"""KV-cache scale names are mapped before packing: Quark's ``k_proj.output_scale`` and ModelOpt's
``k_proj.k_scale`` reach the attention, never ``qkv_proj``."""

from __future__ import annotations

import re

import engine_models as em
import engine_support as es
import pytest
import torch

import kvcore

PROJ_KV = [n for n in es.LLAMA_LIKE if "/quark/" in n or "/modelopt/" in n]
KV_ON_QKV = re.compile(r"qkv_proj\.(?!(weight_scale|input_scale)$)\w*scale")


@pytest.mark.parametrize("name", PROJ_KV)
def test_projection_kv_scales_reach_the_attention(name: str) -> None:
    ckpt = es.fixture(name)
    model = em.build(ckpt)
    report = kvcore.load(model, ckpt)
    named = [*dict(model.named_parameters()), *model.state_dict(), *report.loaded, *report.kv_scales,
             *report.kv_scale_sources, *(s for m in report.kv_scale_sources.values() for s in m.values())]
    assert not [n for n in named if KV_ON_QKV.search(n)]
    tensors = es.read_all(ckpt)
    for i in range(es.num_layers(ckpt)):
        p = f"model.layers.{i}.self_attn"
        attention = model.get_submodule(f"{p}.attn")
        for scale, leaf in (("k_scale", "k_proj"), ("v_scale", "v_proj")):
            source = next(f"{p}.{x}" for x in es.KV_SOURCES[scale] if x.startswith(leaf) and f"{p}.{x}" in tensors)
            assert report.kv_scale_sources[f"{p}.attn"][scale] == source
            assert float(getattr(attention, scale)) == float(tensors[source].to(torch.float32).reshape(()))


@pytest.mark.parametrize("name", PROJ_KV)
def test_stacked_rules_leave_kv_scale_names_to_the_plugin(name: str) -> None:
    ckpt = es.fixture(name)
    mapper = kvcore.mapper_for(ckpt) | em.stacked_mapper(ckpt)
    tensors = es.read_all(ckpt)
    for source in (n for n in tensors if es.kv_leaf(n)):
        target = mapper.map_name(source)
        assert target is not None and re.fullmatch(r"model\.layers\.\d\.self_attn\.attn\.\w+_scale", target), source
    p = "model.layers.0.self_attn"
    assert mapper.map_name(f"{p}.k_proj.weight_scale") == f"{p}.qkv_proj.weight_scale"
