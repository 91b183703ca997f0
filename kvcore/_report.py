"""``LoadReport``: what ``kvcore.load`` did."""

from __future__ import annotations

import dataclasses

__all__ = ["LoadReport"]

ScaleValue = float | list[float]


@dataclasses.dataclass
class LoadReport:
    """The outcome of one ``kvcore.load``.

    ``kv_scales`` maps each attention module to its final ``k_scale``, ``v_scale``,
    ``q_scale`` and ``prob_scale`` (a list for per-head scales); ``kv_scale_sources`` says
    for each whether it came from a checkpoint tensor (its name) or is the ``"default"``.
    ``dropped`` lists checkpoint tensors deliberately not loaded (rules mapping to ``None``,
    all-zero symmetric zero points, unused rotary buffers). ``calibrated_for`` is the KV-cache
    dtype the checkpoint's scales were calibrated for (``"fp8"``, ``"nvfp4"``; ``None`` when
    unquantized).
    """

    quant_method: str | None
    plugins: list[str]
    loaded: set[str]
    unexpected: list[str]
    missing: list[str]
    kv_scales: dict[str, dict[str, ScaleValue]]
    kv_scale_sources: dict[str, dict[str, str]]
    dropped: list[str] = dataclasses.field(default_factory=list)
    checkpoint: str = ""
    calibrated_for: str | None = None

    def __repr__(self) -> str:
        method = self.quant_method or "unquantized"
        plugins = ", ".join(self.plugins) or "none"
        lines = [
            f"LoadReport({self.checkpoint or 'checkpoint'}: {method}"
            f"{f' (KV calibrated for {self.calibrated_for})' if self.calibrated_for else ''}; plugins: {plugins}; "
            f"{len(self.loaded)} parameters loaded, {len(self.unexpected)} unexpected, "
            f"{len(self.missing)} missing, {len(self.dropped)} dropped)"
        ]
        for module, scales in self.kv_scales.items():
            parts = []
            for attr, value in scales.items():
                source = self.kv_scale_sources.get(module, {}).get(attr, "?")
                origin = "default" if source == "default" else "loaded"
                parts.append(f"{attr.removesuffix('_scale')}={_fmt(value)} ({origin})")
            lines.append(f"  {module}: " + ", ".join(parts))
        shown = sorted(self.loaded)
        if shown:
            tail = f", ... ({len(shown) - 8} more)" if len(shown) > 8 else ""
            lines.append("  loaded: " + ", ".join(shown[:8]) + tail)
        return "\n".join(lines)


def _fmt(value: ScaleValue) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.6g}" for v in value) + "]"
    return f"{value:.6g}"
