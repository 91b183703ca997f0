"""A ``tp_dim = 0`` parameter reads only its slice of the file: counted at ``os.preadv``.

The checkpoint holds only tensors the model splits by rows (a 32 MiB one, big enough to be
read by several threads, and small ones and 1-D biases, adjacent in the file). Every byte range
kvcore's copier reads, merged, must be exactly the union of this rank's slices.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pages_support import data_ranges
from parallel_support import chunk, param, same_bits
from torch import nn

import kvcore
from kvcore._loading import shard as _shard
from kvcore.testing import write_checkpoint

Range = tuple[int, int]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Range]:
    """``(offset, end)`` of every ``os.preadv`` kvcore's copier makes."""
    seen: list[Range] = []
    preadv = os.preadv

    def counting(fd: int, buffers: list, offset: int) -> int:
        seen.append((offset, offset + sum(len(b) for b in buffers)))
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(_shard.os, "preadv", counting)
    return seen


def tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {"big.weight": torch.randn(4096, 4096, generator=gen).to(torch.bfloat16)}
    for i in range(3):
        out[f"layer{i}.weight"] = torch.randn(64, 48, generator=gen).to(torch.bfloat16)
        out[f"layer{i}.bias"] = torch.randn(64, generator=gen).to(torch.bfloat16)
    return out


def merged(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def row_split_model(source: dict[str, torch.Tensor], size: int) -> nn.Module:
    model = nn.Module()
    for name, tensor in source.items():
        module, _, leaf = name.partition(".")
        if not hasattr(model, module):
            model.add_module(module, nn.Module())
        shape = (tensor.shape[0] // size, *tensor.shape[1:])
        getattr(model, module).register_parameter(leaf, param(*shape, tp_dim=0))
    return model


@pytest.mark.parametrize(("rank", "size"), [(0, 2), (1, 2), (2, 4), (3, 4)])
def test_a_rank_reads_exactly_its_slices(tmp_path: Path, reads: list[Range], rank: int, size: int) -> None:
    source = tensors()
    ckpt = write_checkpoint(tmp_path, source)
    model = row_split_model(source, size)
    kvcore.load(model, ckpt, tp_rank=rank, tp_size=size)

    slices = []
    for name, (start, end) in data_ranges(ckpt / "model.safetensors").items():
        row = (end - start) // source[name].shape[0]
        rows = source[name].shape[0] // size
        slices.append((start + rank * rows * row, start + (rank + 1) * rows * row))
        held = model.get_parameter(name)
        assert same_bits(held, chunk(source[name], 0, rank, size, rows)), name
    assert sum(end - start for start, end in reads) == sum(end - start for start, end in slices)
    assert merged(reads) == merged(slices)
    assert sum(p.nbytes for p in model.parameters()) == sum(t.nbytes for t in source.values()) // size


def test_a_loader_narrowing_its_rows_reads_only_them(tmp_path: Path, reads: list[Range]) -> None:
    """vLLM's column-parallel loader gets the whole tensor, and its narrow(0, ...) reads just that."""
    big = tensors()["big.weight"]
    ckpt = write_checkpoint(tmp_path, {"big.weight": big})
    rank, size = 1, 2
    rows = big.shape[0] // size
    model = row_split_model({"big.weight": big}, size)
    weight = model.get_parameter("big.weight")
    weight.weight_loader = lambda p, loaded: p.data.copy_(loaded.narrow(0, rank * rows, rows))  # type: ignore[attr-defined]
    kvcore.load(model, ckpt, tp_rank=rank, tp_size=size)
    assert same_bits(weight, big.chunk(size)[rank])
    start, end = data_ranges(ckpt / "model.safetensors")["big.weight"]
    assert merged(reads) == [(start + (end - start) // 2, end)]
