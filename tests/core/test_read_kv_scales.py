"""``kvcore.read_kv_scales`` and ``kvcore.mapper_for``: the checkpoint-level API, no model needed.

``read_kv_scales`` gives what ``kvcore.load`` would leave in each Attention (same defaults,
v-only, per-head, bad values refused) and reads only headers and scale tensors.
"""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from core_support import (
    AUTOFP8,
    BF16,
    CT,
    FIXTURES,
    KV_HEADS,
    LAYERS,
    QUARK,
    P,
    ct_scales,
    model_for,
    per_layer,
    plain_weights,
    quant_config,
    write,
)

import kvcore
import kvcore_compressed_tensors
import kvcore_quark
from kvcore.testing import write_checkpoint

ATTN = "model.layers.{}.self_attn.attn"


def same_as_load(ckpt: Path, folder: str) -> dict[str, dict[str, float | list[float]]]:
    """``read_kv_scales(ckpt)``, asserted equal to what ``kvcore.load`` leaves in the model."""
    scales = kvcore.read_kv_scales(ckpt)
    assert scales == kvcore.load(model_for(folder, kv_cache_dtype="auto"), ckpt).kv_scales
    return scales


@pytest.mark.parametrize("folder", [CT, QUARK, AUTOFP8])
def test_genuine_checkpoints_read_as_they_load(folder: str) -> None:
    scales = same_as_load(FIXTURES / folder, folder)
    assert set(scales) == {ATTN.format(i) for i in range(LAYERS)}
    assert all(value != 1.0 for layer in scales.values() for value in (layer["k_scale"], layer["v_scale"]))


def ct_checkpoint(tmp_path: Path, tensors: dict[str, torch.Tensor], **scheme: object) -> Path:
    raw = quant_config(CT, **scheme)
    return write(tmp_path / "ckpt", CT, {**plain_weights(model_for(CT)), **tensors}, quantization_config=raw)


def test_per_tensor(tmp_path: Path) -> None:
    tensors = ct_scales()
    scales = same_as_load(ct_checkpoint(tmp_path, tensors), CT)
    for i in range(LAYERS):
        expected = float(tensors[f"{P.format(i)}.k_scale"].float())
        assert scales[ATTN.format(i)]["k_scale"] == expected
        assert scales[ATTN.format(i)]["q_scale"] == scales[ATTN.format(i)]["prob_scale"] == 1.0


def test_per_head(tmp_path: Path) -> None:
    tensors = {**per_layer("k_scale", (KV_HEADS, 1, 1), BF16, 5), **per_layer("v_scale", (KV_HEADS, 1, 1), BF16, 6)}
    scales = same_as_load(ct_checkpoint(tmp_path, tensors, strategy="attn_head"), CT)
    for i in range(LAYERS):
        assert scales[ATTN.format(i)]["k_scale"] == tensors[f"{P.format(i)}.k_scale"].float().reshape(-1).tolist()
        assert scales[ATTN.format(i)]["v_scale"] == tensors[f"{P.format(i)}.v_scale"].float().reshape(-1).tolist()


def test_v_only_serves_for_k(tmp_path: Path) -> None:
    tensors = per_layer("v_scale", (1,), BF16, 7)
    scales = same_as_load(ct_checkpoint(tmp_path, tensors), CT)
    for i in range(LAYERS):
        v = float(tensors[f"{P.format(i)}.v_scale"].float())
        assert scales[ATTN.format(i)]["k_scale"] == scales[ATTN.format(i)]["v_scale"] == v


def test_a_layer_without_scales_gets_the_defaults(tmp_path: Path) -> None:
    tensors = {name: t for name, t in ct_scales().items() if name.startswith(P.format(0))}
    scales = same_as_load(ct_checkpoint(tmp_path, tensors), CT)
    assert scales[ATTN.format(1)] == dict.fromkeys(("k_scale", "v_scale", "q_scale", "prob_scale"), 1.0)
    assert scales[ATTN.format(0)]["k_scale"] == float(tensors[f"{P.format(0)}.k_scale"].float())


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, -0.5], ids=["nan", "inf", "zero", "negative"])
def test_a_bad_value_is_refused_naming_the_tensor(tmp_path: Path, bad: float) -> None:
    tensors = ct_scales()
    tensors[f"{P.format(1)}.v_scale"] = torch.tensor([bad], dtype=BF16)
    with pytest.raises(kvcore.WeightLoadError, match=re.escape(f"'{P.format(1)}.v_scale'")):
        kvcore.read_kv_scales(ct_checkpoint(tmp_path, tensors))


