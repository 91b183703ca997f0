"""``plugin_mappers_for``: each plugin's mapper for a checkpoint, by plugin, for engines that apply them.

``mapper_for`` gives the ORed mapper; an engine that already has its own name-mapping rules
(vLLM) also needs to know which plugins contributed, and that a checkpoint no plugin handles
is not an error for it (its own rules may handle that format).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kvcore._checkpoint.reader import read_checkpoint
from kvcore._errors import KvcoreError
from kvcore._loading.load import check_name_conflicts, plugin_mappers
from kvcore._mapper import WeightsMapper
from kvcore._plugins.contributions import collect_mappers, combine
from kvcore._plugins.manager import get_plugin_manager

__all__ = ["plugin_mappers_for"]


def plugin_mappers_for(
    checkpoint: str | Path,
    *,
    plugins: Iterable[str] | None = None,
    disable_plugins: Iterable[str] | None = None,
) -> dict[str, WeightsMapper]:
    """The mapper each installed plugin contributes for ``checkpoint``, by plugin (entry-point) name.

    In the order ``kvcore.load`` ORs them; ORing the values gives ``mapper_for(checkpoint)``.
    Empty for an unquantized checkpoint and for a quantization method no installed plugin
    handles (where ``mapper_for`` raises ``QuantConfigError``), so an engine with its own rules
    can ask about any checkpoint. The checkpoint is read with kvcore's reader (``config.json``,
    ``hf_quant_config.json``, shard headers; ``CheckpointError`` if it cannot be read), and the
    same checks as ``mapper_for`` apply: a plugin that rejects the config raises
    ``QuantConfigError`` naming the file, a broken plugin ``PluginError``, and two plugins that
    map one pattern or one checkpoint tensor to different names ``MapperConflictError``.
    """
    ckpt = read_checkpoint(checkpoint)
    if ckpt.quant_config is None:
        return {}
    pm = get_plugin_manager(plugins=plugins, disable_plugins=disable_plugins)
    try:
        contributions = collect_mappers(pm, ckpt.quant_config)
    except KvcoreError:
        # The same call through the loader's path, which names the file the config came from.
        plugin_mappers(ckpt, strict=True, plugins=plugins, disable_plugins=disable_plugins)
        raise
    combine(WeightsMapper(), contributions)
    check_name_conflicts(ckpt.tensors, contributions)
    return {c.plugin: c.mapper for c in contributions}
