"""Packing rules: nano-vllm's packed_modules_mapping and vLLM's orig_to_new_stacked, on a minimal model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kvcore
from kvcore.testing import write_checkpoint

PACKED = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


class Fused(torch.nn.Module):
    """Two row blocks of 2 x 3, written by ``weight_loader(param, loaded, shard_id)``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((4, 3), -7.0), requires_grad=False)
        self.weight.weight_loader = self.load  # type: ignore[attr-defined]
        self.calls: list[int | str] = []

    def load(self, param: torch.Tensor, loaded: torch.Tensor, shard_id: int | str) -> None:
        self.calls.append(shard_id)
        param.data[2 * int(shard_id) : 2 * int(shard_id) + 2].copy_(loaded)


def model(*, declare: bool = True) -> torch.nn.Module:
    root = torch.nn.Module()
    root.mlp = torch.nn.Module()
    root.mlp.gate_up_proj = Fused()
    if declare:
        root.packed_modules_mapping = PACKED
    return root


def weights() -> dict[str, torch.Tensor]:
    return {"mlp.gate_proj.weight": torch.ones(2, 3), "mlp.up_proj.weight": torch.full((2, 3), 2.0)}


def test_each_shard_goes_through_the_loader_with_its_shard_id(tmp_path: Path) -> None:
    net = model()
    report = kvcore.load(net, write_checkpoint(tmp_path, weights()))
    assert sorted(net.mlp.gate_up_proj.calls) == [0, 1]
    assert torch.equal(net.mlp.gate_up_proj.weight, torch.tensor([[1.0] * 3] * 2 + [[2.0] * 3] * 2))
    assert report.loaded == {"mlp.gate_up_proj.weight"}


def test_a_key_matches_whole_components_only() -> None:
    # "up_proj" must not match inside "gate_up_proj": the fused name itself loads whole.
    net = model()
    net.mlp.gate_up_proj.weight.weight_loader = None
    kvcore.AutoWeightsLoader(net).load_weights([("mlp.gate_up_proj.weight", torch.zeros(4, 3))])
    assert torch.equal(net.mlp.gate_up_proj.weight, torch.zeros(4, 3))


def test_the_stacked_mapper_form_is_equivalent() -> None:
    rules = {".gate_proj": (".gate_up_proj", 0), ".up_proj": (".gate_up_proj", 1)}
    stacked = kvcore.WeightsMapper(orig_to_new_stacked=rules)
    assert stacked.map_packed("mlp.up_proj.weight") == ("mlp.gate_up_proj.weight", 1)
    assert stacked.map_name("mlp.gate_proj.weight") == "mlp.gate_up_proj.weight"
    net = model(declare=False)
    loaded = kvcore.AutoWeightsLoader(net).load_weights(weights().items(), mapper=stacked)
    assert loaded == {"mlp.gate_up_proj.weight"} and sorted(net.mlp.gate_up_proj.calls) == [0, 1]


@pytest.mark.parametrize(("present", "absent"), [(["mlp.gate_proj.weight"], "1"), ([], "0, 1")])
def test_absent_shards_are_named_and_nothing_is_written(tmp_path: Path, present: list[str], absent: str) -> None:
    tensors = {name: value for name, value in weights().items() if name in present}
    tensors["other"] = torch.zeros(1)
    net = model()
    net.register_buffer("other", torch.ones(1))
    expected = rf"mlp\.gate_up_proj\.weight \(packed: shard\(s\) {absent} absent\)"
    with pytest.raises(kvcore.WeightLoadError, match=expected):
        kvcore.load(net, write_checkpoint(tmp_path, tensors))
    assert net.mlp.gate_up_proj.calls == [] and float(net.other) == 1.0


def test_strict_false_reports_the_packed_parameter_as_missing(tmp_path: Path) -> None:
    tensors = {"mlp.gate_proj.weight": weights()["mlp.gate_proj.weight"]}
    with pytest.warns(UserWarning, match="shard"):
        report = kvcore.load(model(), write_checkpoint(tmp_path, tensors), strict=False)
    assert report.missing == ["mlp.gate_up_proj.weight"]


def test_a_malformed_packed_modules_mapping_is_named(tmp_path: Path) -> None:
    net = model()
    net.packed_modules_mapping = {"gate_proj": "gate_up_proj"}
    with pytest.raises(kvcore.WeightLoadError, match=r"packed_modules_mapping\['gate_proj'\]"):
        kvcore.load(net, write_checkpoint(tmp_path, weights()))
