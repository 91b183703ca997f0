"""Planning: map every checkpoint name, resolve its target, and validate it all before writing.

A ``Plan`` is built from headers and a handful of small scale tensors; nothing in the model
is touched until the plan is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import compress, groupby, repeat
from typing import NamedTuple

import torch

from kvcore._checkpoint.safetensors import DTYPES, TensorInfo
from kvcore._errors import KvcoreError, MapperConflictError, WeightLoadError
from kvcore._loading.naming import AnyShard, Naming, accepts_shard, shard_loader_error
from kvcore._loading.parallel import SINGLE, Parallel, Part, rank_part
from kvcore._loading.plan_scales import check_zero_point, plan_scale
from kvcore._loading.plan_scales import where as _where
from kvcore._loading.suggest import Suggester
from kvcore._loading.targets import Target, attention_modules
from kvcore._mapper import WeightsMapper
from kvcore._names import ZERO_POINT_NAMES, ScaleValue

__all__ = ["Copy", "Plan", "build_plan"]

SKIP_SUBSTRS = (
    "rotary_pos_emb.inv_freq",
    "rotary_emb.inv_freq",
    "rotary_emb.cos_cached",
    "rotary_emb.sin_cached",
)
"""Buffers old checkpoints carry that no model loads (vLLM skips them too)."""

class Copy(NamedTuple):
    """Copy checkpoint tensor ``info`` into ``target`` (through ``loader`` when it has one).

    ``direct``: the bytes can be read from the file straight into the tensor's memory (a
    contiguous CPU tensor of the same dtype and size, no loader); otherwise the copier
    goes through a torch view of the mapped file. ``shard``: the shard id a packed
    parameter's ``loader(param, tensor, shard)`` receives (``None``: not packed); ``part``:
    the slice of the tensor this tensor-parallel rank's parameter holds, when it is not one
    byte range (a dim-0 slice is: ``info`` is then narrowed to it). A tuple,
    not a dataclass: a plan holds one per checkpoint tensor, and frozen dataclasses are
    several times slower to build.
    """

    info: TensorInfo
    target: Target
    loader: Callable[..., object] | None
    direct: bool = False
    shard: AnyShard | None = None
    part: Part | None = None


@dataclasses.dataclass
class Plan:
    """Everything a load will do, decided before anything is written."""

    copies: list[Copy]
    scales: dict[str, dict[str, ScaleValue]]
    dropped: list[str]
    unexpected: list[str]
    missing: list[str]
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)
    absent_shards: dict[str, list[AnyShard]] = dataclasses.field(default_factory=dict)
    """Packed parameters some of whose shards the checkpoint lacks: the shard ids absent."""


def build_plan(
    tensors: Iterable[TensorInfo],
    targets: dict[str, Target],
    mapper: WeightsMapper,
    model: torch.nn.Module | None = None,
    par: Parallel = SINGLE,
) -> Plan:
    """Resolve every tensor; raise on the first bad one, collect unexpected and missing.

    ``model`` (the root module) may declare ``packed_modules_mapping``; ``par`` is the
    tensor-parallel rank the model holds the share of.
    """
    infos = list(tensors)
    naming = Naming(mapper, model if model is not None else torch.nn.Module(), targets)
    # A mapper without rules maps every name to itself: skip its call per tensor.
    mapped = map(naming.unpacked, map(_NAME, infos)) if _has_rules(mapper) else map(_NAME, infos)
    names: list[str | None] = list(mapped)
    found = list(map(targets.get, names))  # type: ignore[arg-type]  # None is no key: get gives None
    shards = _resolve_unknown(naming, names, found) if None in found else []
    canonical = {id(module): name for name, module in attention_modules(targets).items()}
    quick = None if shards or par.size > 1 else _quick_plan(infos, found, names, canonical)
    plan, claimed = quick or _careful_plan(infos, found, names, shards or [None] * len(infos), naming, canonical, par)
    _sort_by_file(plan.copies)
    missing = _missing(targets, claimed)
    for name in missing:  # a packed parameter none of whose shards came: every shard is absent
        if shards_of := naming.packing.shards_of(name):
            plan.absent_shards[name] = sorted(shards_of, key=repr)
    plan.missing = sorted({*missing, *plan.absent_shards})
    plan.unexpected.sort()
    return plan


def _resolve_unknown(naming: Naming, names: list[str | None], found: list[Target | None]) -> list[AnyShard | None]:
    """Redirect and pack the names no model tensor has, in place; their shard ids (``[]``: none)."""
    shards: list[AnyShard | None] = [None] * len(names)
    for i, name in enumerate(names):
        if found[i] is None and name is not None:
            names[i], shards[i] = naming.resolve_unknown(name)
            found[i] = naming.targets.get(names[i])  # type: ignore[arg-type]
    return shards if any(shard is not None for shard in shards) else []


def _has_rules(mapper: WeightsMapper) -> bool:
    """False for a plain ``WeightsMapper`` with no rule (a subclass may map names its own way)."""
    if type(mapper).map_name is not WeightsMapper.map_name:
        return True
    return any(getattr(mapper, f.name) for f in dataclasses.fields(mapper))


def _careful_plan(
    infos: list[TensorInfo],
    found: list[Target | None],
    names: list[str | None],
    shards: list[AnyShard | None],
    naming: Naming,
    canonical: dict[int, str],
    par: Parallel = SINGLE,
) -> tuple[Plan, dict[int, str]]:
    """Tensor by tensor, in order: drops, unresolved names, conflicts, scales, copies.

    The reference for what a plan is; the first bad tensor raises.
    """
    plan = Plan([], {}, [], [], [])
    claimed: dict[int, str] = {}
    packed: dict[int, dict[AnyShard, str]] = {}
    misfits: list[Misfit] = []  # every one is reported, not just the first
    claim, copies = claimed.setdefault, plan.copies
    for info, target, name, shard in zip(infos, found, names, shards, strict=True):
        if name is None or ("rotary_" in name and any(s in name for s in SKIP_SUBSTRS)):
            plan.dropped.append(info.name)
            continue
        if target is None:
            _unresolved(plan, info, name, naming.targets)
            continue
        if shard is not None:
            _claim_shard(claimed, packed, info, target, shard)
            with _collected(misfits):
                copies.append(Copy(info, target, target.loader, check_fits(info, target), shard))
            continue
        # The first tensor to claim a parameter is recorded; a second one (checkpoint names are
        # unique) is a conflict.
        if claim(id(target.tensor), info.name) != info.name:
            _conflict(claimed, info, target)
        if target.is_kv_scale:
            plan.scales.setdefault(canonical[id(target.module)], {})[target.attr] = plan_scale(info, target, par)
        else:
            with _collected(misfits):
                copies.append(_copy(info, target, par))
    if misfits:
        raise misfits_error(misfits)
    _note_absent_shards(plan, packed, found, naming)
    return plan, claimed


@contextlib.contextmanager
def _collected(misfits: list[Misfit]) -> Iterator[None]:
    try:
        yield
    except Misfit as misfit:
        misfits.append(misfit)


MAX_MISFITS = 20
"""Tensors a misfit error lists one by one; the rest are counted."""


def misfits_error(misfits: list[Misfit]) -> WeightLoadError:
    """One error for every tensor whose shape or dtype does not suit its parameter, capped."""
    if len(misfits) == 1:
        return WeightLoadError(str(misfits[0]))
    lines = [f"{len(misfits)} checkpoint tensors do not fit their parameters:"]
    lines += [f"  {m.problem}" for m in misfits[:MAX_MISFITS]]
    if len(misfits) > MAX_MISFITS:
        lines.append(f"  ... and {len(misfits) - MAX_MISFITS} more")
    advice = dict.fromkeys(m.advice for m in misfits)  # each once, in order
    return WeightLoadError("\n".join(lines) + "\nNothing was written: " + "; ".join(advice) + ".")


def _copy(info: TensorInfo, target: Target, par: Parallel) -> Copy:
    """The copy of ``info`` into ``target``: this rank's slice of it for a ``tp_dim`` parameter."""
    part = None
    if par.size > 1:
        info, part = rank_part(info, target, par, _where(info, target.name))
    if part is not None:
        # direct: the slice's bytes may be read straight into the parameter (see shard.py)
        direct = check_fits(info._replace(shape=tuple(target.tensor.shape)), target)
        return Copy(info, target, None, direct, None, part)
    return Copy(info, target, target.loader, check_fits(info, target))


