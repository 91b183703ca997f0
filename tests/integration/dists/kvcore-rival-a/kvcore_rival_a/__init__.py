"""One of two plugins that disagree about where the "rival" format's scale goes."""

import kvcore


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
    """Maps ``P.kv_rival`` to ``P.attn.k_scale`` for quant_method "rival"."""
    if quant_config.quant_method != "rival":
        return None
    return kvcore.WeightsMapper(orig_to_new_regex={r"\.kv_rival$": ".attn.k_scale"})
