"""The plugin contract: everything a kvcore plugin author needs, on one screen.

A plugin is a module (or object) with functions decorated ``@kvcore.hookimpl`` whose names
and arguments match the specs below. Ship it as a distribution that declares::

    [project.entry-points.kvcore]
    myformat = "kvcore_myformat"

``pip install`` it and every engine that uses kvcore finds it. A plugin imports only
kvcore's public names. ``docs/writing-a-plugin.md`` walks through one, and
``kvcore.testing.check_plugin`` checks one against this contract.

Registration refuses a function marked ``@kvcore.hookimpl`` whose name is not a hook below
(a typo would otherwise never be called), arguments that the spec does not name, and
wrappers (``hookwrapper``/``wrapper``): kvcore calls each plugin's hook on its own, in
entry-point-name order, so that a fault or a conflict names the plugin responsible.

Compatibility policy: hook arguments may be added in later kvcore versions, never removed
or renamed. pluggy passes a hook only the arguments its implementation names, so a plugin
written today keeps working. New hooks may be added; none is ever required. Declare the
kvcore versions you support in your distribution's dependencies (``kvcore>=0.1,<0.2``); a
plugin whose requirement excludes the running kvcore is reported as ``incompatible`` and
not used.
"""

from __future__ import annotations

import pluggy

from kvcore._checkpoint.quant_config import QuantConfig
from kvcore._mapper import WeightsMapper
from kvcore._meaning import ScaleMeaning

__all__ = ["PROJECT_NAME", "get_cache_scale_mapper", "get_cache_scale_meaning", "hookimpl", "hookspec"]

PROJECT_NAME = "kvcore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def get_cache_scale_mapper(quant_config: QuantConfig) -> WeightsMapper | None:
    """Return a mapper that renames this format's KV-cache scales, or ``None`` if not yours.

    ``quant_config.quant_method`` is the method as written (``"fp8"``, ``"quark"``, ...);
    ``quant_config.raw`` is the checkpoint's quantization config dict (for a checkpoint with
    only a ModelOpt ``hf_quant_config.json``: its ``quantization`` section, with
    ``quant_method == "modelopt"``). Return ``None`` for formats that are not yours, and an
    empty ``WeightsMapper()`` for your format when its checkpoints carry no KV scales.
    Validate ``raw`` and raise ``kvcore.QuantConfigError`` naming the field when it is bad
    or unsupported (``kvcore.quant_config_error`` words a pydantic failure so). Targets are
    ``<attention>.attn.{k,v,q,prob}_scale``; map every name the same way when applied twice
    (idempotent). Called once per load, never for an unquantized checkpoint.
    """


@hookspec
def get_cache_scale_meaning(quant_config: QuantConfig) -> ScaleMeaning | None:
    """Say what this format's KV-cache scales measure for this model, or ``None`` (plain K and V).

    Optional. Called after ``get_cache_scale_mapper`` returned a mapper, with the same
    ``quant_config``, whose ``model_config`` is the checkpoint's ``config.json``. Return a
    ``kvcore.ScaleMeaning`` when the answer depends on the model or the producer's settings:
    an MLA latent (``describes="mla_latent"``) or MLA per-head keys and values
    (``"mla_per_head"``), the KV dtype calibrated for, or a ``caveat`` the core turns into a
    warning (for example scales measured before the model's ``k_norm``).
    """
