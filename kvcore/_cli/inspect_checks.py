"""The anomaly rules of ``kvcore inspect``, and how findings are grouped into messages."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from kvcore._checkpoint.decode import FLOAT_DTYPES
from kvcore._checkpoint.safetensors import TensorInfo
from kvcore._scale_rules import dtype_problem, scale_problem, size_problem
from kvcore._show import shown

__all__ = ["HIGH", "LOW", "Findings", "Scale", "check_layers", "check_value", "is_scale_like", "layer_pattern"]

LOW, HIGH = 1e-6, 1e4
"""Outside these, a scale (= amax / 448) means an amax below ~4.5e-4 or above ~4.5e6:
no real activation looks like that, an uninitialised value does."""

LEVELS = ("error", "warning", "info")
A = TypeVar("A")


class Scale(Protocol):
    """What the rules read of a scale entry (``kvcore._cli.inspect.ScaleEntry``), read-only."""

    @property
    def tensor(self) -> str: ...
    @property
    def shape(self) -> list[int]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def value(self) -> float | list[float]: ...


class Findings:
    """Anomalies in the making: single messages, and per-tensor notes grouped by kind."""

    def __init__(self) -> None:
        self._single: list[tuple[str, str]] = []
        self._groups: dict[tuple[str, str], tuple[list[str], str]] = {}
        self.reasons: list[str] = []
        """Each error in a few words, in the order found: the verdict line gives the first."""

    def add(self, level: str, message: str, *, short: str | None = None) -> None:
        """Note one anomaly; an error's ``short`` (default: its message) is what the verdict says."""
        self._single.append((level, message))
        if level == "error":
            self.reasons.append(short or message)

    def group(self, level: str, kind: str, name: str, note: str) -> None:
        """Note ``name``; every name of one ``(level, kind)`` ends up in one message (an error's
        verdict words: ``kind`` and the first name)."""
        if level == "error" and (level, kind) not in self._groups:
            self.reasons.append(f"{kind} ({shown(name)})")
        self._groups.setdefault((level, kind), ([], note))[0].append(name)

    def anomalies(self, factory: Callable[[str, str], A]) -> list[A]:
        """Errors first, then warnings, then info; within a level, in the order found."""
        items = self._single + [(level, f"{describe(names)}: {note}") for (level, _), (names, note) in
                                self._groups.items()]
        items.sort(key=lambda item: LEVELS.index(item[0]))
        return [factory(level, message) for level, message in items]


def describe(names: list[str]) -> str:
    """A few names in full; many as their layer pattern, a count and the first one."""
    if len(names) <= 4:
        return ", ".join(map(shown, names))
    patterns = list(dict.fromkeys(shown(layer_pattern(n)) for n in names))
    return f"{', '.join(patterns)} ({len(names)} tensors, e.g. {shown(names[0])})"


def layer_pattern(name: str) -> str:
    """``model.layers.7.self_attn.k_scale`` -> ``model.layers.N.self_attn.k_scale``."""
    return re.sub(r"\.\d+(?=\.)", ".N", name)


def is_scale_like(name: str) -> bool:
    """Ends in ``_scale`` but is not a weight's or an input activation's own scale."""
    last = name.rpartition(".")[2]
    return last.endswith("_scale") and not last.startswith(("weight", "input"))


def check_value(
    info: TensorInfo,
    target: str,
    values: list[float],
    heads: int | None,
    findings: Findings,
) -> None:
    """Shape, dtype and value rules of one KV-cache scale: ``kvcore._scale_rules``, as a load applies them.

    ``values``: the elements as float32 reads them (empty when too big to read); ``heads``: the
    KV heads of an attention built from config.json.
    """
    where = f"{shown(info.name)} (-> {shown(target)})"
    attr = target.rpartition(".")[2]
    problem = size_problem(info.shape, heads) or _heads_problem(info, attr, heads)
    if problem is not None:
        findings.add("error", f"{where} {problem}; a load refuses it. Re-export the checkpoint",
                     short=f"{shown(info.name)} has shape {list(info.shape)}")
    problem = dtype_problem(info.dtype, info.dtype in FLOAT_DTYPES)
    if problem is not None:
        findings.add("error", f"{where} {problem}; a load refuses it. Re-export the checkpoint",
                     short=f"{shown(info.name)} is {info.dtype}, not floating point")
        return
    problem = scale_problem(values)
    if problem is not None:
        findings.add("error", f"{where} {problem}, and kvcore.load refuses it. The quantization tool "
                              "probably saved an uninitialised scale: re-export the checkpoint",
                     short=f"{shown(info.name)} {problem.partition(';')[0]}")
    elif any(v < LOW or v > HIGH for v in values):
        findings.add("warning", f"{where} = {_shown(values)} is implausible for amax / 448 (expected between "
                                f"{LOW:g} and {HIGH:g}); probably an uninitialised or mis-calibrated value. "
                                "Check the calibration before serving with it")


def _heads_problem(info: TensorInfo, attr: str, heads: int | None) -> str | None:
    """A load's size rule for an attention built from config.json at tp_size=1 (``rank_scale``):
    one element, one per KV head, or (``q_scale``) one per query head, reduced per KV head."""
    count = info.numel
    if count == 1 or count == heads or (heads and attr == "q_scale" and count % heads == 0):
        return None
    said = f"config.json says num_key_value_heads={heads}" if heads else "config.json gives no head count"
    return (f"has shape {list(info.shape)}: a KV-cache scale has one element (per-tensor) or one per KV "
            f"head (per-head), and {said}")


def _shown(values: list[float]) -> str:
    text = ", ".join(f"{v:.6g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
    return text if len(values) == 1 else f"[{text}]"


ONE_FOR_BOTH = ("kv_scale", "qkv_proj.output_scale", "kv_b_proj.output_scale")
"""Checkpoint tensors written as one scale for k and v: AutoFP8's legacy name, Quark's fused projections."""


def check_layers(quantized: bool | None, layers: Mapping[str, Mapping[str, Scale]], findings: Findings) -> None:
    """Layer-level rules: k without v (or v without k), no scales at all, k == v everywhere.

    ``quantized`` None: the plugins' mappers could not be built (an error says why), so what a
    load would do without scales is beside the point.
    """
    if not layers and quantized is None:
        return
    if not layers:
        findings.add("info", "no KV-cache scales found: kvcore.load uses 1.0 for every attention layer "
                             "(and warns when the KV cache is fp8)" if quantized else
                     "no quantization config: the checkpoint is not quantized and no plugin is consulted")
        return
    for layer, scales in layers.items():
        k, v = scales.get("k_scale"), scales.get("v_scale")
        if k is not None and v is None and k.tensor.endswith(ONE_FOR_BOTH):
            findings.group("info", "kv_scale", layer, "one scale serves for both k and v (a legacy kv_scale, "
                                                      "or a fused projection's output scale)")
        elif k is not None and v is None:
            findings.group("warning", "k without v", layer,
                           "k_scale without v_scale; kvcore.load uses k_scale for v as well")
        elif v is not None and k is None:
            findings.group("warning", "v without k", layer,
                           "v_scale without k_scale; kvcore.load uses v_scale for k as well")
    pairs = [(s.get("k_scale"), s.get("v_scale")) for s in layers.values()]
    if all(k is not None and v is not None and _same(k.value, v.value) for k, v in pairs):
        findings.add("info", f"k_scale == v_scale in every layer ({len(pairs)}): one amax for both, as AMD "
                             "Quark writes unless kv_cache_post_rope is true")


def _same(a: float | list[float], b: float | list[float]) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    return a == b and not math.isnan(a)
