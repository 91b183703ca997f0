"""Each quick path agrees with its careful twin (CONTRIBUTING.md, "Quick and careful paths").

A quick path returns its careful twin's result for the usual input and declines (``None`` or
``False``) for the rest, so the careful one decides and words the error. Hypothesis generates
inputs around the boundary between the two; every test asserts that whatever the quick path
answers is the careful path's answer, that it never accepts what the careful path refuses,
and that it does not decline the usual input (or it would be dead weight).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from shared_support import vllm_map_name

import kvcore
import kvcore._loading.copy as copy_module
from kvcore import CheckpointError, KvcoreError, WeightsMapper
from kvcore._checkpoint.reader import read_checkpoint
from kvcore._checkpoint.safetensors import (
    ITEMSIZES,
    FileStamp,
    TensorInfo,
    _careful_entries,
    _careful_infos,
    _careful_layout,
    _parse_json,
    _quick_entries,
    _quick_infos,
    _quick_layout,
)
from kvcore._loading.auto_loader import OFFSETS, _resolved
from kvcore._loading.naming import Naming
from kvcore._loading.plan import Copy, _careful_plan, _quick_plan, _resolve_unknown, build_plan
from kvcore._loading.targets import attention_modules, model_targets
from kvcore.testing import write_checkpoint

PATH = Path("shard.safetensors")
STAMP = FileStamp(1, 2, 3, 4, 5)
DATA_START = 1000
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- safetensors headers: _quick_entries / _careful_entries, _quick_infos / _careful_infos --

NAMES = st.text(st.sampled_from("ab.:_é0"), min_size=1, max_size=6)
DIMS = st.lists(st.integers(0, 4), max_size=3)


@st.composite
def specs(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """Good entries laid out back to back, then perhaps one field of one entry spoilt."""
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    entries, at = [], 0
    for name in names:
        dtype, shape = draw(st.sampled_from(sorted(ITEMSIZES))), draw(DIMS)
        size = ITEMSIZES[dtype] * torch.Size(shape).numel()
        entries.append((name, {"dtype": dtype, "shape": shape, "data_offsets": [at, at + size]}))
        at += size
    if draw(st.booleans()):
        spec = draw(st.sampled_from(entries))[1]
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        spec[field] = draw(st.one_of(SPOILT[field], st.just(_negated(field, spec[field]))))
    return entries


SPOILT = {
    "dtype": st.sampled_from(["F7", 5, None, "bf16"]),
    "shape": st.one_of(
        st.lists(st.sampled_from([-1, True, 1.0, "2", 1 << 40, 1 << 62]), min_size=1, max_size=3), st.just(7)
    ),
    "data_offsets": st.sampled_from([[0], [4, 0], [0, -2], [0, 1 << 70], [0.0, 2], None, [0, 2, 4]]),
}


def _negated(field: str, value: Any) -> Any:
    """Negative numbers that keep a shape's product or the span of an entry's offsets."""
    if field == "shape":
        return [-value[0], -value[1], *value[2:]] if len(value) >= 2 else [-1, -1, *value]
    if field == "data_offsets":
        return [value[0] - 64, value[1] - 64]
    return value


def _careful_or_error(run: Any, *args: Any) -> Any:
    try:
        return run(*args)
    except CheckpointError:
        return CheckpointError


@SETTINGS
@given(specs())
def test_quick_infos_are_the_careful_infos_or_decline(entries: list[tuple[str, dict[str, Any]]]) -> None:
    names, values = [n for n, _ in entries], [s for _, s in entries]
    quick = _quick_infos(PATH, names, values, DATA_START, STAMP)
    careful = _careful_or_error(_careful_infos, PATH, names, values, DATA_START, STAMP)
    # The quick check decides good or bad exactly: it declines only what the careful one refuses.
    assert (quick if quick is not None else CheckpointError) == careful


def _header(
    entries: list[tuple[str, dict[str, Any]]], metadata: dict[str, str] | None, ascii: bool, twice: str | None
) -> bytes:
    """The header's JSON, with a key written ``twice`` (a tensor name or an entry's field) if asked."""
    pairs = [(name, json.dumps(spec, ensure_ascii=ascii)) for name, spec in entries]
    if twice == "field":
        pairs[0] = (pairs[0][0], pairs[0][1].replace('{"dtype": ', '{"dtype": "F32", "dtype": ', 1))
    if twice == "name":
        pairs.append(pairs[-1])
    if metadata is not None:
        pairs.append(("__metadata__", json.dumps(metadata, ensure_ascii=ascii)))
    text = ", ".join(f"{json.dumps(name, ensure_ascii=ascii)}: {value}" for name, value in pairs)
    return ("{" + text + "}").encode()


@SETTINGS
@given(
    specs(),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(["format", "a:b", "x"]), st.sampled_from(["pt", "1", ":"]))),
    st.booleans(),
    st.sampled_from([None, None, "name", "field"]),
)
def test_quick_entries_are_the_careful_entries_or_decline(
    entries: list[tuple[str, dict[str, Any]]], metadata: dict[str, str] | None, ascii: bool, twice: str | None
) -> None:
    raw = _header(entries, metadata, ascii, twice)
    quick = _quick_entries(PATH, raw, DATA_START, STAMP)
    careful = _careful_or_error(lambda: _careful_entries(PATH, _parse_json(PATH, raw), DATA_START, STAMP))
    assert quick is None or quick == careful
    words = [name for name, _ in entries] + [*(metadata or {}).keys(), *(metadata or {}).values()]
    if ":" not in json.dumps(words) and careful is not CheckpointError:
        assert quick is not None, "the quick path declined a usual header"


@SETTINGS
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 5)), max_size=8), st.integers(0, 30))
def test_quick_layout_passes_exactly_what_the_careful_layout_passes(spans: list[tuple[int, int]], size: int) -> None:
    """Spans placed one after another with a small gap or overlap (tensors are sorted by start)."""
    placed: list[TensorInfo] = []
    end = 0
    for i, (gap, length) in enumerate(spans):
        start = max(0, end + gap, placed[-1].start if placed else 0)
        placed.append(TensorInfo(f"t{i}", PATH, "U8", (length,), start, start + length))
        end = max(end, start + length)
    careful = _careful_or_error(_careful_layout, PATH, tuple(placed), size)
    assert _quick_layout(tuple(placed), size) == (careful is None)


def test_a_shape_of_2_to_the_63_elements_is_refused_by_both_infos() -> None:
    """Offsets big enough for the bytes do not make such a shape loadable (torch sizes are int64)."""
    spec = {"dtype": "U8", "shape": [1 << 32, 1 << 31], "data_offsets": [0, 1 << 63]}
    assert _quick_infos(PATH, ["huge"], [spec], DATA_START, STAMP) is None
    try:
        _careful_infos(PATH, ["huge"], [spec], DATA_START, STAMP)
    except CheckpointError as exc:
        assert "2^63 or more" in str(exc)
    else:
        raise AssertionError("the careful infos accepted a 2^63-element shape")


# -- WeightsMapper: _quick_map_unpacked / vLLM's loop (shared_support.vllm_map_name) --

TEXT = st.text(st.sampled_from("ab._1\n"), max_size=5)
PATTERNS = st.one_of(
    TEXT.map(re.escape),
    TEXT.map(lambda t: re.escape(t) + "$"),
    TEXT.map(lambda t: r"\." + re.escape(t) + "$"),
    TEXT.map(lambda t: "(" + re.escape(t) + r")\d$"),
    st.sampled_from([r"(a)\1", r"(?P<n>b)\.", r"b\x2e$", r"\d$", r"a|b$", r"^a\.", "a$", r"\$"]),
    TEXT.map(lambda t: re.compile(re.escape(t) + "$", re.IGNORECASE)),
)
TARGETS = st.one_of(st.none(), TEXT.map(lambda t: t.replace("\\", "")))


@SETTINGS
@given(
    st.dictionaries(PATTERNS, st.one_of(st.none(), st.sampled_from(["x", r"\g<0>y", "."])), max_size=3),
    st.dictionaries(TEXT.filter(bool), TARGETS, max_size=2),
    st.dictionaries(TEXT, TARGETS, max_size=2),
    st.dictionaries(TEXT, TARGETS, max_size=2),
    st.lists(st.text(st.sampled_from("ab._1\n"), max_size=10), min_size=1, max_size=5),
)
@example({"a$": "x", r"\.b$": None}, {}, {}, {}, ["a\n", "b.b\n", "ab"])  # $ also matches before a final newline
def test_quick_map_unpacked_is_the_careful_one(
    regex: dict[Any, str | None],
    substr: dict[str, str | None],
    prefix: dict[str, str | None],
    suffix: dict[str, str | None],
    names: list[str],
) -> None:
    assume(len({getattr(k, "pattern", k) for k in regex}) == len(regex))
    mapper = WeightsMapper(regex, substr, prefix, suffix)
    for name in names:
        assert _outcome(mapper._quick_map_unpacked, name) == _outcome(vllm_map_name, mapper, name), name


def _outcome(run: Any, *args: Any) -> Any:
    """The result, or the type of the exception raised (an empty suffix rule: ValueError)."""
    try:
        return run(*args)
    except (KvcoreError, ValueError, IndexError, re.error) as exc:
        return type(exc)


# -- planning: _quick_plan / _careful_plan --

WEIGHTS = {
    "w.a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "w.b": torch.arange(4, dtype=torch.bfloat16),
    "w.c": torch.tensor(1.5, dtype=torch.float16),
    "w.d": torch.arange(3, dtype=torch.int8),
    "w.e": torch.ones(2, 3),  # fits w.a's parameter: tied to it, it conflicts with w.a alone
    "rotary_emb.inv_freq": torch.ones(2),
    "attn.k_scale": torch.tensor(0.02),
    "attn.v_scale": torch.tensor(-1.0),  # refused when it loads into an Attention
}
VARIANTS = ["same", "same", "same", "other shape", "other dtype", "absent", "tied to w.a"]


@pytest.fixture(scope="module")
def weights_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> list[TensorInfo]:
    directory = write_checkpoint(tmp_path_factory.mktemp("ckpt"), WEIGHTS)
    return sorted(read_checkpoint(directory).tensors.values(), key=lambda info: info.start)


def _parameter(name: str, variant: str) -> torch.nn.Parameter:
    tensor = WEIGHTS[name]
    if variant == "other shape":
        tensor = torch.zeros(7, dtype=tensor.dtype)
    elif variant == "other dtype":
        tensor = tensor.to(torch.float64 if tensor.is_floating_point() else torch.float32)
    return torch.nn.Parameter(torch.zeros_like(tensor), requires_grad=False)


def _weights_model(variants: dict[str, str], attention: bool) -> torch.nn.Module:
    model = torch.nn.Module()
    model.w = torch.nn.Module()
    for name, variant in variants.items():
        leaf = name.split(".")[1]
        if variant == "tied to w.a" and hasattr(model.w, "a"):
            model.w.register_parameter(leaf, model.w.a)
        elif variant not in ("absent", "tied to w.a"):
            model.w.register_parameter(leaf, _parameter(name, variant))
    if attention:
        model.attn = kvcore.Attention(1, 4, 1)
    return model


def _facts(result: Any) -> Any:
    """A plan and its claims as comparable values (scales as lists: tensors do not compare)."""
    if not isinstance(result, tuple):
        return result
    plan, claimed = result
    copies = [(c.info, c.target.name, c.loader, c.direct, c.shard, c.part) for c in plan.copies]
    scales = {m: {a: (v.value.tolist(), v.source) for a, v in s.items()} for m, s in plan.scales.items()}
    rest = (plan.dropped, plan.unexpected, plan.missing, plan.renamed, plan.absent_shards)
    return copies, scales, rest, claimed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries({name: st.sampled_from(VARIANTS) for name in ("w.a", "w.b", "w.c", "w.d", "w.e")}),
    st.booleans(),
    st.sets(st.sampled_from(sorted(WEIGHTS))),
)
@example({"w.a": "same", "w.b": "same", "w.c": "same", "w.d": "same", "w.e": "tied to w.a"}, False, {"w.a", "w.e"})
def test_quick_plan_is_the_careful_plan_or_declines(
    weights_checkpoint: list[TensorInfo], variants: dict[str, str], attention: bool, chosen: set[str]
) -> None:
    infos = [info for info in weights_checkpoint if info.name in chosen]
    model = _weights_model(variants, attention)
    targets = model_targets(model)
    names: list[str | None] = [info.name for info in infos]
    found = [targets.get(info.name) for info in infos]
    canonical = {id(module): name for name, module in attention_modules(targets).items()}
    naming = Naming(WeightsMapper(), model, targets)
    quick = _quick_plan(infos, found, names, canonical)
    careful = _outcome(_careful_plan, infos, found, names, [None] * len(infos), naming, canonical)
    assert quick is None or _facts(quick) == _facts(careful)
    if isinstance(careful, type):
        assert issubclass(careful, KvcoreError)
        return
    tensors = [id(target.tensor) for target in found if target is not None]
    usual = None not in found and "rotary_emb.inv_freq" not in names and len(set(tensors)) == len(tensors)
    if usual:
        assert quick is not None, "the quick plan declined a usual checkpoint"


# -- copying: copy._quick_runs / copy._careful_runs; direct reads / copies through the map --


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 3), st.booleans()), min_size=1, max_size=12),
    st.integers(1, 4),
)
def test_the_runs_shortcut_splits_like_the_copy_by_copy_split(
    sizes: list[tuple[int, int, bool]], iov_max: int
) -> None:
    copies, at = [], 0
    for i, (size, gap, direct) in enumerate(sizes):
        at += gap
        copies.append(Copy(TensorInfo(f"t{i}", PATH, "U8", (size,), at, at + size), None, None, direct))  # type: ignore[arg-type]
        at += size
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(copy_module, "IOV_MAX", iov_max)
        patch.setattr(copy_module, "SPLIT_BYTES", 32)
        assert list(copy_module._runs(copies)) == list(copy_module._careful_runs(copies))


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.float8_e4m3fn, torch.float64]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(DTYPES), DIMS), min_size=1, max_size=6), st.integers(0, 2**32 - 1))
def test_direct_reads_write_what_copies_through_the_map_write(
    shapes: list[tuple[torch.dtype, list[int]]], seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    tensors = {f"t{i}": torch.randn(shape, generator=generator).to(dtype) for i, (dtype, shape) in enumerate(shapes)}
    with tempfile.TemporaryDirectory() as tmp:
        infos = read_checkpoint(write_checkpoint(tmp, tensors)).tensors.values()
        loaded = []
        for direct in (True, False):
            model = torch.nn.Module()
            for name, tensor in tensors.items():
                model.register_parameter(name, torch.nn.Parameter(torch.full_like(tensor, 7), requires_grad=False))
            plan = build_plan(infos, model_targets(model), WeightsMapper())
            copies = plan.copies if direct else [c._replace(direct=False) for c in plan.copies]
            assert copy_module.copy_all(copies) == {c.target.name for c in copies}
            loaded.append({name: _bytes(p) for name, p in model.named_parameters()})
    assert loaded[0] == loaded[1] == {name: _bytes(tensor) for name, tensor in tensors.items()}


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().reshape(-1).view(torch.uint8).numpy().tobytes()


# -- resolution: AutoWeightsLoader name by name / the plan on whole columns --


def _packed_model() -> torch.nn.Module:
    """Two blocks: a fused qkv_proj (shard-id loader), an Attention one level down, an mlp."""

    def load(param: torch.Tensor, weight: torch.Tensor, shard: str) -> None:
        del param, weight, shard

    root = torch.nn.Module()
    root.packed_modules_mapping = {"k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}
    root.layers = torch.nn.ModuleList()
    for _ in range(2):
        block = torch.nn.Module()
        block.self_attn, block.mlp = torch.nn.Module(), torch.nn.Linear(2, 2)
        block.self_attn.qkv_proj = torch.nn.Linear(2, 6)
        block.self_attn.qkv_proj.weight.weight_loader = load  # type: ignore[attr-defined]
        block.self_attn.inner = torch.nn.Module()
        block.self_attn.inner.attn = kvcore.Attention(1, 4, 1)
        root.layers.append(block)
    return root


CHECKPOINT_NAMES = st.builds(
    "{}{}{}.{}".format,
    st.sampled_from(["", "model."]),
    st.sampled_from(["", "layers.0.", "layers.1.", "layers.2."]),
    st.sampled_from(["self_attn.k_proj", "self_attn.v_proj", "self_attn.attn", "self_attn.inner.attn", "mlp", "attn"]),
    st.sampled_from(["weight", "k_scale", "v_scale", "k_zero_point", "bias", "output_scale"]),
)
RULES = {
    "orig_to_new_prefix": {"model.": ""},
    "orig_to_new_substr": {".mlp.bias": None},
    "orig_to_new_regex": {r"\.([kv])_proj\.output_scale$": r".attn.\1_scale"},
    "orig_to_new_stacked": {".mlp.weight": (".qkv_proj.weight", "k")},
}


@SETTINGS
@given(st.lists(st.sampled_from(sorted(RULES)), unique=True), st.lists(CHECKPOINT_NAMES, min_size=1, max_size=8))
def test_the_auto_loader_resolves_each_name_as_the_plan_does(kinds: list[str], names: list[str]) -> None:
    model = _packed_model()
    targets = model_targets(model)
    naming = Naming(WeightsMapper(**{kind: RULES[kind] for kind in kinds}), model, targets)

    def by_the_plan(name: str) -> tuple[str | None, Any]:
        mapped = [naming.unpacked(name)]
        found = [targets.get(mapped[0]) if mapped[0] is not None else None]
        shards = _resolve_unknown(naming, mapped, found) or [None]  # renames mapped[0] in place
        return mapped[0], shards[0]

    def by_the_auto_loader(name: str) -> tuple[str | None, Any] | str:
        kept = [(final, item.shard) for final, item in _resolved([(name, torch.zeros(1))], naming)]
        return kept[0] if kept else "left out"

    for name in names:
        auto, plan = _outcome(by_the_auto_loader, name), _outcome(by_the_plan, name)
        if auto == "left out":  # dropped by the mapper, or an all-zero offset no tensor takes
            assert plan[0] is None or (plan[0] not in targets and plan[0].rpartition(".")[2] in OFFSETS), name
        else:
            assert auto == plan, name


# -- the C-level tuple builders of the hot paths / NamedTuple._make --
@given(fields=st.lists(st.one_of(st.integers(), st.text(max_size=4), st.none()), min_size=1, max_size=8))
def test_the_tuple_builders_build_what_make_builds(fields: list[object]) -> None:
    from kvcore._checkpoint.safetensors import TensorInfo, _make_info
    from kvcore._loading.plan import _make_copy
    from kvcore._loading.targets import Target, _make_target

    for builder, cls in ((_make_info, TensorInfo), (_make_target, Target), (_make_copy, Copy)):
        if len(fields) != len(cls._fields):
            continue  # callers pass every field; _make refuses other lengths, the builder is never asked
        built = builder(tuple(fields))
        assert type(built) is cls and built == cls._make(fields)
        assert [getattr(built, name) for name in cls._fields] == fields


@given(sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=0, max_size=12))
def test_the_bulk_buffers_are_the_buffers_raw_builds(sizes: list[int]) -> None:
    import ctypes

    from kvcore._loading.pinned import raw, raws

    memory = bytearray(sum(sizes) or 1)
    base = ctypes.addressof((ctypes.c_char * len(memory)).from_buffer(memory))
    addresses = [base + sum(sizes[:i]) for i in range(len(sizes))]
    bulk, one_by_one = raws(addresses, sizes), [raw(a, n) for a, n in zip(addresses, sizes, strict=True)]
    assert [(type(b), ctypes.addressof(b), len(b)) for b in bulk] == [
        (type(b), ctypes.addressof(b), len(b)) for b in one_by_one
    ]