def _claim_shard(
    claimed: dict[int, str], packed: dict[int, dict[AnyShard, str]], info: TensorInfo, target: Target, shard: AnyShard
) -> None:
    """Record ``info`` as shard ``shard`` of a packed parameter; refuse a loader without shard ids."""
    ident = id(target.tensor)
    if ident not in packed:
        if ident in claimed:  # the whole parameter came from another tensor
            _conflict(claimed, info, target)
        if not accepts_shard(target.loader, shard):
            raise shard_loader_error(target.name, info.name, shard)
        claimed[ident], packed[ident] = info.name, {}
    if shard in packed[ident]:
        claimed[ident] = packed[ident][shard]
        _conflict(claimed, info, target)
    packed[ident][shard] = info.name


def _note_absent_shards(
    plan: Plan, packed: dict[int, dict[AnyShard, str]], found: list[Target | None], naming: Naming
) -> None:
    """Packed parameters that got some shards but not all: ``plan.absent_shards``."""
    if not packed:
        return
    names = {id(t.tensor): t.name for t in found if t is not None and id(t.tensor) in packed}
    for ident, got in packed.items():
        absent = naming.expected_shards(names[ident], set(got)) - got.keys()
        if absent:
            plan.absent_shards[names[ident]] = sorted(absent, key=repr)


