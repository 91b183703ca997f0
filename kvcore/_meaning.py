"""``ScaleMeaning``: what a checkpoint's KV-cache scales measure, as the plugin that knows the format says.

Names say where a scale goes; they do not say what was measured. A plugin reads its format's
config and the model's ``config.json`` (``QuantConfig.model_config``) and tells the core,
through the ``get_cache_scale_meaning`` hook, which of these it is. The core then decides
per attention module (``kvcore.Attention(use_mla=...)``) what the kernel gets.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["DESCRIBES", "ROPE", "ScaleMeaning"]

DESCRIBES = ("kv", "mla_latent", "mla_per_head")
Describes = Literal["kv", "mla_latent", "mla_per_head"]
ROPE = ("pre", "post")
Rope = Literal["pre", "post"]


@dataclasses.dataclass(frozen=True)
class ScaleMeaning:
    """What the checkpoint's ``k_scale`` / ``v_scale`` describe.

    ``describes``:

    - ``"kv"``: keys and values as an attention cache holds them (the default). Into an MLA
      attention (``use_mla=True``) the k scale is that cache's scale, as in vLLM.
    - ``"mla_latent"``: an MLA model's compressed latent (``k_scale``) and rope key
      (``v_scale``), what an MLA cache holds together: one cache scale, ``max(k, v)``. An
      attention that expands MLA into per-head keys and values (``use_mla=False``) cannot use it.
    - ``"mla_per_head"``: an MLA model's expanded per-head keys and values. They describe an
      attention with ``use_mla=False``; an MLA latent cache cannot use them.

    ``calibrated_for``: the KV-cache dtype the producer calibrated for (``"fp8"``,
    ``"nvfp4"``, ...); the scale is amax/448 either way. ``caveat``: why the values may not fit
    what the cache holds (for example measured before ``k_norm``); the core warns with it,
    naming each layer, and ``kvcore inspect`` lists it. ``rope``: whether the keys were measured
    before (``"pre"``) or after (``"post"``) the rotary embedding, ``None`` when the format does
    not say; an engine's cache holds keys after it (a pre-RoPE amax can differ by up to √2 on a
    model without ``k_norm``), and ``kvcore inspect`` shows it to operators.
    """

    describes: Describes = "kv"
    calibrated_for: str = "fp8"
    caveat: str | None = None
    rope: Rope | None = None

    def __post_init__(self) -> None:
        if self.describes not in DESCRIBES:
            raise ValueError(f"ScaleMeaning.describes must be one of {', '.join(DESCRIBES)}, not {self.describes!r}")
        if self.rope is not None and self.rope not in ROPE:
            raise ValueError(f"ScaleMeaning.rope must be 'pre', 'post' or None, not {self.rope!r}")
