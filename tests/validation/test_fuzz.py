"""Fuzzing the genuine checkpoints: whatever the damage, only ``KvcoreError`` (or success).

Each example copies one of the real checkpoints in ``tests/fixtures/real`` (single file, or
re-sharded into two files with an index, bytes unchanged), damages it (bit flips,
truncation, header edits, random JSON in ``config.json`` / ``hf_quant_config.json`` / the
index), and loads it into a fresh reference model. Any exception other than a
``KvcoreError`` fails the test, a crash (SIGBUS, segfault) kills it, and an error must leave
every parameter and buffer bit-identical. ``deadline`` bounds each example's time.

The run is derandomized so that ``make test`` is repeatable; set ``KVCORE_FUZZ_EXAMPLES``
(examples per test) for a longer, random run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from validation_support import INDEX, SHARD_1, SHARD_2, changed, header_of, snapshot

import kvcore
from kvcore._checkpoint.safetensors import DTYPES
from kvcore.testing import tiny_llama, write_checkpoint

FIXTURES = Path(__file__).parents[1] / "fixtures" / "real"
MODELS: dict[str, dict[str, Any]] = {
    "autofp8/head_k_v_scale": {"fp8": True},
    "llmcompressor/fp8_kv_tensor": {"fp8": True, "scale_shape": (1,), "scale_dtype": torch.bfloat16},
    "quark/fp8_kv_attn_fp8_eager": {"fp8": True, "scale_dtype": torch.bfloat16},
}
CUSTOM = os.environ.get("KVCORE_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(CUSTOM or 150),
    deadline=timedelta(seconds=3),
    derandomize=CUSTOM is None,
    suppress_health_check=[HealthCheck.too_slow],
)

Mutation = Callable[[Path], None]
Sources = dict[tuple[str, bool], Path]

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=16)
    | st.sampled_from(["fp8", "quark", "compressed-tensors", "modelopt", "static", "FP8", "attn_head"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    """Each genuine checkpoint as it is, and re-sharded into two files (same bytes per tensor)."""
    root = tmp_path_factory.mktemp("genuine")
    found = {}
    for i, name in enumerate(MODELS):
        single = root / f"{i}-single"
        single.mkdir()
        for file in ("config.json", "model.safetensors"):
            shutil.copy(FIXTURES / name / file, single / file)
        config = json.loads((FIXTURES / name / "config.json").read_text())
        tensors = load_file(single / "model.safetensors")
        sharded = write_checkpoint(root / f"{i}-sharded", tensors, config=config, shards=2)
        found[name, False], found[name, True] = single, sharded
    return found


def attempt(
    sources: Sources,
    name: str,
    sharded: bool,
    strict: bool,
    mutate: Mutation,
    check_message: Callable[[str], None] | None = None,
) -> None:
    """Load a damaged copy of a genuine checkpoint; only ``KvcoreError`` may escape, harmlessly.

    ``check_message`` also judges the error's message, when there is one.
    """
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "ckpt"
        shutil.copytree(sources[name, sharded], directory)
        mutate(directory)
        model = tiny_llama(kv_cache_dtype="fp8", **MODELS[name])
        before = snapshot(model)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # strict=False warns about what it skips
                kvcore.load(model, directory, strict=strict)
        except kvcore.KvcoreError as exc:
            assert changed(model, before) == set(), f"{type(exc).__name__} after writing: {exc!r}"
            if check_message is not None:
                check_message(str(exc))


def _shard(directory: Path, sharded: bool, second: bool) -> Path:
    return directory / (SHARD_2 if second else SHARD_1) if sharded else directory / "model.safetensors"


def _write_header(path: Path, header: Any, data: bytes, length: int | None = None) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


common = {"name": st.sampled_from(sorted(MODELS)), "sharded": st.booleans(), "strict": st.booleans()}


FLIPS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=8)


@FUZZ
@given(**common, second=st.booleans(), flips=FLIPS, in_header=st.booleans())
def test_bit_flips(
    sources: Sources, name: str, sharded: bool, strict: bool, second: bool, flips: list[tuple[float, int]],
    in_header: bool,
) -> None:
    def mutate(directory: Path) -> None:
        path = _shard(directory, sharded, second)
        raw = bytearray(path.read_bytes())
        # Most flips land in the header, where they change structure; the rest anywhere.
        span = 8 + struct.unpack("<Q", raw[:8])[0] if in_header else len(raw)
        for where, bit in flips:
            raw[int(where * span)] ^= 1 << bit
        path.write_bytes(bytes(raw))

    attempt(sources, name, sharded, strict, mutate)


@FUZZ
@given(**common, second=st.booleans(), keep=st.floats(0, 1, exclude_max=True))
def test_truncation(sources: Sources, name: str, sharded: bool, strict: bool, second: bool, keep: float) -> None:
    def mutate(directory: Path) -> None:
        path = _shard(directory, sharded, second)
        raw = path.read_bytes()
        path.write_bytes(raw[: int(keep * len(raw))])

    attempt(sources, name, sharded, strict, mutate)


def _plausible(field: str) -> st.SearchStrategy[Any]:
    if field == "dtype":
        return st.sampled_from([*DTYPES, "F4", "", "f32", "BF16 "])
    if field == "shape":
        return st.lists(st.integers(-2, 300), max_size=4)
    return st.tuples(st.integers(-64, 64), st.integers(-64, 64))  # shifts of data_offsets


HEADER_EDITS = ["dtype", "shape", "shape", "data_offsets", "data_offsets", "delete", "rename", "metadata", "length"]


def _edit_header(header: dict[str, Any], data: st.DataObject) -> int | None:
    """Apply one random edit to ``header`` in place; return a length prefix to write instead of the true one."""
    kind = data.draw(st.sampled_from(HEADER_EDITS))
    names = sorted(n for n in header if n != "__metadata__")
    if kind == "length":
        return data.draw(st.integers(0, 2**64 - 1) | st.integers(0, 2 * len(json.dumps(header))))
    if kind == "metadata" or not names:
        header["__metadata__"] = data.draw(JSON)
        return None
    victim = data.draw(st.sampled_from(names))
    if kind == "delete":
        del header[victim]
    elif kind == "rename":
        header[data.draw(st.text(max_size=40) | st.sampled_from(names))] = header.pop(victim)
    elif isinstance(header[victim], dict):
        value = data.draw(st.one_of(_plausible(kind), JSON))
        if isinstance(value, tuple):
            offsets = header[victim].get("data_offsets")
            ok = isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            value = [offsets[0] + value[0], offsets[1] + value[1]] if ok else list(value)
        header[victim][kind] = value
    return None


@FUZZ
@given(**common, second=st.booleans(), edits=st.integers(1, 3), data=st.data())
def test_header_edits(
    sources: Sources, name: str, sharded: bool, strict: bool, second: bool, edits: int, data: st.DataObject
) -> None:
    def mutate(directory: Path) -> None:
        path = _shard(directory, sharded, second)
        header, tensor_bytes = header_of(path)
        lengths = [_edit_header(header, data) for _ in range(edits)]
        override = [n for n in lengths if n is not None]
        _write_header(path, header, tensor_bytes, override[-1] if override else None)

    attempt(sources, name, sharded, strict, mutate)


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a nested JSON value (dict keys and list indexes), the root included."""
    found = [path]
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found += _nodes(child, (*path, key))
    return found


