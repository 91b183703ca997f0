"""``make bench``, second part: how well each genuine fixture's scales serve an fp8 KV cache.

For every genuine checkpoint in ``tests/fixtures`` whose architecture transformers has (Llama,
Qwen3, Qwen3-MoE, Mixtral, Phi-3; Gemma-3 has no fixture, DeepSeek-V3's MLA cache is not
kvcore.transformers'), the script rebuilds the model the tool calibrated (the fixtures' recipe:
random weights, seed 0; float32 here) and runs it on calibration-like input (8 x 32 random token
ids, seed 1). Per attention layer it records the inputs and the output of the attention module
with an unquantized cache, then calls the module again on the same inputs with an fp8 (e4m3)
``kvcore.transformers`` cache, once with the checkpoint's scales and once with 1.0 everywhere.

Columns: the relative error of the attention output (``||out_fp8 - out|| / ||out||`` over all
layers, o_proj included), and the share of cached K and V values beyond ``±448 * scale`` (they
clip). It prints one Markdown table; ``python benchmarks/accuracy.py`` runs it alone.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CHECKPOINTS = [
    "real/llmcompressor/fp8_kv_tensor",
    "real/quark/fp8_kv_attn_fp8_eager",
    "real/autofp8/head_k_v_scale",
    "real2/llmcompressor/qwen3_fp8_kv_tensor",
    "real2/quark/qwen3_fp8_kv_fp8",
    "real2/quark/qwen3_fp8_kv_fp8_post_rope",
    "real2/modelopt/qwen3_fp8_kv_fp8",
    "real2/modelopt/qwen3_fp8_kv_nvfp4",
    "real2/llmcompressor/qwen3_moe_fp8_kv_tensor",
    "real2/quark/mixtral_fp8_kv_fp8",
    "real2/modelopt/mixtral_fp8_kv_fp8",
    "real2/llmcompressor/phi3_fp8_kv_tensor",
    "real2/quark/phi3_fp8_kv_fp8",
]
BATCH, TOKENS = 8, 32
E4M3_MAX = 448.0


def main() -> None:
    import transformers
    from transformers.cache_utils import DynamicCache

    import kvcore
    import kvcore.transformers as kt

    notes: list[str] = []
    with _modelopt_plugin(kvcore):
        rows = [_row(name, transformers, DynamicCache, kt, notes) for name in CHECKPOINTS]
    print(f"\nfp8 (e4m3) KV cache accuracy, transformers {transformers.__version__}, torch {torch.__version__}:\n")
    print("| checkpoint | model | k / v scale x 448 (min-max) | K clipped | V clipped "
          "| attn error, checkpoint scales | attn error, scales 1.0 | reading |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for number, note in enumerate(notes, 1):
        print(f"\n[{number}] {note}")


def _row(name: str, transformers: Any, dynamic_cache: Any, kt: Any, notes: list[str]) -> list[str]:
    path = FIXTURES / name
    config = json.loads((path / "config.json").read_text())
    architecture = config["architectures"][0]
    try:
        model = _model(transformers, config)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache = kt.kv_cache(model, path)
    except Exception as error:  # noqa: BLE001 - a row says why a fixture cannot be measured
        return [name, architecture, "", "", "", "", "", f"not measured: {str(error)[:120]}"]
    marks = []
    for message in sorted({str(w.message).split(": ", 1)[-1] for w in caught}):
        if message not in notes:
            notes.append(message)
        marks.append(f"[{notes.index(message) + 1}]")
    layers = [(layer.k_scale, layer.v_scale) for layer in cache.layers]
    ones = [(torch.tensor(1.0), torch.tensor(1.0)) for _ in layers]
    inputs, outputs, stored = _reference_run(model, dynamic_cache, config)
    error_ckpt = _attention_error(model, inputs, outputs, kt, layers)
    error_ones = _attention_error(model, inputs, outputs, kt, ones)
    k_clip = _clipped([k for k, _ in stored], [k for k, _ in layers])
    v_clip = _clipped([v for _, v in stored], [v for _, v in layers])
    return [
        name,
        architecture,
        f"{_range([k for k, _ in layers])} / {_range([v for _, v in layers])}",
        f"{k_clip:.2%}",
        f"{v_clip:.2%}",
        f"{error_ckpt:.2e}",
        f"{error_ones:.2e}",
        _reading(error_ckpt, error_ones, max(k_clip, v_clip), " ".join(marks)),
    ]


def _model(transformers: Any, raw: dict[str, Any]) -> Any:
    config = {k: v for k, v in raw.items() if k not in ("quantization_config", "model_type")}
    model_class = getattr(transformers, raw["architectures"][0])
    torch.manual_seed(0)  # the fixtures' recipe: the model the tool calibrated
    return model_class(model_class.config_class(**config)).to(torch.float32).eval()


def _reference_run(model: Any, dynamic_cache: Any, config: dict[str, Any]) -> tuple[dict, dict, list]:
    """Each attention module's call (kwargs) and output with an unquantized cache, and the cached K/V."""
    inputs: dict[int, dict[str, Any]] = {}
    outputs: dict[int, torch.Tensor] = {}
    handles = []
    for module in model.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "o_proj"):
            def record(mod: Any, args: tuple, kwargs: dict, output: Any) -> None:
                assert not args, "attention modules are called with keyword arguments"
                inputs[mod.layer_idx] = dict(kwargs)
                outputs[mod.layer_idx] = output[0].detach()
            handles.append(module.register_forward_hook(record, with_kwargs=True))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config["vocab_size"], (BATCH, TOKENS), generator=generator)
    cache = dynamic_cache(config=model.config)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
    for handle in handles:
        handle.remove()
    return inputs, outputs, [(layer.keys, layer.values) for layer in cache.layers]


