"""Tensor parallelism from a cold page cache: one rank's load, timed, and the file pages it brought in.

``python _tp.py MODE CHECKPOINT RANK SIZE ROUNDS [cold|warm|as-is]`` prints ``{"times": [...], "resident": [...],
"device": [...], "checkpoint_bytes": ...}``. Before each load the shards are dropped from the
page cache (``posix_fadvise(DONTNEED)``); after it, the shards' resident pages are counted with
``mincore``. ``device``: the bytes the load read from the storage device (``read_bytes`` of
``/proc/self/io``; ``None`` where the kernel does not count them). The two differ: an ``O_DIRECT``
read (kvcore's row-parallel slices) comes from the device without entering the page cache, and
reads whole aligned blocks, other ranks' bytes included. Modes:

- ``kvcore``: a rank's share of the model, ``tp_dim`` on sharded parameters, ``kvcore.load(...,
  tp_rank, tp_size)``;
- ``narrow``: the same shapes loaded the vLLM way: a ``safe_open`` loop whose parameters'
  ``weight_loader`` narrows each whole tensor to the rank's part.

``SIZE == 1`` is the whole model: the baseline time (``kvcore``), the plain loop (``narrow``). With ``warm`` the
shards are read whole into the page cache before each load instead (a restart on the same
machine): nothing should come from the device. With ``as-is`` the cache is left as it is (ranks
started together after one drop, as on one machine).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _data import shard_files, spec_of
from _models import Spec, dense_model

COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head")
"""Parameters split by output rows (``tp_dim = 0``); ``o_proj``/``down_proj`` split by input (1)."""
ROW = ("o_proj", "down_proj")


def tp_model(spec: Spec, rank: int, size: int, narrow: bool) -> torch.nn.Module:
    """``dense_model`` cut to rank ``rank`` of ``size``: sharded parameters hold their part."""
    model = dense_model(spec)
    for name, module in list(model.named_modules()):
        leaf = name.rpartition(".")[2]
        dim = 0 if leaf in COLUMN else 1 if leaf in ROW else None
        if dim is None:
            continue
        full = module.weight
        part = torch.nn.Parameter(full.detach().chunk(size, dim)[rank].clone(), requires_grad=False)
        if narrow:
            part.weight_loader = _narrowing(dim, rank, part.shape[dim])  # type: ignore[attr-defined]
        else:
            part.tp_dim = dim  # type: ignore[attr-defined]
        module.weight = part
    return model


def _narrowing(dim: int, rank: int, length: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def weight_loader(param: torch.Tensor, loaded: torch.Tensor) -> None:
        param.data.copy_(loaded.narrow(dim, rank * length, length))

    return weight_loader


def _load_narrow(model: torch.nn.Module, files: list[Path]) -> None:
    from safetensors import safe_open

    params = dict(model.named_parameters())
    with torch.no_grad():
        for file in files:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    param = params[name]
                    loader = getattr(param, "weight_loader", None)
                    if loader is None:
                        param.copy_(f.get_tensor(name))
                    else:
                        loader(param, f.get_tensor(name))


def _drop_cache(files: list[Path]) -> None:
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _warm(files: list[Path]) -> None:
    for file in files:
        with file.open("rb") as f:
            while f.read(16 << 20):
                pass


def _resident(files: list[Path]) -> int:
    """Bytes of ``files`` in the page cache (``mincore`` over a fresh read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    total = 0
    for file in files:
        size = file.stat().st_size
        fd = os.open(file, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(address), size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            total += sum(v & 1 for v in vec) * mmap.PAGESIZE
            libc.munmap(ctypes.c_void_p(address), size)
        finally:
            os.close(fd)
    return total


def _device_bytes() -> int | None:
    """Bytes this process has read from storage so far (``None``: not accounted here)."""
    try:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    except OSError:
        return None
    return int(fields["read_bytes"])


def main(mode: str, ckpt: Path, rank: int, size: int, rounds: int, cache: str = "cold") -> dict[str, object]:
    import kvcore

    torch.set_grad_enabled(False)
    files = shard_files(ckpt)
    times, resident, device = [], [], []
    for _ in range(rounds):
        model = tp_model(spec_of(ckpt), rank, size, mode == "narrow")
        {"cold": _drop_cache, "warm": _warm, "as-is": lambda _: None}[cache](files)
        before = _device_bytes()
        start = time.perf_counter()
        if mode == "narrow":
            _load_narrow(model, files)
        else:
            kvcore.load(model, ckpt, tp_rank=rank, tp_size=size)
        times.append(time.perf_counter() - start)
        after = _device_bytes()
        device.append(None if before is None or after is None else after - before)
        resident.append(_resident(files))
    return {"times": times, "resident": resident, "device": device,
            "checkpoint_bytes": sum(f.stat().st_size for f in files)}


if __name__ == "__main__":
    mode, ckpt, rank, size, rounds = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:6])
    print(json.dumps(main(mode, ckpt, rank, size, rounds, *sys.argv[6:7])))
