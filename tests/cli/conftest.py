"""Fixtures for the command-line tests: run the installed ``kvcore`` script in a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kvcore.testing import write_checkpoint

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "real"
SCRIPT = Path(sys.executable).with_name("kvcore")

Run = Callable[..., subprocess.CompletedProcess[str]]

AUTOFP8 = {"quant_method": "fp8", "activation_scheme": "static", "kv_cache_scheme": "static",
           "ignored_layers": ["lm_head"]}
FP8_ARGS = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


def compressed_tensors(strategy: str = "tensor") -> dict[str, object]:
    """A compressed-tensors quantization_config as llm-compressor 0.14 writes it (docs/formats.md)."""
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": FP8_ARGS, "input_activations": FP8_ARGS}},
        "kv_cache_scheme": {**FP8_ARGS, "strategy": strategy},
    }


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCORE_") and k != "NO_COLOR"}
    env.update(extra)
    return env


@pytest.fixture(params=["script", "module"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run the command line as the console script, or as ``python -m kvcore``."""
    return make_runner(request.param)


@pytest.fixture
def run_script() -> Run:
    return make_runner("script")


def make_runner(kind: str) -> Run:
    prefix = [str(SCRIPT)] if kind == "script" else [sys.executable, "-m", "kvcore"]

    def runner(*args: object, env: dict[str, str] | None = None, cwd: Path | None = None) -> (
            subprocess.CompletedProcess[str]):
        return subprocess.run([*prefix, *map(str, args)], capture_output=True, text=True, env=env or base_env(),
                              cwd=cwd or REPO, timeout=300, check=False)

    return runner


def as_json(result: subprocess.CompletedProcess[str]) -> object:
    assert result.stdout, f"no output; stderr: {result.stderr}"
    return json.loads(result.stdout)


def kv_layers(values: dict[str, float], layers: int = 2) -> dict[str, torch.Tensor]:
    """Tensors ``model.layers.N.self_attn.<suffix>`` holding ``value * (N + 1)``, float32 ``()``."""
    return {
        f"model.layers.{n}.self_attn.{suffix}": torch.tensor(value * (n + 1), dtype=torch.float32)
        for n in range(layers)
        for suffix, value in values.items()
    }


@pytest.fixture
def checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Write a small checkpoint (a plain weight plus ``tensors``) and return its directory."""
    counter = iter(range(1000))

    def make(tensors: dict[str, torch.Tensor], **kwargs: object) -> Path:
        directory = tmp_path / f"ckpt{next(counter)}"
        weights = {"model.embed_tokens.weight": torch.zeros(4, 8, dtype=torch.bfloat16), **tensors}
        kwargs.setdefault("config", {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4,
                                     "num_key_value_heads": 2})
        return write_checkpoint(directory, weights, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def broken_plugin(tmp_path: Path) -> Path:
    """A directory for PYTHONPATH holding a distribution whose ``kvcore`` entry point fails to import."""
    root = tmp_path / "site"
    info = root / "kvcore_broken-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kvcore-broken\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[kvcore]\nbroken = kvcore_broken_plugin\n")
    (root / "kvcore_broken_plugin.py").write_text(
        "import kvcore_missing_dependency  # noqa: F401  (not installed: the import fails)\n"
    )
    return root


@pytest.fixture
def cli() -> SimpleNamespace:
    """The helpers above, for test modules (importlib mode cannot import conftest by name)."""
    return SimpleNamespace(as_json=as_json, kv_layers=kv_layers, compressed_tensors=compressed_tensors,
                           base_env=base_env, AUTOFP8=AUTOFP8, FIXTURES=FIXTURES, SCRIPT=SCRIPT)
