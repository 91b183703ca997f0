"""The checkpoint-level API: the plugins' mapper, and the final KV-cache scales, with no model.

Both read ``config.json``, any quantization config and the shard headers; ``read_kv_scales``
also reads the KV-cache scale and zero-point tensors, nothing else.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from kvcore._checkpoint.reader import Checkpoint, read_checkpoint
from kvcore._checkpoint.safetensors import TensorInfo
from kvcore._errors import WeightLoadError
from kvcore._loading.finalise import Value, final_values
from kvcore._loading.heads import per_kv_head, rank_heads
from kvcore._loading.interpret import interpret, is_mla_model
from kvcore._loading.load import parallel
from kvcore._loading.parallel import Parallel
from kvcore._loading.plan_scales import check_zero_point, read_scale, where
from kvcore._mapper import WeightsMapper
from kvcore._meaning import ScaleMeaning
from kvcore._names import SCALE_NAMES, ZERO_POINT_NAMES, ScaleValue, natural_key
from kvcore._plugins.contributions import Contribution, combine, meaning_of
from kvcore._plugins.for_checkpoint import check_name_conflicts, plugin_mappers

__all__ = ["CheckpointScales", "checked_contributions", "mapper_for", "read_kv_scales", "scales_of"]

DEFAULT_ATTENTION = "model.layers.{}.self_attn.attn"
"""Where a Llama-shaped model keeps layer N's attention, for layers no scale names."""


def mapper_for(
    checkpoint: str | Path,
    *,
    plugins: Iterable[str] | None = None,
    disable_plugins: Iterable[str] | None = None,
) -> WeightsMapper:
    """The installed plugins' mappers for ``checkpoint``, ORed: what ``kvcore.load`` would apply.

    An empty mapper for an unquantized checkpoint; a quantization method no installed plugin
    handles raises ``QuantConfigError``, as ``kvcore.load`` does. Pass it to
    ``AutoWeightsLoader.load_weights(weights, mapper=...)``, ORed with the model's own: it
    carries what the plugins say the scales mean (``WeightsMapper.scale_meaning``), so the
    loader finalises MLA attentions as ``kvcore.load`` does.
    """
    return _mapper(read_checkpoint(checkpoint), plugins, disable_plugins)


def _mapper(ckpt: Checkpoint, plugins: Iterable[str] | None, disable_plugins: Iterable[str] | None) -> WeightsMapper:
    contributions = checked_contributions(ckpt, plugins, disable_plugins)
    return combine(WeightsMapper(), contributions).with_scale_meaning(meaning_of(contributions))


def checked_contributions(
    ckpt: Checkpoint, plugins: Iterable[str] | None, disable_plugins: Iterable[str] | None
) -> list[Contribution]:
    """The plugins' contributions for ``ckpt`` (a format no plugin handles raises), checked for conflicts."""
    contributions = plugin_mappers(ckpt, strict=True, plugins=plugins, disable_plugins=disable_plugins)
    check_name_conflicts(ckpt.tensors, contributions)
    return contributions


def read_kv_scales(
    checkpoint: str | Path,
    *,
    tp_rank: int = 0,
    tp_size: int = 1,
    use_mla: bool | None = None,
    plugins: Iterable[str] | None = None,
    disable_plugins: Iterable[str] | None = None,
) -> dict[str, dict[str, Value]]:
    """The final ``k/v/q/prob`` scales of every attention layer, as ``kvcore.load`` would set them.

    Keys are attention module names as the plugins map them (``model.layers.N.self_attn.attn``);
    values follow ``load``'s rules (one of k and v serves for both, missing ones are 1.0) and
    checks (NaN, infinite, zero or negative scales and non-zero zero points are refused). Per-head
    scales are lists, the heads of rank ``tp_rank`` of ``tp_size``. ``use_mla``: whether the
    engine's cache holds an MLA latent (``kvcore.Attention(use_mla=...)``); by default, whether
    ``config.json`` describes an MLA model. Reads headers and the scale tensors only.
    """
    ckpt = read_checkpoint(checkpoint)
    contributions = checked_contributions(ckpt, plugins, disable_plugins)
    return scales_of(ckpt, contributions, parallel(ckpt, tp_rank, tp_size), use_mla).final


