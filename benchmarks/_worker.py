"""One contender in its own process: build the model, load the checkpoint, print JSON.

``python _worker.py CONTENDER CHECKPOINT REPEAT`` prints ``{"times": [...], "peak_rss": ...,
"model_rss": ..., "tensors": ..., "bytes": ...}``. One untimed load runs first, so that
imports and plugin discovery (measured on their own in (d)) stay out of the timings; the
page cache is warm because the checkpoint was just written or read.

Runs under kvcore's venv and under the vLLM venv, so it imports kvcore or vLLM lazily.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _data import shard_files, spec_of
from _models import dense_model, packed_model, packed_target

Loader = Callable[[], None]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _kvcore(model: torch.nn.Module, ckpt: Path) -> Loader:
    import kvcore

    spec = spec_of(ckpt)
    if spec.get("kv_scales"):
        for layer in model.model.layers:
            heads = spec["hidden"] // spec["head_dim"]
            layer.self_attn.attn = kvcore.Attention(heads, spec["head_dim"], spec["kv_heads"])
    return lambda: kvcore.load(model, ckpt) and None


def _raw(model: torch.nn.Module, ckpt: Path) -> Loader:
    return _raw_loop(model, ckpt, packed=False)


def _raw_packed(model: torch.nn.Module, ckpt: Path) -> Loader:
    return _raw_loop(model, ckpt, packed=True)


def _raw_loop(model: torch.nn.Module, ckpt: Path, *, packed: bool) -> Loader:
    """The loop a user writes by hand: name -> parameter, ``copy_`` (or, packed, the fused
    parameter's ``weight_loader`` with the shard id)."""
    from safetensors import safe_open

    files = shard_files(ckpt)

    def load() -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for file in files:
                with safe_open(file, framework="pt") as f:
                    for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                        target, shard = packed_target(name) if packed else (name, None)
                        param = params[target]
                        if shard is None:
                            param.copy_(f.get_tensor(name))
                        else:
                            param.weight_loader(param, f.get_tensor(name), shard)

    return load


def _memcpy(model: torch.nn.Module, ckpt: Path) -> Loader:
    """The floor: the same bytes, already in anonymous memory, copied into the parameters.

    The fastest copy for each size: torch's ``copy_`` (all threads) for big tensors, one
    ``memmove`` call for small ones (where ``copy_``'s dispatch would dominate).
    """
    from safetensors import safe_open

    params = dict(model.named_parameters())
    big, small, sources = [], [], []
    for file in shard_files(ckpt):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                source = f.get_tensor(name).clone()
                sources.append(source)
                if source.nbytes >= 1 << 20:
                    big.append((params[name], source))
                else:
                    small.append((params[name].data_ptr(), source.data_ptr(), source.nbytes))
    memmove = ctypes.memmove

    def load() -> None:
        assert sources  # the pointers point into these: keep them alive as long as the loader
        for param, source in big:
            param.copy_(source)
        for dst, src, n in small:
            memmove(dst, src, n)

    return load


def _vllm(model: torch.nn.Module, ckpt: Path) -> Loader:
    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator
    from vllm.model_executor.models.utils import AutoWeightsLoader

    files = [str(f) for f in shard_files(ckpt)]

    def load() -> None:
        AutoWeightsLoader(model).load_weights(safetensors_weights_iterator(files, False))

    return load


CONTENDERS = {"kvcore": _kvcore, "raw": _raw, "memcpy": _memcpy, "vllm": _vllm,
              "kvcore-packed": _kvcore, "raw-packed": _raw_packed}
PACKED = {"kvcore-packed", "raw-packed"}
"""Contenders that load into the engine-shaped model (fused qkv/gate_up, shard-id loaders)."""


def main(contender: str, ckpt: Path, repeat: int) -> dict[str, object]:
    torch.set_grad_enabled(False)
    model = (packed_model if contender in PACKED else dense_model)(spec_of(ckpt))
    load = CONTENDERS[contender](model, ckpt)
    model_rss = _status("VmRSS")
    load()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        load()
        times.append(time.perf_counter() - start)
    params = list(model.parameters())
    return {
        "times": times,
        "peak_rss": _status("VmHWM"),
        "model_rss": model_rss,
        "tensors": len(params),
        "bytes": sum(p.nbytes for p in params),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))
