"""``AutoWeightsLoader`` with an engine's weight iterator: the root's ``packed_modules_mapping``,
or a model without it given ``orig_to_new_stacked`` rules, load the same as ``kvcore.load``."""

from __future__ import annotations

import engine_models as em
import engine_support as es
import pytest

import kvcore


def _load(name: str, style: str) -> tuple[object, set[str]]:
    ckpt = es.fixture(name)
    if style == "packed_modules_mapping":
        model, mapper = em.build(ckpt), kvcore.mapper_for(ckpt)
    else:
        model = em.build(ckpt, packed=False)
        assert not hasattr(model, "packed_modules_mapping")
        mapper = kvcore.mapper_for(ckpt) | em.stacked_mapper(ckpt)
    return model, kvcore.AutoWeightsLoader(model).load_weights(es.weights(ckpt), mapper=mapper)


@pytest.mark.parametrize("style", ["packed_modules_mapping", "orig_to_new_stacked"])
@pytest.mark.parametrize("name", es.LLAMA_LIKE)
def test_auto_loader_fills_every_fused_block_and_scale(name: str, style: str) -> None:
    model, loaded = _load(name, style)
    ckpt = es.fixture(name)
    tensors = es.read_all(ckpt)
    params, fused = es.check_weights(model, tensors, em.packed_mapping(ckpt))
    kv = es.check_kv(model, tensors, es.num_layers(ckpt))
    assert fused and params | kv <= loaded <= set(model.state_dict())
