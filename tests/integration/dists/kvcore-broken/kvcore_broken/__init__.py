"""A plugin whose module imports a dependency that its distribution forgot to declare."""

import kvcore_dependency_that_is_not_installed  # noqa: F401

import kvcore


@kvcore.hookimpl
def get_cache_scale_mapper(quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
    """Never reached: the import above fails."""
    return kvcore.WeightsMapper() if quant_config.quant_method == "broken" else None
