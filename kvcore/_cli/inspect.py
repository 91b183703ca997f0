"""``kvcore inspect``: what a load would do with a checkpoint, without a model.

Reads the configs and shard headers, asks the plugins for their mappers, maps every name,
and reads tensor data only for the KV-cache scales and KV zero points it finds (decoded in pure
Python: this command never imports torch). The result says which scale lands on which attention
parameter, lists anomalies by the rules a load applies (``kvcore._scale_rules``), and gives the
verdict and the facts an operator needs (``inspect_facts``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kvcore._checkpoint.decode import as_float32, decode
from kvcore._checkpoint.reader import Checkpoint, read_checkpoint
from kvcore._checkpoint.safetensors import TensorInfo, read_bytes
from kvcore._cli.inspect_checks import Findings, check_layers, check_value, is_scale_like, layer_pattern
from kvcore._cli.inspect_facts import (
    KvCacheFacts,
    ScaleSummary,
    Verdict,
    amax_factor,
    kv_cache_facts,
    summarise,
    verdict,
)
from kvcore._cli.inspect_tp import TensorParallel, split_heads
from kvcore._cli.table import spans
from kvcore._errors import KvcoreError
from kvcore._mapper import WeightsMapper
from kvcore._meaning import ScaleMeaning
from kvcore._names import KV_BIAS_NAMES, SCALE_NAMES, ZERO_POINT_NAMES, natural_key
from kvcore._plugins.contributions import Contribution, collect_mappers, combine, meaning_of, plugin_map_name
from kvcore._plugins.for_checkpoint import check_name_conflicts, plugin_mappers
from kvcore._plugins.manager import get_plugin_manager
from kvcore._scale_rules import MAX_SCALE_VALUES, offset_problem
from kvcore._show import shown

__all__ = ["Anomaly", "Inspection", "ScaleEntry", "inspect_checkpoint"]

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
    amax: float | list[float]
    """What the value implies the calibrated amax was (value x 448 for e4m3)."""

    def as_dict(self) -> dict[str, object]:
        """The documented JSON shape (``plugins`` is for the human table only)."""
        return {"tensor": self.tensor, "target": self.target, "shape": self.shape, "dtype": self.dtype,
                "value": self.value, "amax": self.amax}


@dataclasses.dataclass
class Inspection:
    """The result of :func:`inspect_checkpoint`."""

    checkpoint: str
    quant_method: str | None
    plugins: list[str]
    plugin_labels: dict[str, str]
    layers: dict[str, dict[str, ScaleEntry]]
    anomalies: list[Anomaly]
    verdict: Verdict
    kv_cache: KvCacheFacts
    summary: list[ScaleSummary]
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
        data["verdict"] = self.verdict.as_dict()
        data["kv_cache"] = self.kv_cache.as_dict()
        data["summary"] = {s.scale: s.as_dict() for s in self.summary}
        return data


def inspect_checkpoint(path: str | Path, *, tp_size: int | None = None) -> Inspection:
    """Inspect ``path``; raises ``KvcoreError`` only when the checkpoint cannot be read.

    With ``tp_size``, also which KV heads each of that many tensor-parallel ranks gets.
    """
    ckpt = read_checkpoint(path)
    findings = Findings()
    contributions, mapper, mapped = _mappers(ckpt, findings)
    meaning = meaning_of(contributions)
    heads = _kv_heads(ckpt.config)
    layers: dict[str, dict[str, ScaleEntry]] = {}
    claimed: dict[str, str] = {}
    factor = amax_factor(meaning)
    for name in sorted(ckpt.tensors, key=natural_key):
        info = ckpt.tensors[name]
        target = mapper.map_name(name)
        if target is None:
            continue  # a rule drops it on purpose
        parent, _, attr = target.rpartition(".")
        if attr in SCALE_NAMES and parent.rpartition(".")[2] == "attn":
            if _claim(claimed, info, target, findings):
                entry = _scale_entry(info, target, heads, contributions, factor, findings)
                layers.setdefault(parent, {})[attr] = entry
        elif attr in ZERO_POINT_NAMES:
            _offset(info, findings)
        elif (attr in KV_BIAS_NAMES or is_scale_like(name)) and target == name and mapped != "refused":
            # Mapped: a strict load refuses it as unexpected. Unhandled: the error above says why.
            level = "error" if mapped == "mapped" else "warning"
            what = "an affine KV cache's offset (ModelOpt's k_bias / v_bias)" if attr in KV_BIAS_NAMES else "a scale"
            findings.group(level, f"no rule maps {layer_pattern(name)}", name, _UNMAPPED_NOTES[mapped].format(what))
    ordered = {layer: _ordered(layers[layer]) for layer in sorted(layers, key=natural_key)}
    quantized = ckpt.quant_config is not None
    check_layers(quantized if mapped == "mapped" else None, ordered, findings)
    facts = kv_cache_facts(ordered, ckpt.config, meaning)
    if facts.missing:
        findings.add("warning", _missing_note(facts))
    parallel = None if tp_size is None else split_heads(ordered, ckpt.config, tp_size, findings)
    anomalies = findings.anomalies(Anomaly)
    warnings = sum(a.level == "warning" for a in anomalies)
    labels = {c.plugin: c.label for c in contributions}
    method = ckpt.quant_config.quant_method if ckpt.quant_config else None
    return Inspection(str(ckpt.directory), method, [c.plugin for c in contributions], labels, ordered, anomalies,
                      verdict(findings.reasons, warnings, quantized, facts), facts,
                      summarise(ordered, facts.amax_factor), parallel)


_UNMAPPED_NOTES = {
    "mapped": "looks like {}, but no rule of the installed plugins maps it onto an attention module, and "
    "a model built from config.json has no parameter of that name: kvcore.load refuses it as an unexpected "
    "tensor (strict=False ignores it, and the scale with it). Check that the plugin for this format knows "
    "these names",
    "unhandled": "looks like {}, but no installed plugin's rule maps it onto an attention module, so a "
    "load would not use it (strict=True refuses it). Install or enable the plugin for this format",
}


def _missing_note(facts: KvCacheFacts) -> str:
    return (f"layers {spans(facts.missing)} of {facts.layers} (config.json num_hidden_layers) have no k or v "
            "scale: kvcore.load uses 1.0 there, and warns when the KV cache is fp8. Check that the "
            "quantization tool calibrated every layer")


def _mappers(ckpt: Checkpoint, findings: Findings) -> tuple[list[Contribution], WeightsMapper, str]:
    """The plugins' mappers as a load would combine them, and how that went: ``"mapped"``,
    ``"unhandled"`` (no plugin handles the method) or ``"refused"`` (a plugin refused the config,
    failed, or plugins conflict); failures are error anomalies, worded as load raises them."""
    try:
        contributions = plugin_mappers(ckpt, strict=True)
    except KvcoreError as exc:
        handled = _handled(ckpt)
        findings.add("error", str(exc), short=_refusal(ckpt, handled))
        return [], WeightsMapper(), "refused" if handled else "unhandled"
    try:
        mapper = combine(WeightsMapper(), contributions)
        check_name_conflicts(ckpt.tensors, contributions)
    except KvcoreError as exc:
        findings.add("error", str(exc), short="the installed plugins' mappers conflict")
        return contributions, _first_agreeing(contributions), "refused"
    _meaning_notes(meaning_of(contributions), findings)
    return contributions, mapper, "mapped"


def _handled(ckpt: Checkpoint) -> bool:
    """Whether some installed plugin claims the method: returns a mapper for it, or refuses its config."""
    if ckpt.quant_config is None:
        return True
    try:
        return bool(collect_mappers(get_plugin_manager(), ckpt.quant_config))
    except KvcoreError:
        return True


def _refusal(ckpt: Checkpoint, handled: bool) -> str:
    method = ckpt.quant_config.quant_method if ckpt.quant_config else None
    if not handled:
        return f"no installed plugin handles quant_method {method!r}"
    return f"a plugin refuses the {method!r} quantization config"


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
    amax_factor: float,
    findings: Findings,
) -> ScaleEntry:
    values = _values(info)
    check_value(info, target, values, heads, findings)
    value: float | list[float] = values if len(values) != 1 else values[0]
    amax: float | list[float] = [v * amax_factor for v in values] if len(values) != 1 else values[0] * amax_factor
    plugins = [c.plugin for c in contributions if plugin_map_name(c, info.name) != info.name]
    return ScaleEntry(info.name, target, list(info.shape), info.dtype, value, plugins, amax)


def _values(info: TensorInfo) -> list[float]:
    """The elements as float32 reads them; none for a tensor too big to be a scale (an error says so)."""
    if info.numel > MAX_SCALE_VALUES:
        return []
    return as_float32([float(v) for v in decode(info.dtype, read_bytes(info))])


def _offset(info: TensorInfo, findings: Findings) -> None:
    """A zero point (or ModelOpt bias mapped to one): all-zero is dropped, anything else refused."""
    problem = offset_problem(info.name, _values(info))
    if problem is not None:
        findings.add("error", f"{shown(info.name)} {problem}", short=f"{shown(info.name)} {problem.partition(':')[0]}")
    else:
        findings.group("info", "zero point", info.name,
                       "all-zero zero points of a symmetric scheme; kvcore.load accepts and drops them")


def _ordered(scales: dict[str, ScaleEntry]) -> dict[str, ScaleEntry]:
    return {name: scales[name] for name in SCALE_NAMES if name in scales}
