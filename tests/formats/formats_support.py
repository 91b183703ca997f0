"""Helpers for the per-format tests: checkpoints in docs/formats.md's layouts, and exact checks.

``P`` is the attention block of layer ``i`` as the real tools name it; the model is
:func:`kvcore.testing.tiny_llama`, whose attention modules sit at ``P.attn``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open

import kvcore
from kvcore.testing import tiny_llama, write_checkpoint

P = "model.layers.{}.self_attn"
LAYERS = 2
KV_HEADS = 2
SCALES = ("k_scale", "v_scale", "q_scale", "prob_scale")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "real"
LEAVES = (
    "k_scale", "v_scale", "q_scale", "kv_scale", "prob_scale", "prob_output_scale",
    "k_zero_point", "v_zero_point", "q_zero_point", "k_proj.output_scale", "v_proj.output_scale",
    "q_proj.output_scale", "o_proj.output_scale", "k_proj.weight_scale", "k_proj.input_scale",
    "k_proj.weight", "k_proj.weight_scale_inv", "k_proj.k_scale", "v_proj.v_scale", "k_proj.k_bias",
    "attn.k_scale", "attn.v_scale", "attn.q_scale", "attn.prob_scale", "attn.k_zero_point",
)  # fmt: skip
"""Leaf names the formats use, mapped or not; hypothesis combines them with prefixes."""

UNTOUCHED = (
    "k_proj.weight_scale", "k_proj.input_scale", "v_proj.weight_scale", "q_proj.input_scale",
    "k_proj.weight", "o_proj.weight_scale", "k_proj.weight_scale_inv", "attn.k_scale",
    "attn.v_scale", "attn.q_scale", "attn.prob_scale", "attn.k_zero_point", "input_layernorm.weight",
)  # fmt: skip
"""Leaves no first-party mapper may rewrite, whatever precedes them."""


def module(i: int) -> str:
    """The attention module of layer ``i``."""
    return f"{P.format(i)}.attn"


def model_for(
    *, scale_shape: tuple[int, ...] = (), scale_dtype: torch.dtype = torch.bfloat16, kv_cache_dtype: str = "fp8"
) -> torch.nn.Module:
    """The tiny reference model with fp8 projections whose scales look like the format's."""
    return tiny_llama(fp8=True, scale_shape=scale_shape, scale_dtype=scale_dtype, kv_cache_dtype=kv_cache_dtype)


