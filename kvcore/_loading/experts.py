"""MoE experts held fused: ``packed_experts_mapping``, the packed-module rule with an expert index.

Checkpoints store experts one by one (``mlp.experts.3.gate_proj.weight``, Mixtral's
``block_sparse_moe.experts.3.w1.weight``); engines hold them fused, one parameter for all
experts (vLLM's ``experts.w13_weight`` of shape ``[E, 2I, H]``). A root module declares

    packed_experts_mapping = {"gate_proj": ("w13", "w1"), "up_proj": ("w13", "w3"), "down_proj": ("w2", "w2")}

and a checkpoint tensor ``<P>.experts.<N>.gate_proj.<leaf>`` loads into ``<P>.experts.w13_<leaf>``
through that parameter's ``weight_loader(param, tensor, shard_id, expert_id)`` (vLLM's naming and
argument order, without its ``weight_name``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import torch

from kvcore._errors import WeightLoadError
from kvcore._mapper import ShardId

__all__ = ["ExpertPacking", "ExpertShard"]


class ExpertShard(NamedTuple):
    """Shard ``shard`` of expert ``expert``: a fused expert parameter's loader gets both."""

    shard: ShardId
    expert: int

    def __repr__(self) -> str:
        return f"{self.shard!r} of expert {self.expert}"


class ExpertPacking:
    """The root module's ``packed_experts_mapping``, compiled."""

    def __init__(self, mapping: Mapping[str, tuple[str, ShardId]]) -> None:
        self.mapping = dict(mapping)
        keys = "|".join(map(re.escape, sorted(self.mapping, key=len, reverse=True)))
        self._pattern = re.compile(rf"(?:^|(?<=\.))experts\.(\d+)\.({keys})\.") if keys else None

    @classmethod
    def of(cls, model: torch.nn.Module) -> ExpertPacking:
        mapping = getattr(model, "packed_experts_mapping", None) or {}
        where = f"{type(model).__name__}.packed_experts_mapping"
        if not isinstance(mapping, Mapping):
            raise WeightLoadError(f"{where} must be a dict, not {type(mapping).__name__}")
        for key, target in mapping.items():
            pair = isinstance(target, tuple) and len(target) == 2
            if not (isinstance(key, str) and pair and isinstance(target[0], str) and isinstance(target[1], int | str)):
                raise WeightLoadError(
                    f"{where}[{key!r}] = {target!r}: each entry maps a checkpoint expert module name to a "
                    "(fused parameter prefix, shard id) pair, such as 'gate_proj': ('w13', 'w1')"
                )
        return cls(mapping)

    def pack(self, name: str) -> tuple[str, ExpertShard] | None:
        """``(fused parameter name, ExpertShard)`` for an expert's tensor, or ``None``."""
        found = self._pattern.search(name) if self._pattern is not None else None
        if found is None:
            return None
        fused, shard = self.mapping[found.group(2)]
        return f"{name[: found.start()]}experts.{fused}_{name[found.end():]}", ExpertShard(shard, int(found.group(1)))

    def expected(self, parameter: str, got: set[ExpertShard]) -> set[ExpertShard]:
        """Every (shard, expert) ``parameter`` needs, for the experts the checkpoint has for it."""
        leaf = parameter.rpartition(".")[2]
        shards = {shard for fused, shard in self.mapping.values() if leaf.startswith(f"{fused}_")}
        return {ExpertShard(shard, expert) for shard in shards for expert in {g.expert for g in got}}