def _parent(root: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        root = root[key]
    return root


CONFIG_EDITS = ["replace", "replace", "replace", "replace", "delete", "delete", "add", "whole", "bytes", "modelopt"]
TYPE_CONFUSED = st.sampled_from([None, "", "static", 8, -1, 0.5, True, [], {}, [8], {"num_bits": 8}, "fp8_e4m3"])


def _edit_config(directory: Path, data: st.DataObject) -> None:
    path = directory / "config.json"
    kind = data.draw(st.sampled_from(CONFIG_EDITS))
    if kind == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=64)))
        return
    try:
        config = json.loads(path.read_bytes())
    except ValueError:  # an earlier edit wrote bytes that are not JSON
        return
    if not isinstance(config, dict):
        return
    if kind == "whole":
        config = data.draw(JSON)
    elif kind == "modelopt":
        moved = {"quantization": config.pop("quantization_config", None)}
        (directory / "hf_quant_config.json").write_text(json.dumps(data.draw(JSON | st.just(moved))))
    else:
        _edit_inside(config, kind, data)
    path.write_text(json.dumps(config))


def _edit_inside(config: dict[str, Any], kind: str, data: st.DataObject) -> None:
    """Replace, delete or add one value somewhere inside ``quantization_config``."""
    if "quantization_config" not in config:
        return
    where = ("quantization_config", *data.draw(st.sampled_from(_nodes(config.get("quantization_config")))))
    parent, key = _parent(config, where), where[-1]
    if kind == "replace":
        parent[key] = data.draw(TYPE_CONFUSED | JSON)
    elif kind == "delete" and isinstance(parent, dict):
        del parent[key]
    elif kind == "add" and isinstance(parent.get(key) if isinstance(parent, dict) else None, dict):
        parent[key][data.draw(st.text(max_size=12))] = data.draw(JSON)


