"""How much of a checkpoint the page cache holds decides how many reader threads a load starts:
reads from the device wait on it (more in flight keep it busy), reads from the cache are memory
copies (more threads than cores only contend)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pages_support import drop_cache, warm

import kvcore
from kvcore._loading import copy as copy_module
from kvcore._loading import pagecache
from kvcore._loading.shard import COLD_THREADS, MAX_THREADS, Threads
from kvcore.testing import write_checkpoint

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    # 16 MiB: what the header read brings in with it (read-ahead) stays a sliver of the file.
    return write_checkpoint(tmp_path, {"w": torch.arange(1 << 22, dtype=torch.float32)})


def test_resident_share_counts_the_cached_pages(ckpt: Path) -> None:
    file = ckpt / "model.safetensors"
    size = file.stat().st_size
    warm(file, 0, size)
    assert pagecache.resident_share([file]) == 1.0
    if not drop_cache(file):
        return  # tmpfs and the like: the file is its page cache
    assert pagecache.resident_share([file]) == 0.0
    warm(file, 0, size // 2 // PAGE * PAGE)
    half = pytest.approx(0.5, abs=1 / pagecache.PROBES)  # PROBES pages asked, evenly spread
    assert pagecache.resident_share([file]) == half
    assert pagecache.resident_share([file, ckpt / "missing.safetensors"]) == half
    assert pagecache.resident_share([]) == 1.0


def test_cold_loads_start_more_readers(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: list[bool] = []
    real = Threads.__init__

    def spy(self: Threads, cold: bool = False) -> None:
        chosen.append(cold)
        real(self, cold)

    monkeypatch.setattr(copy_module.Threads, "__init__", spy)
    file = ckpt / "model.safetensors"
    warm(file, 0, file.stat().st_size)
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(1 << 22), requires_grad=False)
    kvcore.load(model, ckpt)
    evicted = drop_cache(file)
    kvcore.load(model, ckpt)
    assert chosen == [False, evicted]
    assert torch.equal(model.w, torch.arange(1 << 22, dtype=torch.float32))


def test_reader_counts() -> None:
    threads = torch.get_num_threads()
    assert Threads().workers == min(MAX_THREADS, threads)
    assert Threads(cold=True).workers == min(MAX_THREADS, max(COLD_THREADS, threads))
