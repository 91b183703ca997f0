"""kvcore plugin for ACME KV checkpoints: an invented third-party format, shipped the way a vendor would.

An ACME KV checkpoint quantizes only the KV cache. Its ``config.json`` says::

    "quantization_config": {"quant_method": "acme-kv", "kv_cache_dtype": "fp8_e4m3"}

and each attention block ``P`` (``model.layers.N.self_attn``) carries ``P.k_proj.kscale`` and
``P.v_proj.vscale``: one float32 each, the per-tensor fp8 scales of keys and values. No engine
knows these names; this plugin maps them to ``P.attn.k_scale`` / ``P.attn.v_scale``. Its
``vllm.general_plugins`` entry point (:mod:`kvcore_acme.vllm`) declares the method to vLLM.
"""

from __future__ import annotations

import kvcore

__all__ = ["KV_CACHE_DTYPES", "KV_SCALE_MAPPER", "METHOD", "get_cache_scale_mapper"]

METHOD = "acme-kv"
KV_CACHE_DTYPES = ("fp8_e4m3",)
KV_SCALE_MAPPER = kvcore.WeightsMapper(orig_to_new_regex={r"\.([kv])_proj\.\1scale$": r".attn.\1_scale"})
"""``P.k_proj.kscale`` -> ``P.attn.k_scale``, ``P.v_proj.vscale`` -> ``P.attn.v_scale`` (idempotent)."""


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
    """The mapper for ``acme-kv`` checkpoints, ``None`` for any other method."""
    if quant_config.quant_method != METHOD:
        return None
    dtype = quant_config.raw.get("kv_cache_dtype", KV_CACHE_DTYPES[0])
    if dtype not in KV_CACHE_DTYPES:
        raise kvcore.QuantConfigError(
            f"quantization_config.kv_cache_dtype is {dtype!r}; ACME KV checkpoints are {', '.join(KV_CACHE_DTYPES)}"
        )
    return KV_SCALE_MAPPER
