"""``kvcore inspect --tp-size T``: which KV heads each tensor-parallel rank's scales hold.

The split itself is :func:`kvcore._loading.heads.rank_span`, the rule a load applies; this only asks
it, per rank, which of the checkpoint's ``H`` KV heads that rank gets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from kvcore._cli.inspect_checks import Findings, Scale
from kvcore._errors import WeightLoadError
from kvcore._loading.heads import rank_span

__all__ = ["TensorParallel", "split_heads"]


@dataclasses.dataclass(frozen=True)
class TensorParallel:
    """The per-rank KV heads; ``kv_heads`` None: no per-head scales (every rank the same);
    ``ranks`` empty: the split is impossible (an error anomaly says why)."""

    tp_size: int
    kv_heads: int | None
    ranks: list[list[int] | None]

    def as_dict(self) -> dict[str, object]:
        """The documented JSON shape (docs/cli.md)."""
        return {"tp_size": self.tp_size, "kv_heads": self.kv_heads,
                "ranks": [{"rank": r, "heads": heads} for r, heads in enumerate(self.ranks)]}


def split_heads(
    layers: Mapping[str, Mapping[str, Scale]],
    config: Mapping[str, object],
    tp_size: int,
    findings: Findings,
) -> TensorParallel:
    """Each rank's KV heads under ``tp_size``; an impossible split becomes an error anomaly."""
    per_head = _per_head(layers, config)
    if not per_head:
        return TensorParallel(tp_size, None, [None] * tp_size)
    heads = _kv_heads(per_head, config, findings)
    first = next(iter(per_head))
    everything = list(range(heads))
    try:
        ranks: list[list[int] | None] = [everything[rank_span(heads, r, tp_size, first)] for r in range(tp_size)]
    except WeightLoadError:
        others = f" and {len(per_head) - 1} more" if len(per_head) > 1 else ""
        findings.add("error", f"--tp-size {tp_size} does not fit the checkpoint's {heads} KV heads (per-head "
                              f"scales such as {first}{others}): {tp_size} ranks can neither split {heads} "
                              f"heads evenly nor replicate them, and a load with tp_size={tp_size} refuses "
                              f"them. Sizes that fit: {_fitting(heads)}")
        return TensorParallel(tp_size, heads, [])
    return TensorParallel(tp_size, heads, ranks)


def _per_head(layers: Mapping[str, Mapping[str, Scale]], config: Mapping[str, object]) -> dict[str, int]:
    """Per-head scale tensor -> its KV-head count (a per-query-head q_scale counts its KV heads)."""
    query, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    found = {}
    for scales in layers.values():
        for name, entry in scales.items():
            size = math.prod(entry.shape)
            if size <= 1:
                continue
            if name == "q_scale" and isinstance(kv, int) and kv > 0 and size == query != kv:
                size = kv  # reduced to one per KV head by max first, as a load does
            found[entry.tensor] = size
    return found


def _kv_heads(per_head: dict[str, int], config: Mapping[str, object], findings: Findings) -> int:
    """``H``: the per-head scales' size, cross-checked with config.json's ``num_key_value_heads``."""
    sizes = list(dict.fromkeys(per_head.values()))
    declared = config.get("num_key_value_heads")
    heads = declared if isinstance(declared, int) and declared in sizes else sizes[0]
    odd = [name for name, size in per_head.items() if size != heads]
    if odd:
        findings.add("warning", f"tensor parallel: per-head scales disagree on the number of KV heads "
                                f"({', '.join(map(str, sizes))}, e.g. {odd[0]} has {per_head[odd[0]]}); "
                                f"the split shown is for {heads}")
    if isinstance(declared, int) and declared != heads:
        findings.add("warning", f"tensor parallel: the per-head scales hold {heads} KV heads but config.json "
                                f"says num_key_value_heads={declared}; the split shown follows the scales")
    return heads


def _fitting(heads: int) -> str:
    """``1, 2, 4, 6, 8, ... (a divisor of 2 or a multiple of it)``."""
    sizes = sorted({d for d in range(1, heads + 1) if heads % d == 0} | {heads * k for k in (2, 3, 4)})
    return f"{', '.join(map(str, sizes))}, ... (a divisor of {heads} or a multiple of it)"