def data_range(path: Path, name: str) -> tuple[int, int]:
    """Absolute byte range of tensor ``name`` in a safetensors file (read without kvcore)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    start, end = header[name]["data_offsets"]
    return 8 + length + start, 8 + length + end


def test_weight_bytes_are_not_read(tmp_path: Path) -> None:
    ckpt = ct_checkpoint(tmp_path, ct_scales())
    clean = kvcore.read_kv_scales(ckpt)
    shard = ckpt / "model.safetensors"
    with open(shard, "r+b") as f:
        for name in ("model.embed_tokens.weight", "lm_head.weight", f"{P.format(0)}.k_proj.weight"):
            start, end = data_range(shard, name)
            f.seek(start)
            f.write(b"\xff" * (end - start))  # NaN in bf16 and fp8: garbage to anything that reads it
    assert kvcore.read_kv_scales(ckpt) == clean


SPARSE_CHECK = textwrap.dedent(
    """
    import os, resource, sys
    import kvcore

    def rchar():
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])

    kvcore.read_kv_scales(sys.argv[1])  # warm-up: plugins imported, caches filled
    rss, read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rchar()
    scales = kvcore.read_kv_scales(sys.argv[2])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss, rchar() - read, repr(scales))
    """
)


def sparse_checkpoint(directory: Path, scales: dict[str, torch.Tensor], huge: int) -> Path:
    """Scales, then a ``huge``-byte bf16 weight whose bytes are a hole in a sparse file."""
    write(directory, CT, {}, quantization_config=quant_config(CT))
    header, offset, data = {}, 0, b""
    for name, tensor in scales.items():
        raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        offset, data = offset + len(raw), data + raw
    rows = huge // (2 * 4096)
    header["model.embed_tokens.weight"] = {"dtype": "BF16", "shape": [rows, 4096],
                                           "data_offsets": [offset, offset + huge]}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + data)
        f.truncate(8 + len(encoded) + offset + huge)
    return directory


def test_reads_headers_and_scale_tensors_only(tmp_path: Path) -> None:
    huge = 2 << 30  # 2 GiB of weight that is never on disk: reading it costs that much memory or I/O
    tensors = ct_scales()
    big = sparse_checkpoint(tmp_path / "big", tensors, huge)
    small = sparse_checkpoint(tmp_path / "small", tensors, 1 << 16)
    out = subprocess.run([sys.executable, "-c", SPARSE_CHECK, str(small), str(big)], capture_output=True,
                         text=True, check=True, timeout=300).stdout.split(maxsplit=2)
    grown, read = int(out[0]), int(out[1])
    assert grown < huge // 8 and read < huge // 8, (grown, read)
    assert out[2].strip() == repr(kvcore.read_kv_scales(small))


def test_mapper_for_an_unquantized_checkpoint_is_empty(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "ckpt", plain_weights(model_for(CT)))
    mapper = kvcore.mapper_for(ckpt)
    assert mapper == kvcore.WeightsMapper()
    assert mapper.map_name(f"{P.format(0)}.k_proj.output_scale") == f"{P.format(0)}.k_proj.output_scale"


@pytest.mark.parametrize(
    ("folder", "plugin_mapper", "name", "target"),
    [
        (QUARK, kvcore_quark.KV_SCALE_MAPPER, "k_proj.output_scale", "attn.k_scale"),
        (CT, kvcore_compressed_tensors.KV_SCALE_MAPPER, "v_scale", "attn.v_scale"),
    ],
    ids=["quark", "compressed-tensors"],
)
def test_mapper_for_a_quantized_checkpoint_is_its_plugins(
    folder: str, plugin_mapper: kvcore.WeightsMapper, name: str, target: str
) -> None:
    mapper = kvcore.mapper_for(FIXTURES / folder)
    assert mapper == plugin_mapper
    assert mapper.map_name(f"{P.format(0)}.{name}") == f"{P.format(0)}.{target}"


def test_mapper_for_an_unhandled_method_is_refused(tmp_path: Path) -> None:
    quant = {"quant_method": "nosuchformat"}
    ckpt = write_checkpoint(tmp_path / "ckpt", {"x": torch.zeros(1)}, quantization_config=quant)
    with pytest.raises(kvcore.QuantConfigError, match="nosuchformat"):
        kvcore.mapper_for(ckpt)


@pytest.mark.parametrize("shape", [(0,), (1 << 17,)], ids=["no-element", "too-big"])
def test_a_scale_of_impossible_size_is_refused_as_load_refuses_it(tmp_path: Path, shape: tuple[int, ...]) -> None:
    tensors = ct_scales()
    tensors[f"{P.format(0)}.k_scale"] = torch.ones(shape, dtype=BF16)
    with pytest.raises(kvcore.WeightLoadError, match=re.escape(f"'{P.format(0)}.k_scale'")):
        kvcore.read_kv_scales(ct_checkpoint(tmp_path, tensors))
