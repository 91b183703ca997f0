"""AutoWeightsLoader: vLLM's recursive loader semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kvcore
from kvcore import AutoWeightsLoader, WeightsMapper


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)
        self.register_buffer("cache", torch.zeros(2), persistent=False)
        self.attn = kvcore.Attention(2, 4, 1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Parameter(torch.zeros(4))


def weights() -> dict[str, torch.Tensor]:
    return {
        "blocks.0.proj.weight": torch.arange(6.0).reshape(2, 3),
        "blocks.0.proj.bias": torch.tensor([1.0, 2.0]),
        "blocks.0.norm.weight": torch.tensor([3.0, 4.0]),
        "blocks.0.norm.running_mean": torch.tensor([5.0, 6.0]),
        "blocks.0.norm.num_batches_tracked": torch.tensor(7),
        "blocks.0.attn.k_scale": torch.tensor([0.5]),
        "head": torch.ones(4),
    }


def test_loads_parameters_persistent_buffers_and_scales_returning_their_names() -> None:
    net = Net()
    loaded = AutoWeightsLoader(net).load_weights(weights().items())
    assert loaded == set(weights())
    assert torch.equal(net.blocks[0].proj.weight, weights()["blocks.0.proj.weight"])
    assert torch.equal(net.blocks[0].norm.running_mean, torch.tensor([5.0, 6.0]))
    assert int(net.blocks[0].norm.num_batches_tracked) == 7
    assert float(net.blocks[0].attn.k_scale) == 0.5 and net.blocks[0].attn.k_scale.shape == ()


def test_non_persistent_buffers_are_not_loadable() -> None:
    with pytest.raises(kvcore.WeightLoadError, match=r"blocks\.0\.cache"):
        AutoWeightsLoader(Net()).load_weights([("blocks.0.cache", torch.ones(2))])


def test_calls_a_parameters_own_weight_loader() -> None:
    net, seen = Net(), []

    def loader(param: torch.Tensor, tensor: torch.Tensor) -> None:
        seen.append(tensor)
        param.data.fill_(42.0)

    net.head.weight_loader = loader  # type: ignore[attr-defined]
    AutoWeightsLoader(net).load_weights([("head", torch.ones(9))])
    assert len(seen) == 1 and torch.equal(net.head, torch.full((4,), 42.0))


def test_delegates_to_a_child_modules_load_weights() -> None:
    net, received = Net(), []

    def load_weights(ws):  # type: ignore[no-untyped-def]
        items = list(ws)
        received.extend(items)
        return {name for name, _ in items}

    net.blocks[1].load_weights = load_weights  # type: ignore[method-assign]
    loaded = AutoWeightsLoader(net).load_weights([("blocks.1.anything.x", torch.ones(1)), ("head", torch.ones(4))])
    assert [name for name, _ in received] == ["anything.x"]
    assert loaded == {"blocks.1.anything.x", "head"}


def test_unexpected_names_raise_unless_skipped_or_ignored() -> None:
    extra = [("blocks.0.ghost.weight", torch.ones(1)), ("blocks.0.proj.weight_scale", torch.ones(1))]
    with pytest.raises(ValueError, match=r"blocks\.0\.ghost"):
        AutoWeightsLoader(Net()).load_weights(extra)
    skipping = AutoWeightsLoader(Net(), skip_prefixes=["blocks.0.ghost", "blocks.0.proj.weight_"])
    assert skipping.load_weights(extra) == set()
    assert AutoWeightsLoader(Net(), skip_substrs=["ghost", "weight_scale"]).load_weights(extra) == set()
    ignoring = AutoWeightsLoader(
        Net(), ignore_unexpected_prefixes=["blocks.0.ghost"], ignore_unexpected_suffixes=["weight_scale"]
    )
    assert ignoring.load_weights(extra) == set()


def test_nested_weight_into_a_single_parameter_raises() -> None:
    with pytest.raises(kvcore.WeightLoadError, match=r"nested weight 'head\.sub'"):
        AutoWeightsLoader(Net()).load_weights([("head.sub", torch.ones(1))])


def test_rotary_buffers_of_old_checkpoints_are_skipped() -> None:
    assert AutoWeightsLoader(Net()).load_weights([("blocks.0.rotary_emb.inv_freq", torch.ones(2))]) == set()


def test_mapper_renames_before_loading() -> None:
    net = Net()
    mapper = WeightsMapper(orig_to_new_prefix={"layers.": "blocks."}, orig_to_new_suffix={".drop": None})
    loaded = AutoWeightsLoader(net).load_weights(
        [("layers.1.proj.bias", torch.tensor([8.0, 9.0])), ("layers.1.x.drop", torch.ones(1))], mapper=mapper
    )
    assert loaded == {"blocks.1.proj.bias"}
    assert torch.equal(net.blocks[1].proj.bias, torch.tensor([8.0, 9.0]))


def test_shape_mismatch_is_a_weight_load_error() -> None:
    with pytest.raises(kvcore.WeightLoadError, match=r"\[5\].*\[4\]"):
        AutoWeightsLoader(Net()).load_weights([("head", torch.ones(5))])


def test_process_weights_after_loading_applies_the_missing_scale_rules() -> None:
    net = Net()
    AutoWeightsLoader(net).load_weights([("blocks.0.attn.v_scale", torch.tensor(0.25))])
    attn = net.blocks[0].attn
    attn.process_weights_after_loading()
    assert (float(attn.k_scale), float(attn.v_scale), float(attn.q_scale), float(attn.prob_scale)) == (
        0.25,
        0.25,
        1.0,
        1.0,
    )
