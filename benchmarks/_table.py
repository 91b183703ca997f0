"""The one table ``make bench`` prints (Markdown, so it pastes into BENCHMARKS.md).

A timed cell reads ``median (best)`` over all rounds; a ratio reads ``median/median (best/best)``.
Targets are judged on the medians. Above the table, one line gives the load average during
the run and flags a run whose 1-minute load exceeded the core count.
"""

from __future__ import annotations

from typing import Any

MiB = 1 << 20
COLUMNS = ("kvcore", "raw", "memcpy", "vllm")
HEADER = (
    "| | measure | kvcore | raw loop | memcpy | vLLM | ratio | target | met |\n"
    "|---|---|---:|---:|---:|---:|---|---|---|"
)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}"


def _both(result: dict[str, Any], fmt: Any) -> str:
    """``fmt`` of the median and of the best time: ``"222 (205)"``."""
    return f"{fmt(result['time'])} ({fmt(result['best'])})"


def _ratio(top: dict[str, Any], bottom: dict[str, Any]) -> tuple[float, float]:
    """(median/median, best/best): the second keeps the floor a floor when neighbours are busy."""
    return top["time"] / bottom["time"], top["best"] / bottom["best"]


def _x(name: str, ratios: tuple[float, float]) -> str:
    return f"{name} {ratios[0]:.2f}x (best {ratios[1]:.2f}x)"


def _cells(loads: dict[str, Any], fmt: Any) -> list[str]:
    return [fmt(loads[c]) if c in loads else "-" for c in COLUMNS]


def _row(label: str, measure: str, cells: list[str], ratio: str, target: str, met: bool | None) -> str:
    verdict = "-" if met is None else ("yes" if met else "**no**")
    return f"| {label} | {measure} | {' | '.join(cells)} | {ratio} | {target} | {verdict} |"


def _peer(loads: dict[str, Any]) -> tuple[str, bool | None]:
    if "vllm" not in loads:
        return "not run (KVCORE_BENCH_VLLM=1)", None
    ratios = _ratio(loads["kvcore"], loads["vllm"])
    return _x("kvcore/vLLM", ratios), ratios[0] < 1


