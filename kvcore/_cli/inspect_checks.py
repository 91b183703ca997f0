"""The anomaly rules of ``kvcore inspect``, and how findings are grouped into messages."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

import torch

from kvcore._checkpoint.safetensors import TensorInfo
from kvcore._show import shown

__all__ = ["HIGH", "LOW", "Findings", "check_layers", "check_value", "is_scale_like", "layer_pattern"]

LOW, HIGH = 1e-6, 1e4
"""Outside these, a scale (= amax / 448) means an amax below ~4.5e-4 or above ~4.5e6:
no real activation looks like that, an uninitialised value does."""

LEVELS = ("error", "warning", "info")
A = TypeVar("A")


class _Entry(Protocol):
    tensor: str
    value: float | list[float]


class Findings:
    """Anomalies in the making: single messages, and per-tensor notes grouped by kind."""

    def __init__(self) -> None:
        self._single: list[tuple[str, str]] = []
        self._groups: dict[tuple[str, str], tuple[list[str], str]] = {}

    def add(self, level: str, message: str) -> None:
        self._single.append((level, message))

    def group(self, level: str, kind: str, name: str, note: str) -> None:
        """Note ``name``; every name of one ``(level, kind)`` ends up in one message."""
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
    value: torch.Tensor,
    heads: int | None,
    findings: Findings,
) -> None:
    """Shape, dtype and value rules of one KV-cache scale (the same ones a load enforces)."""
    where = f"{shown(info.name)} (-> {shown(target)})"
    if info.numel != 1 and info.numel != heads:
        expected = f"or num_key_value_heads={heads} (config.json) " if heads else ""
        findings.add("error", f"{where} has shape {list(info.shape)}: a KV-cache scale has one element "
                              f"{expected}per layer; a load refuses it. Re-export the checkpoint")
    if not info.torch_dtype.is_floating_point:
        findings.add("error", f"{where} has dtype {info.dtype}; a KV-cache scale must be floating point")
    if not value.numel():
        return
    text = _shown(value)
    for problem, bad in (("NaN", torch.isnan(value)), ("an infinite value", torch.isinf(value)),
                         ("zero", value == 0), ("a negative value", value < 0)):
        if bool(bad.any()):
            findings.add("error", f"{where} holds {problem} ({text}): a KV-cache scale must be a finite "
                                  "positive number, and kvcore.load refuses it. The quantization tool "
                                  "probably saved an uninitialised scale: re-export the checkpoint")
            return
    if bool((value < LOW).any()) or bool((value > HIGH).any()):
        findings.add("warning", f"{where} = {text} is implausible for amax / 448 (expected between {LOW:g} "
                                f"and {HIGH:g}); probably an uninitialised or mis-calibrated value. Check the "
                                "calibration before serving with it")


def _shown(value: torch.Tensor) -> str:
    items = value.tolist()
    text = ", ".join(f"{v:.6g}" for v in items[:8]) + (", ..." if len(items) > 8 else "")
    return text if len(items) == 1 else f"[{text}]"


ONE_FOR_BOTH = ("kv_scale", "qkv_proj.output_scale", "kv_b_proj.output_scale")
"""Checkpoint tensors written as one scale for k and v: AutoFP8's legacy name, Quark's fused projections."""


def check_layers(quantized: bool, layers: Mapping[str, Mapping[str, _Entry]], findings: Findings) -> None:
    """Layer-level rules: k without v (or v without k), no scales at all, k == v everywhere."""
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
