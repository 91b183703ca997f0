"""One tensor-parallel rank in its own process: load its share, all_gather the whole model.

Run by ``torch.multiprocessing`` (start method ``spawn``) from ``test_distributed.py``; it
lives outside the test module so that the spawned processes can import it by name.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from parallel_support import SCALES, config, tp_model

import kvcore

TIMEOUT = timedelta(seconds=60)


def gather(tensor: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Every rank's ``tensor``, bit for bit (gloo moves bytes: bf16 or fp8 alike)."""
    mine = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine)
    return [part.view(tensor.dtype).reshape(tensor.shape) for part in parts]


def run_rank(rank: int, size: int, port: int, kv_heads: int, ckpt: str, out: str) -> None:
    """Load rank ``rank``'s share of ``ckpt``; rank 0 saves the reassembled model to ``out``.

    ``tp_dim`` parameters are concatenated along their dim; the per-head scales along their
    heads; replicated parameters are saved as every rank's copy, to compare each.
    """
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size, timeout=TIMEOUT
    )
    try:
        model = tp_model(config(kv_heads), rank, size)
        kvcore.load(model, ckpt, tp_rank=rank, tp_size=size)
        whole: dict[str, torch.Tensor] = {}
        replicated: dict[str, list[torch.Tensor]] = {}
        for name, param in model.named_parameters():
            dim = getattr(param, "tp_dim", None)
            if name.rpartition(".")[2] in SCALES:  # per-head: this rank's KV heads
                whole[name] = torch.cat(gather(param.reshape(-1), size))
            elif dim is not None:
                whole[name] = torch.cat(gather(param, size), dim)
            else:
                replicated[name] = gather(param, size)
        if rank == 0:
            torch.save({"whole": whole, "replicated": replicated}, Path(out))
        dist.barrier()
    finally:
        dist.destroy_process_group()