@FUZZ
@given(**common, edits=st.integers(1, 3), data=st.data())
def test_random_config_json(
    sources: Sources, name: str, sharded: bool, strict: bool, edits: int, data: st.DataObject
) -> None:
    def mutate(directory: Path) -> None:
        for _ in range(edits):
            _edit_config(directory, data)

    attempt(sources, name, sharded, strict, mutate)


SHARD_NAMES = st.sampled_from([
    SHARD_1, SHARD_2, f"./{SHARD_1}", f"sub/../{SHARD_2}", f"../{SHARD_1}", "/etc/passwd", "missing.safetensors",
    "", ".", "config.json", INDEX, "model.bin", "a\x00b",
]) | st.text(max_size=20)

INDEX_EDITS = ["move", "move", "move", "move", "drop", "drop", "add", "add", "weight_map", "whole"]


def _edit_index(index: Any, data: st.DataObject) -> Any:
    kind = data.draw(st.sampled_from(INDEX_EDITS))
    if kind == "whole" or not isinstance(index, dict):
        return data.draw(JSON)
    weight_map = index.get("weight_map")
    tensors = sorted(weight_map) if isinstance(weight_map, dict) else []
    if kind == "weight_map" or not tensors:
        index["weight_map"] = data.draw(JSON)
    elif kind == "move":
        weight_map[data.draw(st.sampled_from(tensors))] = data.draw(SHARD_NAMES)
    elif kind == "drop":
        del weight_map[data.draw(st.sampled_from(tensors))]
    else:
        weight_map[data.draw(st.text(max_size=30) | st.sampled_from(tensors))] = data.draw(SHARD_NAMES)
    return index


@FUZZ
@given(strict=st.booleans(), name=st.sampled_from(sorted(MODELS)), edits=st.integers(1, 3), data=st.data())
def test_random_index(sources: Sources, strict: bool, name: str, edits: int, data: st.DataObject) -> None:
    def mutate(directory: Path) -> None:
        index = json.loads((directory / INDEX).read_text())
        for _ in range(edits):
            index = _edit_index(index, data)
        (directory / INDEX).write_text(json.dumps(index))

    attempt(sources, name, True, strict, mutate)


# Hostile names and dimensions (issue 14): a name piece may be a Unicode digit (``'²'.isdigit()``
# but ``int('²')`` fails), a lone surrogate, an escape sequence, a newline or a bidi override; a
# zero-element tensor may carry dimensions of 2^63 and beyond. Loading and inspecting must give
# a KvcoreError or a result, and no name may reach a message or the output unescaped.
NAME_PIECES = st.sampled_from([
    "²", "\u0661\u0662", "\ud800", "\udfff", "\x1b[2J", "\x1b]0;x\x07", "\n", "\r", "\x00", "\u202e", "\\", "'",
    '"', "k_scale", "v_scale", "q_scale", ".", "attn", "self_attn", "0", "1", "layers",
])
HOSTILE_NAMES = st.lists(NAME_PIECES | st.text(max_size=3), min_size=1, max_size=8).map("".join)
HUGE_DIMS = st.lists(st.sampled_from([0, 1, 7, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, 2**100]), max_size=4)
NAME_EDITS = ["rename", "component", "add-empty", "dims", "dims"]
CONTROL = ("\x1b", "\x07", "\u202e")


def _hostile_edit(header: dict[str, Any], renamed: dict[str, str], data: st.DataObject) -> None:
    names = sorted(n for n in header if n != "__metadata__")
    kind = data.draw(st.sampled_from(NAME_EDITS))
    victim = data.draw(st.sampled_from(names)) if names else None
    if kind == "add-empty" or victim is None:
        dtype = data.draw(st.sampled_from(["F32", "BF16", "I8"]))
        header[data.draw(HOSTILE_NAMES)] = {"dtype": dtype, "shape": [0, *data.draw(HUGE_DIMS)], "data_offsets": [0, 0]}
    elif kind == "dims":
        entry = header[victim]
        start = entry["data_offsets"][0] if isinstance(entry, dict) and "data_offsets" in entry else 0
        header[victim] = {**entry, "shape": [*data.draw(HUGE_DIMS), 0], "data_offsets": [start, start]}
    else:
        parts = victim.split(".")
        if kind == "component":
            parts[data.draw(st.integers(0, len(parts) - 1))] = data.draw(HOSTILE_NAMES)
            new = ".".join(parts)
        else:
            new = data.draw(HOSTILE_NAMES)
        if new not in header:
            header[new] = header.pop(victim)
            renamed[victim] = new