_make_copy = functools.partial(tuple.__new__, Copy)
"""``Copy`` from a tuple of its fields: a C-level call instead of ``Copy._make``'s Python-level one
and its arity check (every caller passes all 6 fields): together with the other two such
builders, 3-4 % of the (b) load of 36,951 tensors (``make bench``);
tests/core/test_quick_careful.py checks it builds what ``_make`` builds."""


def _quick_plan(
    infos: list[TensorInfo], found: list[Target | None], names: list[str | None], canonical: dict[int, str]
) -> tuple[Plan, dict[int, str]] | None:
    """``_careful_plan``'s result for the usual checkpoint, with C loops instead of one pass per tensor.

    Usual: every tensor resolves (no drop, no unexpected name) to a parameter of its own.
    ``None`` otherwise, or when any check fails: the careful pass then decides, and raises
    for the first bad tensor in checkpoint order.
    """
    # A name mapped to None finds no target, so past the first test no name is None. Then
    # one substring test on all names at once ("rotary_" holds no newline to straddle two).
    if None in found or "rotary_" in "\n".join(names):  # type: ignore[arg-type]
        return None
    resolved: list[Target] = found  # type: ignore[assignment]
    claimed = dict(zip(map(id, map(_TENSOR, resolved)), map(_NAME, infos), strict=True))
    if len(claimed) != len(infos):  # two tensors for one parameter
        return None
    plan = Plan([], {}, [], [], [])
    scale = list(map(_IS_KV_SCALE, resolved))
    plain = list(map(operator.not_, scale))
    try:
        for info, target in zip(compress(infos, scale), compress(resolved, scale), strict=True):
            plan.scales.setdefault(canonical[id(target.module)], {})[target.attr] = plan_scale(info, target, SINGLE)
        infos, resolved = list(compress(infos, plain)), list(compress(resolved, plain))
        direct = list(map(check_fits, infos, resolved))
    except KvcoreError:
        return None
    loaders, unpacked, whole = map(_LOADER, resolved), repeat(None), repeat(None)
    plan.copies = list(map(_make_copy, zip(infos, resolved, loaders, direct, unpacked, whole, strict=False)))
    return plan, claimed


_NAME = operator.itemgetter(0)  # TensorInfo.name
_TENSOR, _LOADER, _IS_KV_SCALE = (operator.attrgetter(f) for f in ("tensor", "loader", "is_kv_scale"))  # Target's
_PATH = operator.attrgetter("info.path")
_START = operator.attrgetter("info.start")


def _sort_by_file(copies: list[Copy]) -> None:
    """Order ``copies`` by shard file name, then offset, in place.

    The usual input is already in that order, shard by shard: checking that with C loops
    (one ``groupby`` run per shard, one comparison of start lists) keeps this linear and
    cheap; anything else is sorted.
    """
    runs = [(path, list(run)) for path, run in groupby(copies, key=_PATH)]
    paths = [path for path, _ in runs]
    in_order = len(set(paths)) == len(paths) and paths == sorted(paths, key=str)
    if in_order and all(_starts_sorted(run) for _, run in runs):
        return
    copies.sort(key=_file_order)


