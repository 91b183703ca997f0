"""Plugins contained: whatever a plugin raises, prints or mutates stays its own problem.

- any ``BaseException`` but ``KeyboardInterrupt`` at import marks the plugin ``failed`` (the
  others keep working, ``kvcore plugins`` still exits 0); in a hook it is a ``PluginError``
  naming the plugin (``sys.exit()`` in a hook no longer ends ``kvcore inspect`` with status 0);
- what a plugin prints (at import or in a hook) goes to stderr, never into ``--json`` output;
- each plugin receives its own copy of the config: a plugin that edits it changes nothing for
  the next plugin (whose error would then blame config.json);
- a returned mapper whose ``map_name`` raises, or whose regex replacement is invalid, is a
  ``PluginError`` naming the plugin.
"""

from __future__ import annotations

import json

import pytest
from discovery_support import Site, checkpoint, mapper_plugin, snapshot, unchanged

import kvcore
from kvcore._cli.main import main
from kvcore._plugins.manager import get_plugin_manager, plugin_records

HOOK = "import kvcore\n\n@kvcore.hookimpl\ndef get_cache_scale_mapper(quant_config):\n    {body}\n"
GOOD = mapper_plugin("fmt", {r"\.k_scale$": ".attn.k_scale"})
KV = {"model.layers.0.self_attn.k_scale": 0.5}


@pytest.mark.parametrize(
    "raising",
    ["class Boom(BaseException):\n    pass\n\nraise Boom('from import')", "raise SystemExit(3)",
     "raise GeneratorExit('odd')"],
    ids=["base-exception", "system-exit", "generator-exit"],
)
def test_base_exception_at_import_marks_the_plugin_failed(
    site: Site, tmp_path, capsys: pytest.CaptureFixture[str], raising: str
) -> None:
    site.plugin("aaa-boom", raising)
    site.plugin("zzz-good", GOOD)
    with pytest.warns(RuntimeWarning, match=r"'aaa-boom'.*failed to load and is skipped"):
        records = plugin_records(get_plugin_manager())
    assert records["aaa-boom"].status == "failed" and records["zzz-good"].status == "loaded"
    path, model = checkpoint(tmp_path / "ckpt", "fmt", KV)
    assert kvcore.load(model, path).kv_scales["model.layers.0.self_attn.attn"]["k_scale"] == 0.5
    assert main(["plugins", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["aaa-boom"]["status"] == "failed"


def test_keyboard_interrupt_at_import_is_not_swallowed(site: Site) -> None:
    site.plugin("interrupted", "raise KeyboardInterrupt")
    with pytest.raises(KeyboardInterrupt):
        get_plugin_manager()


@pytest.mark.parametrize(
    ("body", "kind"),
    [("import sys; sys.exit(0)", "SystemExit"),
     ("class Boom(BaseException):\n        pass\n    raise Boom('in hook')", "Boom")],
    ids=["sys-exit", "base-exception"],
)
def test_base_exception_in_a_hook_is_a_plugin_error(
    site: Site, tmp_path, capsys: pytest.CaptureFixture[str], body: str, kind: str
) -> None:
    site.plugin("exiting", HOOK.format(body=body), dist="kvcore-exiting", version="2.0")
    path, model = checkpoint(tmp_path / "ckpt", "fmt", KV)
    before = snapshot(model)
    with pytest.raises(kvcore.PluginError, match=rf"'exiting' \(kvcore-exiting 2\.0\) raised {kind}"):
        kvcore.load(model, path)
    assert unchanged(model, before)
    assert main(["inspect", str(path), "--json"]) == 1  # an error anomaly, not status 0 and no output
    anomalies = json.loads(capsys.readouterr().out)["anomalies"]
    assert any("'exiting'" in a["message"] and kind in a["message"] for a in anomalies)


PRINTING = (
    "import kvcore\n\nprint('hello from the plugin import')\n\n"
    "@kvcore.hookimpl\ndef get_cache_scale_mapper(quant_config):\n"
    "    print('hello from the hook')\n"
    "    return kvcore.WeightsMapper(orig_to_new_regex={r'\\.k_scale$': '.attn.k_scale'})\n"
)


@pytest.mark.parametrize("command", ["plugins", "inspect"])
def test_what_a_plugin_prints_stays_off_json_output(
    site: Site, tmp_path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    site.plugin("chatty", PRINTING)
    path, _ = checkpoint(tmp_path / "ckpt", "fmt", KV)
    args = ["plugins", "--json"] if command == "plugins" else ["inspect", str(path), "--json"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    json.loads(out)  # nothing but the JSON document
    assert "hello from the plugin import" in err
    if command == "inspect":
        assert "hello from the hook" in err


MUTATING = (
    "import kvcore\n\n@kvcore.hookimpl\ndef get_cache_scale_mapper(quant_config):\n"
    "    quant_config.raw['quant_method'] = 'vandalised'\n"
    "    quant_config.raw['kv_cache_scheme'] = {'broken': True}\n"
    "    quant_config.model_config['num_key_value_heads'] = -1\n"
    "    quant_config.model_config.clear()\n"
    "    return None\n"
)
CHECKING = (
    "import kvcore\n\n@kvcore.hookimpl\ndef get_cache_scale_mapper(quant_config):\n"
    "    config = quant_config.model_config.get('quantization_config')\n"
    "    if quant_config.raw != {'quant_method': 'fmt'} or config is None:\n"
    "        raise kvcore.QuantConfigError(f'unexpected config {dict(quant_config.raw)!r}')\n"
    "    return kvcore.WeightsMapper(orig_to_new_regex={r'\\.k_scale$': '.attn.k_scale'})\n"
)


def test_each_plugin_gets_its_own_copy_of_the_config(site: Site, tmp_path) -> None:
    site.plugin("aaa-mutating", MUTATING)
    site.plugin("zzz-checking", CHECKING)
    path, model = checkpoint(tmp_path / "ckpt", "fmt", KV)
    report = kvcore.load(model, path)
    assert report.plugins == ["zzz-checking"] and report.quant_method == "fmt"
    assert json.loads((path / "config.json").read_text())["quantization_config"] == {"quant_method": "fmt"}


RAISING_MAPPER = (
    "import kvcore\n\nclass Mapper(kvcore.WeightsMapper):\n"
    "    def map_name(self, name):\n        raise ValueError('cannot map ' + name)\n\n"
    "@kvcore.hookimpl\ndef get_cache_scale_mapper(quant_config):\n    return Mapper()\n"
)


def test_a_mapper_whose_map_name_raises_is_a_plugin_error(site: Site, tmp_path) -> None:
    site.plugin("aaa-good", GOOD)
    site.plugin("zzz-raising", RAISING_MAPPER, dist="kvcore-raising", version="0.3")
    path, model = checkpoint(tmp_path / "ckpt", "fmt", KV)
    before = snapshot(model)
    with pytest.raises(kvcore.PluginError, match=r"'zzz-raising' \(kvcore-raising 0\.3\)'s mapper raised ValueError"):
        kvcore.load(model, path)
    assert unchanged(model, before)


def test_a_mapper_with_an_invalid_replacement_is_a_plugin_error(site: Site, tmp_path) -> None:
    site.plugin("badgroup", mapper_plugin("fmt", {r"\.k_scale$": r".attn.\9"}))
    path, model = checkpoint(tmp_path / "ckpt", "fmt", KV)
    with pytest.raises(kvcore.PluginError, match=r"'badgroup'.*invalid replacement"):
        kvcore.load(model, path)
