"""Runs inside the fresh venv: discovery and loads through the pip-installed distributions.

Usage: ``python venv_driver.py JOBS.json``. Each job is ``{"kind": "plugins"}``,
``{"kind": "load", "checkpoint": path, "model": {tiny_llama kwargs}}`` or
``{"kind": "strict-load", ...}`` (the same with ``KVCORE_STRICT_PLUGINS=1``). Prints one
JSON list of results: what was loaded, or the error's type and message, plus warnings.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import torch

import kvcore
from kvcore._plugins.manager import plugin_records
from kvcore.testing import tiny_llama

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def run(job: dict[str, Any]) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = _plugins() if job["kind"] == "plugins" else _load(job)
        except kvcore.KvcoreError as exc:
            result = {"error": type(exc).__name__, "message": str(exc)}
    result["warnings"] = [str(w.message) for w in caught]
    return result


def _plugins() -> dict[str, Any]:
    records = plugin_records(kvcore.get_plugin_manager())
    modules = {name: getattr(sys.modules.get(r.module), "__file__", None) for name, r in records.items()}
    return {
        "records": [r.as_dict() for r in records.values()],
        "files": {"kvcore": kvcore.__file__, **modules},
    }


def _load(job: dict[str, Any]) -> dict[str, Any]:
    if job["kind"] == "strict-load":
        os.environ["KVCORE_STRICT_PLUGINS"] = "1"
    try:
        kwargs = dict(job.get("model", {}))
        if "scale_dtype" in kwargs:
            kwargs["scale_dtype"] = DTYPES[kwargs["scale_dtype"]]
        if "scale_shape" in kwargs:
            kwargs["scale_shape"] = tuple(kwargs["scale_shape"])
        model = tiny_llama(**kwargs)
        report = kvcore.load(model, job["checkpoint"])
    finally:
        os.environ.pop("KVCORE_STRICT_PLUGINS", None)
    return {
        "quant_method": report.quant_method,
        "plugins": report.plugins,
        "kv_scales": report.kv_scales,
        "kv_scale_sources": report.kv_scale_sources,
        "dtypes": sorted({str(p.dtype) for n, p in model.named_parameters() if n.endswith("_scale") and ".attn." in n}),
    }


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        jobs = json.load(f)
    print(json.dumps([run(job) for job in jobs]))
