"""Two real processes under torch.distributed (gloo on 127.0.0.1), each loading its rank's share.

Each rank builds its share of the model and calls ``kvcore.load(model, ckpt, tp_rank=rank,
tp_size=2)``; ``all_gather`` reassembles every ``tp_dim`` parameter and the per-head scales,
which must equal a single-process (T = 1) load bit for bit. A hang fails within the timeout.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from parallel_support import config, same_bits, tp_model, write
from parallel_worker import run_rank

import kvcore

SIZE, KV_HEADS = 2, 2
DEADLINE = 60.0
"""Seconds for both ranks to start, load, gather and exit (about 4 are needed)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(*args: object) -> None:
    """Run :func:`run_rank` on ``SIZE`` spawned processes; kill them and fail on a hang."""
    context = mp.start_processes(run_rank, args=(SIZE, *args), nprocs=SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):  # raises if a rank failed
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
            pytest.fail(f"the {SIZE} ranks did not finish within {DEADLINE} s")


def test_two_processes_reassemble_the_single_process_load(tmp_path: Path) -> None:
    ckpt = write(tmp_path / "ckpt", KV_HEADS, per_head=True)
    out = tmp_path / "gathered.pt"
    run_ranks(free_port(), KV_HEADS, str(ckpt), str(out))
    gathered = torch.load(out)

    single = tp_model(config(KV_HEADS), 0, 1)
    kvcore.load(single, ckpt)
    params = dict(single.named_parameters())
    whole, replicated = gathered["whole"], gathered["replicated"]
    assert whole.keys() | replicated.keys() == params.keys()
    assert any(name.endswith("self_attn.k_proj.weight") for name in whole)  # sliced on both ranks
    assert "model.layers.1.self_attn.attn.k_scale" in whole  # one KV head on each rank
    for name, tensor in whole.items():
        want = params[name].reshape(-1) if name.rpartition(".")[0].endswith(".attn") else params[name]
        assert same_bits(tensor, want), name
    for name, copies in replicated.items():
        assert len(copies) == SIZE and all(same_bits(copy, params[name]) for copy in copies), name
