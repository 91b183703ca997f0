"""kvcore plugin for ``quant_method == "fp8"`` checkpoints.

Three unrelated producers write that method, and this plugin handles all three:

- AutoFP8: ``self_attn.k_scale`` / ``self_attn.v_scale`` (0-dim float32), and in mid-2024
  checkpoints one ``self_attn.kv_scale`` that serves for both;
- AMD Quark's deprecated fp8 export (an ``export`` dict beside ``kv_cache_scheme: "static"``):
  ``self_attn.k_scale`` / ``self_attn.v_scale`` (0-dim bf16, equal);
- HF FineGrainedFP8 / DeepSeek-style block fp8 (``weight_block_size``): no KV scales at all,
  so the mapper is empty.

The config's pydantic model is in :mod:`kvcore_fp8.config`.
"""

from __future__ import annotations

import kvcore

__all__ = ["KV_SCALE_MAPPER", "get_cache_scale_mapper"]

KV_SCALE_MAPPER = kvcore.WeightsMapper(
    orig_to_new_regex={
        # The lookbehinds keep the rules idempotent: ``attn.k_scale`` / ``...attn.k_scale`` are already mapped.
        r"(?<!\.attn)(?<!^attn)\.([kv])_scale$": r".attn.\1_scale",
        r"\.kv_scale$": ".attn.k_scale",
    }
)
"""``P.k_scale`` / ``P.v_scale`` -> ``P.attn.k_scale`` / ``P.attn.v_scale``; legacy
``P.kv_scale`` -> ``P.attn.k_scale`` (the core then uses it for v as well)."""


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
    """The fp8 KV-scale mapper; an empty one for block fp8; ``None`` for other methods."""
    if quant_config.quant_method != "fp8":
        return None
    from kvcore_fp8.config import parse_config  # pydantic (~0.2 s) only for fp8 checkpoints

    parsed = parse_config(quant_config.raw, quant_config.source)
    return kvcore.WeightsMapper() if parsed.is_block_fp8 else KV_SCALE_MAPPER
