"""``kvcore.load``: read, map, plan, copy, finalise, report."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from kvcore._checkpoint.reader import Checkpoint, read_checkpoint
from kvcore._checkpoint.safetensors import check_shards_unchanged
from kvcore._errors import WeightLoadError
from kvcore._loading.copy import copy_all
from kvcore._loading.finalise import Finalisation, decide, write_all
from kvcore._loading.gc import paused_gc
from kvcore._loading.naming import ADD_ATTENTION, ATTENTION_LEAVES
from kvcore._loading.parallel import Parallel
from kvcore._loading.plan import Plan, build_plan
from kvcore._loading.progress import default_progress
from kvcore._loading.suggest import Suggester
from kvcore._loading.targets import Target, attention_modules, model_targets
from kvcore._mapper import WeightsMapper
from kvcore._plugins.contributions import Contribution, combine, meaning_of
from kvcore._plugins.for_checkpoint import check_name_conflicts, plugin_mappers
from kvcore._report import LoadReport
from kvcore._show import shown
from kvcore._warn import warn

__all__ = ["load", "parallel"]


@paused_gc  # a 10^5-tensor plan would otherwise trigger many full collections
def load(
    model: torch.nn.Module,
    checkpoint: str | Path,
    *,
    mapper: WeightsMapper | None = None,
    strict: bool = True,
    plugins: Iterable[str] | None = None,
    disable_plugins: Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
    tp_rank: int = 0,
    tp_size: int = 1,
) -> LoadReport:
    """Load every tensor of ``checkpoint`` into ``model`` and finalise its KV-cache scales.

    The plugins' mappers are ORed into ``mapper`` (the model's own). A ``WeightsMapper``
    subclass with its own ``map_name`` keeps it: its ``map_name`` runs first, then the
    plugins' rules on what it returns. Every check that the
    headers, configs and scale values allow runs before the first parameter is written.
    ``strict=True`` refuses unexpected tensors, missing parameters (KV-cache scales
    excepted) and a quantization method no plugin handles; ``strict=False`` reports them.
    ``plugins`` / ``disable_plugins`` select plugins by entry-point name like
    ``KVCORE_PLUGINS`` / ``KVCORE_DISABLE_PLUGINS``. ``progress`` is called with the byte
    count of each tensor copied; without one, a load of more than 256 MiB draws a bar on
    stderr when stderr is a terminal (``KVCORE_PROGRESS=0`` turns it off).

    ``tp_rank`` / ``tp_size``: the model is rank ``tp_rank`` of ``tp_size`` tensor-parallel
    ranks. A parameter with an integer ``tp_dim`` attribute holds its rank's slice along that
    dim (only that slice is read); ``kvcore.Attention`` holds this rank's KV heads, and
    per-head scales are split (or replicated) by vLLM's rule. Every rank calls ``load``.

    The model must not be mutated during a load (by another thread, the ``progress``
    callback or a ``weight_loader``): a parameter whose storage, size, dtype or layout
    changed is refused with a ``WeightLoadError`` naming it, and its ``written`` lists what
    was already written. A ``weight_loader`` that raises is a ``WeightLoadError`` naming the
    parameter and the loader, with the loader's exception chained.

    Every warning is issued before the first write: under ``python -W error`` a load that
    warns raises with the model untouched.
    """
    ckpt = read_checkpoint(checkpoint)
    contributions = plugin_mappers(ckpt, strict=strict, plugins=plugins, disable_plugins=disable_plugins)
    combined = combine(mapper if mapper is not None else WeightsMapper(), contributions)
    check_name_conflicts(ckpt.tensors, contributions)
    targets = model_targets(model)
    par = parallel(ckpt, tp_rank, tp_size)
    plan = build_plan(ckpt.tensors.values(), targets, combined, model, par)
    _settle_strictness(plan, strict, ckpt, targets)
    attention = attention_modules(targets)
    decided = decide(attention, plan.scales, meaning_of(contributions))
    for message in decided.warnings:  # before the first write: under -W error the model is untouched
        warn(message)
    check_shards_unchanged(ckpt.shards)  # a shard rewritten since planning is refused before any write
    with default_progress(plan.copies, progress) as report_bytes:  # a bar on a TTY for big loads
        loaded = copy_all(plan.copies, report_bytes, sliced=par.size > 1)
    return _report(attention, decided, ckpt, contributions, plan, loaded)


def parallel(ckpt: Checkpoint, tp_rank: int, tp_size: int) -> Parallel:
    """This rank, checked, with the checkpoint's KV-head count (``config.json``) when it has one."""
    for name, value in (("tp_rank", tp_rank), ("tp_size", tp_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise WeightLoadError(f"{name} must be an int, not {value!r}")
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise WeightLoadError(f"tp_rank={tp_rank}, tp_size={tp_size}: need tp_size >= 1 and 0 <= tp_rank < tp_size")
    heads = ckpt.config.get("num_key_value_heads", ckpt.config.get("num_attention_heads"))
    return Parallel(tp_rank, tp_size, heads if isinstance(heads, int) and heads > 0 else None)


SUGGESTIONS = 20
"""Names that get a close-match suggestion (each compared with a bounded number of candidates,
see kvcore._loading.suggest): a checkpoint for the wrong model can have 10^5 offenders."""


def _settle_strictness(plan: Plan, strict: bool, ckpt: Checkpoint, targets: Mapping[str, Target]) -> None:
    if not plan.unexpected and not plan.missing:
        return
    lines: list[str] = []
    if plan.unexpected:
        parameters = Suggester(targets)
        lines.append(f"{len(plan.unexpected)} checkpoint tensor(s) match no model parameter:")
        lines += [
            _unexpected_line(ckpt, name, plan.renamed[name], parameters if i < SUGGESTIONS else None)
            for i, name in enumerate(plan.unexpected)
        ]
    if plan.missing:
        tensors = Suggester(plan.unexpected)
        lines.append(f"{len(plan.missing)} model parameter(s) are not in the checkpoint {ckpt.directory}:")
        lines += [
            f"  {shown(name)}{_absent(plan, name)}{tensors(name) if i < SUGGESTIONS else ''}"
            for i, name in enumerate(plan.missing)
        ]
    if strict:
        raise WeightLoadError("\n".join(lines) + "\nNothing was written. " + _advice(plan, targets))
    if scales := _scales_without_attention(plan, targets):
        lines.append(f"The model has no kvcore.Attention, so its {len(scales)} KV-cache scale(s) were not "
                     f"loaded: {ADD_ATTENTION}")
    warn("\n".join(lines))


def _absent(plan: Plan, name: str) -> str:
    shards = plan.absent_shards.get(name)
    return f" (packed: shard(s) {', '.join(map(repr, shards))} absent)" if shards else ""


def _scales_without_attention(plan: Plan, targets: Mapping[str, Target]) -> list[str]:
    """The unexpected tensors that are KV-cache scales, when the model has no ``kvcore.Attention``."""
    if any(t.is_kv_scale for t in targets.values()):
        return []
    return [n for n in plan.unexpected if plan.renamed[n].rpartition(".")[2] in ATTENTION_LEAVES]


def _advice(plan: Plan, targets: Mapping[str, Target]) -> str:
    """What to do about the offenders, the likeliest cause first."""
    if scales := _scales_without_attention(plan, targets):
        others = len(plan.unexpected) - len(scales) + len(plan.missing)
        rest = f"; for the {others} other tensor(s) and parameter(s), pass a mapper that renames them" if others else ""
        return (
            f"The checkpoint has KV-cache scales ({scales[0]!r}, ...) but the model has no "
            f"kvcore.Attention: {ADD_ATTENTION}{rest}, or pass strict=False to load the rest"
        )
    if plan.absent_shards and len(plan.absent_shards) == len(plan.missing) and not plan.unexpected:
        return "The checkpoint lacks shards of packed parameters: use a complete checkpoint for this model"
    return "Pass a mapper that renames these tensors, or strict=False to load the rest"


def _unexpected_line(ckpt: Checkpoint, name: str, mapped: str, parameters: Suggester | None) -> str:
    where = shown(name) if mapped == name else f"{shown(name)} (mapped to {shown(mapped)})"
    hint = parameters(mapped) if parameters is not None else ""
    return f"  {where} in {shown(ckpt.tensors[name].path.name)}{hint}"


def _report(
    attention: dict[str, torch.nn.Module],
    decided: Finalisation,
    ckpt: Checkpoint,
    contributions: list[Contribution],
    plan: Plan,
    loaded: set[str],
) -> LoadReport:
    """Write the attention modules' final scales as ``decided``; what the load did."""
    kv_scales, sources = write_all(attention, decided)
    for name, origin in sources.items():
        prefix = f"{name}." if name else ""
        loaded |= {prefix + attr for attr, src in origin.items() if src != "default"}
    return LoadReport(
        quant_method=ckpt.quant_config.quant_method if ckpt.quant_config else None,
        plugins=[c.plugin for c in contributions],
        loaded=loaded,
        unexpected=plan.unexpected,
        missing=plan.missing,
        kv_scales=kv_scales,
        kv_scale_sources=sources,
        dropped=plan.dropped,
        checkpoint=str(ckpt.directory),
        calibrated_for=meaning_of(contributions).calibrated_for if ckpt.quant_config else None,
    )
