"""kvcore plugin for compressed-tensors checkpoints (llm-compressor; ``quant_method == "compressed-tensors"``).

Names, with ``P = model.layers.N.self_attn``:

- current: ``P.k_scale`` / ``P.v_scale`` (``(1,)``, or ``(H_kv, 1, 1)`` for ``strategy:
  "attn_head"``), and with attention quantization ``P.q_scale`` -> ``P.attn.{k,v,q}_scale``;
- zero points ``P.{k,v,q}_zero_point`` -> ``P.attn.{k,v,q}_zero_point``, where the core drops
  all-zero ones and refuses non-zero ones;
- legacy (before Aug 2024): ``P.{k,v,q}_proj.output_scale`` -> ``P.attn.{k,v,q}_scale``.

On an MLA model (``config.json`` has ``kv_lora_rank``: DeepSeek-V2/V3, Kimi) llm-compressor
calibrates what transformers caches: ``k_scale`` is the compressed latent and ``v_scale`` the
rope key (``ScaleMeaning("mla_latent")``), not keys and values.

The very old ``compression_config`` key reaches this plugin the same way (the core presents
it as the quantization config). An asymmetric or integer ``kv_cache_scheme`` is refused with
a ``kvcore.QuantConfigError``; it is never loaded as if it were symmetric. The config's pydantic
models are in :mod:`kvcore_compressed_tensors.config`.
"""

from __future__ import annotations

import kvcore

__all__ = ["KV_SCALE_MAPPER", "get_cache_scale_mapper", "get_cache_scale_meaning"]

KV_SCALE_MAPPER = kvcore.WeightsMapper(
    orig_to_new_regex={
        # The lookbehinds keep the rules idempotent: ``attn.k_scale`` / ``...attn.k_scale`` are already mapped.
        r"(?<!\.attn)(?<!^attn)\.([kvq])_scale$": r".attn.\1_scale",
        r"(?<!\.attn)(?<!^attn)\.([kvq])_zero_point$": r".attn.\1_zero_point",
        r"\.([kvq])_proj\.output_scale$": r".attn.\1_scale",
    }
)
"""Current ``P.{k,v,q}_scale`` and zero points, and legacy ``P.{k,v,q}_proj.output_scale``, into ``P.attn``."""


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
    """The compressed-tensors KV-scale mapper once the config validates; ``None`` for other methods."""
    if quant_config.quant_method != "compressed-tensors":
        return None
    from kvcore_compressed_tensors.config import parse_config  # pydantic (~0.2 s) only for this format

    parse_config(quant_config.raw, quant_config.source)
    return KV_SCALE_MAPPER


@kvcore.hookimpl
def get_cache_scale_meaning(quant_config: kvcore.QuantConfig) -> kvcore.ScaleMeaning | None:
    """On an MLA model the scales describe the latent and the rope key; otherwise K and V after RoPE
    (llm-compressor observes them where attention receives them)."""
    if quant_config.quant_method != "compressed-tensors":
        return None
    mla = isinstance(quant_config.model_config.get("kv_lora_rank"), int)
    # The rope key (v_scale) is observed after RoPE; the latent (k_scale) has none.
    return kvcore.ScaleMeaning("mla_latent" if mla else "kv", rope="post")
