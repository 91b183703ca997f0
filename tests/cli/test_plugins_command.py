"""``kvcore plugins``: JSON shape, the first-party plugins, and a broken plugin that never fails it."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from types import SimpleNamespace

KEYS = ["name", "distribution", "version", "module", "hooks", "status", "error"]
FIRST_PARTY = {"fp8": ("kvcore-fp8", "kvcore_fp8"), "quark": ("kvcore-quark", "kvcore_quark"),
               "compressed-tensors": ("kvcore-compressed-tensors", "kvcore_compressed_tensors")}


HOOKS = {
    "fp8": ["get_cache_scale_mapper"],
    "quark": ["get_cache_scale_mapper", "get_cache_scale_meaning"],
    "compressed-tensors": ["get_cache_scale_mapper", "get_cache_scale_meaning"],
}
"""The hooks each first-party plugin implements (fp8 scales always mean plain K and V)."""


def _by_name(data: object) -> dict[str, dict[str, object]]:
    assert isinstance(data, list)
    return {entry["name"]: entry for entry in data}


def test_json_lists_every_first_party_plugin_with_the_documented_keys(run, cli: SimpleNamespace) -> None:
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = cli.as_json(result)
    assert all(list(entry) == KEYS for entry in data)
    plugins = _by_name(data)
    for name, (distribution, module) in FIRST_PARTY.items():
        entry = plugins[name]
        assert entry["distribution"] == distribution
        assert entry["version"] == md.version(distribution)
        assert entry["module"] == module
        assert entry["hooks"] == HOOKS[name]
        assert entry["status"] == "loaded"
        assert entry["error"] is None


def test_human_output_is_one_aligned_row_per_plugin(run_script, cli: SimpleNamespace) -> None:
    listed = _by_name(cli.as_json(run_script("plugins", "--json")))
    result = run_script("plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["plugin", "distribution", "version", "status", "hooks", "module"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(listed)
    # aligned: every row's status column starts where the header's does
    column = lines[0].index("status")
    for name, row in rows.items():
        assert row[column:].startswith(listed[name]["status"])
    assert "\x1b[" not in result.stdout  # no colour when stdout is not a terminal


def test_a_broken_plugin_is_reported_failed_and_the_others_still_load(
    run, cli: SimpleNamespace, broken_plugin: Path
) -> None:
    env = cli.base_env(PYTHONPATH=str(broken_plugin))
    result = run("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    plugins = _by_name(cli.as_json(result))
    broken = plugins["broken"]
    assert broken["status"] == "failed"
    assert broken["distribution"] == "kvcore-broken"
    assert broken["version"] == "0.0.1"
    assert "kvcore_missing_dependency" in broken["error"]
    assert all(plugins[name]["status"] == "loaded" for name in FIRST_PARTY)
    assert "broken" in result.stderr  # the failure is also a logged warning


def test_a_broken_plugin_shows_its_error_in_the_human_table(run_script, cli: SimpleNamespace,
                                                            broken_plugin: Path) -> None:
    result = run_script("plugins", env=cli.base_env(PYTHONPATH=str(broken_plugin)))
    assert result.returncode == 0
    broken_row = next(line for line in result.stdout.splitlines() if line.startswith("broken "))
    assert "failed" in broken_row and "kvcore-broken" in broken_row
    assert "kvcore_missing_dependency" in result.stdout


def test_strict_plugin_loading_does_not_make_the_listing_fail(run_script, cli: SimpleNamespace,
                                                             broken_plugin: Path) -> None:
    env = cli.base_env(PYTHONPATH=str(broken_plugin), KVCORE_STRICT_PLUGINS="1")
    result = run_script("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert _by_name(cli.as_json(result))["broken"]["status"] == "failed"


def test_a_disabled_plugin_is_listed_as_blocked(run_script, cli: SimpleNamespace) -> None:
    result = run_script("plugins", "--json", env=cli.base_env(KVCORE_DISABLE_PLUGINS="quark"))
    plugins = _by_name(cli.as_json(result))
    assert plugins["quark"]["status"] == "blocked"
    assert plugins["fp8"]["status"] == "loaded"


def test_inspect_still_works_beside_a_broken_plugin(run_script, cli: SimpleNamespace, broken_plugin: Path) -> None:
    fixture = cli.FIXTURES / "autofp8" / "head_k_v_scale"
    result = run_script("inspect", fixture, "--json", env=cli.base_env(PYTHONPATH=str(broken_plugin)))
    assert result.returncode == 0, result.stderr
    assert cli.as_json(result)["plugins"] == ["fp8"]


def test_with_no_plugin_installed_the_advice_installs_from_the_checkout() -> None:
    """The plugins are not published: the advice names the repository's folders, which exist."""
    import re

    from kvcore._cli.render import render_plugins
    from kvcore._cli.table import Style

    text = render_plugins([], Style(False))
    folders = re.findall(r"-e (\S+)", text)
    repo = Path(__file__).resolve().parents[2]
    assert sorted(folders) == sorted(str(p.relative_to(repo)) for p in (repo / "plugins").iterdir() if p.is_dir()
                                     and (p / "pyproject.toml").is_file())
