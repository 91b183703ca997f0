"""``kvcore.quant_config_error``: a plugin's pydantic ``ValidationError`` worded for the user.

A plugin validates its format's quantization config with a pydantic model; pydantic's own
message (``1 validation error for Fp8Config / kv_cache_scheme / Input should be 'static'
[type=literal_error, ...]``) speaks of the model, not of the checkpoint. This helper words every
failure one way for all plugins: the field by its path in the checkpoint's config, the value
found there, and what is accepted. pydantic is not imported here: ``import kvcore`` stays cheap,
and the error is read through its documented ``errors()`` list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kvcore._errors import QuantConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["quant_config_error"]

_LONGEST_VALUE = 60
"""Values whose repr is longer are cut: one huge field must not bury the others."""


def quant_config_error(
    error: ValidationError,
    source: str = "",
    *,
    format_name: str = "",
    accepted: str = "",
    accepted_for: tuple[str, ...] = (),
) -> QuantConfigError:
    """A ``kvcore.QuantConfigError`` that says, for each of ``error``'s failures, field, value and what is accepted.

    ``source`` is ``quant_config.source`` (``/ckpt/config.json:quantization_config``): the file
    is named, and its key (``quantization_config``, ``compression_config``...) starts each field
    path. ``format_name`` names the format (``"Quark"``); ``accepted`` is one sentence on what
    kvcore can load, added once at the end, when a failure lies under one of the fields
    ``accepted_for`` names (top-level field names, ``("kv_cache_scheme",)``) or, with
    ``accepted_for`` empty, always: a sentence about the KV-cache scheme does not answer a
    misspelt ``ignore`` list. Raise the result ``from None`` in your hook or parse
    function: pydantic's traceback adds nothing for the user. A failure reads
    ``quantization_config.kv_cache_scheme is 'dynamic': expected 'static'``; a failure of a
    cross-field validator (no field of its own) is its message as written.
    """
    section = _section(source)
    failures = error.errors(include_url=False)
    problems = "; ".join(_problem(failure, section) for failure in failures)
    name = f"{format_name} " if format_name else ""
    where = f" in {source}" if source else ""
    answered = not accepted_for or any(f["loc"] and f["loc"][0] in accepted_for for f in failures)
    tail = f". {accepted.rstrip('. ')}" if accepted and answered else ""
    return QuantConfigError(f"invalid or unsupported {name}quantization config{where}: {problems}{tail}")


def _section(source: str) -> str:
    """The config key ``source`` ends with (``...config.json:compression_config``), for field paths."""
    key = source.rpartition(":")[2]
    return key if key and all(part.isidentifier() for part in key.split(".")) else "quantization_config"


def _problem(failure: Mapping[str, Any], section: str) -> str:
    reason = _reason(str(failure["msg"]))
    if not failure["loc"]:  # a model-level rule: its message names the fields itself
        return reason
    path = ".".join([section, *(str(part) for part in failure["loc"])])
    if failure["type"] == "missing":
        return f"{path} is missing: it is required"
    return f"{path} is {_shown(failure.get('input'))}: {reason}"


def _reason(message: str) -> str:
    """pydantic's wording made the user's: what is expected, not what the "input" should be."""
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = re.sub(r" or instance of \w+", "", message)  # the model's class name means nothing in a config
    return "expected " + message.removeprefix("Input should be ") if message.startswith("Input should be ") else message


def _shown(value: Any) -> str:
    """A string as pydantic quotes one (``'static'``), anything else as the JSON file has it (``false``)."""
    try:
        shown = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):  # not JSON (a host validated objects): Python's spelling
        shown = repr(value)
    return shown if len(shown) <= _LONGEST_VALUE else shown[: _LONGEST_VALUE - 3] + "..."
