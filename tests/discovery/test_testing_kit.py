"""kvcore.testing's author kit: registered_plugin, assert_maps and check_plugin."""

from __future__ import annotations

import importlib
import types

import pytest
from discovery_support import Site, checkpoint

import kvcore
from kvcore._plugins.manager import plugin_records
from kvcore.testing import assert_maps, check_plugin, registered_plugin

RULES = {r"\.k_proj\.kscale$": ".attn.k_scale"}


class Plugin:
    """A well-behaved plugin object for the format ``fmt``."""

    @kvcore.hookimpl
    def get_cache_scale_mapper(self, quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
        if quant_config.quant_method != "fmt":
            return None
        if not isinstance(quant_config.raw.get("bits", 8), int):
            raise kvcore.QuantConfigError("quantization_config.bits must be an integer")
        return kvcore.WeightsMapper(orig_to_new_regex=RULES)


@pytest.mark.usefixtures("site")  # no installed plugin handles "fmt"
def test_registered_plugin_serves_load_and_is_gone_afterwards(tmp_path) -> None:
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {"model.layers.0.self_attn.k_proj.kscale": 0.75})
    with registered_plugin(Plugin(), "mine", distribution="my-dist", version="9") as pm:
        assert plugin_records(pm)["mine"].label == "'mine' (my-dist 9)"
        report = kvcore.load(model, path)
    assert report.plugins == ["mine"]
    assert float(model.model.layers[0].self_attn.attn.k_scale) == 0.75
    pm = kvcore.get_plugin_manager()
    assert pm.get_plugin("mine") is None and "mine" not in plugin_records(pm)
    with pytest.raises(kvcore.QuantConfigError, match="no installed kvcore plugin"):
        kvcore.load(model, path)


@pytest.mark.usefixtures("site")
def test_registered_plugin_refuses_a_bad_plugin_and_leaves_nothing() -> None:
    bad = types.SimpleNamespace(get_cache_scale_mapper=kvcore.hookimpl(lambda cfg: cfg))
    with pytest.raises(kvcore.PluginError, match="cfg"), registered_plugin(bad, "bad"):
        pass
    assert kvcore.get_plugin_manager().get_plugin("bad") is None


def test_assert_maps_passes_and_lists_every_difference() -> None:
    mapper = kvcore.WeightsMapper(orig_to_new_regex={**RULES, r"\.drop$": None})
    assert_maps(mapper, {"a.k_proj.kscale": "a.attn.k_scale", "a.drop": None, "a.other": "a.other"})
    with pytest.raises(AssertionError) as caught:
        assert_maps(mapper, {"a.k_proj.kscale": "a.attn.v_scale", "a.drop": "a.drop", "a.other": "a.other"})
    assert str(caught.value).splitlines() == [
        "2 of 3 names map differently:",
        "  a.k_proj.kscale: expected 'a.attn.v_scale', got 'a.attn.k_scale'",
        "  a.drop: expected 'a.drop', got dropped (None)",
    ]


def test_check_plugin_accepts_a_conforming_plugin() -> None:
    check_plugin(Plugin(), own_configs=[{"quant_method": "fmt", "bits": 8}], bad_configs=[{"quant_method": "fmt",
                                                                                            "bits": "eight"}])


class Greedy(Plugin):
    @kvcore.hookimpl
    def get_cache_scale_mapper(self, quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:  # noqa: ARG002
        return kvcore.WeightsMapper(orig_to_new_regex=RULES)


class NotIdempotent(Plugin):
    @kvcore.hookimpl
    def get_cache_scale_mapper(self, quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
        if quant_config.quant_method == "fmt":
            return kvcore.WeightsMapper(orig_to_new_regex={r"k_scale$": "attn.k_scale"})
        return None


class Sloppy(Plugin):
    @kvcore.hookimpl
    def get_cache_scale_mapper(self, quant_config: kvcore.QuantConfig) -> kvcore.WeightsMapper | None:
        if quant_config.quant_method == "fmt":
            int(quant_config.raw["bits"])  # a bare ValueError/TypeError/KeyError on bad input
            return kvcore.WeightsMapper()
        return None


class Misnamed:
    @kvcore.hookimpl
    def get_cache_scale_mappers(self, quant_config: object) -> object:
        return quant_config


@pytest.mark.parametrize(
    ("plugin", "words"),
    [
        (Greedy(), "is not this plugin's format, but the hook returned a mapper"),
        (NotIdempotent(), "mapping is not idempotent: 'model.layers.0.self_attn.k_scale' -> "
                          "'model.layers.0.self_attn.attn.k_scale' -> 'model.layers.0.self_attn.attn.attn.k_scale'"),
        (Sloppy(), "the hook raised ValueError"),
        (Misnamed(), "unknown hook 'get_cache_scale_mappers'"),
    ],
    ids=["greedy", "not-idempotent", "sloppy-errors", "misnamed-hook"],
)
def test_check_plugin_reports_each_breach(plugin: object, words: str) -> None:
    with pytest.raises(AssertionError, match="breaks kvcore's plugin contract") as caught:
        check_plugin(plugin, own_configs=[{"quant_method": "fmt", "bits": 8}])
    assert words in str(caught.value)


def test_check_plugin_reports_a_bad_config_that_is_accepted() -> None:
    with pytest.raises(AssertionError, match="accepted a config listed as bad"):
        check_plugin(Plugin(), own_configs=[{"quant_method": "fmt"}], bad_configs=[{"quant_method": "fmt", "x": 1}])


def test_check_plugin_reports_imports_of_kvcore_internals(site: Site) -> None:
    name = site.module("sneaky", "import kvcore\nfrom kvcore._mapper import WeightsMapper\n\n"
                                 "@kvcore.hookimpl\ndef get_cache_scale_mapper(quant_config):\n"
                                 "    return WeightsMapper() if quant_config.quant_method == 'fmt' else None\n")
    with pytest.raises(AssertionError, match=r"private name\(s\) \(from kvcore\._mapper"):
        check_plugin(importlib.import_module(name), own_configs=[{"quant_method": "fmt"}])
