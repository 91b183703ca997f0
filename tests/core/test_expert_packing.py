"""MoE experts held fused: packed_experts_mapping and weight_loader(param, tensor, shard_id, expert_id)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kvcore
from kvcore.testing import write_checkpoint

EXPERTS, INTER, HIDDEN = 3, 2, 4


class FusedExperts(torch.nn.Module):
    """vLLM's layout: ``w13_weight [E, 2I, H]`` (gate rows then up rows), ``w2_weight [E, H, I]``."""

    def __init__(self) -> None:
        super().__init__()
        self.w13_weight = torch.nn.Parameter(torch.full((EXPERTS, 2 * INTER, HIDDEN), -7.0), requires_grad=False)
        self.w2_weight = torch.nn.Parameter(torch.full((EXPERTS, HIDDEN, INTER), -7.0), requires_grad=False)
        for param in (self.w13_weight, self.w2_weight):
            param.weight_loader = self.load  # type: ignore[attr-defined]
        self.calls: list[tuple[str, int]] = []

    def load(self, param: torch.Tensor, loaded: torch.Tensor, shard_id: str, expert_id: int) -> None:
        self.calls.append((shard_id, expert_id))
        rows = {"w1": slice(0, INTER), "w3": slice(INTER, 2 * INTER), "w2": slice(None)}[shard_id]
        param.data[expert_id, rows].copy_(loaded)


def model() -> torch.nn.Module:
    root = torch.nn.Module()
    root.mlp = torch.nn.Module()
    root.mlp.experts = FusedExperts()
    root.packed_experts_mapping = {"gate_proj": ("w13", "w1"), "up_proj": ("w13", "w3"), "down_proj": ("w2", "w2")}
    return root


def weights(skip: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for e in range(EXPERTS):
        for i, (name, shape) in enumerate((("gate_proj", (INTER, HIDDEN)), ("up_proj", (INTER, HIDDEN)),
                                           ("down_proj", (HIDDEN, INTER)))):
            key = f"mlp.experts.{e}.{name}.weight"
            if key != skip:
                out[key] = torch.full(shape, float(10 * e + i))
    return out


def test_each_expert_shard_goes_through_the_loader_with_shard_and_expert(tmp_path: Path) -> None:
    net = model()
    report = kvcore.load(net, write_checkpoint(tmp_path, weights()))
    experts = net.mlp.experts
    assert sorted(experts.calls) == sorted((s, e) for e in range(EXPERTS) for s in ("w1", "w3", "w2"))
    for e in range(EXPERTS):
        assert torch.equal(experts.w13_weight[e, :INTER], torch.full((INTER, HIDDEN), 10.0 * e))
        assert torch.equal(experts.w13_weight[e, INTER:], torch.full((INTER, HIDDEN), 10.0 * e + 1))
        assert torch.equal(experts.w2_weight[e], torch.full((HIDDEN, INTER), 10.0 * e + 2))
    assert report.loaded == {"mlp.experts.w13_weight", "mlp.experts.w2_weight"}


def test_the_same_through_auto_weights_loader() -> None:
    net = model()
    loaded = kvcore.AutoWeightsLoader(net).load_weights(weights().items())
    assert loaded == {"mlp.experts.w13_weight", "mlp.experts.w2_weight"} and len(net.mlp.experts.calls) == 9


def test_an_expert_missing_a_shard_is_named(tmp_path: Path) -> None:
    net = model()
    with pytest.raises(kvcore.WeightLoadError, match=r"w13_weight \(packed: shard\(s\) 'w3' of expert 1 absent\)"):
        kvcore.load(net, write_checkpoint(tmp_path, weights(skip="mlp.experts.1.up_proj.weight")))
    assert net.mlp.experts.calls == []


def test_a_fused_expert_parameter_needs_an_expert_id_in_its_loader(tmp_path: Path) -> None:
    net = model()
    net.mlp.experts.w2_weight.weight_loader = lambda _param, _loaded, _shard_id: None
    with pytest.raises(kvcore.WeightLoadError, match=r"'mlp\.experts\.w2_weight'.*expert_id"):
        kvcore.load(net, write_checkpoint(tmp_path, weights()))