@dataclasses.dataclass(frozen=True)
class CheckpointScales:
    """``read_kv_scales``'s answer with what it was made of, for kvcore's own runtimes."""

    final: dict[str, dict[str, Value]]
    """By attention module, the final scales (``read_kv_scales``'s return value)."""
    loaded: dict[str, dict[str, ScaleValue]]
    """By attention module, the scales the checkpoint has (before defaults and MLA rules)."""
    meaning: ScaleMeaning
    """What the plugins say the scales describe."""


def scales_of(
    ckpt: Checkpoint, contributions: list[Contribution], par: Parallel, use_mla: bool | None
) -> CheckpointScales:
    """Every attention module's scales in ``ckpt``, mapped by the plugins' ``contributions``."""
    mapper = combine(WeightsMapper(), contributions)
    heads = _heads(ckpt.config)
    loaded: dict[str, dict[str, ScaleValue]] = {}
    for name, info in ckpt.tensors.items():
        mapped = mapper.map_name(name)
        module, _, attr = (mapped or "").rpartition(".")
        if module.rpartition(".")[2] != "attn":
            continue
        if attr in ZERO_POINT_NAMES:
            check_zero_point(info, mapped or name)
        elif attr in SCALE_NAMES:
            value = _value(info, f"{module}.{attr}", attr, heads, par.rank, par.size)
            loaded.setdefault(module, {})[attr] = ScaleValue(value, name)
    meaning = meaning_of(contributions)
    mla = is_mla_model(ckpt.config) if use_mla is None else use_mla
    final = {
        module: final_values(interpret(loaded.get(module, {}), mla, meaning)[0])[0]
        for module in _every_layer(loaded, ckpt.config)
    }
    return CheckpointScales(final, loaded, meaning)


def _heads(config: dict[str, object]) -> tuple[int | None, int | None]:
    """``(query heads, KV heads)`` from ``config.json``, ``None`` where it does not say."""
    query = config.get("num_attention_heads")
    kv = config.get("num_key_value_heads", query)
    return (query if isinstance(query, int) else None), (kv if isinstance(kv, int) else None)


def _value(
    info: TensorInfo, target: str, attr: str, heads: tuple[int | None, int | None], tp_rank: int, tp_size: int
) -> torch.Tensor:
    place = where(info, target)
    query, kv = heads
    if info.numel != 1 and info.numel not in (kv, query if attr == "q_scale" else kv) and kv is not None:
        raise WeightLoadError(
            f"{place} has shape {list(info.shape)}: a KV-cache scale has one element (per-tensor) "
            f"or num_key_value_heads={kv} elements (per-head), as config.json says. Re-export the "
            "checkpoint, or fix config.json"
        )
    value = read_scale(info, place, kv)
    if value.numel() == 1:
        return value
    if query is not None and kv is not None and value.numel() == query != kv:
        value = per_kv_head(value, query, kv)
    return rank_heads(value, value.numel(), tp_rank, tp_size, place)


def _every_layer(loaded: dict[str, dict[str, ScaleValue]], config: dict[str, object]) -> list[str]:
    """The attention modules with scales, plus those of the layers that have none (1.0 defaults).

    The other layers' names follow the one numbered pattern the scales use (or a Llama-shaped
    model's) for ``num_hidden_layers`` layers; without that count only named modules are known.
    """
    layers = config.get("num_hidden_layers")
    names = set(loaded)
    patterns = {re.sub(r"\.\d+\.", ".{}.", name, count=1) for name in loaded} or {DEFAULT_ATTENTION}
    if isinstance(layers, int) and len(patterns) == 1:
        pattern = patterns.pop()
        if "{}" in pattern:
            names |= {pattern.format(i) for i in range(layers)}
    return sorted(names, key=natural_key)
