"""``plugin_mappers_for``: each plugin's mapper for a checkpoint, by plugin, for engines that apply them.

``mapper_for`` gives the ORed mapper; an engine that already has its own name-mapping rules
(vLLM) also needs to know which plugins contributed, and that a checkpoint no plugin handles
is not an error for it (its own rules may handle that format).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kvcore._checkpoint.reader import Checkpoint, read_checkpoint
from kvcore._errors import KvcoreError, MapperConflictError, QuantConfigError
from kvcore._mapper import WeightsMapper
from kvcore._plugins.contributions import Contribution, collect_mappers, combine, plugin_map_name
from kvcore._plugins.manager import get_plugin_manager, plugin_records
from kvcore._warn import warn

__all__ = ["check_name_conflicts", "plugin_mappers", "plugin_mappers_for"]


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


def plugin_mappers(
    ckpt: Checkpoint,
    *,
    strict: bool,
    plugins: Iterable[str] | None = None,
    disable_plugins: Iterable[str] | None = None,
) -> list[Contribution]:
    """The plugins' mappers for ``ckpt``'s quantization config (none when unquantized)."""
    if ckpt.quant_config is None:
        return []
    pm = get_plugin_manager(plugins=plugins, disable_plugins=disable_plugins)
    source = ckpt.quant_config.source or str(ckpt.directory)
    try:
        contributions = collect_mappers(pm, ckpt.quant_config)
    except QuantConfigError as exc:
        # Plugins name the field; the file, only the core knows (kvcore.quant_config_error says it: once is enough).
        where = "" if source in str(exc) else f"{source}: "
        raise QuantConfigError(
            f"{where}{exc}. Correct the config in {source.rpartition(':')[0] or source}, or "
            "re-export the checkpoint with a setting the plugin supports"
        ) from exc
    if contributions:
        return contributions
    method = ckpt.quant_config.quant_method
    records = plugin_records(pm)
    installed = ", ".join(r.label for r in records.values() if r.status == "loaded") or "none"
    message = (
        f"{ckpt.quant_config.source or ckpt.directory} declares quant_method {method!r}, which no "
        f"installed kvcore plugin handles (loaded plugins: {installed}). Install the plugin for "
        f"this format (for example `pip install kvcore-{method}`), or pass strict=False to load "
        "without KV-cache scale mapping"
    )
    if strict:
        raise QuantConfigError(message)
    warn(message)
    return []


def check_name_conflicts(names: Iterable[str], contributions: list[Contribution]) -> None:
    """Two plugins' mappers, each alone, must not send one tensor to different names."""
    if len(contributions) < 2:
        return
    for name in names:
        claims: dict[str, Contribution] = {}
        for contribution in contributions:
            mapped = plugin_map_name(contribution, name)
            if mapped is None or mapped == name:
                continue
            for other_target, other in claims.items():
                if other_target != mapped:
                    raise MapperConflictError(
                        f"checkpoint tensor {name!r}: plugin {other.label} maps it to "
                        f"{other_target!r} but plugin {contribution.label} maps it to {mapped!r}; "
                        "disable one of them (KVCORE_DISABLE_PLUGINS)",
                        kind="tensor",
                        pattern=name,
                        targets=(other_target, mapped),
                    )
            claims[mapped] = contribution
