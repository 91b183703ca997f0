"""The plugin author's kit behind ``kvcore.testing``: register for a test, assert a mapping, conform.

Everything here calls a plugin exactly the way ``kvcore.load`` does (the same registration
checks, the same isolated hook call), so a plugin that passes here behaves the same when
pip-installed.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pluggy

from kvcore._checkpoint.quant_config import QuantConfig
from kvcore._errors import KvcoreError
from kvcore._mapper import WeightsMapper
from kvcore._plugins.contributions import collect_mappers
from kvcore._plugins.manager import (
    PluginRecord,
    _Manager,
    get_plugin_manager,
    hook_names,
    plugin_records,
    register_plugin,
)

__all__ = ["REAL_LOOKING_NAMES", "assert_maps", "check_plugin", "registered_plugin"]

_P = "model.layers.{i}.self_attn"
_PER_LAYER = [
    *(f"{_P}.{p}_proj.{t}" for p in "qkvo" for t in ("weight", "weight_scale", "input_scale", "output_scale")),
    *(f"{_P}.{s}" for s in ("k_scale", "v_scale", "q_scale", "kv_scale", "prob_output_scale")),
    *(f"{_P}.{s}_zero_point" for s in "qkv"),
    f"{_P}.k_proj.k_scale", f"{_P}.v_proj.v_scale", f"{_P}.k_proj.k_bias", f"{_P}.v_proj.v_bias",
    *(f"{_P}.attn.{s}_scale" for s in ("k", "v", "q", "prob")),
    *(f"model.layers.{{i}}.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")),
    "model.layers.{i}.input_layernorm.weight", "model.layers.{i}.post_attention_layernorm.weight",
]
REAL_LOOKING_NAMES: tuple[str, ...] = (
    "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
    *(name.format(i=i) for i in (0, 1, 10) for name in _PER_LAYER),
)
"""Tensor names as the quantization tools of docs/formats.md write them (and as kvcore maps them)."""

FOREIGN_CONFIGS: tuple[QuantConfig, ...] = (
    QuantConfig("fp8", {"quant_method": "fp8", "activation_scheme": "static", "kv_cache_scheme": "static"}),
    QuantConfig("quark", {"quant_method": "quark", "export": {"kv_cache_group": ["*k_proj", "*v_proj"]}}),
    QuantConfig("compressed-tensors", {"quant_method": "compressed-tensors", "kv_cache_scheme": {
        "num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}}),
    QuantConfig("modelopt", {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}),
    QuantConfig("gptq", {"quant_method": "gptq", "bits": 4, "group_size": 128}),
    QuantConfig("kvcore-conformance-unknown", {"quant_method": "kvcore-conformance-unknown"}),
)
"""Real-looking configs of the formats kvcore knows; a plugin returns ``None`` for those not its own."""

_WRONG_VALUES: tuple[Any, ...] = (None, -1, "kvcore-conformance-bogus", [], {})


@contextlib.contextmanager
def registered_plugin(
    plugin: object,
    name: str | None = None,
    *,
    distribution: str = "test",
    version: str = "0",
    pm: pluggy.PluginManager | None = None,
) -> Iterator[pluggy.PluginManager]:
    """Register ``plugin`` (a module or object with ``@kvcore.hookimpl`` functions) for one block.

    It goes on ``pm``, by default the manager that ``kvcore.load`` uses when called without
    ``plugins=`` / ``disable_plugins=`` (``kvcore.get_plugin_manager()``), with the same checks
    as an installed plugin, and messages cite it as ``'name' (distribution version)``. On
    leaving the block it is unregistered and the manager is as before. Yields the manager.
    """
    manager = pm if pm is not None else get_plugin_manager()
    plugin_name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    records = plugin_records(manager)
    if manager.get_plugin(plugin_name) is not None or plugin_name in records:
        raise ValueError(f"a plugin named {plugin_name!r} is already registered; pass another name=")
    register_plugin(manager, plugin, plugin_name)
    module = getattr(plugin, "__name__", type(plugin).__qualname__)
    if hasattr(manager, "records"):
        records[plugin_name] = PluginRecord(
            plugin_name, distribution, version, module, hook_names(manager, plugin_name)
        )
    try:
        yield manager
    finally:
        manager.unregister(name=plugin_name)
        records.pop(plugin_name, None)


def assert_maps(mapper: WeightsMapper, table: Mapping[str, str | None]) -> None:
    """Assert that ``mapper`` sends each name of ``table`` to its target (``None``: dropped).

    On failure the ``AssertionError`` lists every name that went elsewhere, one per line, as
    ``name: expected X, got Y``, so that one run shows the whole difference.
    """
    if not isinstance(mapper, WeightsMapper):
        raise AssertionError(f"expected a kvcore.WeightsMapper, got {type(mapper).__name__}")
    wrong = []
    for name, expected in table.items():
        got = mapper.map_name(name)
        if got != expected:
            wrong.append(f"  {name}: expected {_shown(expected)}, got {_shown(got)}")
    if wrong:
        raise AssertionError(f"{len(wrong)} of {len(table)} names map differently:\n" + "\n".join(wrong))


def _shown(target: str | None) -> str:
    return "dropped (None)" if target is None else repr(target)


def check_plugin(
    plugin: object,
    *,
    own_configs: Iterable[QuantConfig | Mapping[str, Any]],
    foreign_configs: Iterable[QuantConfig | Mapping[str, Any]] | None = None,
    bad_configs: Iterable[QuantConfig | Mapping[str, Any]] = (),
    names: Iterable[str] = (),
) -> None:
    """Check ``plugin`` against kvcore's plugin contract; raise one ``AssertionError`` listing every breach.

    - it registers the way ``kvcore.load`` registers it: known hooks only, signatures that
      match :mod:`kvcore.hookspecs`, no wrappers;
    - a module plugin imports only kvcore's public names (no ``kvcore._private`` module);
    - for each of ``own_configs`` (a ``kvcore.QuantConfig``, or a raw config dict with its
      ``quant_method``) it returns a ``kvcore.WeightsMapper``;
    - for each of ``foreign_configs`` it returns ``None`` (default: real-looking configs of
      every other format kvcore knows, and a made-up one);
    - each own mapper is idempotent (``map(map(x)) == map(x)``) over ``names`` and
      :data:`REAL_LOOKING_NAMES`;
    - each of ``bad_configs``, and each own config with one field replaced by a value of the
      wrong type, either works or raises a ``kvcore.KvcoreError`` (never a bare
      ``KeyError``, ``TypeError``, pydantic ``ValidationError``, ...).
    """
    problems: list[str] = []
    pm = _manager(plugin, problems)
    if pm is not None:
        own = [QuantConfig.coerce(c) for c in own_configs]
        methods = {c.quant_method for c in own}
        foreign = [QuantConfig.coerce(c) for c in foreign_configs] if foreign_configs is not None else [
            c for c in FOREIGN_CONFIGS if c.quant_method not in methods
        ]
        all_names = [*names, *REAL_LOOKING_NAMES]
        for config in own:
            mapper = _mapper(pm, config, problems)
            if mapper is not None:
                problems += _idempotence(mapper, config, all_names)
            problems += [p for variant in _mutations(config) for p in _only_kvcore_errors(pm, variant)]
        for config in foreign:
            _mapper(pm, config, problems, expect_none=True)
        for bad in bad_configs:
            problems += _only_kvcore_errors(pm, QuantConfig.coerce(bad), must_raise=True)
    problems += _private_imports(plugin)
    if problems:
        raise AssertionError(
            f"plugin {_name(plugin)!r} breaks kvcore's plugin contract ({len(problems)} problem(s)):\n"
            + "\n".join(f"- {p}" for p in problems)
        )


def _name(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__name__


def _manager(plugin: object, problems: list[str]) -> pluggy.PluginManager | None:
    pm = _Manager()
    try:
        register_plugin(pm, plugin, _name(plugin))
    except KvcoreError as exc:
        problems.append(f"registration: {exc}")
        return None
    if not hook_names(pm, _name(plugin)):
        problems.append("registration: the plugin implements no hook; decorate its functions with @kvcore.hookimpl")
    return pm


def _mapper(pm: pluggy.PluginManager, config: QuantConfig, problems: list[str],
            expect_none: bool = False) -> WeightsMapper | None:
    try:
        found = collect_mappers(pm, config)
    except KvcoreError as exc:
        problems.append(f"{_describe(config)}: the hook raised {type(exc).__name__}: {exc}")
        return None
    mapper = found[0].mapper if found else None
    if expect_none and mapper is not None:
        problems.append(f"{_describe(config)} is not this plugin's format, but the hook returned a mapper "
                        f"instead of None: {mapper}")
    elif not expect_none and mapper is None:
        problems.append(f"{_describe(config)}: the hook returned None for one of the plugin's own configs")
    return mapper


def _describe(config: QuantConfig) -> str:
    return f"quant_method {config.quant_method!r} with raw {dict(config.raw)!r}"


def _idempotence(mapper: WeightsMapper, config: QuantConfig, names: list[str]) -> list[str]:
    problems = []
    for name in names:
        once = mapper.map_name(name)
        twice = mapper.map_name(once) if once is not None else None
        if once is not None and twice != once:
            problems.append(
                f"{_describe(config)}: mapping is not idempotent: {name!r} -> {once!r} -> {twice!r}; "
                "anchor each rule so that an already-mapped name no longer matches"
            )
    return problems


def _mutations(config: QuantConfig) -> Iterator[QuantConfig]:
    for key in config.raw:
        if key == "quant_method":
            continue
        for wrong in _WRONG_VALUES:
            if config.raw[key] != wrong:
                yield QuantConfig(config.quant_method, {**config.raw, key: wrong}, config.source)


def _only_kvcore_errors(pm: pluggy.PluginManager, config: QuantConfig, must_raise: bool = False) -> list[str]:
    # The implementation itself, so that kvcore's own wrapping cannot hide what it raised.
    impls = pm.hook.get_cache_scale_mapper.get_hookimpls()
    for impl in impls:
        try:
            result = impl.function(*(config for _ in impl.argnames))
        except KvcoreError:
            continue
        except Exception as exc:  # noqa: BLE001 - reporting any other exception is the point
            return [f"{_describe(config)}: the hook raised {type(exc).__name__} ({exc}); raise "
                    "kvcore.QuantConfigError naming the field instead"]
        if result is not None and not isinstance(result, WeightsMapper):
            return [f"{_describe(config)}: the hook returned a {type(result).__name__}, not a WeightsMapper or None"]
        if must_raise:
            return [f"{_describe(config)}: the hook accepted a config listed as bad instead of raising "
                    "kvcore.QuantConfigError"]
    return []


_PRIVATE = re.compile(r"^\s*(?:from\s+kvcore\._\w+|import\s+kvcore\._\w+|from\s+kvcore\s+import\s+_)", re.M)


def _private_imports(plugin: object) -> list[str]:
    if not inspect.ismodule(plugin):
        return []
    try:
        source = inspect.getsource(plugin)
    except (OSError, TypeError):
        return []
    return [
        f"imports kvcore's private name(s) ({match.group(0).strip()}); use only names from "
        "`import kvcore` and kvcore.testing, which keep working across kvcore releases"
        for match in _PRIVATE.finditer(source)
    ]