def _starts_sorted(run: list[Copy]) -> bool:
    starts = list(map(_START, run))
    return starts == sorted(starts)


def _file_order(copy: Copy) -> tuple[str, int]:
    return str(copy.info.path), copy.info.start


PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
"""Tensor classes whose memory the copier may fill directly (subclasses may intercept writes)."""
_STRIDED = torch.strided


def _unresolved(plan: Plan, info: TensorInfo, name: str, targets: Mapping[str, Target]) -> None:
    module_name, _, attr = name.rpartition(".")
    owner = targets.get(f"{module_name}.k_scale" if module_name else "k_scale")
    if attr in ZERO_POINT_NAMES and owner is not None and owner.is_kv_scale:
        check_zero_point(info, name)
        plan.dropped.append(info.name)
    else:
        plan.unexpected.append(info.name)
        plan.renamed[info.name] = name


def _conflict(claimed: dict[int, str], info: TensorInfo, target: Target) -> None:
    """Raise for ``info`` mapping to a parameter that another tensor already provides."""
    first = claimed[id(target.tensor)]
    raise MapperConflictError(
        f"checkpoint tensors {first!r} and {info.name!r} both map to parameter "
        f"{target.name!r}; a checkpoint may provide each parameter once. Remove one of the "
        "tensors or fix the mapper that renames them",
        kind="tensor",
        pattern=target.name,
        targets=(first, info.name),
    )


def _missing(targets: dict[str, Target], claimed: dict[int, str]) -> list[str]:
    # Each claimed tensor is the tensor of at least one target name: as many claimed as names
    # means every tensor is claimed once, under one name (no ties, no scale left out).
    if len(claimed) == len(targets):
        return []
    idents = list(map(id, map(_TENSOR, targets.values())))
    unclaimed = set(idents) - claimed.keys()
    if not unclaimed:  # the usual case, found with C loops
        return []
    provided = claimed.keys()
    seen: set[int] = set()
    missing = []
    for name, target in compress(targets.items(), map(unclaimed.__contains__, idents)):
        ident = id(target.tensor)
        if target.is_kv_scale or ident in provided or ident in seen:
            continue
        seen.add(ident)
        missing.append(name)
    return sorted(missing)


class Misfit(WeightLoadError):
    """A tensor whose shape or dtype does not suit its parameter: ``problem``, then ``advice``."""

    def __init__(self, problem: str, advice: str) -> None:
        super().__init__(f"{problem}; {advice}")
        self.problem, self.advice = problem, advice


def check_fits(info: TensorInfo, target: Target) -> bool:
    """Shape and dtype of ``info`` suit ``target`` (custom loaders judge shapes themselves).

    Returns whether the copy may be ``direct`` (see ``Copy``), reusing what the checks read.
    """
    tensor, loader = target.tensor, target.loader
    source, dest = DTYPES.get(info.dtype) or info.torch_dtype, tensor.dtype  # the property words a missing one
    if tensor.shape != info.shape and loader is None and not (tensor.numel() == 1 and info.numel == 1):
        raise Misfit(
            f"{_where(info, target.name)} has shape {list(info.shape)} but the parameter has "
            f"shape {list(tensor.shape)}",
            "the checkpoint was made for a different model config",
        )
    if dest is not source and not _convertible(source, dest):
        raise Misfit(
            f"{_where(info, target.name)} has dtype {info.dtype} but the parameter is {dest}",
            "kvcore converts only between floating-point types of 16 bits or more. Build the model "
            "with the checkpoint's dtypes",
        )
    # Without a loader the sizes match (checked above), so equal dtypes mean equal bytes.
    return (
        loader is None
        and dest is source
        and info.end > info.start
        and type(tensor) in PLAIN_TYPES
        and tensor.is_cpu
        and tensor.layout is _STRIDED
        and tensor.is_contiguous()
    )


def _convertible(source: torch.dtype, dest: torch.dtype) -> bool:
    if source == dest:
        return True
    wide = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return source in wide and dest in wide


def suggest(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    return Suggester(candidates)(name)
