"""Human-readable output of ``kvcore plugins``, ``kvcore inspect`` and ``kvcore demo``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvcore._cli.table import Style, render_table, spans
from kvcore._show import printable, shown

if TYPE_CHECKING:  # annotations only: `kvcore plugins` must not import torch through them
    from kvcore._cli.demo import DemoResult
    from kvcore._cli.inspect import Anomaly, Inspection
    from kvcore._cli.inspect_facts import KvCacheFacts
    from kvcore._cli.inspect_tp import TensorParallel
    from kvcore._plugins.manager import PluginRecord

__all__ = ["fmt_value", "render_demo", "render_inspection", "render_plugins"]

LEVEL_COLOURS = {"error": "red", "warning": "yellow", "info": "cyan"}
STATUS_COLOURS = {"loaded": "green", "failed": "red", "incompatible": "red", "blocked": "yellow",
                  "skipped": "yellow"}


def fmt_value(value: object) -> str:
    """``0.00138092``, or ``[0.0125, 0.015625]`` for per-head scales."""
    if isinstance(value, list):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_plugins(records: Sequence[PluginRecord], style: Style) -> str:
    """One row per plugin; the errors of failed ones below the table, in full."""
    if not records:
        return ("no kvcore plugins are installed; the first-party ones install from the kvcore checkout: "
                "pip install -e plugins/fp8 -e plugins/quark -e plugins/compressed_tensors")
    rows = [[r.name, r.distribution, r.version, r.status, ", ".join(r.hooks) or "-", r.module] for r in records]
    colours = [[None, None, None, STATUS_COLOURS.get(r.status), None, None] for r in records]
    lines = [render_table(["plugin", "distribution", "version", "status", "hooks", "module"], rows, style, colours)]
    for r in records:
        if r.error:
            lines.append(f"{style(shown(r.name), STATUS_COLOURS.get(r.status))}: {printable(r.error)}")
    return "\n".join(lines)


SUMMARY_ONLY_ABOVE = 4
"""More attention layers than this: the per-layer rows only with ``--layers`` (the summary says it all)."""
DESCRIBES = {"kv": "keys and values",
             "mla_latent": "the MLA latent (k) and rope key (v)",
             "mla_per_head": "the MLA model's expanded per-head keys and values"}
ROPE = {"pre": ", measured before RoPE (the cache holds keys after it)",
        "post": ", measured after RoPE, as the cache holds them",
        None: ", before or after RoPE: the format does not say"}


def render_inspection(result: Inspection, style: Style, *, every_layer: bool = False) -> str:
    """Verdict, header and KV-cache facts, a summary per scale, per-layer rows, anomalies."""
    colour = "green" if result.verdict.loads else "red"
    parts = [style(result.verdict.line(), colour), "", _header(result), ""]
    if result.summary:
        parts += [_summary(result, style), ""]
    if result.layers and (every_layer or len(result.layers) <= SUMMARY_ONLY_ABOVE):
        parts += [_per_layer(result, style), ""]
    elif result.layers:
        parts += [f"({len(result.layers)} attention layers: --layers shows each one's scales)", ""]
    elif not result.summary:
        parts += ["no KV-cache scales", ""]
    if result.tensor_parallel is not None:
        parts += [_tensor_parallel(result.tensor_parallel), ""]
    parts.append(_anomalies(result.anomalies, style))
    return "\n".join(parts)


def _header(result: Inspection) -> str:
    facts = result.kv_cache
    plugins = ", ".join(result.plugin_labels.get(p, p) for p in result.plugins) or "none"
    rows = [["quant method", result.quant_method or "none (unquantized)"], ["plugins", plugins]]
    if facts.granularity is not None:
        rows += [["KV cache", f"calibrated for {facts.calibrated_for}; amax = scale x {facts.amax_factor:g}"],
                 ["scales", _granularity(facts)],
                 ["layers", _coverage(facts)],
                 ["measured", DESCRIBES.get(facts.describes, facts.describes) + ROPE.get(facts.rope, "") +
                  (", with a caveat (the warning below)" if facts.caveat else "")]]
    return render_table(["checkpoint", shown(result.checkpoint)], rows)


def _granularity(facts: KvCacheFacts) -> str:
    """Per-head scales fix the engine's KV-head count; per-tensor ones fit any."""
    if facts.granularity == "per-tensor":
        return "per-tensor: one value per layer, whatever the attention's num_kv_heads"
    heads = facts.num_kv_heads
    build = (f"num_kv_heads={heads} ({heads}/T on each of T tensor-parallel ranks; see --tp-size)" if heads
             else "as many KV heads as the scales hold")
    return f"{facts.granularity}: an engine builds the attention with {build}"


