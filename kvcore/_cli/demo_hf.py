"""``kvcore demo``'s Hugging Face run: one prompt through a real transformers model, bf16 cache vs kvcore's fp8 cache.

The model is built from a genuine checkpoint's ``config.json`` (seeded random weights: the
checkpoint's weights are fp8 and need the format's own package); the fp8 cache uses that
checkpoint's KV-cache scales through ``kvcore.transformers.kv_cache``. Runs only when the
``kvcore[transformers]`` extra is installed and the genuine fixture is at hand (a checkout).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from kvcore._errors import KvcoreError

__all__ = ["FIXTURE", "hf_demo", "render_hf_demo"]

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "real" / "llmcompressor" / "fp8_kv_tensor"
"""A genuine llm-compressor 0.14 checkpoint (tiny Llama, per-tensor fp8 KV scales) in a checkout."""
log = logging.getLogger("kvcore")
PROMPT = list(range(1, 33))
"""32 token ids: the checkpoint's calibration was on random ids of the same vocabulary."""


def hf_demo(checkpoint: Path = FIXTURE) -> dict[str, Any] | None:
    """The run's figures, or ``None`` when transformers, the checkpoint or its plugin is missing."""
    if importlib.util.find_spec("transformers") is None or not (checkpoint / "config.json").is_file():
        return None
    import transformers

    from kvcore.transformers import kv_cache

    config = transformers.AutoConfig.from_pretrained(checkpoint)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    ids = torch.tensor([PROMPT])
    try:
        cache = kv_cache(model, checkpoint)
    except KvcoreError as exc:  # the compressed-tensors plugin disabled, say: the formats' run stands
        log.warning("the transformers run was skipped: %s", exc)
        return None
    with torch.no_grad():
        plain = _prefill_and_step(model, ids, transformers.DynamicCache(config=config))
        fp8 = _prefill_and_step(model, ids, cache)
    values = config.num_hidden_layers * config.num_key_value_heads * _head_dim(config) * 2  # k and v
    return {
        "checkpoint": str(checkpoint),
        "model": type(model).__name__,
        "tokens": len(PROMPT) + 1,
        "max_logit_difference": float((plain - fp8).abs().max()),
        "max_logit": float(plain.abs().max()),
        "bytes_per_token": {"bf16": values * 2, "fp8": values},
    }


def _prefill_and_step(model: Any, ids: torch.Tensor, cache: Any) -> torch.Tensor:
    first = model(ids, past_key_values=cache, use_cache=True)
    step = first.logits[:, -1:].argmax(-1)
    second = model(step, past_key_values=cache, use_cache=True)
    return torch.cat([first.logits, second.logits], dim=1).float()


def _head_dim(config: Any) -> int:
    head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return head_dim


def render_hf_demo(result: dict[str, Any] | None) -> str:
    """The human lines of the run, or why it did not run."""
    if result is None:
        return (
            "transformers: not run (needs `pip install kvcore[transformers]` and a kvcore checkout, "
            "whose tests/fixtures hold the genuine checkpoint)"
        )
    bytes_ = result["bytes_per_token"]
    return "\n".join([
        f"transformers: {result['model']} built from {result['checkpoint']}/config.json, "
        f"{result['tokens']} tokens (prefill and one decode step)",
        f"  bf16 cache vs kvcore fp8 cache with the checkpoint's scales: largest logit difference "
        f"{result['max_logit_difference']:.4g} (largest logit {result['max_logit']:.4g})",
        f"  cache memory per token: bf16 {bytes_['bf16']} bytes, fp8 {bytes_['fp8']} bytes",
    ])
