"""`import kvcore`, `kvcore plugins` and `kvcore inspect` never import torch: the commands answer at once.

``python -X importtime`` lists every module a process imports, on stderr: the commands run as
an operator runs them (``python -m kvcore ...``), and torch must not be among the modules.
``inspect`` reads headers and decodes its scales in pure Python (kvcore/_checkpoint/decode.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kvcore._checkpoint.reader import read_checkpoint
from kvcore._checkpoint.safetensors import read_tensor
from kvcore.testing import write_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COMMANDS = {
    "plugins": ["plugins", "--json"],
    "inspect": ["inspect", str(FIXTURES / "real" / "quark" / "fp8_kv_attn_fp8_eager"), "--json"],
    "inspect-tp": ["inspect", str(FIXTURES / "real2" / "quark" / "phi3_fp8_kv_fp8"), "--tp-size", "2", "--layers"],
    "inspect-refused": ["inspect", str(FIXTURES / "real2" / "modelopt" / "qwen3_fp8_kv_fp8")],
}


def _imported(args: list[str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "kvcore", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", done.stderr, re.MULTILINE))
    return done, modules


def _no_torch(done: subprocess.CompletedProcess[str], modules: set[str]) -> None:
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "kvcore._cli.main" in modules  # the probe sees the command's imports
    assert done.stdout.strip()
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, sorted(modules)[:20]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_command_never_imports_torch(command: str) -> None:
    _no_torch(*_imported(COMMANDS[command]))


def test_per_head_scales_split_over_ranks_without_torch(tmp_path: Path) -> None:
    heads = {f"model.layers.0.self_attn.{s}": torch.tensor([0.01, 0.02, 0.03, 0.04]).reshape(4, 1, 1)
             for s in ("k_scale", "v_scale")}
    config = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 8, "num_key_value_heads": 4,
              "num_hidden_layers": 1}
    scheme = {"num_bits": 8, "type": "float", "strategy": "attn_head", "dynamic": False, "symmetric": True}
    write_checkpoint(tmp_path, heads, config=config,
                     quantization_config={"quant_method": "compressed-tensors", "kv_cache_scheme": scheme})
    done, modules = _imported(["inspect", str(tmp_path), "--tp-size", "2", "--json"])
    _no_torch(done, modules)
    assert json.loads(done.stdout)["tensor_parallel"]["ranks"] == [{"rank": 0, "heads": [0, 1]},
                                                                   {"rank": 1, "heads": [2, 3]}]


def test_inspect_without_torch_says_what_it_says_with_it() -> None:
    """The pure decoder's values are the ones the loader's torch reader gives (bit for bit: test_decode.py)."""
    done, _ = _imported(COMMANDS["inspect"])
    data = json.loads(done.stdout)
    ckpt = read_checkpoint(FIXTURES / "real" / "quark" / "fp8_kv_attn_fp8_eager")
    for scales in data["layers"].values():
        for entry in scales.values():
            assert entry["value"] == read_tensor(ckpt.tensors[entry["tensor"]]).to(torch.float32).item()


def test_every_public_name_still_resolves() -> None:
    import kvcore

    assert all(getattr(kvcore, name) is not None for name in kvcore.__all__)
    assert set(kvcore.__all__) <= set(dir(kvcore))
