"""The pre-k_norm warning names every layer, however many there are."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

import kvcore
from kvcore.testing import write_checkpoint

QUARK = Path(__file__).resolve().parents[1] / "fixtures" / "real2" / "quark" / "qwen3_fp8_kv_fp8"


def test_the_pre_k_norm_warning_names_every_layer(tmp_path: Path) -> None:
    layers = 10
    cfg = {**json.loads((QUARK / "config.json").read_text()), "num_hidden_layers": layers}
    scale = torch.tensor(0.0014, dtype=torch.bfloat16)
    tensors = {f"model.layers.{i}.self_attn.{p}_proj.output_scale": scale.clone() for i in range(layers) for p in "kv"}
    path = write_checkpoint(tmp_path, tensors, config=cfg)
    root = torch.nn.Module()
    root.model = torch.nn.Module()
    root.model.layers = torch.nn.ModuleList(torch.nn.Module() for _ in range(layers))
    for layer in root.model.layers:
        layer.self_attn = torch.nn.Module()
        layer.self_attn.attn = kvcore.Attention(4, 16, 2, kv_cache_dtype="fp8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kvcore.load(root, path)
    message = str(caught[0].message)
    assert all(f"model.layers.{i}.self_attn.attn" in message for i in range(layers)), message
