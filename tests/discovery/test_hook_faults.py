"""Faults inside a plugin's hook become errors that name the plugin and its distribution."""

from __future__ import annotations

import pytest
from discovery_support import Site, checkpoint, snapshot, unchanged

import kvcore

HOOK = "import kvcore\n\n@kvcore.hookimpl\ndef get_cache_scale_mapper(quant_config):\n    {body}\n"


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        ("raise KeyError('kv_cache_scheme')", kvcore.PluginError, r"raised KeyError in get_cache_scale_mapper"),
        ("return {'k_scale': 'attn.k_scale'}", kvcore.PluginError, r"returned a dict.*WeightsMapper or None"),
        ("return 'nonsense'", kvcore.PluginError, r"returned a str"),
        ("raise kvcore.QuantConfigError('kv_cache_scheme: unsupported')", kvcore.QuantConfigError,
         r"kv_cache_scheme: unsupported"),
    ],
    ids=["exception", "dict", "str", "kvcore-error"],
)
def test_hook_fault_names_plugin_distribution_and_version(site: Site, tmp_path, body, error, words) -> None:
    site.plugin("faulty", HOOK.format(body=body), dist="kvcore-faulty-dist", version="7.1")
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {})
    before = snapshot(model)
    with pytest.raises(error, match=rf"'faulty' \(kvcore-faulty-dist 7\.1\).*{words}") as caught:
        kvcore.load(model, path)
    assert unchanged(model, before)
    if error is kvcore.PluginError and "KeyError" in words:
        assert isinstance(caught.value.__cause__, KeyError)  # the plugin's traceback is kept


def test_a_faulty_hook_is_not_masked_by_a_good_plugin(site: Site, tmp_path) -> None:
    site.plugin("aaa-good", HOOK.format(body="return kvcore.WeightsMapper()"))
    site.plugin("zzz-bad", HOOK.format(body="return 42"))
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {})
    with pytest.raises(kvcore.PluginError, match=r"'zzz-bad' \(kvcore-zzz-bad 1\.0\) returned a int"):
        kvcore.load(model, path)


def test_hooks_are_not_called_for_an_unquantized_checkpoint(site: Site, tmp_path) -> None:
    site.plugin("bad", HOOK.format(body="raise RuntimeError('must not be called')"))
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {})
    (path / "config.json").write_text('{"model_type": "llama"}')
    assert kvcore.load(model, path).plugins == []
