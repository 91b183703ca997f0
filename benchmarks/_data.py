"""Reproducible benchmark checkpoints, generated once into ``benchmarks/.data`` and reused.

Each checkpoint lives in a folder named after a hash of its spec; a ``complete`` stamp is
written last, so an interrupted generation is redone rather than half-used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from _models import Spec, dense_model
from safetensors.torch import save_file

DATA = Path(__file__).resolve().parent / ".data"
FORMAT_VERSION = 1

FP8_CONFIG = {"quant_method": "fp8", "activation_scheme": "static", "kv_cache_scheme": "static"}

DENSE: Spec = {
    "kind": "dense", "hidden": 2048, "intermediate": 5632, "kv_heads": 4, "head_dim": 64,
    "layers": 14, "vocab": 32000, "shard_bytes": 500 << 20,
}
"""(a) TinyLlama-1.1B widths with 14 layers: 1.49 GB of bf16 in 4 shards."""

MOE: Spec = {
    "kind": "moe", "hidden": 16, "intermediate": 8, "kv_heads": 1, "head_dim": 16,
    "layers": 12, "experts": 1024, "vocab": 64, "shard_bytes": 4 << 20,
}
"""(b) 36,951 tiny tensors (12 layers x 1024 experts x 3 projections, plus the rest)."""

MOE_FP8: Spec = {**MOE, "kind": "moe-fp8", "kv_scales": True}
"""(b, kvcore only) the same, as an fp8 checkpoint with k/v scales that the fp8 plugin maps."""

INSPECT: Spec = {
    "kind": "inspect", "hidden": 512, "intermediate": 1024, "kv_heads": 2, "head_dim": 64,
    "layers": 50, "vocab": 1000, "shards": 100, "kv_scales": True,
}
"""(e) an fp8 checkpoint of 100 shards, 50 layers with k/v scales, ~220 MB."""


def checkpoint(spec: Spec) -> Path:
    """The directory of ``spec``'s checkpoint, generated on first use."""
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, spec], sort_keys=True).encode()).hexdigest()[:12]
    path = DATA / f"{spec['kind']}-{key}"
    if (path / "complete").is_file():
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    _write(path, spec)
    (path / "spec.json").write_text(json.dumps(spec, indent=2))
    (path / "complete").write_text("")
    return path


def _tensors(spec: Spec) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's parameters in module order, filled from a seeded generator."""
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        model = dense_model(spec)
    for name, param in model.named_parameters():
        yield name, torch.randn(param.shape, generator=generator).to(param.dtype)
        if spec.get("kv_scales") and name.endswith("self_attn.v_proj.weight"):
            prefix = name.removesuffix("v_proj.weight")
            # AutoFP8 layout (docs/formats.md): 0-dim float32 scales beside the projections.
            for kind in "kv":
                yield f"{prefix}{kind}_scale", torch.rand((), generator=generator) / 100 + 0.01


def _write(path: Path, spec: Spec) -> None:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    if spec.get("kv_scales"):
        config["quantization_config"] = FP8_CONFIG
    (path / "config.json").write_text(json.dumps(config, indent=2))
    shards = list(_shards(spec))
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file_name))
    index = {"metadata": {}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _shards(spec: Spec) -> Iterator[dict[str, torch.Tensor]]:
    """Split by size (``shard_bytes``, like HF's max_shard_size) or into ``shards`` equal counts."""
    items = list(_tensors(spec))
    if "shards" in spec:
        per = -(-len(items) // spec["shards"])
        for i in range(0, len(items), per):
            yield dict(items[i : i + per])
        return
    shard: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > spec["shard_bytes"]:
            yield shard
            shard, size = {}, 0
        shard[name], size = tensor, size + nbytes
    if shard:
        yield shard


def shard_files(path: Path) -> list[Path]:
    """The checkpoint's shard files in index order."""
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return [path / name for name in dict.fromkeys(index["weight_map"].values())]


def spec_of(path: Path) -> Spec:
    """The spec a generated checkpoint was made from."""
    return json.loads((path / "spec.json").read_text())


def fake_distributions(count: int = 500) -> Path:
    """A folder of ``count`` installed-looking distributions (dist-info with metadata and
    console-script entry points, none in the ``kvcore`` group), to put on ``sys.path``."""
    path = DATA / f"fake-dists-{count}"
    if (path / "complete").is_file():
        return path
    shutil.rmtree(path, ignore_errors=True)
    for i in range(count):
        info = path / f"fake_pkg_{i:04d}-1.{i % 7}.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-pkg-{i:04d}\nVersion: 1.{i % 7}.0\n")
        (info / "entry_points.txt").write_text(f"[console_scripts]\nfake-{i:04d} = fake_pkg_{i:04d}:main\n")
        (info / "RECORD").write_text("")
    (path / "complete").write_text("")
    return path
