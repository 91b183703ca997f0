"""``kvcore inspect``: what a load would do with a checkpoint, without a model.

Reads the configs and shard headers, asks the plugins for their mappers, maps every name,
and reads tensor data only for the KV-cache scales and KV zero points it finds. The result
says which scale lands on which attention parameter and lists anomalies.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from kvcore._checkpoint.reader import Checkpoint, read_checkpoint
from kvcore._checkpoint.safetensors import TensorInfo, read_tensor
from kvcore._cli.inspect_checks import Findings, check_layers, check_value, is_scale_like, layer_pattern
from kvcore._cli.inspect_tp import TensorParallel, split_heads
from kvcore._errors import KvcoreError
from kvcore._mapper import WeightsMapper
from kvcore._meaning import ScaleMeaning
from kvcore._names import KV_BIAS_NAMES, SCALE_NAMES, ZERO_POINT_NAMES, natural_key
from kvcore._plugins.contributions import Contribution, combine, meaning_of, plugin_map_name
from kvcore._plugins.for_checkpoint import check_name_conflicts, plugin_mappers
from kvcore._show import quoted

__all__ = ["Anomaly", "Inspection", "ScaleEntry", "inspect_checkpoint"]

MAX_READ = 1 << 16
"""Scales are one value or one per KV head; anything bigger is not read."""


@dataclasses.dataclass(frozen=True)
class Anomaly:
    """Something a person should know about the checkpoint; ``level`` is error/warning/info."""

    level: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "message": self.message}


@dataclasses.dataclass(frozen=True)
class ScaleEntry:
    """One KV-cache scale tensor of the checkpoint and the parameter it would load into."""

    tensor: str
    target: str
    shape: list[int]
    dtype: str
    value: float | list[float]
    plugins: list[str]

    def as_dict(self) -> dict[str, object]:
        """The documented JSON shape (``plugins`` is for the human table only)."""
        return {"tensor": self.tensor, "target": self.target, "shape": self.shape, "dtype": self.dtype,
                "value": self.value}


@dataclasses.dataclass
class Inspection:
    """The result of :func:`inspect_checkpoint`."""

    checkpoint: str
    quant_method: str | None
    plugins: list[str]
    plugin_labels: dict[str, str]
    layers: dict[str, dict[str, ScaleEntry]]
    anomalies: list[Anomaly]
    tensor_parallel: TensorParallel | None = None

    @property
    def has_errors(self) -> bool:
        return any(a.level == "error" for a in self.anomalies)

    def as_dict(self) -> dict[str, object]:
        """The documented, stable JSON shape of ``kvcore inspect --json``."""
        data: dict[str, object] = {
            "quant_method": self.quant_method,
            "plugins": list(self.plugins),
            "layers": {
                layer: {scale: entry.as_dict() for scale, entry in scales.items()}
                for layer, scales in self.layers.items()
            },
            "anomalies": [a.as_dict() for a in self.anomalies],
        }
        if self.tensor_parallel is not None:
            data["tensor_parallel"] = self.tensor_parallel.as_dict()
        return data


def inspect_checkpoint(path: str | Path, *, tp_size: int | None = None) -> Inspection:
    """Inspect ``path``; raises ``KvcoreError`` only when the checkpoint cannot be read.

    With ``tp_size``, also which KV heads each of that many tensor-parallel ranks gets.
    """
    ckpt = read_checkpoint(path)
    findings = Findings()
    contributions, mapper = _mappers(ckpt, findings)
    heads = _kv_heads(ckpt.config)
    layers: dict[str, dict[str, ScaleEntry]] = {}
    claimed: dict[str, str] = {}
    for name in sorted(ckpt.tensors, key=natural_key):
        info = ckpt.tensors[name]
        mapped = mapper.map_name(name)
        if mapped is None:
            continue  # a rule drops it on purpose
        parent, _, attr = mapped.rpartition(".")
        if attr in SCALE_NAMES and parent.rpartition(".")[2] == "attn":
            if _claim(claimed, info, mapped, findings):
                entry = _scale_entry(info, mapped, heads, contributions, findings)
                layers.setdefault(parent, {})[attr] = entry
        elif attr in ZERO_POINT_NAMES:
            _zero_point(info, findings)
        elif attr in KV_BIAS_NAMES:
            findings.group("warning", f"{attr} present", name, _BIAS_NOTE)
        elif mapped == name and is_scale_like(name):
            findings.group("warning", f"unmapped {layer_pattern(name)}", name, _UNMAPPED_NOTE)
    ordered = {layer: _ordered(layers[layer]) for layer in sorted(layers, key=natural_key)}
    check_layers(ckpt.quant_config is not None, ordered, findings)
    parallel = None if tp_size is None else split_heads(ordered, ckpt.config, tp_size, findings)
    labels = {c.plugin: c.label for c in contributions}
    method = ckpt.quant_config.quant_method if ckpt.quant_config else None
    return Inspection(str(ckpt.directory), method, [c.plugin for c in contributions], labels, ordered,
                      findings.anomalies(Anomaly), parallel)


_BIAS_NOTE = (
    "the KV cache is affine (ModelOpt): a bias changes the arithmetic, and kvcore.load refuses it "
    "unless the model has a parameter of that name"
)
_UNMAPPED_NOTE = (
    "looks like a scale but no installed plugin's rule maps it onto an attention module, so a "
    "load would not use it (strict=True refuses it). Install or enable the plugin for this format"
)


def _mappers(ckpt: Checkpoint, findings: Findings) -> tuple[list[Contribution], WeightsMapper]:
    """The plugins' mappers as a load would combine them; failures become error anomalies."""
    try:
        contributions = plugin_mappers(ckpt, strict=True)
    except KvcoreError as exc:
        findings.add("error", str(exc))
        return [], WeightsMapper()
    try:
        mapper = combine(WeightsMapper(), contributions)
        check_name_conflicts(ckpt.tensors, contributions)
    except KvcoreError as exc:
        findings.add("error", str(exc))
        return contributions, _first_agreeing(contributions)
    _meaning_notes(meaning_of(contributions), findings)
    return contributions, mapper


