"""The bridge's per-name check against vLLM's real rules: exact, and paid only for names a rule can touch.

The check maps each checkpoint tensor name with vLLM's rules and with vLLM's rules followed by the
plugins'; a pre-filter (``kvcore_vllm._prefilter``) skips the names no rule of either can match.
These tests hold it to vLLM's own mappers: every name either mapper changes is kept, and on a
checkpoint of thousands of weights only the scale-like names reach ``map_name``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoints import GENUINE, write
from kvcore_vllm._bridge import CacheScaleMapper, tensor_names, vllm_mapper
from kvcore_vllm._prefilter import candidates
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.quantization.fp8 import Fp8Config
from vllm.model_executor.layers.quantization.quark.quark import QuarkConfig
from vllm.model_executor.models.utils import WeightsMapper

import kvcore
from kvcore.testing import write_checkpoint

pytestmark = pytest.mark.timeout(300)

REAL2 = GENUINE.parent / "real2"
FIXTURES = sorted(p.parent for p in [*GENUINE.rglob("config.json"), *REAL2.rglob("config.json")])
VLLM_RULES = {"QuantizationConfig": QuantizationConfig.get_cache_scale_mapper(),
              "Fp8Config": Fp8Config.get_cache_scale_mapper(), "QuarkConfig": QuarkConfig.get_cache_scale_mapper()}
TWISTS = ["", "\n", ".weight", "X"]
"""Appended to every fixture name: a trailing newline (which "$" matches before), and near misses."""


def plugin_rules(ckpt: Path) -> WeightsMapper:
    found = kvcore.plugin_mappers_for(ckpt)
    mappers = [vllm_mapper(m) for m in found.values()]
    return sum(mappers[1:], mappers[0]) if mappers else WeightsMapper()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("written")
    return [write(root / kind, kind) for kind in ("acme", "ct-legacy", "ct-current")]


def test_the_fixtures_are_there() -> None:
    assert len(FIXTURES) >= 10, FIXTURES


@pytest.mark.parametrize("owner", list(VLLM_RULES))
def test_every_name_either_mapper_changes_passes_the_filter(owner: str, written: list[Path]) -> None:
    ours = VLLM_RULES[owner]
    checked = 0
    for ckpt in [*FIXTURES, *written]:
        combined = ours | plugin_rules(ckpt)
        names = [name + twist for name in tensor_names(ckpt) for twist in TWISTS]
        kept = set(candidates(names, combined))
        for name in names:
            if ours.map_name(name) != name or combined.map_name(name) != name:
                assert name in kept, (ckpt, owner, name)
                checked += 1
        assert not [n for n in kept if n.endswith("_proj.weight")], ckpt  # the weights skip the two calls
    assert checked > 100


class Counting(WeightsMapper):
    """vLLM's ``WeightsMapper`` that counts ``map_name`` calls."""

    calls = 0

    def map_name(self, key: str) -> str | None:
        Counting.calls += 1
        return super().map_name(key)


def test_only_scale_like_names_are_mapped_on_a_checkpoint_of_thousands(tmp_path: Path) -> None:
    """12 layers x 64 experts x 3 weights, plus attention: 2,400 names, of which 24 are KV-cache scales."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(12):
        p = f"model.layers.{layer}."
        for expert in range(64):
            for w in ("gate_proj", "up_proj", "down_proj"):
                tensors[f"{p}mlp.experts.{expert}.{w}.weight"] = torch.zeros(1, dtype=torch.bfloat16)
        for w in "qkvo":
            tensors[f"{p}self_attn.{w}_proj.weight"] = torch.zeros(1, dtype=torch.bfloat16)
        tensors[f"{p}self_attn.k_proj.output_scale"] = torch.tensor([0.5])
        tensors[f"{p}self_attn.v_proj.output_scale"] = torch.tensor([0.25])
    quant = {"quant_method": "compressed-tensors", "format": "dense", "config_groups": {}, "ignore": [],
             "kv_cache_scheme": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
                                 "symmetric": True}}
    ckpt = write_checkpoint(tmp_path, tensors, quantization_config=quant,
                            config={"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    rules: Any = QuantizationConfig.get_cache_scale_mapper()
    counting = Counting(**{f: getattr(rules, f) for f in ("orig_to_new_regex", "orig_to_new_suffix")})
    Counting.calls = 0
    mapped = CacheScaleMapper(counting, "CompressedTensorsConfig", str(ckpt), None, None)()
    assert Counting.calls == 24  # vLLM's rules alone, once per scale; the combined mapper is another object
    assert mapped.map_name("model.layers.3.self_attn.k_proj.output_scale") == "model.layers.3.self_attn.attn.k_scale"
    assert len(tensor_names(ckpt)) == 12 * (64 * 3 + 6)