def _clean(text: str) -> None:
    """Text for a person: encodable, and free of terminal control characters."""
    text.encode("utf-8")
    assert not any(c in text for c in CONTROL), repr(text)


def _inspect_cleanly(directory: Path) -> None:
    from kvcore._cli.inspect import inspect_checkpoint
    from kvcore._cli.render import render_inspection
    from kvcore._cli.table import Style

    try:
        result = inspect_checkpoint(directory)
    except kvcore.KvcoreError as exc:
        _clean(str(exc))
        return
    _clean(render_inspection(result, Style(False)))
    json.dumps(result.as_dict())


@FUZZ
@given(**common, second=st.booleans(), edits=st.integers(1, 3), data=st.data())
def test_hostile_names_and_dimensions(
    sources: Sources, name: str, sharded: bool, strict: bool, second: bool, edits: int, data: st.DataObject
) -> None:
    def mutate(directory: Path) -> None:
        path = _shard(directory, sharded, second)
        header, tensor_bytes = header_of(path)
        renamed: dict[str, str] = {}
        for _ in range(edits):
            _hostile_edit(header, renamed, data)
        _write_header(path, header, tensor_bytes)
        if sharded and renamed:  # keep the index in step, so that the load gets past it
            index = json.loads((directory / INDEX).read_text())
            for old, new in renamed.items():
                if old in index["weight_map"]:
                    index["weight_map"][new] = index["weight_map"].pop(old)
            (directory / INDEX).write_text(json.dumps(index))
        _inspect_cleanly(directory)

    attempt(sources, name, sharded, strict, mutate, check_message=_clean)


# Plugin faults: a plugin's hook raises anything (SystemExit and BaseException subclasses
# included), returns garbage, edits the config it receives, prints, or returns a mapper that
# fails when used. Only KvcoreError may escape a load, nothing may reach stdout, and an error
# leaves the model untouched.
class _Boom(BaseException):
    pass


class _RaisingMapper(kvcore.WeightsMapper):
    def map_name(self, name: str) -> str | None:
        raise ValueError(f"cannot map {name}")


FAULTS = ["KeyError", "SystemExit", "BaseException", "int", "dict", "mutate", "print", "bad-group",
          "raising-mapper", "none", "empty-mapper"]


class _FaultyPlugin:
    def __init__(self, fault: str) -> None:
        self.fault = fault

    @kvcore.hookimpl
    def get_cache_scale_mapper(self, quant_config: Any) -> Any:
        fault = self.fault
        if fault == "KeyError":
            raise KeyError("kv_cache_scheme")
        if fault == "SystemExit":
            raise SystemExit(0)
        if fault == "BaseException":
            raise _Boom("boom")
        if fault == "mutate":
            quant_config.raw.clear()
            quant_config.model_config.clear()
            return None
        if fault == "print":
            print("a plugin printing to stdout")
            return None
        return {
            "int": 42,
            "dict": {"k_scale": "attn.k_scale"},
            "bad-group": kvcore.WeightsMapper(orig_to_new_regex={r"\.k_scale$": r".attn.\9"}),
            "raising-mapper": _RaisingMapper(),
            "none": None,
            "empty-mapper": kvcore.WeightsMapper(),
        }[fault]


@FUZZ
@given(name=st.sampled_from(sorted(MODELS)), strict=st.booleans(),
       faults=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=3))
def test_plugin_faults(sources: Sources, name: str, strict: bool, faults: list[str]) -> None:
    import contextlib
    import io

    from kvcore.testing import registered_plugin

    stdout = io.StringIO()
    with contextlib.ExitStack() as stack:
        for i, fault in enumerate(faults):
            stack.enter_context(registered_plugin(_FaultyPlugin(fault), f"fuzz-fault-{i}"))
        with contextlib.redirect_stdout(stdout):
            attempt(sources, name, False, strict, lambda _: None, check_message=_clean)
    assert stdout.getvalue() == ""
