"""Real transformers models built from genuine fixtures' configs, and a reference fp8 cache.

The reference cache is written here, independently of kvcore: it reads the scales straight from
the checkpoint's safetensors and applies the formula of docs/formats.md,
``(clamp(x / scale, ±448).to(float8_e4m3fn).float() * scale).to(x.dtype)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file
from transformers.cache_utils import Cache, DynamicLayer

import kvcore.testing

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LLAMA = FIXTURES / "real" / "llmcompressor" / "fp8_kv_tensor"
QWEN3 = FIXTURES / "real2" / "llmcompressor" / "qwen3_fp8_kv_tensor"
E4M3 = torch.float8_e4m3fn


def fixture_config(fixture: Path) -> dict[str, Any]:
    return json.loads((fixture / "config.json").read_text())


def build_model(fixture: Path, dtype: torch.dtype = torch.float32, **overrides: Any) -> Any:
    """The fixture's architecture (``LlamaForCausalLM``, ``Qwen3ForCausalLM``) from its config.json, seeded."""
    raw = fixture_config(fixture)
    raw.pop("quantization_config", None)
    raw.update(overrides)
    architecture = raw["architectures"][0]
    model_class = getattr(transformers, architecture)
    config = model_class.config_class(**{k: v for k, v in raw.items() if k != "model_type"})
    torch.manual_seed(0)
    return model_class(config).to(dtype).eval()


def checkpoint_scales(checkpoint: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the ``self_attn.k_scale`` / ``v_scale`` tensors as written, float32, flattened."""
    tensors = load_file(str(checkpoint / "model.safetensors"))
    layers = fixture_config(checkpoint)["num_hidden_layers"]
    return [
        tuple(tensors[f"model.layers.{i}.self_attn.{n}"].to(torch.float32).reshape(-1) for n in ("k_scale", "v_scale"))
        for i in range(layers)
    ]


def formula(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.reshape(()) if scale.numel() == 1 else scale.reshape(1, -1, 1, 1)
    return (torch.clamp(x.float() / s, -448.0, 448.0).to(E4M3).float() * s).to(x.dtype)


class ReferenceLayer(DynamicLayer):
    """Stores what an fp8 cache with these scales would give back, in the input dtype."""

    def __init__(self, k_scale: torch.Tensor, v_scale: torch.Tensor) -> None:
        super().__init__()
        self.k_scale, self.v_scale = k_scale, v_scale

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return super().update(formula(key_states, self.k_scale), formula(value_states, self.v_scale), *args, **kwargs)


def reference_cache(scales: list[tuple[torch.Tensor, torch.Tensor]]) -> Cache:
    return Cache(layers=[ReferenceLayer(k, v) for k, v in scales])


def write_per_head(directory: Path, fixture: Path = LLAMA) -> Path:
    """A compressed-tensors ``attn_head`` checkpoint for the fixture's model: ``(H_kv, 1, 1)`` bf16 scales."""
    config = fixture_config(fixture)
    config["quantization_config"]["kv_cache_scheme"]["strategy"] = "attn_head"
    heads = config["num_key_value_heads"]
    tensors = {}
    for i in range(config["num_hidden_layers"]):
        # Distinct per head and per layer, around the fixture's per-tensor values (~1e-3).
        base = torch.tensor([0.0006, 0.0019])[:heads] * (1 + 0.25 * i)
        tensors[f"model.layers.{i}.self_attn.k_scale"] = base.reshape(heads, 1, 1).to(torch.bfloat16)
        tensors[f"model.layers.{i}.self_attn.v_scale"] = (base.flip(0) * 1.5).reshape(heads, 1, 1).to(torch.bfloat16)
    return kvcore.testing.write_checkpoint(directory, tensors, config=config)


def prompt(batch: int = 2, length: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def prefill_and_decode(model: Any, cache: Cache, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the prompt (prefill), then of one more token through the same cache (decode)."""
    with torch.no_grad():
        first = model(ids, cache=cache, use_cache=True).logits
        step = first[:, -1:].argmax(-1)
        second = model(step, cache=cache, use_cache=True).logits
    return first, second
