"""``make bench``: kvcore against a raw safetensors loop, memcpy and (optionally) vLLM.

Prints one Markdown table of figures and ratios, all measured in this run. Every contender
loads in its own process (so peak RSS is its own); the processes of one scenario run in
rounds, and each round rotates the order, so that a noisy neighbour hurts all contenders
alike. Environment: ``KVCORE_BENCH_ROUNDS`` (default 5), ``KVCORE_BENCH_VLLM=1`` to add vLLM.

Every timed figure is reported twice: the median over all rounds and the best (fastest) of
them. A busy neighbour inflates medians (on two cores a two-thread copy suffers most), never
the best, so ratios are given best/best beside median/median and the memcpy floor stays a
floor. The system load average is sampled before, after and between the processes, and the
table says when the 1-minute load exceeded the core count: such a run is noisy.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _data  # noqa: E402 - needs the sys.path entry above

REPEAT = 3
"""Timed loads per process, after one untimed warm-up load."""
Result = dict[str, object]
LOAD_SAMPLES: list[tuple[float, float, float]] = []
"""``os.getloadavg()`` before the run, after every process, and at the end."""


def _sample_load() -> float:
    """Record the load average now; return its 1-minute figure."""
    LOAD_SAMPLES.append(os.getloadavg())
    return LOAD_SAMPLES[-1][0]


def _load_summary() -> Result:
    ones = [sample[0] for sample in LOAD_SAMPLES]
    return {"before": LOAD_SAMPLES[0], "after": LOAD_SAMPLES[-1], "max_1min": max(ones),
            "median_1min": statistics.median(ones), "samples": len(ones), "cores": os.cpu_count() or 1}


def _run(python: Path | str, *args: object, env: dict[str, str] | None = None) -> Result:
    command = [str(python), *map(str, args)]
    done = subprocess.run(command, cwd=HERE, capture_output=True, text=True, env=env, check=False)
    _sample_load()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> tuple[float, float]:
    """(median, best): the typical figure and the floor a quiet machine reaches."""
    return statistics.median(values), min(values)


def _rounds(contenders: dict[str, tuple[Path | str, Path]], rounds: int) -> dict[str, Result]:
    """Run each contender ``rounds`` times, rotating the order; pool times (median and best), median RSS."""
    names = list(contenders)
    runs: dict[str, list[Result]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            python, ckpt = contenders[name]
            runs[name].append(_run(python, "_worker.py", name.split(":")[0], ckpt, REPEAT))
            print(f"  round {r + 1}/{rounds} {name}: {min(runs[name][-1]['times']) * 1e3:.1f} ms "
                  f"(load {LOAD_SAMPLES[-1][0]:.2f})", file=sys.stderr)
    return {name: _summary(results) for name, results in runs.items()}


def _summary(results: list[Result]) -> Result:
    times = [t for result in results for t in result["times"]]  # type: ignore[attr-defined]
    median, best = _spread(times)
    return {
        "time": median,
        "best": best,
        "peak_rss": statistics.median(r["peak_rss"] for r in results),  # type: ignore[misc]
        "model_rss": statistics.median(r["model_rss"] for r in results),  # type: ignore[misc]
        "tensors": results[0]["tensors"],
        "bytes": results[0]["bytes"],
    }


def _load_scenarios(rounds: int, vllm: Path | None) -> dict[str, dict[str, Result]]:
    python = Path(sys.executable)
    dense, moe, moe_fp8 = (_data.checkpoint(s) for s in (_data.DENSE, _data.MOE, _data.MOE_FP8))
    out = {}
    for label, ckpt in (("a", dense), ("b", moe)):
        contenders: dict[str, tuple[Path | str, Path]] = {
            "kvcore": (python, ckpt), "raw": (python, ckpt), "memcpy": (python, ckpt),
        }
        if label == "a":  # the engine-shaped model: fused qkv/gate_up with shard-id loaders
            contenders.update({"kvcore-packed": (python, ckpt), "raw-packed": (python, ckpt)})
        if label == "b":
            contenders["kvcore:fp8"] = (python, moe_fp8)
        if vllm is not None:
            contenders["vllm"] = (vllm, ckpt)
        print(f"scenario ({label}) {ckpt.name}", file=sys.stderr)
        out[label] = _rounds(contenders, rounds)
    return out


def _discovery(rounds: int) -> dict[str, Result]:
    fake = _data.fake_distributions(500)
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    crowded = {**plain, "PYTHONPATH": str(fake)}
    runs: dict[str, list[Result]] = {"first-party": [], "+500 dists": []}
    for _ in range(rounds):
        runs["first-party"].append(_run(sys.executable, "_probes.py", "discovery", 9, env=plain))
        runs["+500 dists"].append(_run(sys.executable, "_probes.py", "discovery", 9, env=crowded))
    return {k: _first_and_warm(v) for k, v in runs.items()}


def _first_and_warm(runs: list[Result]) -> Result:
    """Median and best over the processes of each probe's first call and warm median."""
    result: Result = {}
    for m in ("first", "warm"):
        result[m], result[f"{m}_best"] = _spread([r[m] for r in runs])  # type: ignore[misc]
    return result


