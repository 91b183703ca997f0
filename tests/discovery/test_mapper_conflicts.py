"""Two plugins mapping one pattern to different targets: a MapperConflictError naming both."""

from __future__ import annotations

import re

import pytest
from discovery_support import Site, checkpoint, mapper_plugin, snapshot, unchanged

import kvcore
from kvcore._plugins.contributions import Contribution, combine


def test_conflict_names_both_plugins_the_pattern_and_both_targets(site: Site, tmp_path) -> None:
    site.plugin("left", mapper_plugin("fmt", {r"\.kscale$": ".attn.k_scale"}), dist="kvcore-left", version="1.2")
    site.plugin("right", mapper_plugin("fmt", {r"\.kscale$": ".attn.v_scale"}), dist="kvcore-right", version="3.4")
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {})
    before = snapshot(model)
    with pytest.raises(kvcore.MapperConflictError) as caught:
        kvcore.load(model, path)
    message = str(caught.value)
    for words in ("'left' (kvcore-left 1.2)", "'right' (kvcore-right 3.4)", r"'\\.kscale$'",
                  "'.attn.k_scale'", "'.attn.v_scale'"):
        assert words in message, words
    assert caught.value.targets == (".attn.k_scale", ".attn.v_scale")
    assert caught.value.pattern == r"\.kscale$"
    assert unchanged(model, before)


def test_agreeing_plugins_combine(site: Site, tmp_path) -> None:
    rules = {r"\.k_proj\.kscale$": ".attn.k_scale"}
    site.plugin("left", mapper_plugin("fmt", rules))
    site.plugin("right", mapper_plugin("fmt", rules))
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {"model.layers.0.self_attn.k_proj.kscale": 0.5})
    assert kvcore.load(model, path).plugins == ["left", "right"]
    assert float(model.model.layers[0].self_attn.attn.k_scale) == 0.5


def test_conflict_with_the_models_own_mapper_names_it(site: Site, tmp_path) -> None:
    site.plugin("plug", mapper_plugin("fmt", {r"\.kscale$": ".attn.k_scale"}))
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {})
    own = kvcore.WeightsMapper(orig_to_new_regex={r"\.kscale$": ".attn.q_scale"})
    with pytest.raises(kvcore.MapperConflictError, match=r"the model's own mapper maps .*'plug' \(kvcore-plug 1\.0\)"):
        kvcore.load(model, path, mapper=own)


def test_attribution_finds_the_earlier_plugin_among_several() -> None:
    flagged = re.compile(r"\.KSCALE$", re.IGNORECASE)
    first = Contribution("a", "'a' (kvcore-a 1)", kvcore.WeightsMapper(orig_to_new_substr={"x": "y"}))
    second = Contribution("b", "'b' (kvcore-b 2)", kvcore.WeightsMapper(orig_to_new_regex={flagged: ".attn.k_scale"}))
    third = Contribution("c", "'c' (kvcore-c 3)", kvcore.WeightsMapper(orig_to_new_regex={flagged: ".attn.v_scale"}))
    with pytest.raises(kvcore.MapperConflictError, match=r"plugin 'b' \(kvcore-b 2\) maps regex .*plugin 'c'"):
        combine(kvcore.WeightsMapper(), [first, second, third])
