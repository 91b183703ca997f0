"""kvcore plugin for AMD Quark checkpoints (``quant_method == "quark"``).

Quark stores each KV-cache scale as the output scale of the projection that produces it,
as a 0-dim bf16 tensor beside ``P = model.layers.N.self_attn``:

- ``P.k_proj.output_scale`` / ``P.v_proj.output_scale`` -> ``P.attn.k_scale`` / ``P.attn.v_scale``
  (equal unless ``kv_cache_post_rope`` is true);
- with attention quantization, ``P.q_proj.output_scale`` -> ``P.attn.q_scale`` and (eager
  attention only) ``P.prob_output_scale`` -> ``P.attn.prob_scale``;
- a fused projection's one scale, ``P.qkv_proj.output_scale`` (Phi-3), -> ``P.attn.k_scale``,
  which then serves for v as well;
- an MLA model's ``P.kv_b_proj.output_scale`` (DeepSeek-V3) -> ``P.attn.k_scale``: the expanded
  per-head keys and values, not the latent cache (``ScaleMeaning("mla_per_head")``).

What the scales measure (``get_cache_scale_meaning``): with ``kv_cache_post_rope: false`` (the
default) Quark measures K at ``k_proj``'s output, before the model's ``k_norm`` (Qwen3,
Gemma-3, ...), so the cached keys can be several times larger: a caveat. With
``kv_cache_post_rope: true`` and a fused ``qkv_proj``, Quark matches "v_proj" inside "qkv_proj"
and measures only V: a caveat too.

A KV-cache or softmax spec other than static per-tensor fp8_e4m3 is refused with a
``kvcore.QuantConfigError`` naming the field. The config's pydantic models are in
:mod:`kvcore_quark.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kvcore

__all__ = ["KV_SCALE_MAPPER", "get_cache_scale_mapper", "get_cache_scale_meaning"]

KV_SCALE_MAPPER = kvcore.WeightsMapper(
    orig_to_new_regex={
        # Targets end in ``.attn.<x>_scale``, which neither pattern matches: the rules are idempotent.
        r"\.([kvq])_proj\.output_scale$": r".attn.\1_scale",
        r"\.prob_output_scale$": ".attn.prob_scale",
        r"\.(?:qkv|kv_b)_proj\.output_scale$": ".attn.k_scale",
    }
)
"""``P.{k,v,q}_proj.output_scale`` -> ``P.attn.{k,v,q}_scale``; ``P.prob_output_scale`` -> ``P.attn.prob_scale``;
``P.qkv_proj.output_scale`` and ``P.kv_b_proj.output_scale`` (one scale for k and v) -> ``P.attn.k_scale``."""


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
    """The Quark KV-scale mapper once the config validates; ``None`` for other methods."""
    if quant_config.quant_method != "quark":
        return None
    from kvcore_quark.config import parse_config  # pydantic (~0.2 s) only for Quark checkpoints

    parse_config(quant_config.raw, quant_config.source)
    return KV_SCALE_MAPPER


K_NORM_MODEL_TYPES = frozenset({"qwen3", "qwen3_moe", "qwen3_next", "gemma3", "gemma3_text", "olmo2", "olmoe"})
"""``config.json`` model types whose attention normalises keys (``k_norm``) after ``k_proj``."""


@kvcore.hookimpl
def get_cache_scale_meaning(quant_config: kvcore.QuantConfig) -> kvcore.ScaleMeaning | None:
    """MLA per-head scales, pre- or post-RoPE keys, and the caveats of pre-``k_norm`` and V-only measurements."""
    if quant_config.quant_method != "quark":
        return None
    model = quant_config.model_config
    if isinstance(model.get("kv_lora_rank"), int):
        return kvcore.ScaleMeaning("mla_per_head", rope="pre")  # kv_b_proj's output: no RoPE yet
    post_rope = quant_config.raw.get("kv_cache_post_rope") is True
    export = quant_config.raw.get("export")
    groups = export.get("kv_cache_group", []) if isinstance(export, dict) else []
    if post_rope and any(str(group).endswith("qkv_proj") for group in groups):
        return kvcore.ScaleMeaning(rope="post", caveat=(
            "Quark (kv_cache_post_rope: true) measured only V for the fused qkv_proj (its pattern "
            "matches 'v_proj' inside 'qkv_proj'), so k uses V's scale and large keys may clip; "
            "re-export with kv_cache_post_rope: false, or check the accuracy of keys"
        ))
    if not post_rope and _has_k_norm(model):
        return kvcore.ScaleMeaning(rope="pre", caveat=(
            f"Quark (kv_cache_post_rope: false) measured k_scale at k_proj's output, before this "
            f"model's k_norm ({model.get('model_type')}): the cache holds keys after k_norm, often "
            "several times larger, which an fp8 cache with this scale clips. Re-export with "
            "kv_cache_post_rope: true"
        ))
    return kvcore.ScaleMeaning(rope="post" if post_rope else "pre")


def _has_k_norm(model: Mapping[str, Any]) -> bool:
    flags = (model.get(key) for key in ("use_qk_norm", "qk_layernorm", "use_k_norm"))
    return model.get("model_type") in K_NORM_MODEL_TYPES or any(flag is True for flag in flags)