def _inspect(rounds: int) -> Result:
    ckpt = _data.checkpoint(_data.INSPECT)
    runs = [_run(sys.executable, "_probes.py", "inspect", ckpt, 5) for _ in range(rounds)]
    result = _first_and_warm(runs)
    result.update({k: runs[0][k] for k in ("bytes_read", "checkpoint_bytes", "needed_bytes")})
    return result


def _tensor_parallel(rounds: int) -> dict[str, Result]:
    """(f) T = 2 from a cold page cache: each rank in its own process, against T = 1; and rank 0
    against T = 1 from a warm one."""
    ckpt = _data.checkpoint(_data.DENSE)
    cases = {"kvcore T=1": ("kvcore", 0, 1, "cold"), "narrow T=1": ("narrow", 0, 1, "cold")}
    for mode in ("kvcore", "narrow"):
        cases.update({f"{mode} T=2 rank {rank}": (mode, rank, 2, "cold") for rank in (0, 1)})
    cases.update({"warm kvcore T=1": ("kvcore", 0, 1, "warm"), "warm kvcore T=2 rank 0": ("kvcore", 0, 2, "warm")})
    runs: dict[str, list[Result]] = {name: [] for name in cases}
    together: dict[str, list[Result]] = {"O_DIRECT": [], "page cache": []}
    for r in range(rounds):
        for name, (mode, rank, size, cache) in cases.items():
            runs[name].append(_run(sys.executable, "_tp.py", mode, ckpt, rank, size, 1, cache))
            print(f"  round {r + 1}/{rounds} {name}: {runs[name][-1]['times'][0] * 1e3:.0f} ms "
                  f"(load {LOAD_SAMPLES[-1][0]:.2f})", file=sys.stderr)
        for way in together:
            together[way].append(_together(ckpt, way == "O_DIRECT"))
    summary: dict[str, Result] = {}
    for way, results in together.items():
        median, best = _spread([r["time"] for r in results])  # type: ignore[misc]
        summary[f"together, {way}"] = {"time": median, "best": best, "checkpoint_bytes": results[0]["checkpoint_bytes"],
                                       "device": _median_known([r["device"] for r in results])}  # type: ignore[misc]
    for name, results in runs.items():
        median, best = _spread([t for r in results for t in r["times"]])  # type: ignore[attr-defined]
        summary[name] = {
            "time": median,
            "best": best,
            "resident": statistics.median(x for r in results for x in r["resident"]),  # type: ignore[attr-defined]
            "device": _median_known([x for r in results for x in r.get("device", [])]),  # type: ignore[attr-defined]
            "checkpoint_bytes": results[0]["checkpoint_bytes"],
        }
    return summary


def _together(ckpt: Path, direct: bool) -> Result:
    """Both ranks of T = 2 started at once after one cache drop, as on one machine: the slower
    rank's load time and the device bytes of both (``KVCORE_DIRECT_IO`` as ``direct`` says)."""
    from _tp import _drop_cache

    _drop_cache(_data.shard_files(ckpt))
    env = {**os.environ, "KVCORE_DIRECT_IO": "1" if direct else "0"}
    command = [sys.executable, "_tp.py", "kvcore", str(ckpt), "{rank}", "2", "1", "as-is"]
    ranks = [subprocess.Popen([part.format(rank=rank) for part in command], cwd=HERE, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]  # fmt: skip
    outputs = [rank.communicate() for rank in ranks]
    _sample_load()
    if any(rank.returncode for rank in ranks):
        raise SystemExit(f"{' '.join(command)} failed:\n" + "\n".join(err[-3000:] for _, err in outputs))
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    devices = [r["device"][0] for r in results]
    return {"time": max(r["times"][0] for r in results), "checkpoint_bytes": results[0]["checkpoint_bytes"],
            "device": None if None in devices else sum(devices)}


def _median_known(values: list[float | None]) -> float | None:
    """The median of the values measured (``None`` where none was)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main() -> None:
    rounds = int(os.environ.get("KVCORE_BENCH_ROUNDS", "5"))
    print(f"load average before the run: {_sample_load():.2f} (1 min) on {os.cpu_count()} cores", file=sys.stderr)
    vllm = None
    if os.environ.get("KVCORE_BENCH_VLLM") == "1":
        import _vllm

        vllm = _vllm.python()
    loads = _load_scenarios(rounds, vllm)
    results = {"loads": loads, "discovery": _discovery(rounds), "inspect": _inspect(rounds),
               "tp": _tensor_parallel(rounds)}
    _sample_load()
    results["load"] = _load_summary()
    (_data.DATA / "results.json").write_text(json.dumps(results, indent=2))
    from _table import render

    print(render(results))


if __name__ == "__main__":
    main()
