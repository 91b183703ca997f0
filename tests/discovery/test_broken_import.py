"""A plugin that fails to import or register is isolated: reported, rolled back, others work."""

from __future__ import annotations

import pytest
from discovery_support import Site, mapper_plugin

import kvcore
from kvcore._plugins.manager import plugin_records

GOOD = mapper_plugin("fmt", {r"\.x$": ".y"})


def test_missing_dependency_is_reported_and_the_others_load(site: Site) -> None:
    site.plugin("aaa-broken", "import kvcore_dependency_that_is_not_installed\n", version="0.3")
    site.plugin("good", GOOD)
    with pytest.warns(RuntimeWarning, match=r"'aaa-broken' \(kvcore-aaa-broken 0\.3\).*ModuleNotFoundError"):
        pm = kvcore.get_plugin_manager()
    records = plugin_records(pm)
    assert records["aaa-broken"].status == "failed"
    assert "kvcore_dependency_that_is_not_installed" in records["aaa-broken"].error
    assert records["good"].status == "loaded" and records["good"].hooks == ["get_cache_scale_mapper"]
    assert pm.get_plugin("aaa-broken") is None


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
        ("import sys\nsys.exit(3)\n", "SystemExit"),
        ("import kvcore\n@kvcore.hookimpl\ndef get_cache_scale_mapper(cfg):\n    return None\n", "cfg"),
        ("import kvcore\n@kvcore.hookimpl\ndef get_cache_mapper(quant_config):\n    return None\n",
         "unknown hook 'get_cache_mapper'"),
        ("import kvcore\n@kvcore.hookimpl(wrapper=True)\ndef get_cache_scale_mapper(quant_config):\n"
         "    return (yield)\n", "wrapper"),
    ],
    ids=["raises", "sys-exit", "bad-signature", "unknown-hook", "wrapper"],
)
def test_failures_leave_nothing_registered(site: Site, source: str, words: str) -> None:
    site.plugin("bad", source)
    site.plugin("good", GOOD)
    with pytest.warns(RuntimeWarning, match="'bad'"):
        pm = kvcore.get_plugin_manager()
    record = plugin_records(pm)["bad"]
    assert record.status == "failed" and words in record.error
    assert pm.get_plugin("bad") is None
    assert [impl.plugin_name for impl in pm.hook.get_cache_scale_mapper.get_hookimpls()] == ["good"]
    assert sorted(name for name, caller in vars(pm.hook).items() if caller.get_hookimpls()) == [
        "get_cache_scale_mapper"
    ]
    # The name is free again (pluggy #733 would leave it taken by a half-registered plugin).
    pm.register(object(), name="bad")


def test_a_broken_plugin_does_not_stop_a_load(site: Site, tmp_path) -> None:
    from discovery_support import checkpoint

    site.plugin("broken", "import kvcore_dependency_that_is_not_installed\n")
    site.plugin("good", mapper_plugin("fmt", {r"\.k_proj\.kscale$": ".attn.k_scale"}))
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {"model.layers.0.self_attn.k_proj.kscale": 0.25})
    with pytest.warns(RuntimeWarning, match="broken"):
        report = kvcore.load(model, path)
    assert report.plugins == ["good"]
    assert float(model.model.layers[0].self_attn.attn.k_scale) == 0.25