MEANING_NOTES = {
    "mla_latent": "the k/v scales describe the MLA latent (k) and rope key (v), not keys and values: an MLA "
    "cache (kvcore.Attention(use_mla=True)) uses max(k, v) for both; an attention that expands MLA into "
    "per-head keys and values (use_mla=False) cannot use them and gets 1.0",
    "mla_per_head": "the k/v scales describe the MLA model's expanded per-head keys and values: an attention "
    "with use_mla=False uses them; an MLA latent cache (use_mla=True) cannot, and gets 1.0",
}


def _meaning_notes(meaning: ScaleMeaning, findings: Findings) -> None:
    """What the plugins say the scales measure: a caveat is a warning, the rest information."""
    if meaning.caveat:
        findings.add("warning", meaning.caveat)
    if meaning.describes in MEANING_NOTES:
        findings.add("info", MEANING_NOTES[meaning.describes])
    if meaning.calibrated_for != "fp8":
        findings.add("info", f"calibrated for a {meaning.calibrated_for} KV cache (scale = amax/448 as for fp8)")


def _first_agreeing(contributions: list[Contribution]) -> WeightsMapper:
    """After a conflict, keep going with the first plugin's rules so the table still shows something."""
    return contributions[0].mapper if contributions else WeightsMapper()


def _kv_heads(config: dict[str, object]) -> int | None:
    for key in ("num_key_value_heads", "num_attention_heads"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _claim(claimed: dict[str, str], info: TensorInfo, target: str, findings: Findings) -> bool:
    first = claimed.setdefault(target, info.name)
    if first == info.name:
        return True
    findings.add(
        "error",
        f"checkpoint tensors {first!r} and {info.name!r} both map to {target!r}; a load refuses "
        "this. Remove one of them or fix the plugin whose rule renames them",
    )
    return False


def _scale_entry(
    info: TensorInfo,
    target: str,
    heads: int | None,
    contributions: list[Contribution],
    findings: Findings,
) -> ScaleEntry:
    value = _read_flat(info)
    check_value(info, target, value, heads, findings)
    shown: float | list[float] = value.tolist() if value.numel() != 1 else float(value[0])
    plugins = [c.plugin for c in contributions if plugin_map_name(c, info.name) != info.name]
    return ScaleEntry(info.name, target, list(info.shape), info.dtype, shown, plugins)


def _read_flat(info: TensorInfo) -> torch.Tensor:
    if info.numel > MAX_READ:
        return torch.empty(0)
    return read_tensor(info).to(torch.float32).reshape(-1)


def _zero_point(info: TensorInfo, findings: Findings) -> None:
    value = _read_flat(info)
    if value.numel() and bool((value != 0).any()):
        shown = [v for v in value.tolist()[:8] if not math.isnan(v)] or value.tolist()[:8]
        findings.add(
            "warning",
            f"{quoted(info.name)} holds non-zero zero points ({shown}): the KV cache is asymmetric (int8). "
            "kvcore.load refuses it unless the model's attention has a parameter for it; it is "
            "never loaded as if symmetric",
        )
    else:
        findings.group("info", "zero point", info.name,
                       "all-zero zero points of a symmetric scheme; kvcore.load accepts and drops them")


def _ordered(scales: dict[str, ScaleEntry]) -> dict[str, ScaleEntry]:
    return {name: scales[name] for name in SCALE_NAMES if name in scales}

