"""KV-cache scales reach a ``kvcore.Attention`` wherever the engine put it (API.md, "Engine-shaped models").

A scale mapped to ``P.attn.<scale>`` goes to the one Attention below ``P`` when ``P.attn`` is
not one (``P.attention``, ``P.mla_attn.mla_attn``), through ``kvcore.load`` and through
``AutoWeightsLoader`` with ``kvcore.mapper_for``; two candidates are refused naming both; a
module registered under two names gets its scales once; a model without any Attention is
told to add one.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from core_support import (
    CT,
    LAYERS,
    LAYOUTS,
    QUARK,
    SCALES,
    P,
    as_float,
    assert_unchanged,
    attention_names,
    model_for,
    plain_weights,
    read_all,
    snapshot,
    value,
    write,
)

import kvcore

PATHS = pytest.mark.parametrize("path", ["load", "auto_loader"])


def load_via(path: str, model: torch.nn.Module, ckpt: Path) -> kvcore.LoadReport | None:
    """``kvcore.load``, or an engine's own loop: ``AutoWeightsLoader`` with the plugins' mapper."""
    if path == "load":
        return kvcore.load(model, ckpt)
    kvcore.AutoWeightsLoader(model).load_weights(read_all(ckpt).items(), mapper=kvcore.mapper_for(ckpt))
    return None


def place(model: torch.nn.Module, layer: int, where: str, module: torch.nn.Module) -> None:
    """Register ``module`` at ``P.<where>`` (dotted: intermediate plain modules are created)."""
    parent = model.get_submodule(P.format(layer))
    *path, leaf = where.split(".")
    for part in path:
        if not hasattr(parent, part):
            parent.add_module(part, torch.nn.Module())
        parent = getattr(parent, part)
    parent.add_module(leaf, module)


def take_attn(model: torch.nn.Module, layer: int) -> kvcore.Attention:
    """Remove ``P.attn`` from layer ``layer`` and return it."""
    block = model.get_submodule(P.format(layer))
    attn = block.attn
    delattr(block, "attn")
    return attn


def checkpoint(tmp_path: Path, folder: str, seed: int = 1) -> tuple[Path, dict[str, dict[str, str]]]:
    """A ``folder``-format checkpoint and, per layer, each Attention scale's source tensor."""
    scales, leaves = LAYOUTS[folder]
    ckpt = write(tmp_path / "ckpt", folder, {**plain_weights(model_for(folder)), **scales(seed)})
    sources = {P.format(i): {a: f"{P.format(i)}.{leaves[a]}" if a in leaves else "default" for a in SCALES}
               for i in range(LAYERS)}
    return ckpt, sources


def expected_values(ckpt: Path, source: dict[str, str]) -> dict[str, float | list[float]]:
    tensors = read_all(ckpt)
    return {attr: 1.0 if name == "default" else as_float(tensors[name]) for attr, name in source.items()}


@PATHS
@pytest.mark.parametrize("where", ["attention", "mla_attn.mla_attn"])
@pytest.mark.parametrize("folder", [CT, QUARK], ids=["compressed-tensors", "quark"])
def test_scales_reach_an_attention_below_the_block(tmp_path: Path, folder: str, where: str, path: str) -> None:
    ckpt, sources = checkpoint(tmp_path, folder)
    model = model_for(folder)
    for i in range(LAYERS):
        place(model, i, where, take_attn(model, i))
    report = load_via(path, model, ckpt)
    for i in range(LAYERS):
        attn = model.get_submodule(f"{P.format(i)}.{where}")
        expected = expected_values(ckpt, sources[P.format(i)])
        assert {attr: value(getattr(attn, attr)) for attr in SCALES} == expected, i
        assert all(getattr(attn, a).dtype == torch.float32 for a in SCALES)
    if report is not None:
        names = {f"{P.format(i)}.{where}" for i in range(LAYERS)}
        assert set(report.kv_scales) == set(report.kv_scale_sources) == names  # the module's own name
        for i in range(LAYERS):
            module = f"{P.format(i)}.{where}"
            assert report.kv_scales[module] == expected_values(ckpt, sources[P.format(i)])
            assert report.kv_scale_sources[module] == sources[P.format(i)]
        assert report.unexpected == [] and report.missing == []


@PATHS
def test_two_attentions_below_one_block_are_refused_naming_both(tmp_path: Path, path: str) -> None:
    ckpt, _ = checkpoint(tmp_path, CT)
    model = model_for(CT)
    place(model, 0, "attention", take_attn(model, 0))
    place(model, 0, "mla_attn.mla_attn", kvcore.Attention(4, 16, 2, kv_cache_dtype="fp8"))
    before = snapshot(model)
    with pytest.raises(kvcore.WeightLoadError) as info:
        load_via(path, model, ckpt)
    message = str(info.value)
    assert f"{P.format(0)}.attention" in message and f"{P.format(0)}.mla_attn.mla_attn" in message
    if path == "load":
        assert_unchanged(model, before)  # refused before any parameter is written


def alias(model: torch.nn.Module, how: str) -> None:
    """Register every layer's ``P.attn`` under a second name too."""
    if how == "root_list":
        model.attentions = torch.nn.ModuleList(model.get_submodule(f"{P.format(i)}.attn") for i in range(LAYERS))
        return
    for i in range(LAYERS):
        block = model.get_submodule(P.format(i))
        if how == "alias_after":
            block.alias = block.attn
        else:  # the alias is the module's first name
            attn = take_attn(model, i)
            block.alias = attn
            block.attn = attn


@PATHS
@pytest.mark.parametrize("how", ["alias_after", "alias_before", "root_list"])
def test_a_module_under_two_names_gets_its_scales_once(tmp_path: Path, how: str, path: str) -> None:
    ckpt, sources = checkpoint(tmp_path, CT)
    model = model_for(CT, kv_cache_dtype="fp8")  # an fp8 cache: a missed scale would warn
    alias(model, how)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_via(path, model, ckpt)
    assert not [str(w.message) for w in caught if "no k or v scale" in str(w.message)]
    for i in range(LAYERS):
        attn = model.get_submodule(f"{P.format(i)}.attn")
        assert {a: value(getattr(attn, a)) for a in SCALES} == expected_values(ckpt, sources[P.format(i)])
        assert float(attn.k_scale) != 1.0 and float(attn.v_scale) != 1.0
    if report is not None:
        names = attention_names(model)
        assert len(names) == LAYERS and set(report.kv_scales) == set(report.kv_scale_sources) == names
        for name in names:
            layer = P.format(name.split(".")[2])  # model.layers.N.self_attn.{attn,alias}
            assert report.kv_scales[name] == expected_values(ckpt, sources[layer])
            assert report.kv_scale_sources[name] == sources[layer]


def test_a_model_without_attention_is_told_to_add_one(tmp_path: Path) -> None:
    ckpt, _ = checkpoint(tmp_path, CT)
    model = model_for(CT)
    for i in range(LAYERS):
        take_attn(model, i)
    before = snapshot(model)
    with pytest.raises(kvcore.KvcoreError, match=r"kvcore\.Attention") as info:
        kvcore.load(model, ckpt)
    assert re.search(r"model\.layers\.0\.self_attn\.(attn\.)?k_scale", str(info.value))  # still listed
    assert_unchanged(model, before)
