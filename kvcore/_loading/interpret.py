"""Which loaded scales an attention module can use, given what the checkpoint says they measure."""

from __future__ import annotations

import torch

from kvcore._meaning import ScaleMeaning
from kvcore._names import ScaleValue

__all__ = ["interpret", "is_mla_model"]

KV = ("k_scale", "v_scale")
LATENT_ELSEWHERE = (
    "the checkpoint's k/v scales describe the MLA latent and rope key, not the per-head keys and "
    "values an attention with use_mla=False caches"
)
PER_HEAD_ELSEWHERE = (
    "the checkpoint's k/v scales describe the MLA model's expanded per-head keys and values, not "
    "the latent cache of an attention with use_mla=True"
)


def interpret(
    loaded: dict[str, ScaleValue], use_mla: bool, meaning: ScaleMeaning
) -> tuple[dict[str, ScaleValue], str | None]:
    """``loaded`` as this attention can use it, and the reason when k and v were set aside.

    An MLA cache (``use_mla``) has one scale: the latent's and rope key's larger one, or the
    k scale of plain K/V scales (vLLM's choice); per-head K/V scales of an MLA model do not
    describe it. An attention that expands MLA (``use_mla=False``) cannot use latent scales.
    """
    kv = [loaded[attr] for attr in KV if attr in loaded]
    if not kv:
        return loaded, None
    others = {attr: value for attr, value in loaded.items() if attr not in KV}
    if meaning.describes == "mla_latent" and not use_mla:
        return others, LATENT_ELSEWHERE
    if meaning.describes == "mla_per_head" and use_mla:
        return others, PER_HEAD_ELSEWHERE
    if not use_mla:
        return loaded, None
    one = max(kv, key=_largest) if meaning.describes == "mla_latent" else loaded.get("k_scale", kv[0])
    return {**others, "k_scale": one, "v_scale": one}, None


def _largest(scale: ScaleValue) -> float:
    return float(torch.max(scale.value))


def is_mla_model(model_config: object) -> bool:
    """Whether ``config.json`` describes an MLA model (DeepSeek-V2/V3, Kimi: ``kv_lora_rank``)."""
    return isinstance(model_config, dict) and isinstance(model_config.get("kv_lora_rank"), int)