def _load_rows(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    gib = a["kvcore"]["bytes"] / (1 << 30)
    ra, rb, rfp8 = _ratio(a["kvcore"], a["raw"]), _ratio(b["kvcore"], b["raw"]), _ratio(b["kvcore:fp8"], b["raw"])
    share = _ratio(a["memcpy"], a["kvcore"])
    n = b["kvcore"]["tensors"]
    fp8 = b["kvcore:fp8"]
    rows = [
        _row(f"(a) {gib:.2f} GiB bf16, {a['kvcore']['tensors']} tensors", "load time, ms: median (best)",
             _cells(a, lambda r: _both(r, _ms)), _x("kvcore/raw", ra), "≤ 1.05x",
             ra[0] <= 1.05),
        _row("", "throughput, GB/s", _cells(a, lambda r: _both(r, lambda t: f"{r['bytes'] / t / 1e9:.1f}")),
             f"kvcore = {share[0]:.0%} of memcpy (best {share[1]:.0%})", "report", None),
        _row("", "vs peer", ["", "", "", ""], _peer(a)[0], "faster", _peer(a)[1]),
        *_packed_rows(a),
        _row(f"(b) {n:,} tiny tensors", "per tensor, µs",
             _cells(b, lambda r: _both(r, lambda t: f"{t / r['tensors'] * 1e6:.2f}")), _x("kvcore/raw", rb),
             "≤ 0.5x", rb[0] <= 0.5),
        _row("", "kvcore, fp8 checkpoint + plugin mapping",
             [_both(fp8, lambda t: f"{t / fp8['tensors'] * 1e6:.2f}"), "", "", ""], _x("kvcore/raw", rfp8),
             "≤ 0.5x", rfp8[0] <= 0.5),
        _row("", "vs peer", ["", "", "", ""], _peer(b)[0], "faster", _peer(b)[1]),
    ]
    for label, loads in (("a", a), ("b", b)):
        ratio = loads["kvcore"]["peak_rss"] / loads["raw"]["peak_rss"]
        rows.append(_row(f"(c) peak RSS ({label})", "MiB (above the model)", _cells(loads, _rss),
                         f"kvcore/raw {ratio:.2f}x", "≤ 1.05x", ratio <= 1.05))
    return rows


def _packed_rows(a: dict[str, Any]) -> list[str]:
    """(a) into an engine-shaped model: fused qkv/gate_up through shard-id weight loaders."""
    packed, raw = a["kvcore-packed"], a["raw-packed"]
    to_plain, to_raw = _ratio(packed, a["kvcore"]), _ratio(packed, raw)
    cells = [_both(r, _ms) for r in (packed, raw)] + ["", ""]
    return [
        _row("", "packed model (shard-id loaders), ms", cells, _x("packed/unpacked kvcore", to_plain),
             "≤ 1.10x", to_plain[0] <= 1.10),
        _row("", "", ["", "", "", ""], _x("kvcore/raw loop into slices", to_raw), "≤ 1.0x", to_raw[0] <= 1.0),
    ]


def _rss(result: dict[str, Any]) -> str:
    return f"{result['peak_rss'] / MiB:.0f} (+{(result['peak_rss'] - result['model_rss']) / MiB:.0f})"


def _first_warm(probe: dict[str, Any], digits: int) -> str:
    """``first / warm (best first / best warm)``, in ms."""
    def ms(key: str) -> str:
        return f"{probe['first' + key] * 1e3:.{digits}f} / {probe['warm' + key] * 1e3:.{digits}f}"

    return f"{ms('')} ({ms('_best')})"


def _other_rows(discovery: dict[str, Any], inspect: dict[str, Any]) -> list[str]:
    rows = []
    for label, d in discovery.items():
        rows.append(_row(f"(d) discovery, {label}", "ms: first call / warm", [_first_warm(d, 1), "", "", ""], "",
                         "≤ 20 ms (+500)" if "500" in label else "report",
                         d["warm"] <= 0.020 if "500" in label else None))
    share = inspect["bytes_read"] / inspect["checkpoint_bytes"]
    needed = inspect["bytes_read"] / inspect["needed_bytes"]
    rows.append(_row("(e) `kvcore inspect`, 100 shards", "ms: first call / warm",
                     [_first_warm(inspect, 0), "", "", ""],
                     f"read {inspect['bytes_read'] / MiB:.2f} of {inspect['checkpoint_bytes'] / MiB:.0f} MiB "
                     f"({share:.1%})", "headers + scales only", needed <= 1))
    return rows


def _tp_rows(tp: dict[str, Any]) -> list[str]:
    """(f): per rank of T = 2, cold page cache: pages brought in and time against T = 1."""
    whole = tp["kvcore T=1"]
    rows = []
    for mode, label in (("kvcore", "kvcore, tp_dim"), ("narrow", "vLLM-style narrowing loader")):
        ranks = [tp[f"{mode} T=2 rank {r}"] for r in (0, 1)]
        paged = max(r["resident"] / r["checkpoint_bytes"] for r in ranks)
        devices = [r.get("device") for r in ranks]
        device = "" if None in devices else f", read {max(devices) / ranks[0]['checkpoint_bytes']:.0%} from the device"
        slowest = {k: max(r[k] for r in ranks) for k in ("time", "best")}
        ratio = _ratio(slowest, whole)
        cells = [_both_ranks(ranks), "", "", ""]
        rows.append(_row("(f) T=2, cold page cache" if mode == "kvcore" else "", f"{label}: ms per rank", cells,
                         f"paged in {paged:.1%} of the file{device}; time {ratio[0]:.2f}x T=1 "
                         f"(best {ratio[1]:.2f}x); "
                         f"T=1 {_both(whole, _ms)} ms",
                         "≤ 55%, ≤ 0.6x" if mode == "kvcore" else "baseline",
                         (paged <= 0.55 and ratio[0] <= 0.6) if mode == "kvcore" else None))
    return _cold_whole_row(tp) + rows + _warm_row(tp) + _together_rows(tp)


def _cold_whole_row(tp: dict[str, Any]) -> list[str]:
    """(f)'s baseline from a cold page cache, T = 1: kvcore against the safe_open loop (informational)."""
    if "narrow T=1" not in tp:
        return []
    ours, loop = tp["kvcore T=1"], tp["narrow T=1"]
    ratio = _ratio(ours, loop)
    return [_row("(f) T=1, cold page cache", "kvcore: ms", [_both(ours, _ms), "", "", ""],
                 f"{ratio[0]:.2f}x the safe_open loop (best {ratio[1]:.2f}x); loop {_both(loop, _ms)} ms", "-", None)]


def _warm_row(tp: dict[str, Any]) -> list[str]:
    """(f) from a warm page cache: rank 0 of T = 2 against T = 1 (informational)."""
    if "warm kvcore T=1" not in tp:
        return []
    warm, whole = tp["warm kvcore T=2 rank 0"], tp["warm kvcore T=1"]
    ratio = _ratio(warm, whole)
    device = warm.get("device")
    read = "" if device is None else f"read {device / warm['checkpoint_bytes']:.0%} from the device; "
    return [_row("(f) T=2, warm page cache", "kvcore, tp_dim: ms, rank 0", [_both(warm, _ms), "", "", ""],
                 f"{read}time {ratio[0]:.2f}x T=1 (best {ratio[1]:.2f}x); T=1 {_both(whole, _ms)} ms", "-", None)]


def _together_rows(tp: dict[str, Any]) -> list[str]:
    """(f) both ranks started at once on one machine, with and without O_DIRECT (informational)."""
    rows = []
    for way, knob in (("O_DIRECT", "default"), ("page cache", "`KVCORE_DIRECT_IO=0`")):
        both = tp.get(f"together, {way}")
        if both is None:
            continue
        device = both.get("device")
        read = "" if device is None else f"the two ranks read {device / both['checkpoint_bytes']:.2f}x the file"
        label = "(f) T=2, both ranks at once" if way == "O_DIRECT" else ""
        rows.append(_row(label, f"{way} ({knob}): slower rank, ms", [_both(both, _ms), "", "", ""], read, "-", None))
    return rows


def _both_ranks(ranks: list[dict[str, Any]]) -> str:
    """``rank 0 / rank 1 (best rank 0 / best rank 1)``, in ms."""
    median, best = (" / ".join(f"{r[key] * 1e3:.0f}" for r in ranks) for key in ("time", "best"))
    return f"{median} ({best})"


def load_line(load: dict[str, Any]) -> str:
    """The load average around the run, and a warning when the 1-minute figure exceeded the cores."""
    def three(sample: list[float]) -> str:
        return " / ".join(f"{x:.2f}" for x in sample)

    line = (f"Load average (1 / 5 / 15 min): {three(load['before'])} before the run, {three(load['after'])} "
            f"after; 1-min median {load['median_1min']:.2f}, highest {load['max_1min']:.2f} over "
            f"{load['samples']} samples, on {load['cores']} cores.")
    if load["max_1min"] > load["cores"]:
        line += (f" **Noisy run**: the 1-min load exceeded the {load['cores']} cores, so other processes "
                 "shared the CPUs and the medians are inflated (two-thread copies most); read the best "
                 "figures and the best/best ratios, or run again on a quiet machine.")
    return line


def render(results: dict[str, Any]) -> str:
    """The table for ``results`` as ``run.py`` collects them, under the load-average line."""
    loads = results["loads"]
    rows = _load_rows(loads["a"], loads["b"]) + _other_rows(results["discovery"], results["inspect"])
    rows += _tp_rows(results["tp"]) if "tp" in results else []
    head = [load_line(results["load"]), ""] if "load" in results else []
    head.append("Timed cells: median (best) over every timed load of every round; ratios: median/median "
                "(best/best); targets are judged on the medians.\n")
    return "\n".join([*head, HEADER, *rows])
