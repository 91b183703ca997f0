"""Allow- and block-lists: ``KVCORE_PLUGINS`` / ``KVCORE_DISABLE_PLUGINS`` and the same arguments."""

from __future__ import annotations

import pytest
from discovery_support import Site, checkpoint, mapper_plugin

import kvcore
from kvcore._plugins.manager import plugin_records


@pytest.fixture
def three(site: Site) -> Site:
    for name in ("a", "b", "c"):
        site.plugin(name, mapper_plugin("fmt", {rf"\.{name}$": f".{name}2"}))
    return site


def _statuses(pm: object) -> dict[str, str]:
    return {name: record.status for name, record in plugin_records(pm).items()}


@pytest.mark.parametrize(
    ("allow", "block", "loaded"),
    [
        (None, None, "abc"),
        ("a,c", None, "ac"),
        (" b , ", None, "b"),
        ("", None, ""),
        (None, "b", "ac"),
        (None, "", "abc"),
        ("a,b", "b", "a"),
    ],
)
@pytest.mark.usefixtures("three")
def test_environment_variables(monkeypatch: pytest.MonkeyPatch, allow, block, loaded) -> None:
    if allow is not None:
        monkeypatch.setenv("KVCORE_PLUGINS", allow)
    if block is not None:
        monkeypatch.setenv("KVCORE_DISABLE_PLUGINS", block)
    statuses = _statuses(kvcore.get_plugin_manager())
    assert statuses == {n: "loaded" if n in loaded else "blocked" for n in "abc"}


@pytest.mark.parametrize(
    ("plugins", "disable", "loaded"), [([], None, ""), (["c"], [], "c"), (["c"], None, ""), ("a,b", ["a"], "b")]
)
@pytest.mark.usefixtures("three")
def test_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch, plugins, disable, loaded) -> None:
    monkeypatch.setenv("KVCORE_PLUGINS", "a,b,c")
    monkeypatch.setenv("KVCORE_DISABLE_PLUGINS", "c")
    statuses = _statuses(kvcore.get_plugin_manager(plugins=plugins, disable_plugins=disable))
    assert statuses == {n: "loaded" if n in loaded else "blocked" for n in "abc"}


@pytest.mark.usefixtures("three")
def test_blocked_records_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCORE_DISABLE_PLUGINS", "a")
    records = plugin_records(kvcore.get_plugin_manager(plugins=["a", "b"]))
    assert "KVCORE_DISABLE_PLUGINS" in records["a"].error
    assert "plugins= argument" in records["c"].error


@pytest.mark.parametrize(("variable", "argument"), [("KVCORE_PLUGINS", "plugins"),
                                                    ("KVCORE_DISABLE_PLUGINS", "disable_plugins")])
@pytest.mark.usefixtures("three")
def test_unknown_names_are_warned(monkeypatch: pytest.MonkeyPatch, variable: str, argument: str) -> None:
    monkeypatch.setenv(variable, "a,tpyo")
    with pytest.warns(RuntimeWarning, match=rf"{variable} names plugin 'tpyo', which is not installed.*a, b, c"):
        kvcore.get_plugin_manager()
    with pytest.warns(RuntimeWarning, match=rf"the {argument}= argument names plugin 'nope'"):
        kvcore.get_plugin_manager(**{argument: ["nope"]})


@pytest.mark.usefixtures("three")
def test_load_takes_the_same_arguments(tmp_path) -> None:
    path, model = checkpoint(tmp_path / "ckpt", "fmt", {})
    assert kvcore.load(model, path, plugins=["b"]).plugins == ["b"]
    assert kvcore.load(model, path, disable_plugins="a").plugins == ["b", "c"]
    with pytest.raises(kvcore.QuantConfigError, match=r"'fmt'.*no installed kvcore plugin handles"):
        kvcore.load(model, path, plugins="")
