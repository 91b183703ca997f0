"""The copy fast paths load bit-exact values: direct scatter reads, threaded big reads,
unaligned offsets, dtype conversion, custom weight loaders, non-contiguous parameters."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

import kvcore
import kvcore._loading.copy
from kvcore._checkpoint.reader import read_checkpoint
from kvcore._loading.plan import build_plan
from kvcore._loading.targets import model_targets
from kvcore._mapper import WeightsMapper
from kvcore.testing import write_checkpoint


def _model(**tensors: torch.Tensor) -> torch.nn.Module:
    """A flat module with one parameter per keyword, zero-filled, of that tensor's shape/dtype."""
    model = torch.nn.Module()
    for name, tensor in tensors.items():
        model.register_parameter(name, torch.nn.Parameter(torch.zeros_like(tensor), requires_grad=False))
    return model


def _values(seed: int, **shapes: tuple[tuple[int, ...], torch.dtype]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen).to(dtype) for name, (shape, dtype) in shapes.items()}


def _bits(tensor: torch.Tensor) -> bytes:
    return tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def _plan_for(model: torch.nn.Module, ckpt: Path) -> dict[str, bool]:
    """``{parameter: direct?}`` of the plan kvcore.load would execute."""
    plan = build_plan(read_checkpoint(ckpt).tensors.values(), model_targets(model), WeightsMapper())
    return {copy.target.name: copy.direct for copy in plan.copies}


def test_direct_reads_are_bit_exact_across_dtypes_and_shards(tmp_path: Path) -> None:
    tensors = _values(
        1,
        a=((7, 5), torch.bfloat16),
        b=((3,), torch.float32),
        c=((), torch.float16),
        d=((4, 4), torch.float8_e4m3fn),
        e=((2, 3, 2), torch.float64),
    )
    tensors["f"] = torch.arange(-5, 6, dtype=torch.int8)
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, shards=2)
    model = _model(**tensors)
    assert all(_plan_for(model, ckpt).values())
    report = kvcore.load(model, ckpt)
    assert report.loaded == set(tensors)
    for name, expected in tensors.items():
        assert _bits(getattr(model, name)) == _bits(expected), name


def test_scatter_runs_split_at_the_buffer_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvcore._loading.copy, "IOV_MAX", 3)  # 10 adjacent tensors: runs of 3, 3, 3, 1
    tensors = _values(2, **{f"w{i}": ((i + 1, 3), torch.bfloat16) for i in range(10)})
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors)
    model = _model(**tensors)
    seen: list[int] = []
    kvcore.load(model, ckpt, progress=seen.append)
    for name, expected in tensors.items():
        assert _bits(getattr(model, name)) == _bits(expected), name
    assert sorted(seen) == sorted(t.numel() * t.element_size() for t in tensors.values())


def test_big_tensors_read_in_threaded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1000 floats = 4000 bytes in 64-byte chunks: the last chunk is partial.
    monkeypatch.setattr(kvcore._loading.copy, "SPLIT_BYTES", 64)
    tensors = _values(3, big=((1000,), torch.float32), small=((3,), torch.float32), other=((50, 3), torch.bfloat16))
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors)
    model = _model(**tensors)
    kvcore.load(model, ckpt)
    for name, expected in tensors.items():
        assert _bits(getattr(model, name)) == _bits(expected), name


def _write_raw(path: Path, entries: list[tuple[str, str, list[int], bytes]]) -> Path:
    """A safetensors file whose tensors sit back to back in the given order (no realignment)."""
    header: dict[str, object] = {}
    offset = 0
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data section itself starts 8-aligned, as real files do
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(e[3] for e in entries))
    (path / "config.json").write_text("{}")
    return path


def test_unaligned_offsets_load_exactly_direct_and_converted(tmp_path: Path) -> None:
    odd = torch.tensor([1, 2, 3], dtype=torch.uint8)  # 3 bytes: every later tensor is unaligned
    value = torch.randn(5, generator=torch.Generator().manual_seed(4))
    same, wider = value.to(torch.bfloat16), value.to(torch.float32)
    ckpt = _write_raw(tmp_path / "ckpt", [
        ("odd", "U8", [3], _bits(odd)),
        ("same", "BF16", [5], _bits(same)),
        ("wider", "F32", [5], _bits(wider)),
    ])
    model = _model(odd=odd, same=same, wider=wider.to(torch.float64))
    plan = _plan_for(model, ckpt)
    assert plan == {"odd": True, "same": True, "wider": False}  # float32 -> float64 converts
    kvcore.load(model, ckpt)
    assert _bits(model.odd) == _bits(odd)
    assert _bits(model.same) == _bits(same)
    assert _bits(model.wider) == _bits(wider.to(torch.float64))


