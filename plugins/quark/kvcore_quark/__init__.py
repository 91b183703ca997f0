"""kvcore plugin for AMD Quark checkpoints (``quant_method == "quark"``).

Quark stores each KV-cache scale as the output scale of the projection that produces it,
as a 0-dim bf16 tensor beside ``P = model.layers.N.self_attn``:

- ``P.k_proj.output_scale`` / ``P.v_proj.output_scale`` -> ``P.attn.k_scale`` / ``P.attn.v_scale``
  (equal unless ``kv_cache_post_rope`` is true);
- with attention quantization, ``P.q_proj.output_scale`` -> ``P.attn.q_scale`` and (eager
  attention only) ``P.prob_output_scale`` -> ``P.attn.prob_scale``.

A KV-cache or softmax spec other than static per-tensor fp8_e4m3 is refused with a
``kvcore.QuantConfigError`` naming the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import kvcore

if TYPE_CHECKING:
    from kvcore_quark._config import QuarkConfig, parse_config

__all__ = ["KV_SCALE_MAPPER", "QuarkConfig", "get_cache_scale_mapper", "parse_config"]

KV_SCALE_MAPPER = kvcore.WeightsMapper(
    orig_to_new_regex={
        # Targets end in ``.attn.<x>_scale``, which neither pattern matches: the rules are idempotent.
        r"\.([kvq])_proj\.output_scale$": r".attn.\1_scale",
        r"\.prob_output_scale$": ".attn.prob_scale",
    }
)
"""``P.{k,v,q}_proj.output_scale`` -> ``P.attn.{k,v,q}_scale``; ``P.prob_output_scale`` -> ``P.attn.prob_scale``."""


_LAZY = frozenset({"QuarkConfig", "parse_config"})


def __getattr__(name: str) -> Any:
    """``QuarkConfig`` and ``parse_config``, imported on first use.

    Importing pydantic takes ~0.2 s, and discovery imports every installed plugin whatever
    the checkpoint's format: only a checkpoint of this format should pay for it.
    """
    if name in _LAZY:
        from kvcore_quark import _config

        return getattr(_config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: Any) -> kvcore.WeightsMapper | None:
    """The Quark KV-scale mapper once the config validates; ``None`` for other methods."""
    config = kvcore.QuantConfig.coerce(quant_config)
    if config.quant_method != "quark":
        return None  # before importing pydantic: other formats never pay for it
    from kvcore_quark._config import parse_config

    parse_config(dict(config.raw), config.source)
    return KV_SCALE_MAPPER
