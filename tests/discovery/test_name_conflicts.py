"""Two plugins spelling a rule differently but sending one tensor to different parameters."""

from __future__ import annotations

import pytest
from discovery_support import Site, checkpoint, mapper_plugin, snapshot, unchanged

import kvcore

TENSOR = "model.layers.0.self_attn.k_proj.output_scale"


def test_tensor_level_conflict_names_tensor_targets_and_both_plugins(site: Site, tmp_path) -> None:
    # Different patterns, so `|` cannot see the dispute; the tensor name can.
    site.plugin("left", mapper_plugin("fmt", {r"\.k_proj\.output_scale$": ".attn.k_scale"}), version="1.0")
    site.plugin("right", mapper_plugin("fmt", {r"self_attn\.k_proj\.output_scale$": "self_attn.attn.v_scale"}),
                version="2.0")
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {TENSOR: 0.5})
    before = snapshot(model)
    with pytest.raises(kvcore.MapperConflictError) as caught:
        kvcore.load(model, path)
    message = str(caught.value)
    for words in (TENSOR, "model.layers.0.self_attn.attn.k_scale", "model.layers.0.self_attn.attn.v_scale",
                  "'left' (kvcore-left 1.0)", "'right' (kvcore-right 2.0)"):
        assert words in message, words
    assert unchanged(model, before)


def test_different_spellings_of_the_same_mapping_are_fine(site: Site, tmp_path) -> None:
    site.plugin("left", mapper_plugin("fmt", {r"\.k_proj\.output_scale$": ".attn.k_scale"}))
    site.plugin("right", mapper_plugin("fmt", {r"self_attn\.k_proj\.output_scale$": "self_attn.attn.k_scale"}))
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {TENSOR: 0.5})
    report = kvcore.load(model, path)
    assert report.kv_scale_sources["model.layers.0.self_attn.attn"]["k_scale"] == TENSOR
