"""What an operator needs before serving a checkpoint: the verdict, the KV-cache facts, a summary per scale.

Computed from what ``kvcore inspect`` found (the scales per attention layer, the plugins' meaning,
the anomalies), never from a model: the verdict says whether ``kvcore.load`` would load the
checkpoint into an fp8 KV cache, and why; the facts say what an engine must build for it.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Mapping, Sequence

from kvcore._cli.inspect_checks import Scale, layer_pattern
from kvcore._cli.table import spans
from kvcore._meaning import ScaleMeaning
from kvcore._names import SCALE_NAMES

__all__ = ["AMAX_FACTOR", "KvCacheFacts", "amax_factor", "ScaleSummary", "Verdict", "kv_cache_facts", "layer_number",
           "summarise", "verdict"]

AMAX_FACTOR = {"fp8_e5m2": 57344.0}
"""The largest finite value of the KV dtype a scale was calibrated for: scale = amax / factor.
Every producer here writes amax / 448 (float8 e4m3's max), nvfp4 included; e5m2 would use 57344."""
E4M3_MAX = 448.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Would ``kvcore.load`` load this checkpoint into an fp8 KV cache, and why (one line)."""

    loads: bool
    reason: str

    def line(self) -> str:
        return f"verdict: loads into an fp8 KV cache: {'yes' if self.loads else 'no'}, {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {"loads": self.loads, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class KvCacheFacts:
    """What the scales are for, and what an engine must build to use them."""

    calibrated_for: str | None
    """The KV dtype the producer calibrated for (``"fp8"``, ``"nvfp4"``, ...); None without scales."""
    amax_factor: float
    """amax = scale x this (448 for e4m3)."""
    granularity: str | None
    """``"per-tensor"``, ``"per-head"``, ``"per-tensor and per-head"``; None without scales."""
    num_kv_heads: int | None
    """The KV heads an attention must be built with (config.json, or the per-head scales' size)."""
    describes: str
    caveat: str | None
    rope: str | None
    """``"pre"``/``"post"``: keys measured before or after RoPE, as the plugin says; None: not said."""
    layers: int | None
    """Attention layers the model has (config.json's ``num_hidden_layers``)."""
    covered: list[int]
    """Layer numbers with a k or v scale."""
    missing: list[int]
    """Layer numbers of the model without any k or v scale (a load uses 1.0 there)."""

    def as_dict(self) -> dict[str, object]:
        return {"calibrated_for": self.calibrated_for, "amax_factor": self.amax_factor,
                "granularity": self.granularity, "num_kv_heads": self.num_kv_heads, "describes": self.describes,
                "caveat": self.caveat, "rope": self.rope, "layers": {"total": self.layers, "with_scales": self.covered,
                                                  "missing": self.missing}}


@dataclasses.dataclass(frozen=True)
class ScaleSummary:
    """One scale name over every layer: how many, where, and the range of values and amax."""

    scale: str
    count: int
    layers: list[int]
    tensor: str
    """The checkpoint names, as their layer pattern (``model.layers.N.self_attn.k_scale``)."""
    dtypes: list[str]
    shapes: list[list[int]]
    minimum: float
    median: float
    maximum: float
    amax_factor: float

    def as_dict(self) -> dict[str, object]:
        return {"count": self.count, "layers": self.layers, "tensor": self.tensor, "dtypes": self.dtypes,
                "shapes": self.shapes, "min": self.minimum, "median": self.median, "max": self.maximum,
                "amax_max": self.maximum * self.amax_factor}


def layer_number(module: str) -> int | None:
    """``model.layers.7.self_attn.attn`` -> 7 (the number after ``layers``/``h``/``blocks``)."""
    found = re.search(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)", module)
    return int(found.group(1)) if found else None


def amax_factor(meaning: ScaleMeaning) -> float:
    """amax = scale x this, for the KV dtype the plugins say the scales were calibrated for."""
    return AMAX_FACTOR.get(meaning.calibrated_for, E4M3_MAX)


def kv_cache_facts(
    layers: Mapping[str, Mapping[str, Scale]], config: Mapping[str, object], meaning: ScaleMeaning
) -> KvCacheFacts:
    """The facts above, from the scales found and config.json."""
    sizes = {_size(e) for scales in layers.values() for e in scales.values()}
    heads = _int(config.get("num_key_value_heads")) or _int(config.get("num_attention_heads"))
    per_head = sorted(s for s in sizes if s > 1)
    granularity = None if not sizes else "per-tensor" if not per_head else (
        "per-head" if 1 not in sizes else "per-tensor and per-head")
    total = _int(config.get("num_hidden_layers"))
    covered = sorted({n for m, s in layers.items() if {"k_scale", "v_scale"} & s.keys()
                      for n in [layer_number(m)] if n is not None})
    missing = [n for n in range(total or 0) if n not in covered] if covered else []
    return KvCacheFacts(meaning.calibrated_for if layers else None, amax_factor(meaning), granularity,
                        heads or (per_head[0] if per_head else None), meaning.describes, meaning.caveat,
                        meaning.rope, total, covered, missing)


def summarise(layers: Mapping[str, Mapping[str, Scale]], amax_factor: float) -> list[ScaleSummary]:
    """One summary per scale name the checkpoint holds, in the order k, v, q, prob."""
    out = []
    for scale in SCALE_NAMES:
        entries = [(m, s[scale]) for m, s in layers.items() if scale in s]
        values = [v for _, e in entries for v in (e.value if isinstance(e.value, list) else [e.value])]
        if not entries or not values:
            continue
        numbers = sorted({n for m, _ in entries for n in [layer_number(m)] if n is not None})
        patterns = list(dict.fromkeys(layer_pattern(e.tensor) for _, e in entries))
        shapes = [list(s) for s in dict.fromkeys(tuple(e.shape) for _, e in entries)]
        out.append(ScaleSummary(scale, len(entries), numbers, ", ".join(patterns),
                                sorted({e.dtype for _, e in entries}), shapes, min(values),
                                statistics.median(values), max(values), amax_factor))
    return out


def verdict(reasons: Sequence[str], warnings: int, quantized: bool, facts: KvCacheFacts) -> Verdict:
    """No with the first error; otherwise yes, saying what the scales are and what to watch."""
    if reasons:
        others = len(reasons) - 1
        more = f" (and {others} more error{'s' if others > 1 else ''} below)" if others else ""
        return Verdict(False, f"kvcore.load refuses it: {reasons[0]}{more}")
    if facts.granularity is None:
        why = "the checkpoint is not quantized" if not quantized else "it holds no KV-cache scales"
        return Verdict(True, f"but uncalibrated: {why}, so every layer's scales are 1.0 (a load warns with "
                             "an fp8 KV cache); calibrate the KV cache before serving it in fp8")
    total = facts.layers or len(facts.covered)
    parts = [f"{facts.granularity} scales in {len(facts.covered)} of {total} attention layers, calibrated for "
             f"{facts.calibrated_for} (amax = scale x {facts.amax_factor:g})"]
    if facts.missing:
        parts.append(f"layers {spans(facts.missing)} have none and get 1.0")
    if facts.describes == "mla_latent":
        parts.append("for an MLA latent cache (use_mla=True) only")
    elif facts.describes == "mla_per_head":
        parts.append("for an attention that expands MLA into per-head keys and values (use_mla=False) only")
    if facts.caveat:
        parts.append("with a caveat on what was measured")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings > 1 else ''} below")
    return Verdict(True, "; ".join(parts))


def _size(entry: Scale) -> int:
    return len(entry.value) if isinstance(entry.value, list) else 1


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
