"""The one table ``make bench`` prints (Markdown, so it pastes into BENCHMARKS.md)."""

from __future__ import annotations

from typing import Any

MiB = 1 << 20
COLUMNS = ("kvcore", "raw", "memcpy", "vllm")
HEADER = (
    "| | measure | kvcore | raw loop | memcpy | vLLM | ratio | target | met |\n"
    "|---|---|---:|---:|---:|---:|---|---|---|"
)


def _cells(loads: dict[str, Any], fmt: Any) -> list[str]:
    return [fmt(loads[c]) if c in loads else "-" for c in COLUMNS]


def _row(label: str, measure: str, cells: list[str], ratio: str, target: str, met: bool | None) -> str:
    verdict = "-" if met is None else ("yes" if met else "**no**")
    return f"| {label} | {measure} | {' | '.join(cells)} | {ratio} | {target} | {verdict} |"


def _peer(loads: dict[str, Any]) -> tuple[str, bool | None]:
    if "vllm" not in loads:
        return "not run (KVCORE_BENCH_VLLM=1)", None
    ratio = loads["kvcore"]["time"] / loads["vllm"]["time"]
    return f"kvcore/vLLM {ratio:.2f}x", ratio < 1


def _load_rows(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    gib = a["kvcore"]["bytes"] / (1 << 30)
    ra, rb = a["kvcore"]["time"] / a["raw"]["time"], b["kvcore"]["time"] / b["raw"]["time"]
    share = a["memcpy"]["time"] / a["kvcore"]["time"]
    n = b["kvcore"]["tensors"]
    per = b["kvcore:fp8"]["time"] / b["kvcore:fp8"]["tensors"] * 1e6
    rows = [
        _row(f"(a) {gib:.2f} GiB bf16, {a['kvcore']['tensors']} tensors", "load time, ms",
             _cells(a, lambda r: f"{r['time'] * 1e3:.0f}"), f"kvcore/raw {ra:.2f}x", "≤ 1.05x", ra <= 1.05),
        _row("", "throughput, GB/s", _cells(a, lambda r: f"{r['bytes'] / r['time'] / 1e9:.1f}"),
             f"kvcore = {share:.0%} of memcpy", "report", None),
        _row("", "vs peer", ["", "", "", ""], _peer(a)[0], "faster", _peer(a)[1]),
        *_packed_rows(a),
        _row(f"(b) {n:,} tiny tensors", "per tensor, µs",
             _cells(b, lambda r: f"{r['time'] / r['tensors'] * 1e6:.2f}"), f"kvcore/raw {rb:.2f}x", "≤ 0.5x",
             rb <= 0.5),
        _row("", "kvcore, fp8 checkpoint + plugin mapping", [f"{per:.2f}", "", "", ""],
             f"kvcore/raw {b['kvcore:fp8']['time'] / b['raw']['time']:.2f}x", "≤ 0.5x",
             b["kvcore:fp8"]["time"] / b["raw"]["time"] <= 0.5),
        _row("", "vs peer", ["", "", "", ""], _peer(b)[0], "faster", _peer(b)[1]),
    ]
    for label, loads in (("a", a), ("b", b)):
        ratio = loads["kvcore"]["peak_rss"] / loads["raw"]["peak_rss"]
        rows.append(_row(f"(c) peak RSS ({label})", "MiB (above the model)", _cells(loads, _rss),
                         f"kvcore/raw {ratio:.2f}x", "≤ 1.05x", ratio <= 1.05))
    return rows


def _packed_rows(a: dict[str, Any]) -> list[str]:
    """(a) into an engine-shaped model: fused qkv/gate_up through shard-id weight loaders."""
    packed, raw = a["kvcore-packed"]["time"], a["raw-packed"]["time"]
    to_plain, to_raw = packed / a["kvcore"]["time"], packed / raw
    cells = [f"{packed * 1e3:.0f}", f"{raw * 1e3:.0f}", "", ""]
    return [
        _row("", "packed model (shard-id loaders), ms", cells, f"packed/unpacked kvcore {to_plain:.2f}x",
             "≤ 1.10x", to_plain <= 1.10),
        _row("", "", ["", "", "", ""], f"kvcore/raw loop into slices {to_raw:.2f}x", "≤ 1.0x", to_raw <= 1.0),
    ]


def _rss(result: dict[str, Any]) -> str:
    return f"{result['peak_rss'] / MiB:.0f} (+{(result['peak_rss'] - result['model_rss']) / MiB:.0f})"


def _other_rows(discovery: dict[str, Any], inspect: dict[str, Any]) -> list[str]:
    rows = []
    for label, d in discovery.items():
        rows.append(_row(f"(d) discovery, {label}", "ms: first call / warm", [f"{d['first'] * 1e3:.1f} / "
                         f"{d['warm'] * 1e3:.1f}", "", "", ""], "", "≤ 20 ms (+500)" if "500" in label else "report",
                         d["warm"] <= 0.020 if "500" in label else None))
    share = inspect["bytes_read"] / inspect["checkpoint_bytes"]
    needed = inspect["bytes_read"] / inspect["needed_bytes"]
    rows.append(_row("(e) `kvcore inspect`, 100 shards", "ms: first call / warm",
                     [f"{inspect['first'] * 1e3:.0f} / {inspect['warm'] * 1e3:.0f}", "", "", ""],
                     f"read {inspect['bytes_read'] / MiB:.2f} of {inspect['checkpoint_bytes'] / MiB:.0f} MiB "
                     f"({share:.1%})", "headers + scales only", needed <= 1))
    return rows


def _tp_rows(tp: dict[str, Any]) -> list[str]:
    """(f): per rank of T = 2, cold page cache: pages brought in and time against T = 1."""
    whole = tp["kvcore T=1"]["time"]
    rows = []
    for mode, label in (("kvcore", "kvcore, tp_dim"), ("narrow", "vLLM-style narrowing loader")):
        ranks = [tp[f"{mode} T=2 rank {r}"] for r in (0, 1)]
        paged = max(r["resident"] / r["checkpoint_bytes"] for r in ranks)
        slowest = max(r["time"] for r in ranks)
        cells = [" / ".join(f"{r['time'] * 1e3:.0f}" for r in ranks), "", "", ""]
        rows.append(_row("(f) T=2, cold page cache" if mode == "kvcore" else "", f"{label}: ms per rank", cells,
                         f"paged in {paged:.0%} of the file; time {slowest / whole:.2f}x T=1 ({whole * 1e3:.0f} ms)",
                         "≤ 55%, ≤ 0.6x" if mode == "kvcore" else "baseline",
                         (paged <= 0.55 and slowest / whole <= 0.6) if mode == "kvcore" else None))
    return rows


def render(results: dict[str, Any]) -> str:
    """The table for ``results`` as ``run.py`` collects them."""
    loads = results["loads"]
    rows = _load_rows(loads["a"], loads["b"]) + _other_rows(results["discovery"], results["inspect"])
    rows += _tp_rows(results["tp"]) if "tp" in results else []
    return "\n".join([HEADER, *rows])
