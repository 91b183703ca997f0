"""The genuine per-tensor checkpoints at T = 2: each rank holds its chunks, and the same scales.

The model is built from the checkpoint's own names and dtypes (fp8 weights, their per-tensor
``weight_scale`` / ``input_scale`` replicated), vLLM-shaped: column-parallel weights carry
``tp_dim = 0``, row-parallel ones ``tp_dim = 1``; every KV-cache scale the plugins map goes to a
``kvcore.Attention`` with this rank's heads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from parallel_support import SCALES, chunk, param, read_all, same_bits
from torch import nn

import kvcore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "real"
GENUINE = ("llmcompressor/fp8_kv_tensor", "quark/fp8_kv_attn_fp8_eager", "autofp8/head_k_v_scale")
COLUMN, ROW = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"), ("o_proj", "down_proj")
SIZE = 2


def place(root: nn.Module, name: str, leaf: nn.Module | nn.Parameter) -> None:
    *path, last = name.split(".")
    for part in path:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    if isinstance(leaf, nn.Parameter):
        root.register_parameter(last, leaf)
    else:
        root.add_module(last, leaf)


def genuine_tp_model(ckpt: Path, size: int) -> nn.Module:
    cfg = json.loads((ckpt / "config.json").read_text())
    mapper = kvcore.mapper_for(ckpt)
    model = nn.Module()
    for name, tensor in read_all(ckpt).items():
        if (mapper.map_name(name) or "").rpartition(".")[0].endswith(".attn"):
            continue  # a KV-cache scale: kvcore.Attention owns it
        module, _, leaf = name.rpartition(".")
        kind = module.rpartition(".")[2]
        dim = (0 if kind in COLUMN else 1 if kind in ROW else None) if leaf == "weight" else None
        shape = list(tensor.shape)
        if dim is not None:
            shape[dim] //= size
        place(model, name, param(*shape, tp_dim=dim, dtype=tensor.dtype))
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        attn = kvcore.Attention(heads // size, head_dim, max(1, kv_heads // size), kv_cache_dtype="fp8")
        place(model, f"model.layers.{i}.self_attn.attn", attn)
    return model


@pytest.mark.parametrize("name", GENUINE)
def test_both_ranks_hold_their_chunks_and_the_same_scales(name: str) -> None:
    ckpt = FIXTURES / name
    tensors = read_all(ckpt)
    whole = kvcore.read_kv_scales(ckpt)
    sliced = 0
    for rank in range(SIZE):
        model = genuine_tp_model(ckpt, SIZE)
        report = kvcore.load(model, ckpt, tp_rank=rank, tp_size=SIZE)
        for pname, p in model.named_parameters():
            if pname.rpartition(".")[2] in (*SCALES, "prob_scale"):
                continue
            dim = getattr(p, "tp_dim", None)
            want = tensors[pname] if dim is None else chunk(tensors[pname], dim, rank, SIZE, p.shape[dim])
            assert same_bits(p, want), f"{name}, rank {rank}: {pname}"
            sliced += dim is not None
        assert report.kv_scales == whole  # per-tensor scales: the same on every rank
        assert kvcore.read_kv_scales(ckpt, tp_rank=rank, tp_size=SIZE) == whole
        attn = model.get_submodule("model.layers.1.self_attn.attn")
        assert attn.k_scale.numel() == 1 and float(attn.k_scale) == whole["model.layers.1.self_attn.attn"]["k_scale"]
        assert whole["model.layers.1.self_attn.attn"]["k_scale"] != 1.0  # a loaded value, not a default
    assert sliced == SIZE * 2 * len(COLUMN + ROW)  # every projection of both layers, on both ranks
