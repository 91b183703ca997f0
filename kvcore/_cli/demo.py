"""``kvcore demo``: write a small checkpoint per format, load each, show where every scale came from.

A format is demonstrated when an installed plugin handles its quantization config;
otherwise it is listed as skipped with the ``pip install`` that would add it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pluggy
import torch

from kvcore._checkpoint.quant_config import QuantConfig
from kvcore._checkpoint.reader import read_checkpoint
from kvcore._cli.demo_formats import FORMATS, DemoFormat
from kvcore._errors import KvcoreError
from kvcore._loading.load import load
from kvcore._plugins.contributions import Contribution, collect_mappers, plugin_map_name
from kvcore._plugins.for_checkpoint import plugin_mappers
from kvcore._plugins.manager import get_plugin_manager, plugin_records
from kvcore.testing import tiny_llama, write_checkpoint

__all__ = ["DemoResult", "run_demo"]

NUM_LAYERS = 2
KV_HEADS = 2
BASE = {"k_scale": 0.0125, "v_scale": 0.00875, "q_scale": 0.015, "prob_scale": 1 / 448}
"""Layer N's scale is ``BASE * (N + 1)`` (per-head: ``* (N + 1) * (1 + head / 4)``)."""


@dataclasses.dataclass
class DemoResult:
    """What happened to one format; ``layers[attn][scale]`` has value, source and plugin."""

    format: DemoFormat
    status: str
    message: str | None = None
    checkpoint: str | None = None
    plugins: list[str] = dataclasses.field(default_factory=list)
    layers: dict[str, dict[str, dict[str, object]]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """The documented JSON shape of one entry of ``kvcore demo --json``."""
        fmt = self.format
        return {
            "format": fmt.name,
            "producer": fmt.producer,
            "quant_method": fmt.quant_method,
            "plugin": fmt.plugin,
            "distribution": fmt.distribution,
            "status": self.status,
            "message": self.message,
            "install": fmt.install if self.status == "skipped" else None,
            "checkpoint": self.checkpoint,
            "plugins": list(self.plugins),
            "layers": self.layers,
        }


def run_demo(directory: Path) -> list[DemoResult]:
    """Write, load and describe every format's checkpoint under ``directory``."""
    pm = get_plugin_manager()
    return [_run_one(fmt, directory / fmt.directory, pm) for fmt in FORMATS]


def _run_one(fmt: DemoFormat, path: Path, pm: pluggy.PluginManager) -> DemoResult:
    raw = fmt.quantization_config or (fmt.hf_quant_config or {}).get("quantization", {})
    try:
        if not collect_mappers(pm, QuantConfig(fmt.quant_method, raw)):
            return DemoResult(fmt, "skipped", _why_skipped(fmt, pm))
        write_checkpoint(path, checkpoint_tensors(fmt), quantization_config=fmt.quantization_config,
                         hf_quant_config=fmt.hf_quant_config)
        return _load_one(fmt, path)
    except KvcoreError as exc:
        return DemoResult(fmt, "failed", str(exc), str(path) if path.exists() else None)


def _why_skipped(fmt: DemoFormat, pm: pluggy.PluginManager) -> str:
    record = plugin_records(pm).get(fmt.plugin)
    if record is None:
        return f"no installed plugin handles quant_method {fmt.quant_method!r}; install one: {fmt.install}"
    if record.status == "blocked":
        return f"plugin {record.label} is disabled (KVCORE_PLUGINS / KVCORE_DISABLE_PLUGINS)"
    if record.status != "loaded":
        return f"plugin {record.label} is {record.status}: {record.error}. Reinstall it: {fmt.install}"
    return f"plugin {record.label} is loaded but does not handle quant_method {fmt.quant_method!r}"


def _load_one(fmt: DemoFormat, path: Path) -> DemoResult:
    model = tiny_llama(num_layers=NUM_LAYERS, num_kv_heads=KV_HEADS, fp8=True, kv_cache_dtype="fp8",
                       scale_shape=fmt.weight_scale_shape, scale_dtype=fmt.weight_scale_dtype)
    report = load(model, path)
    contributions = plugin_mappers(read_checkpoint(path), strict=True)
    layers: dict[str, dict[str, dict[str, object]]] = {}
    for attn, values in report.kv_scales.items():
        layers[attn] = {}
        for scale, value in values.items():
            source = report.kv_scale_sources[attn][scale]
            plugin = _mapped_by(source, f"{attn}.{scale}", contributions)
            layers[attn][scale] = {"value": value, "source": source, "plugin": plugin}
    return DemoResult(fmt, "loaded", None, str(path), list(report.plugins), layers)


def _mapped_by(source: str, target: str, contributions: list[Contribution]) -> str | None:
    """The plugin whose rules alone send ``source`` to ``target`` (else one that renames it)."""
    if source == "default":
        return None
    exact = [c.plugin for c in contributions if plugin_map_name(c, source) == target]
    renaming = [c.plugin for c in contributions if plugin_map_name(c, source) != source]
    found = exact or renaming
    return found[0] if found else None


def checkpoint_tensors(fmt: DemoFormat) -> dict[str, torch.Tensor]:
    """Every tensor of ``fmt``'s demo checkpoint: the reference model's weights plus KV scales."""
    gen = torch.Generator().manual_seed(0)
    model = tiny_llama(num_layers=NUM_LAYERS, num_kv_heads=KV_HEADS, fp8=True,
                       scale_shape=fmt.weight_scale_shape, scale_dtype=fmt.weight_scale_dtype)
    tensors = {}
    for name, param in model.state_dict().items():
        if name.rpartition(".")[2] in BASE:
            continue  # the attention module's own scales: the format's names are added below
        if name.endswith(("weight_scale", "input_scale")):
            tensors[name] = torch.full(param.shape, 0.01, dtype=param.dtype)
        else:
            tensors[name] = (torch.randn(param.shape, generator=gen) * 0.05).to(param.dtype)
    for layer in range(NUM_LAYERS):
        for scale, suffix in fmt.kv_names.items():
            tensors[f"model.layers.{layer}.self_attn.{suffix}"] = kv_value(fmt, scale, layer)
    return tensors


def kv_value(fmt: DemoFormat, scale: str, layer: int) -> torch.Tensor:
    """The value written for ``scale`` of ``layer``, in ``fmt``'s shape and dtype."""
    base = BASE[scale] * (layer + 1)
    count = 1
    for size in fmt.kv_shape:
        count *= size
    values = torch.tensor([base * (1 + head / 4) for head in range(count)], dtype=torch.float64)
    return values.reshape(fmt.kv_shape).to(fmt.kv_dtype)