def test_dtype_conversion_goes_through_the_mapped_path(tmp_path: Path) -> None:
    tensors = _values(5, up=((6, 4), torch.bfloat16), down=((4,), torch.float32))
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors)
    model = _model(up=tensors["up"].to(torch.float32), down=tensors["down"].to(torch.float16))
    assert _plan_for(model, ckpt) == {"up": False, "down": False}
    kvcore.load(model, ckpt)
    assert _bits(model.up) == _bits(tensors["up"].to(torch.float32))
    assert _bits(model.down) == _bits(tensors["down"].to(torch.float16))


def test_custom_weight_loader_receives_the_exact_tensor(tmp_path: Path) -> None:
    tensors = _values(6, sharded=((4, 3), torch.bfloat16), plain=((2,), torch.bfloat16))
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors)
    model = _model(sharded=torch.zeros(2, 3, dtype=torch.bfloat16), plain=tensors["plain"])
    received: list[bytes] = []

    def first_half(param: torch.Tensor, loaded: torch.Tensor) -> None:
        received.append(_bits(loaded))
        with torch.no_grad():
            param.copy_(loaded[:2])  # a tensor-parallel rank keeps its rows

    model.sharded.weight_loader = first_half  # type: ignore[attr-defined]
    assert _plan_for(model, ckpt) == {"sharded": False, "plain": True}
    kvcore.load(model, ckpt)
    assert received == [_bits(tensors["sharded"])]
    assert _bits(model.sharded) == _bits(tensors["sharded"][:2])
    assert _bits(model.plain) == _bits(tensors["plain"])


def test_non_contiguous_and_subclassed_parameters_are_copied_through_torch(tmp_path: Path) -> None:
    tensors = _values(7, t=((3, 4), torch.float32), s=((2, 2), torch.float32))
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors)

    class Tagged(torch.nn.Parameter):
        """A Parameter subclass: its memory is not written directly."""

    model = torch.nn.Module()
    model.t = torch.nn.Parameter(torch.zeros(4, 3).t(), requires_grad=False)  # a (3, 4) transposed view
    model.s = Tagged(torch.zeros(2, 2), requires_grad=False)
    assert _plan_for(model, ckpt) == {"t": False, "s": False}
    kvcore.load(model, ckpt)
    assert torch.equal(model.t, tensors["t"])
    assert torch.equal(model.s, tensors["s"])


def test_tied_parameters_are_written_once(tmp_path: Path) -> None:
    tensors = _values(8, embed=((6, 2), torch.bfloat16))
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors)
    model = _model(embed=tensors["embed"])
    model.head = torch.nn.Module()
    model.head.weight = model.embed  # tied: one tensor, two names
    report = kvcore.load(model, ckpt)
    assert _bits(model.head.weight) == _bits(tensors["embed"])
    assert "embed" in report.loaded


def _reference_map(mapper: WeightsMapper, name: str) -> str | None:
    """vLLM's loop, rule by rule, without kvcore's precomputed pre-checks."""
    key = name
    for pattern, target in mapper.orig_to_new_regex.items():
        if pattern.search(key):
            if target is None:
                return None
            key = pattern.sub(target, key)
    for kind, matches, replace in (
        ("substr", lambda k, r: r in k, lambda k, r, t: k.replace(r, t, 1)),
        ("prefix", lambda k, r: k.startswith(r), lambda k, r, t: k.replace(r, t, 1)),
        ("suffix", lambda k, r: k.endswith(r), lambda k, r, t: t.join(k.rsplit(r, 1))),
    ):
        for rule, target in getattr(mapper, f"orig_to_new_{kind}").items():
            if matches(key, rule):
                if target is None:
                    return None
                key = replace(key, rule, target)
    return key


NAMES = [
    "model.layers.0.self_attn.k_scale",
    "model.layers.1.self_attn.kv_scale",
    "model.layers.2.self_attn.attn.k_scale",
    "model.layers.3.self_attn.k_proj.output_scale",
    "model.layers.0.mlp.experts.7.up_proj.weight",
    "aa.model.bb",
    "lm_head.weight",
]


@pytest.mark.parametrize(
    "rules",
    [
        # joinable: one combined pre-check
        {r"(?<!\.attn)\.([kv])_scale$": r".attn.\1_scale", r"\.kv_scale$": ".attn.k_scale"},
        # a back-reference and a named group: never joined, each searched alone
        {r"(a)\1": "X", r"(?P<n>proj)\.output_scale": r"\g<n>.out", r"experts\.(\d+)": None},
        # differing flags: never joined
        {"LM_HEAD": "head", r"layers\.0": "layers.zero"},
    ],
)
def test_fast_map_name_agrees_with_the_rule_by_rule_loop(rules: dict[str, str | None]) -> None:
    import re

    regex = {(re.compile(k, re.IGNORECASE) if k.isupper() else k): v for k, v in rules.items()}
    mapper = WeightsMapper(
        orig_to_new_regex=regex,
        orig_to_new_substr={".self_attn.": ".attention.", "bb": None},
        orig_to_new_prefix={"model.": "net.", "lm_": "out_"},
        orig_to_new_suffix={".weight": ".w", "_scale": "_s"},
    )
    for name in NAMES:
        assert mapper.map_name(name) == _reference_map(mapper, name), name
