"""kvcore plugin for ``quant_method == "fp8"`` checkpoints.

Three unrelated producers write that method, and this plugin handles all three:

- AutoFP8: ``self_attn.k_scale`` / ``self_attn.v_scale`` (0-dim float32), and in mid-2024
  checkpoints one ``self_attn.kv_scale`` that serves for both;
- AMD Quark's deprecated fp8 export (an ``export`` dict beside ``kv_cache_scheme: "static"``):
  ``self_attn.k_scale`` / ``self_attn.v_scale`` (0-dim bf16, equal);
- HF FineGrainedFP8 / DeepSeek-style block fp8 (``weight_block_size``): no KV scales at all,
  so the mapper is empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import kvcore

if TYPE_CHECKING:
    from kvcore_fp8._config import Fp8Config
    from kvcore_fp8._config import parse_config as parse_config

__all__ = ["Fp8Config", "KV_SCALE_MAPPER", "get_cache_scale_mapper"]

KV_SCALE_MAPPER = kvcore.WeightsMapper(
    orig_to_new_regex={
        # The lookbehinds keep the rules idempotent: ``attn.k_scale`` / ``...attn.k_scale`` are already mapped.
        r"(?<!\.attn)(?<!^attn)\.([kv])_scale$": r".attn.\1_scale",
        r"\.kv_scale$": ".attn.k_scale",
    }
)
"""``P.k_scale`` / ``P.v_scale`` -> ``P.attn.k_scale`` / ``P.attn.v_scale``; legacy
``P.kv_scale`` -> ``P.attn.k_scale`` (the core then uses it for v as well)."""


_LAZY = frozenset({"Fp8Config", "parse_config"})


def __getattr__(name: str) -> Any:
    """``Fp8Config`` and ``parse_config``, imported on first use.

    Importing pydantic takes ~0.2 s, and discovery imports every installed plugin whatever
    the checkpoint's format: only a checkpoint of this format should pay for it.
    """
    if name in _LAZY:
        from kvcore_fp8 import _config

        return getattr(_config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: Any) -> kvcore.WeightsMapper | None:
    """The fp8 KV-scale mapper; an empty one for block fp8; ``None`` for other methods."""
    config = kvcore.QuantConfig.coerce(quant_config)
    if config.quant_method != "fp8":
        return None  # before importing pydantic: other formats never pay for it
    from kvcore_fp8._config import parse_config

    parsed = parse_config(dict(config.raw), config.source)
    return kvcore.WeightsMapper() if parsed.is_block_fp8 else KV_SCALE_MAPPER