def plain_weights(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values, in the model's own shapes and dtypes, for every tensor but the KV scales."""
    gen = torch.Generator().manual_seed(seed)
    kv = {name for name, p in model.named_parameters() if isinstance(p, kvcore.KVCacheScaleParameter)}
    out = {}
    for name, tensor in model.state_dict().items():
        if name in kv:
            continue
        if name.endswith(("_scale", "_scale_inv")):
            out[name] = positive(tuple(tensor.shape), tensor.dtype, gen)
        else:
            out[name] = (torch.randn(tensor.shape, generator=gen) * 0.5).to(tensor.dtype)
    return out


def positive(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Scale-like values (amax / 448 of activations of a few units), in ``dtype``."""
    return (torch.rand(shape, generator=gen) * 0.01 + 1e-4).to(dtype)


def per_layer(leaf: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """``P.<leaf>`` for every layer, with distinct positive values."""
    gen = torch.Generator().manual_seed(seed)
    return {f"{P.format(i)}.{leaf}": positive(shape, dtype, gen) for i in range(LAYERS)}


def sources(**leaves: str) -> dict[str, dict[str, str]]:
    """Expected ``report.kv_scale_sources``: ``k_scale="k_proj.output_scale"`` means ``P.k_proj.output_scale``."""
    return {
        module(i): {attr: f"{P.format(i)}.{leaves[attr]}" if attr in leaves else "default" for attr in SCALES}
        for i in range(LAYERS)
    }


def read_all(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, read independently of kvcore."""
    tensors = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118 - safe_open has no __iter__
    return tensors


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``tensor`` (comparing fp8 by value would hide NaN payloads and -0)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, to prove a refused load wrote nothing."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: Mapping[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(as_bytes(after[name]), as_bytes(tensor)), name


def check_load(
    model: torch.nn.Module,
    directory: Path,
    report: kvcore.LoadReport,
    expected_sources: dict[str, dict[str, str]],
) -> None:
    """Scales equal their source tensors in float32; every other tensor is loaded bit-exact or dropped."""
    tensors = read_all(directory)
    assert report.kv_scale_sources == expected_sources
    assert report.unexpected == [] and report.missing == []
    used = set()
    for module_name, attrs in expected_sources.items():
        attention = model.get_submodule(module_name)
        for attr, source in attrs.items():
            used.add(source)
            expected = torch.ones(1) if source == "default" else tensors[source].to(torch.float32).reshape(-1)
            _check_scale(getattr(attention, attr), report.kv_scales[module_name][attr], expected)
            if source != "default":
                assert f"{module_name}.{attr}" in report.loaded
    state = model.state_dict()
    for name, tensor in tensors.items():
        if name in used:
            continue
        if name in report.dropped:
            assert not bool(tensor.to(torch.float32).any()), f"{name} was dropped but is not all zero"
            continue
        assert name in report.loaded, name
        assert state[name].dtype == tensor.dtype and state[name].shape == tensor.shape, name
        assert torch.equal(as_bytes(state[name]), as_bytes(tensor)), name


def _check_scale(param: torch.Tensor, reported: float | list[float], expected: torch.Tensor) -> None:
    assert param.dtype == torch.float32
    if expected.numel() == 1:
        assert param.shape == ()
        assert float(param) == float(expected[0]) and reported == float(expected[0])
    else:
        assert param.shape == (KV_HEADS,)
        assert torch.equal(param, expected) and reported == expected.tolist()


@functools.cache
def real_names() -> tuple[str, ...]:
    """Tensor names of the genuine checkpoints."""
    names: set[str] = set()
    for path in FIXTURES.glob("*/*/model.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            names.update(f.keys())
    return tuple(sorted(names))


_SEGMENT = st.one_of(
    st.sampled_from(["model", "layers", "0", "31", "self_attn", "attn", "mlp", "decoder", "k_proj", "x"]),
    st.from_regex(r"[a-z_]{1,7}|[0-9]{1,2}", fullmatch=True),
)


def names() -> st.SearchStrategy[str]:
    """Checkpoint-like names: genuine ones, synthetic ``prefix.leaf`` ones, and arbitrary text."""
    prefix = st.lists(_SEGMENT, max_size=5).map(".".join)
    leaf = st.one_of(st.sampled_from(LEAVES), _SEGMENT)
    synthetic = st.builds(lambda p, x: f"{p}.{x}" if p else x, prefix, leaf)
    return st.one_of(st.sampled_from(real_names()), synthetic, st.text(max_size=40))


def prefixes() -> st.SearchStrategy[str]:
    """Module paths a name may start with (possibly empty)."""
    return st.lists(_SEGMENT, max_size=5).map(".".join)


def genuine_config(folder: str) -> dict[str, Any]:
    """The full ``config.json`` of a genuine fixture."""
    return json.loads((FIXTURES / folder / "config.json").read_text())


def reshard(folder: str, directory: Path, shards: int) -> Path:
    """The genuine fixture's tensors and config, rewritten as ``shards`` shards with an index."""
    return write_checkpoint(directory, read_all(FIXTURES / folder), config=genuine_config(folder), shards=shards)


def mapper_property_tests(
    mapper: kvcore.WeightsMapper, table: Mapping[str, str], produced: str
) -> tuple[Callable[..., None], ...]:
    """The four tests every first-party mapper must pass, bound to ``mapper``.

    A test module assigns them to ``test_*`` names: the name -> target ``table``; idempotence;
    weights and already-mapped scales left alone; and every renamed tensor ends in a target
    matching ``produced``, under the module path it came from.
    """

    @pytest.mark.parametrize(("name", "target"), table.items())
    def mapping_table(name: str, target: str) -> None:
        assert mapper.map_name(name) == target

    @given(names())
    def idempotent(name: str) -> None:
        once = mapper.map_name(name)
        assert once is not None and mapper.map_name(once) == once

    @given(prefixes(), st.sampled_from(UNTOUCHED))
    def leaves_weights_alone(prefix: str, leaf: str) -> None:
        name = f"{prefix}.{leaf}" if prefix else leaf
        assert mapper.map_name(name) == name

    @given(names())
    def only_produces_attention_targets(name: str) -> None:
        mapped = mapper.map_name(name)
        if mapped != name:
            assert mapped is not None and re.search(produced, mapped)
            assert name.startswith(mapped.rsplit(".attn.", 1)[0] + ".")  # the module path is kept

    return mapping_table, idempotent, leaves_weights_alone, only_produces_attention_targets
