"""A packed target whose parameter has no ``weight_loader`` accepting a shard id is a ``WeightLoadError``."""

from __future__ import annotations

import re

import engine_models as em
import engine_support as es
import pytest
import torch

import kvcore

CKPT = "real/llmcompressor/fp8_kv_tensor"


def _two_arguments(param: torch.Tensor, loaded: torch.Tensor) -> None:
    param.data.copy_(loaded)


def _model(leaf: str, loader: str) -> tuple[torch.nn.Module, str]:
    model = em.build(es.fixture(CKPT))
    name = f"model.layers.1.self_attn.qkv_proj.{leaf}"
    param = model.get_parameter(name)
    del param.weight_loader
    if loader == "two arguments":
        param.weight_loader = _two_arguments
    return model, name


@pytest.mark.parametrize("loader", ["none", "two arguments"])
@pytest.mark.parametrize("leaf", ["weight", "input_scale"])
def test_load_refuses(leaf: str, loader: str) -> None:
    model, name = _model(leaf, loader)
    with pytest.raises(kvcore.WeightLoadError, match=re.escape(name)):
        kvcore.load(model, es.fixture(CKPT))


@pytest.mark.parametrize("loader", ["none", "two arguments"])
@pytest.mark.parametrize("leaf", ["weight", "input_scale"])
def test_auto_loader_refuses(leaf: str, loader: str) -> None:
    model, name = _model(leaf, loader)
    ckpt = es.fixture(CKPT)
    with pytest.raises(kvcore.WeightLoadError, match=re.escape(name)):
        kvcore.AutoWeightsLoader(model).load_weights(es.weights(ckpt), mapper=kvcore.mapper_for(ckpt))