def _coverage(facts: KvCacheFacts) -> str:
    total = facts.layers or len(facts.covered)
    text = f"{len(facts.covered)} of {total} have k/v scales"
    if facts.covered:
        text += f" (layers {spans(facts.covered)})"
    if facts.missing:
        text += f"; missing: {spans(facts.missing)} (1.0 there)"
    return text


def _summary(result: Inspection, style: Style) -> str:
    rows = []
    for s in result.summary:
        shapes = ", ".join(str(shape) for shape in s.shapes)
        rows.append([s.scale, f"{s.count} ({spans(s.layers)})" if s.layers else str(s.count), fmt_value(s.minimum),
                     fmt_value(s.median), fmt_value(s.maximum), fmt_value(s.maximum * s.amax_factor), shapes,
                     ", ".join(s.dtypes), shown(s.tensor)])
    headers = ["scale", "layers", "min", "median", "max", "max amax", "shape", "dtype", "tensor"]
    return render_table(headers, rows, style)


def _per_layer(result: Inspection, style: Style) -> str:
    rows: list[list[str]] = []
    for layer, scales in result.layers.items():
        for i, (scale, entry) in enumerate(scales.items()):
            rows.append([shown(layer) if i == 0 else "", scale, fmt_value(entry.value), fmt_value(entry.amax),
                         str(entry.shape), entry.dtype, shown(entry.tensor), ", ".join(entry.plugins) or "-"])
    return render_table(["layer", "scale", "value", "amax", "shape", "dtype", "tensor", "plugin"], rows, style)


def _tensor_parallel(tp: TensorParallel) -> str:
    """``rank 0: heads 0-1``, or ``rank 3: head 1 (replicated on ranks 2-3)``, one line per rank."""
    title = f"tensor parallel ({tp.tp_size} rank{'s' if tp.tp_size != 1 else ''})"
    if tp.kv_heads is None:
        return f"{title}: no per-head scales; every rank uses the same scales"
    if not tp.ranks:
        return f"{title}: {tp.kv_heads} KV heads cannot be split over {tp.tp_size} ranks (see the error below)"
    lines = [f"{title}, {tp.kv_heads} KV heads:"]
    for rank, heads in enumerate(tp.ranks):
        heads = heads or []
        shown = f"head {heads[0]}" if len(heads) == 1 else f"heads {heads[0]}-{heads[-1]}"
        sharing = [r for r, other in enumerate(tp.ranks) if other == heads]
        if len(sharing) > 1:
            shown += f" (replicated on ranks {sharing[0]}-{sharing[-1]})"
        lines.append(f"  rank {rank}: {shown}")
    return "\n".join(lines)


def _anomalies(anomalies: Sequence[Anomaly], style: Style) -> str:
    if not anomalies:
        return style("no anomalies", "green")
    lines = ["anomalies:"]
    for a in anomalies:
        lines.append(f"  {style(a.level.ljust(7), LEVEL_COLOURS.get(a.level))}  {printable(a.message)}")
    return "\n".join(lines)


def render_demo(results: Sequence[DemoResult], where: str, style: Style) -> str:
    """Per format: its status line, then per layer each scale's value, source and plugin."""
    parts = [f"kvcore demo: one small checkpoint per format in {where}, each loaded with kvcore.load "
             "into a 2-layer reference model (fp8 KV cache)"]
    for result in results:
        fmt = result.format
        status = style(result.status, STATUS_COLOURS.get(result.status))
        title = f"{style(fmt.name, 'bold')}: {status} ({fmt.producer}; quant_method {fmt.quant_method!r})"
        parts += ["", title] + ([f"  {result.message}"] if result.message else [])
        if result.status == "loaded":
            parts.append(f"  checkpoint {result.checkpoint}; plugins: {', '.join(result.plugins) or 'none'}")
            parts.append(_indent(_demo_table(result, style)))
    counts = {s: sum(r.status == s for r in results) for s in ("loaded", "skipped", "failed")}
    parts += ["", ", ".join(f"{n} {s}" for s, n in counts.items())]
    return "\n".join(parts)


def _demo_table(result: DemoResult, style: Style) -> str:
    rows, colours = [], []
    for layer, scales in result.layers.items():
        for i, (scale, info) in enumerate(scales.items()):
            source = str(info["source"])
            rows.append([layer if i == 0 else "", scale, fmt_value(info["value"]), source,
                         str(info["plugin"] or "-")])
            colours.append([None, None, None, "dim" if source == "default" else None, None])
    return render_table(["layer", "scale", "value", "source", "plugin"], rows, style, colours)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