def _attention_error(model: Any, inputs: dict, outputs: dict, kt: Any, scales: list) -> float:
    """Relative error of every attention output when its cache is fp8 with ``scales``, same inputs."""
    layers = [kt.Fp8Layer(k_scale=k, v_scale=v, fp8=torch.float8_e4m3fn, name=f"layer {i}")
              for i, (k, v) in enumerate(scales)]
    cache = kt.KvcoreCache(layers, checkpoint=Path("-"), kv_cache_dtype="fp8")
    attention = {m.layer_idx: m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "o_proj")}
    diff = total = 0.0
    with torch.no_grad():
        for index, kwargs in sorted(inputs.items()):
            call = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}
            out = attention[index](**call, cache=cache)[0]
            diff += float(((out - outputs[index]) ** 2).sum())
            total += float((outputs[index] ** 2).sum())
    return (diff / total) ** 0.5


def _clipped(values: list[torch.Tensor], scales: list[torch.Tensor]) -> float:
    beyond = count = 0
    for x, scale in zip(values, scales, strict=True):
        limit = E4M3_MAX * (scale.reshape(()) if scale.numel() == 1 else scale.reshape(1, -1, 1, 1))
        beyond += int((x.abs() > limit).sum())
        count += x.numel()
    return beyond / count


def _range(scales: list[torch.Tensor]) -> str:
    values = torch.cat([s.reshape(-1) for s in scales]) * E4M3_MAX
    low, high = float(values.min()), float(values.max())
    return f"{low:.3g}" if abs(high - low) < 5e-4 * high else f"{low:.3g}-{high:.3g}"


def _reading(ckpt: float, ones: float, clip: float, marks: str) -> str:
    """Within 10% of the 1.0 error: no difference worth a word."""
    if ckpt < 0.9 * ones:
        parts = [f"scales help ({ones / ckpt:.2g}x less error)"]
    elif ckpt > 1.1 * ones:
        parts = [f"scales hurt ({ckpt / ones:.2g}x the error)"]
    else:
        parts = ["no difference"]
    if clip > 0.01:
        parts.append(f"clips {clip:.0%}")
    if marks:
        parts.append(f"warning {marks}")
    return "; ".join(parts)


class _modelopt_plugin:
    """The ModelOpt plugin is an example (``examples/kvcore-modelopt``): registered here unless installed."""

    def __init__(self, kvcore: Any) -> None:
        self.kvcore = kvcore
        self.context: Any = None

    def __enter__(self) -> None:
        if self.kvcore.get_plugin_manager().get_plugin("modelopt") is not None:
            return
        sys.path.insert(0, str(ROOT / "examples" / "kvcore-modelopt"))
        import kvcore_modelopt

        from kvcore.testing import registered_plugin

        self.context = registered_plugin(kvcore_modelopt, "modelopt", distribution="kvcore-modelopt", version="0.1.0")
        self.context.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)


if __name__ == "__main__":
    main()
